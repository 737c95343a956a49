#include "server/chunk_replication.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "server/replication_common.h"

namespace foreverfs::server {
namespace {

namespace asio = boost::asio;
using replication::Clock;
using replication::Ranked;

}  // namespace

ChunkReplication::ChunkReplication(asio::io_context& io, FileServer& fs,
                                   std::shared_ptr<const PeerLinks> links,
                                   std::shared_ptr<ChunkFetcher> fetcher, int replicas,
                                   std::size_t background_fetches,
                                   std::chrono::milliseconds fetch_timeout)
    : io_(io),
      fs_(fs),
      links_(std::move(links)),
      fetcher_(std::move(fetcher)),
      replicas_(replicas),
      background_fetches_(background_fetches),
      fetch_timeout_(fetch_timeout) {}

bool ChunkReplication::ShouldHold(const cas::ChunkId& id) const {
  if (replicas_ <= 0) return true;
  const auto n = static_cast<std::size_t>(replicas_);
  // Placed over the members (alive or suspect: a node briefly away keeps its chunks), or over
  // the connected peers when membership does not run.
  std::vector<std::uint64_t> holders;
  if (auto map = placement_ ? placement_() : nullptr; map && map->size() > 0) {
    if (map->size() <= n) return true;
    holders = map->Pick(id, n);
  } else {
    std::vector<std::uint64_t> members{fs_.node_id()};
    for (auto& [node, link] : links_->links()) members.push_back(node);
    if (members.size() <= n) return true;
    holders = Ranked(members, id, n);
  }
  return std::find(holders.begin(), holders.end(), fs_.node_id()) != holders.end();
}

void ChunkReplication::EnqueueManifest(const InodeRecord& r) {
  // The node that wrote the content last holds its chunks (a chmod elsewhere does not move
  // them): a fetch reaches it even when it is not ranked for them.
  std::uint64_t writer = r.version.node, newest = 0;
  for (const auto& c : r.content_clock) {
    if (c.hlc >= newest) newest = c.hlc, writer = c.node;
  }
  // A pinned file (or one in a pinned directory) keeps every chunk here.
  const bool pinned = replicas_ > 0 && !r.manifest.empty() && fs_.ns().Pinned(r.id);
  for (const auto& [index, id] : r.manifest) {
    if (queued_.contains(id) || !(pinned || ShouldHold(id)) || fs_.HasChunk(id)) continue;
    queued_.insert(id);
    queue_.emplace_back(id, writer);
    if (!round_.running) {
      round_ = Round{true, Clock::now(), {}, Clock::now(), 0, 0, 0, 0};
    }
    ++round_.total;
  }
  RunQueue();
}

void ChunkReplication::ScanMissing() {
  auto s = fs_.ns().ForEachLiveManifest([this](const InodeRecord& r) { EnqueueManifest(r); });
  if (!s.ok()) spdlog::error("scanning for missing chunks: {}", s.message());
}

void ChunkReplication::RunQueue() {
  while (in_flight_ < background_fetches_ && !queue_.empty() && !links_->empty()) {
    // Named copies, not a structured binding: a lambda below captures them (clang 14 cannot
    // capture bindings).
    const cas::ChunkId id = queue_.front().first;
    const std::uint64_t writer = queue_.front().second;
    queue_.pop_front();
    if (fs_.HasChunk(id)) {
      queued_.erase(id);
      continue;
    }
    ++in_flight_;
    fetcher_->Start(id, [self = shared_from_this(), id](Result<Bytes> r) {
      --self->in_flight_;
      self->queued_.erase(id);
      if (!r.ok()) {
        ++self->round_.failed;
        spdlog::warn("chunk {}: background replication failed: {}", cas::Hex(id),
                     r.status().message());
        self->ScheduleRescan();
      } else {
        ++self->round_.done;
        self->round_.bytes += r->size();
      }
      self->RunQueue();
      self->LogRound();
    }, writer);
  }
}

void ChunkReplication::LogRound() {
  if (!round_.running) return;
  const auto now = Clock::now();
  const double secs = std::chrono::duration<double>(now - round_.start).count();
  const double mib = static_cast<double>(round_.bytes) / kMiB;
  if (queue_.empty() && in_flight_ == 0) {
    round_.running = false;
    round_.end = now;
    if (round_.total >= 16 || secs >= 1) {
      spdlog::info(
          "catch-up done: {} of {} chunks fetched ({:.1f} MiB) in {:.1f} s, {:.1f} MiB/s{}",
          round_.done, round_.total, mib, secs, secs > 0 ? mib / secs : 0.0,
          round_.failed ? fmt::format(", {} failed (retried later)", round_.failed)
                        : std::string());
    }
  } else if (now - round_.last_log >= std::chrono::seconds(5)) {
    round_.last_log = now;
    spdlog::info("catch-up: {} of {} chunks fetched ({:.1f} MiB), {:.1f} chunks/s, {:.1f} MiB/s",
                 round_.done, round_.total, mib, secs > 0 ? round_.done / secs : 0.0,
                 secs > 0 ? mib / secs : 0.0);
  }
}

// A background fetch failed (no peer had the chunk yet): look for missing chunks again one
// fetch timeout later, since no new link or manifest may come along to trigger it.
void ChunkReplication::ScheduleRescan() {
  if (rescan_scheduled_) return;
  rescan_scheduled_ = true;
  auto timer = std::make_shared<asio::steady_timer>(io_, fetch_timeout_);
  timer->async_wait([self = shared_from_this(), timer](boost::system::error_code) {
    self->rescan_scheduled_ = false;
    self->ScanMissing();
  });
}

CatchUpStatus ChunkReplication::CatchUp() const {
  const auto& r = round_;
  CatchUpStatus s;
  s.running = r.running;
  s.total = r.total;
  s.done = r.done;
  s.failed = r.failed;
  s.bytes = r.bytes;
  if (r.start != Clock::time_point{}) {
    s.seconds = std::chrono::duration<double>((r.running ? Clock::now() : r.end) - r.start).count();
  }
  return s;
}

}  // namespace foreverfs::server
