#include "app/status.h"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>
#include <map>

#include "base/bytes.h"

namespace foreverfs::app {

namespace {

std::string Mib(std::uint64_t b) {
  return fmt::format("{:.1f} MiB", static_cast<double>(b) / kMiB);
}

}  // namespace

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string UtcTime(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string Duration(double s) {
  const auto total = static_cast<std::uint64_t>(s);
  if (total < 60) return fmt::format("{}s", total);
  if (total < 3600) return fmt::format("{}m{:02}s", total / 60, total % 60);
  if (total < 86400) return fmt::format("{}h{:02}m", total / 3600, total % 3600 / 60);
  return fmt::format("{}d{:02}h", total / 86400, total % 86400 / 3600);
}

std::vector<server::PeerStatus> MergePeers(
    std::vector<server::PeerStatus> rows, const std::vector<net::TcpTransport::AddrStatus>& addrs) {
  using Row = server::PeerStatus;
  for (const auto& a : addrs) {
    auto it = std::find_if(rows.begin(), rows.end(), [&](const Row& r) {
      return (a.node_id != 0 && r.node_id == a.node_id) || (!r.addr.empty() && r.addr == a.addr);
    });
    if (it != rows.end()) {
      if (!a.last_error.empty() && a.last_error_at > it->last_error_at) {
        it->last_error = a.last_error;
        it->last_error_at = a.last_error_at;
      }
      continue;
    }
    Row r;
    r.node_id = a.node_id;
    r.addr = a.addr;
    r.outbound = a.dialing;
    r.last_error = a.last_error;
    r.last_error_at = a.last_error_at;
    rows.push_back(std::move(r));
  }
  return rows;
}

namespace {

double Since(const StatusSnapshot& s, std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(s.now - t).count();
}
double Rate(const server::CatchUpStatus& r) { return r.seconds > 0 ? r.done / r.seconds : 0; }
double ByteRate(const server::CatchUpStatus& r) { return r.seconds > 0 ? r.bytes / r.seconds : 0; }

}  // namespace

namespace {

// "alive", "suspect (unreachable)", ...
std::string MemberState(const server::MemberInfo& m) {
  std::string state = net::MemberStateName(m.state);
  if (m.unreachable) state += " (unreachable)";
  return state;
}

// Seconds since the member was last heard from, or a negative number if never.
double SeenAgo(const StatusSnapshot& s, const server::MemberInfo& m) {
  if (!m.last_seen) return -1;
  return std::chrono::duration<double>(s.steady_now - *m.last_seen).count();
}

}  // namespace

std::vector<std::string> RenderStatusText(const StatusSnapshot& s) {
  std::vector<std::string> out;
  const auto& round = s.catch_up;
  const double free_gib = static_cast<double>(s.free_bytes) / (1 << 30);
  const double total_gib = static_cast<double>(s.total_bytes) / (1 << 30);
  out.push_back(fmt::format("node        {:016x}", s.node_id));
  out.push_back(fmt::format("listening   {}", s.listen));
  out.push_back(
      fmt::format("data        {} ({:.1f} GiB free of {:.1f} GiB)", s.data, free_gib, total_gib));
  out.push_back(fmt::format("local       {} chunks, {}", s.local_chunks, Mib(s.local_bytes)));
  out.push_back(fmt::format("changes     {} (local change sequence)", s.changes));
  out.push_back(fmt::format("backlog     {} chunks to fetch", s.backlog));
  if (round.running) {
    out.push_back(fmt::format("catch-up    {} of {} chunks ({}), {:.1f} chunks/s, {:.1f} MiB/s, {}",
                              round.done, round.total, Mib(round.bytes), Rate(round),
                              ByteRate(round) / kMiB, Duration(round.seconds)));
  }
  out.push_back(fmt::format(
      "files       {} live, {} with chunks missing here{}", s.live_files, s.files_missing_chunks,
      s.replicas > 0 ? fmt::format(" (--replicas {}: this node holds only its "
                                   "share; see user.foreverfs.replicas per file)",
                                   s.replicas)
                     : ""));
  if (const auto& pl = s.placement; pl.enabled) {
    out.push_back(fmt::format(
        "placement   {} chunks ranked here ({} missing); first ranked for {}: {} "
        "under-replicated{}",
        pl.ranked_here, pl.missing_here, pl.primary, pl.under_replicated,
        pl.passes == 0 ? " (no pass yet)"
                       : fmt::format(" (pass {} ago)", Duration(pl.last_pass_seconds_ago))));
    out.push_back(fmt::format(
        "cache       {} copies not ranked here ({} of {} cache), {} pinned; {} dropped ({})"
        "{}",
        pl.extra, Mib(pl.extra_bytes), Mib(pl.cache_limit), pl.pinned, pl.dropped,
        Mib(pl.dropped_bytes),
        pl.unconfirmed > 0
            ? fmt::format("; {} over the cache wait for their ranked members", pl.unconfirmed)
            : ""));
  }
  std::size_t connected = 0;
  for (const auto& p : s.peers) connected += p.connected;
  out.push_back(fmt::format("peers       {} connected, {} known", connected, s.peers.size()));
  for (const auto& p : s.peers) {
    const std::string id = p.node_id ? fmt::format("{:016x}", p.node_id) : "?";
    const std::string addr = p.addr.empty() ? p.remote : p.addr;
    if (p.connected) {
      out.push_back(
          fmt::format("  {}  {}  {}  connected since {} ({})  in {}  out {}  backlog {} "
                      "changes to send, {} chunks requested",
                      id, addr, p.outbound ? "dialed" : "accepted", UtcTime(p.connected_since),
                      Duration(Since(s, p.connected_since)), Mib(p.bytes_in), Mib(p.bytes_out),
                      p.changes_to_send, p.chunks_in_flight));
    } else {
      out.push_back(fmt::format("  {}  {}  not connected", id, addr));
    }
    if (p.connected && !p.long_lived) out.push_back("      short-lived link (closes when idle)");
    if (!p.last_error.empty()) {
      out.push_back(fmt::format("      last error: {} ({}, {} ago)", p.last_error,
                                UtcTime(p.last_error_at), Duration(Since(s, p.last_error_at))));
    }
  }
  if (!s.members.empty()) {
    std::map<std::string, std::size_t> by_state;
    for (const auto& m : s.members) ++by_state[net::MemberStateName(m.state)];
    std::string counts;
    for (const auto& [state, n] : by_state)
      counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", n, state);
    out.push_back(fmt::format("members     {} ({})", s.members.size(), counts));
    for (const auto& m : s.members) {
      const double ago = SeenAgo(s, m);
      out.push_back(fmt::format(
          "  {:016x}  {}  {}  incarnation {}  weight {}{}{}", m.node_id,
          m.addr.empty() ? "-" : m.addr, m.self ? "this node" : MemberState(m), m.incarnation,
          m.weight, m.linked ? "  linked" : "",
          m.self    ? ""
          : ago < 0 ? "  not seen since start"
                    : fmt::format("  seen {} ago", Duration(ago))));
    }
  }
  return out;
}

std::string RenderStatusJson(const StatusSnapshot& s) {
  const auto& round = s.catch_up;
  std::string j = fmt::format(
      R"({{"node":"{:016x}","listen":{},"data":{},"free_bytes":{},"total_bytes":{},"changes":{},)"
      R"("backlog_chunks":{},"replicas":{},"local":{{"chunks":{},"bytes":{}}},)"
      R"("files":{{"live":{},"missing_chunks_locally":{}}},)"
      R"("catch_up":{{"running":{},"done":{},"total":{},"failed":{},"bytes":{},"seconds":{:.3f},)"
      R"("chunks_per_second":{:.3f},"bytes_per_second":{:.0f}}},)",
      s.node_id, JsonString(s.listen), JsonString(s.data), s.free_bytes, s.total_bytes, s.changes,
      s.backlog, s.replicas, s.local_chunks, s.local_bytes, s.live_files, s.files_missing_chunks,
      round.running, round.done, round.total, round.failed, round.bytes, round.seconds, Rate(round),
      ByteRate(round));
  const auto& pl = s.placement;
  j += fmt::format(
      R"("placement":{{"enabled":{},"passes":{},"last_pass_seconds_ago":{:.3f},)"
      R"("ranked_here":{},"missing_here":{},"primary":{},"under_replicated":{},"extra":{},)"
      R"("extra_bytes":{},"cache_limit":{},"pinned":{},"dropped":{},"dropped_bytes":{},)"
      R"("unconfirmed":{}}},"peers":[)",
      pl.enabled, pl.passes, pl.last_pass_seconds_ago, pl.ranked_here, pl.missing_here,
      pl.primary, pl.under_replicated, pl.extra, pl.extra_bytes, pl.cache_limit, pl.pinned,
      pl.dropped, pl.dropped_bytes, pl.unconfirmed);
  for (std::size_t i = 0; i < s.peers.size(); ++i) {
    const auto& p = s.peers[i];
    j += fmt::format(
        R"({}{{"node":{},"addr":{},"remote":{},"direction":"{}","connected":{},)", i ? "," : "",
        p.node_id ? JsonString(fmt::format("{:016x}", p.node_id)) : "null", JsonString(p.addr),
        JsonString(p.remote), p.outbound ? "dialed" : "accepted", p.connected);
    if (p.connected) {
      j += fmt::format(
          R"("connected_since":"{}","connected_seconds":{:.0f},"bytes_in":{},"bytes_out":{},)"
          R"("backlog":{{"changes_to_send":{},"chunks_requested":{}}},)"
          R"("records_received":{},"peer_seq":{},"long_lived":{},)",
          UtcTime(p.connected_since), Since(s, p.connected_since), p.bytes_in, p.bytes_out,
          p.changes_to_send, p.chunks_in_flight, p.records_received, p.peer_seq, p.long_lived);
    }
    j += p.last_error.empty() ? std::string(R"("last_error":null})")
                              : fmt::format(R"("last_error":{},"last_error_at":"{}"}})",
                                            JsonString(p.last_error), UtcTime(p.last_error_at));
  }
  j += R"(],"members":[)";
  for (std::size_t i = 0; i < s.members.size(); ++i) {
    const auto& m = s.members[i];
    const double ago = SeenAgo(s, m);
    j += fmt::format(
        R"({}{{"node":"{:016x}","addr":{},"state":"{}","unreachable":{},"incarnation":{},)"
        R"("weight":{},"linked":{},"self":{},"seen_seconds_ago":{}}})",
        i ? "," : "", m.node_id, JsonString(m.addr), net::MemberStateName(m.state), m.unreachable,
        m.incarnation, m.weight, m.linked, m.self,
        ago < 0 ? std::string("null") : fmt::format("{:.1f}", ago));
  }
  return j + "]}";
}

}  // namespace foreverfs::app
