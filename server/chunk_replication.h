#pragma once
// ChunkReplication: the background half of chunk replication. When a manifest arrives that
// this node should hold chunks of (every chunk by default; with --replicas N, the chunks this
// node is among the top N of a rendezvous hash for), its missing chunks are queued and pulled
// through the ChunkFetcher, a few at a time. Rounds of it (from the queue going non-empty to
// empty again) are logged every 5 s and reported in status (CatchUp). A failed fetch (no peer
// had it yet) looks for missing chunks again one fetch timeout later.
//
// Threading: event thread only. Owns the queue and the round's progress. Held by shared_ptr:
// its timers and fetch callbacks keep it alive.

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <vector>

#include "server/chunk_fetcher.h"
#include "server/file_server.h"
#include "server/peer_links.h"
#include "server/placement.h"
#include "server/replication_status.h"

namespace foreverfs::server {

class ChunkReplication : public std::enable_shared_from_this<ChunkReplication> {
 public:
  // replicas: 0 holds every chunk; background_fetches: chunks pulled at once.
  ChunkReplication(boost::asio::io_context& io, FileServer& fs,
                   std::shared_ptr<const PeerLinks> links, std::shared_ptr<ChunkFetcher> fetcher,
                   int replicas, std::size_t background_fetches,
                   std::chrono::milliseconds fetch_timeout);

  // The placement over the members (alive and suspect, this node included), if membership
  // runs; null or empty: the connected peers are placed.
  void SetPlacement(std::function<std::shared_ptr<const Placement>()> fn) {
    placement_ = std::move(fn);
  }
  // Queues the chunks of `r` this node should hold and lacks.
  void EnqueueManifest(const InodeRecord& r);
  // Queues what every live manifest lacks here (a peer connected, or a fetch failed).
  void ScanMissing();
  // Chunks queued or in flight.
  std::size_t Backlog() const { return queue_.size() + in_flight_; }
  // The current (or last) round.
  CatchUpStatus CatchUp() const;

 private:
  bool ShouldHold(const cas::ChunkId& id) const;
  void RunQueue();
  // A progress line every 5 s while a round runs, and one at its end.
  void LogRound();
  void ScheduleRescan();

  boost::asio::io_context& io_;
  FileServer& fs_;
  const std::shared_ptr<const PeerLinks> links_;
  const std::shared_ptr<ChunkFetcher> fetcher_;
  const int replicas_;
  std::function<std::shared_ptr<const Placement>()> placement_;
  const std::size_t background_fetches_;
  const std::chrono::milliseconds fetch_timeout_;
  std::deque<std::pair<cas::ChunkId, std::uint64_t>> queue_;  // chunk, the node that wrote it
  std::set<cas::ChunkId> queued_;
  std::size_t in_flight_ = 0;
  bool rescan_scheduled_ = false;
  struct Round {
    bool running = false;
    std::chrono::steady_clock::time_point start{}, end{}, last_log{};
    std::size_t total = 0, done = 0, failed = 0;
    std::uint64_t bytes = 0;
  } round_;
};

}  // namespace foreverfs::server
