#pragma once
// `foreverfs status` and `foreverfs status --json`: the text and the JSON object rendered from a
// StatusSnapshot. Pure functions of the snapshot (no clock, no I/O), so any thread may call
// them; the control socket's workers do (app/endpoints.h collects the snapshot).

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "net/tcp_transport.h"
#include "server/membership.h"
#include "server/replicator.h"

namespace foreverfs::app {

struct StatusSnapshot {
  std::uint64_t node_id = 0;
  std::string listen;                             // the address peers dial this node at
  std::string data;                               // the data directory
  std::uint64_t free_bytes = 0, total_bytes = 0;  // of the data directory's file system
  std::uint64_t local_chunks = 0, local_bytes = 0;
  std::uint64_t changes = 0;  // the local change sequence
  std::size_t backlog = 0;    // chunks to fetch
  server::CatchUpStatus catch_up;
  server::PlacementStatus placement;  // with --replicas N
  std::uint64_t live_files = 0, files_missing_chunks = 0;
  int replicas = 0;  // --replicas
  std::vector<server::PeerStatus> peers;
  // The cluster's members as this node sees them (empty before the membership started), and
  // the steady clock their times are on.
  std::vector<server::MemberInfo> members;
  std::chrono::milliseconds steady_now{0};
  std::chrono::system_clock::time_point now;  // "connected for", "ago" are counted from it
};

// Every peer status knows of: connected ones, ones whose link went (`rows`, the replicator's),
// and addresses the transport dials or that failed a handshake (`addrs`), merged by node id
// where one is known, else by address; an address's newer error replaces a row's.
std::vector<server::PeerStatus> MergePeers(std::vector<server::PeerStatus> rows,
                                           const std::vector<net::TcpTransport::AddrStatus>& addrs);

// The text, one line per element.
std::vector<std::string> RenderStatusText(const StatusSnapshot& s);
// One JSON object on one line.
std::string RenderStatusJson(const StatusSnapshot& s);

// Helpers, exposed for the tests.
std::string JsonString(std::string_view s);
std::string UtcTime(std::chrono::system_clock::time_point t);
std::string Duration(double seconds);  // "42s", "3m07s", "5h02m", "2d03h"

}  // namespace foreverfs::app
