#include "server/chunk_trim.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <map>
#include <set>

#include "server/replication_common.h"

namespace foreverfs::server {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

struct ChunkTrim::Timer {
  explicit Timer(asio::io_context& io) : t(io) {}
  asio::steady_timer t;
};

// One pass: what the scan found (pool), then what the ranked members answered (event thread).
struct ChunkTrim::Scan {
  std::shared_ptr<const Placement> map;
  std::size_t n = 0;
  std::uint64_t self = 0;
  foreverfs::Status status;
  std::size_t ranked_here = 0, missing_here = 0, pinned = 0, primary = 0, primary_missing = 0;
  struct Primary {
    cas::ChunkId id;
    std::vector<std::uint64_t> others;  // the other ranked members
  };
  std::vector<Primary> primaries;  // held here
  struct Extra {
    cas::ChunkId id;
    std::uint64_t size = 0;
    std::uint64_t last_read = 0;  // FileServer::Reads at the scan; 0 never
    std::vector<std::uint64_t> ranked;
  };
  std::vector<Extra> extras;      // most recently read first
  std::vector<Extra> candidates;  // past the cache
  std::uint64_t extra_bytes = 0;
  bool may_drop = false;
  std::size_t unconfirmed = 0;
  std::size_t under_replicated = 0;
};

ChunkTrim::ChunkTrim(asio::io_context& io, FileServer& fs, std::shared_ptr<StorageWork> storage,
                     std::shared_ptr<const PeerLinks> links,
                     std::shared_ptr<HolderQueries> holders,
                     std::function<std::shared_ptr<const Placement>()> placement,
                     ChunkTrimOptions options)
    : io_(io),
      fs_(fs),
      storage_(std::move(storage)),
      links_(std::move(links)),
      holders_(std::move(holders)),
      placement_(std::move(placement)),
      options_(options),
      timer_(std::make_unique<Timer>(io)) {
  status_.cache_limit = options_.cache_size;
}

ChunkTrim::~ChunkTrim() = default;

void ChunkTrim::Start() {
  if (options_.replicas <= 0) return;
  stopped_ = false;
  status_.enabled = true;
  Arm(options_.interval);
}

void ChunkTrim::Stop() {
  stopped_ = true;
  timer_->t.cancel();
}

void ChunkTrim::PlacementChanged() {
  placement_changed_ = Clock::now();
  if (!stopped_ && status_.enabled && !running_) Arm(std::min<std::chrono::milliseconds>(
                                                     options_.interval, std::chrono::seconds(2)));
}

void ChunkTrim::Arm(std::chrono::milliseconds after) {
  timer_->t.expires_after(after);
  timer_->t.async_wait([w = weak_from_this()](boost::system::error_code ec) {
    auto self = w.lock();
    if (ec || !self || self->stopped_) return;
    self->RunPass();
  });
}

void ChunkTrim::RunPass() {
  if (running_ || options_.replicas <= 0) return;
  auto map = placement_ ? placement_() : nullptr;
  if (!map || map->size() == 0) {
    if (!stopped_) Arm(options_.interval);
    return;
  }
  running_ = true;
  auto scan = std::make_shared<Scan>();
  scan->map = std::move(map);
  scan->n = static_cast<std::size_t>(options_.replicas);
  scan->self = fs_.node_id();
  storage_->Run(
      [self = shared_from_this(), scan] {
        FileServer& fs = self->fs_;
        struct Info {
          std::uint64_t size = 0;
          bool pinned = false;
        };
        std::map<cas::ChunkId, Info> chunks;
        scan->status = fs.ns().ForEachLiveManifest([&](const InodeRecord& r) {
          const bool pinned = !r.manifest.empty() && fs.ns().Pinned(r.id);
          for (const auto& [index, id] : r.manifest) {
            if (id == cas::kHoleId) continue;
            const std::uint64_t start = std::uint64_t{index} * cas::kChunkSize;
            const std::uint64_t size =
                r.size > start ? std::min<std::uint64_t>(cas::kChunkSize, r.size - start) : 0;
            Info& c = chunks[id];
            c.size = std::max(c.size, size);
            c.pinned = c.pinned || pinned;
          }
        });
        if (!scan->status.ok()) return 0;
        const auto reads = fs.Reads();
        for (const auto& [id, info] : chunks) {
          const bool has = fs.HasChunk(id);
          auto ranked = scan->map->Pick(id, scan->n);
          if (std::find(ranked.begin(), ranked.end(), scan->self) != ranked.end()) {
            ++scan->ranked_here;
            if (!has) ++scan->missing_here;
            if (ranked.front() != scan->self) continue;
            ++scan->primary;
            if (!has) {
              ++scan->primary_missing;
            } else if (ranked.size() > 1) {
              scan->primaries.push_back({id, {ranked.begin() + 1, ranked.end()}});
            }
          } else if (has && info.pinned) {
            ++scan->pinned;
          } else if (has) {
            auto r = reads.find(id);
            scan->extras.push_back(
                {id, info.size, r == reads.end() ? 0 : r->second, std::move(ranked)});
            scan->extra_bytes += info.size;
          }
        }
        // Forget reads of chunks no live file has any more.
        fs.PruneReads([&](const cas::ChunkId& id) { return chunks.contains(id); });
        std::sort(scan->extras.begin(), scan->extras.end(), [](const auto& a, const auto& b) {
          return a.last_read != b.last_read ? a.last_read > b.last_read : a.id < b.id;
        });
        return 0;
      },
      [self = shared_from_this(), scan](int) {
        if (!scan->status.ok()) {
          spdlog::error("placement pass: scanning the live files: {}", scan->status.message());
          self->Done(scan, 0, 0);
          return;
        }
        // The most recently read extras that fit in the cache stay; the rest may go.
        std::uint64_t cached = 0;
        for (auto& e : scan->extras) {
          if (scan->candidates.empty() && cached + e.size <= self->options_.cache_size) {
            cached += e.size;
          } else {
            scan->candidates.push_back(e);
          }
        }
        scan->may_drop = Clock::now() - self->placement_changed_ >= self->options_.settle;
        std::map<std::uint64_t, std::vector<cas::ChunkId>> asks;
        for (const auto& p : scan->primaries) {
          for (std::uint64_t node : p.others) asks[node].push_back(p.id);
        }
        if (scan->may_drop) {
          for (const auto& c : scan->candidates) {
            for (std::uint64_t node : c.ranked) asks[node].push_back(c.id);
          }
        }
        if (asks.empty()) {
          self->Asked(scan, {});
          return;
        }
        std::vector<std::uint64_t> unlinked;
        for (const auto& [node, ids] : asks) {
          if (!self->links_->Find(node) && unlinked.size() < kMaxReach) unlinked.push_back(node);
        }
        if (!unlinked.empty() && self->reach_) self->reach_(unlinked);
        self->AskWhenLinked(
            scan,
            std::make_shared<std::map<std::uint64_t, std::vector<cas::ChunkId>>>(std::move(asks)),
            Clock::now() + (unlinked.empty() ? std::chrono::milliseconds(0)
                                             : std::chrono::milliseconds(3000)));
      });
}

void ChunkTrim::AskWhenLinked(
    const std::shared_ptr<Scan>& scan,
    std::shared_ptr<std::map<std::uint64_t, std::vector<cas::ChunkId>>> asks,
    Clock::time_point deadline) {
  bool all = true;
  for (const auto& [node, ids] : *asks) all = all && links_->Find(node) != nullptr;
  if (!all && Clock::now() < deadline && !stopped_) {
    auto t = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(50));
    t->async_wait([self = shared_from_this(), scan, asks, deadline, t](boost::system::error_code) {
      self->AskWhenLinked(scan, asks, deadline);
    });
    return;
  }
  // Weak: the query lives in HolderQueries, which this holds (no cycle if it never ends).
  holders_->Ask(std::move(*asks), options_.ask_timeout,
                [w = weak_from_this(), scan](HolderQueries::Answers answers) {
                  if (auto self = w.lock()) self->Asked(scan, std::move(answers));
                });
}

