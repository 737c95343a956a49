#include "app/endpoints.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/statvfs.h>

#include <charconv>
#include <utility>
#include <vector>

namespace foreverfs::app {

std::string PurgeTombstones(server::FileServer& files, std::chrono::nanoseconds grace) {
  auto r = files.PurgeTombstones(grace);
  if (!r.ok()) {
    spdlog::error("tombstones: {}", r.status().message());
    return "tombstones: purge failed: " + r.status().message();
  }
  std::string line =
      fmt::format("tombstones: {} inode and {} entry records purged", r->inodes, r->dentries);
  if (r->waiting > 0 && r->slowest) {
    line += fmt::format(
        "; {} older than the grace period wait for node {:016x}, which has confirmed our changes "
        "up to {} of {}",
        r->waiting, r->slowest->node, r->slowest->confirmed, files.ns().LastSeq());
  }
  if (r->inodes + r->dentries + r->waiting > 0) spdlog::info("{}", line);
  return line;
}

namespace {

// Live files with a chunk this node does not hold (a manifest walk and one stat per chunk).
std::pair<std::uint64_t, std::uint64_t> FilesMissingChunks(server::FileServer& files) {
  std::uint64_t live = 0, missing = 0;
  auto s = files.ns().ForEachLiveManifest([&](const server::InodeRecord& r) {
    ++live;
    for (const auto& [index, id] : r.manifest) {
      if (!files.HasChunk(id)) {
        ++missing;
        break;
      }
    }
  });
  if (!s.ok()) spdlog::warn("status: walking manifests: {}", s.message());
  return {live, missing};
}

}  // namespace

Endpoints::~Endpoints() {
  control_.reset();
  metrics_.reset();
}

Status Endpoints::BindMetrics(const std::string& addr) {
  if (addr.empty()) return Status();
  auto m = MetricsServer::Bind(p_.io, addr, [this] { return RenderMetricsPage(); });
  if (!m.ok()) return m.status();
  metrics_ = std::move(*m);
  metrics_addr_ = addr;
  return Status();
}

void Endpoints::Start() {
  if (metrics_) {
    metrics_->Serve();
    spdlog::info("serving Prometheus metrics on http://{}/metrics", metrics_addr_);
  }
  // Commands run on the control server's workers, never on the event loop they wait for.
  auto control = ControlServer::Start(
      p_.io, p_.data / "control.sock",
      [this](const std::string& cmd, const std::function<void(const std::string&)>& out) {
        Handle(cmd, out);
      });
  if (!control.ok()) {
    spdlog::warn("no control socket: {}", control.status().message());
    return;
  }
  control_ = std::move(*control);
}

void Endpoints::Stop() {
  if (control_) control_->Stop();
  if (metrics_) metrics_->Stop();
}

StatusSnapshot Endpoints::CollectStatus() {
  using Rows = std::vector<server::PeerStatus>;
  using Addrs = std::vector<net::TcpTransport::AddrStatus>;
  StatusSnapshot s;
  auto [rows, addrs] = OnEventThread<std::pair<Rows, Addrs>>(
      p_.io, [&] { return std::make_pair(p_.replicator.Peers(true), p_.transport.Addresses()); });
  s.peers = MergePeers(std::move(rows), addrs);
  s.members = p_.replicator.Members();  // any thread
  s.steady_now = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now().time_since_epoch());
  std::tie(s.backlog, s.catch_up) = OnEventThread<std::pair<std::size_t, server::CatchUpStatus>>(
      p_.io, [&] { return std::make_pair(p_.replicator.Backlog(), p_.replicator.CatchUp()); });
  s.placement = OnEventThread<server::PlacementStatus>(
      p_.io, [&] { return p_.replicator.PlacementState(); });
  const auto usage = p_.usage.Get(std::chrono::minutes(1));  // at most 2 s old
  s.local_chunks = usage.chunks;
  s.local_bytes = usage.bytes;
  std::tie(s.live_files, s.files_missing_chunks) = FilesMissingChunks(p_.files);
  struct statvfs st {};
  ::statvfs(p_.data.c_str(), &st);
  s.free_bytes = static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
  s.total_bytes = static_cast<std::uint64_t>(st.f_blocks) * st.f_frsize;
  s.now = std::chrono::system_clock::now();
  s.node_id = p_.files.node_id();
  s.listen = p_.listen;
  s.data = p_.data.string();
  s.changes = p_.files.ns().LastSeq();
  s.replicas = p_.replicas;
  return s;
}

void Endpoints::Handle(const std::string& command,
                       const std::function<void(const std::string&)>& out) {
  if (command == "status") {
    for (const auto& line : RenderStatusText(CollectStatus())) out(line);
  } else if (command == "status-json") {
    out(RenderStatusJson(CollectStatus()));
  } else if (command == "scrub") {
    spdlog::info("scrub started");
    auto r = p_.maintenance.Scrub([&](const std::string& line) {
      spdlog::info("{}", line);
      out(line);
    });
    if (!r.ok()) out("scrub failed: " + r.status().message());
  } else if (command == "gc") {
    auto r = p_.maintenance.Collect();
    if (r.ok()) {
      out(
          fmt::format("gc: {} chunks stored, {} referenced, {} removed, {} unreferenced (removed "
                      "by the next pass)",
                      r->stored, r->referenced, r->removed, r->marked));
    } else {
      out("gc failed: " + r.status().message());
    }
    out(PurgeTombstones(p_.files, p_.tombstone_grace));
  } else if (command.starts_with("node-remove ")) {
    const std::string arg = command.substr(12);
    std::uint64_t id = 0;
    auto [end, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), id, 16);
    if (ec != std::errc() || end != arg.data() + arg.size() || arg.empty() || arg.size() > 16) {
      out(fmt::format("node remove: '{}' is not a node id (16 hex digits, see status)", arg));
      return;
    }
    Status s = OnEventThread<Status>(p_.io, [&] { return p_.replicator.RemoveMember(id); });
    out(s.ok() ? fmt::format("node {:016x} removed: it leaves placement now, and only its "
                             "restart brings it back",
                             id)
               : fmt::format("node remove {:016x}: {}", id, s.message()));
  } else {
    out(fmt::format("unknown command '{}' (status, status-json, scrub, gc, node-remove ID)",
                    command));
  }
}

std::string Endpoints::RenderMetricsPage() {
  MetricsSnapshot snap;
  const auto usage_now = p_.usage.Get(std::chrono::seconds(1));
  snap.bytes_stored = usage_now.bytes;
  snap.chunks = usage_now.chunks;
  snap.bytes_sent = p_.transport.Totals().BytesOut();
  snap.bytes_received = p_.transport.Totals().BytesIn();
  snap.peers_connected = p_.replicator.PeerCount();
  snap.replication_backlog =
      TryOnEventThread<std::size_t>(
          p_.io, [this] { return p_.replicator.Backlog(); }, std::chrono::milliseconds(1000))
          .value_or(0);
  if (p_.reader_counters) {
    const auto c = p_.reader_counters();
    snap.fuse_requests_polled = c.polled;
    snap.fuse_requests_slept = c.slept;
    snap.fuse_reader_takeovers = c.takeovers;
    snap.fuse_reader_handoffs = c.handoffs;
  }
  return RenderMetrics(snap, &p_.latency);
}

}  // namespace foreverfs::app