void ChunkTrim::Asked(const std::shared_ptr<Scan>& scan, HolderQueries::Answers answers) {
  // Which chunks each member that answered holds. The asks were built in the same order as
  // below, so the bits line up with the ids asked.
  std::map<std::uint64_t, std::set<cas::ChunkId>> held;
  {
    std::map<std::uint64_t, std::size_t> at;
    auto take = [&](std::uint64_t node, const cas::ChunkId& id) {
      auto a = answers.find(node);
      const std::size_t i = at[node]++;
      if (a != answers.end() && i < a->second.size() && a->second[i]) held[node].insert(id);
    };
    for (const auto& p : scan->primaries) {
      for (std::uint64_t node : p.others) take(node, p.id);
    }
    if (scan->may_drop) {
      for (const auto& c : scan->candidates) {
        for (std::uint64_t node : c.ranked) take(node, c.id);
      }
    }
  }
  auto holds = [&](std::uint64_t node, const cas::ChunkId& id) {
    auto h = held.find(node);
    return h != held.end() && h->second.contains(id);
  };
  scan->under_replicated = scan->primary_missing;
  for (const auto& p : scan->primaries) {
    std::size_t copies = 1;  // here
    for (std::uint64_t node : p.others) copies += holds(node, p.id) ? 1 : 0;
    if (copies < p.others.size() + 1) ++scan->under_replicated;
  }
  std::vector<Scan::Extra> drop;
  for (auto& c : scan->candidates) {
    const bool confirmed =
        scan->may_drop && !c.ranked.empty() &&
        std::all_of(c.ranked.begin(), c.ranked.end(),
                    [&](std::uint64_t node) { return holds(node, c.id); });
    if (confirmed) {
      drop.push_back(c);
    } else {
      ++scan->unconfirmed;
    }
  }
  if (drop.empty()) {
    Done(scan, 0, 0);
    return;
  }
  storage_->Run(
      [self = shared_from_this(), drop = std::move(drop)] {
        std::pair<std::size_t, std::uint64_t> removed{0, 0};
        for (const auto& c : drop) {
          // Read since the scan: it is in use; the next pass decides again.
          if (self->fs_.LastRead(c.id) > c.last_read) continue;
          if (auto s = self->fs_.store().Remove(c.id); !s.ok()) {
            spdlog::warn("chunk {}: dropping the copy not ranked here: {}", cas::Hex(c.id),
                         s.message());
            continue;
          }
          ++removed.first;
          removed.second += c.size;
        }
        return removed;
      },
      [self = shared_from_this(), scan](std::pair<std::size_t, std::uint64_t> removed) {
        self->Done(scan, removed.first, removed.second);
      });
}

void ChunkTrim::Done(const std::shared_ptr<Scan>& scan, std::size_t dropped, std::uint64_t bytes) {
  running_ = false;
  last_pass_ = Clock::now();
  auto& s = status_;
  const std::size_t was_under = s.under_replicated;
  ++s.passes;
  s.ranked_here = scan->ranked_here;
  s.missing_here = scan->missing_here;
  s.primary = scan->primary;
  s.under_replicated = scan->under_replicated;
  s.pinned = scan->pinned;
  s.extra = scan->extras.size() - dropped;
  s.extra_bytes = scan->extra_bytes - bytes;
  s.unconfirmed = scan->unconfirmed;
  s.dropped += dropped;
  s.dropped_bytes += bytes;
  if (dropped > 0) {
    spdlog::info("placement: dropped {} copies ({:.1f} MiB) not ranked here, each confirmed on "
                 "its {} ranked members; {} extra copies ({:.1f} MiB) kept",
                 dropped, static_cast<double>(bytes) / kMiB, scan->n, s.extra,
                 static_cast<double>(s.extra_bytes) / kMiB);
  }
  if (scan->under_replicated != was_under || (s.passes == 1 && scan->under_replicated > 0)) {
    spdlog::info("placement: {} of the {} chunks this node is first ranked for have fewer than "
                 "{} confirmed copies",
                 scan->under_replicated, scan->primary, scan->n);
  }
  if (!stopped_) Arm(options_.interval);
}

PlacementStatus ChunkTrim::Status() const {
  PlacementStatus s = status_;
  if (last_pass_ != Clock::time_point{}) {
    s.last_pass_seconds_ago = std::chrono::duration<double>(Clock::now() - last_pass_).count();
  }
  return s;
}

}  // namespace foreverfs::server
