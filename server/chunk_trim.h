#pragma once
// ChunkTrim: keeps this node's store to what placement gives it (issue 16: repair,
// rebalancing, cache nodes). One pass every --rebalance-interval, with --replicas N and the
// membership running:
//
// 1. On the storage pool: every chunk of every live file is sorted into ranked here (among
//    the N members placement picks for it), pinned here (user.foreverfs.pin on the file or a
//    directory above it), or extra (a copy here that neither keeps: read on demand, written
//    here, or ranked here before a member joined).
// 2. Extras are ordered by their last read here (FileServer::Reads), most recent first; those
//    that fit in --cache-size bytes stay (the cache); the rest are candidates to drop.
// 3. The ranked members are asked (HaveChunks) which they hold: for every candidate, all N of
//    them; for every chunk this node is the first ranked for ("primary"), the other N - 1.
//    Members with no link are reached first over short-lived links (at most kMaxReach a
//    pass; the others count as not confirming, and are reached at later passes).
// 4. A candidate is dropped only if every one of its N ranked members confirmed it holds it,
//    so a chunk never falls below N copies by a drop; a primary chunk with fewer than N
//    confirmed holders counts as under-replicated (status).
//
// No drop happens within `settle` of a change of the placement members: two nodes whose
// views of the members differ could otherwise each count on the other's copy.
// A drop that races a pin or a read costs a fetch, never data: the ranked copies stay.
//
// Threading: event thread, except the scan and the removals, which run on the storage pool.
// Held by shared_ptr (its timer and pool callbacks keep it alive).

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "server/file_server.h"
#include "server/holder_queries.h"
#include "server/peer_links.h"
#include "server/placement.h"
#include "server/replication_status.h"
#include "server/storage_work.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace foreverfs::server {

struct ChunkTrimOptions {
  int replicas = 0;                  // N; 0: every node holds every chunk, nothing to trim
  std::uint64_t cache_size = 1ull << 30;  // bytes of extra copies kept
  std::chrono::milliseconds interval{30000};
  std::chrono::milliseconds settle{10000};
  std::chrono::milliseconds ask_timeout{10000};
};

class ChunkTrim : public std::enable_shared_from_this<ChunkTrim> {
 public:
  ChunkTrim(boost::asio::io_context& io, FileServer& fs, std::shared_ptr<StorageWork> storage,
            std::shared_ptr<const PeerLinks> links, std::shared_ptr<HolderQueries> holders,
            std::function<std::shared_ptr<const Placement>()> placement,
            ChunkTrimOptions options);
  ~ChunkTrim();

  static constexpr std::size_t kMaxReach = 64;

  // Opens short-lived links to members with none (MemberLinks::ReachNodes). Set before Start.
  void SetReach(std::function<void(const std::vector<std::uint64_t>&)> fn) {
    reach_ = std::move(fn);
  }
  // Arms the timer (the first pass after one interval). Event thread.
  void Start();
  void Stop();
  // The placement members changed: no drop for `settle`, and a pass soon after (repair
  // status). Event thread.
  void PlacementChanged();
  // Runs a pass now unless one is running. Event thread.
  void RunPass();
  PlacementStatus Status() const;

 private:
  struct Scan;
  void Arm(std::chrono::milliseconds after);
  // Asks the members once those reached have links (or after a few seconds).
  void AskWhenLinked(const std::shared_ptr<Scan>& scan,
                     std::shared_ptr<std::map<std::uint64_t, std::vector<cas::ChunkId>>> asks,
                     std::chrono::steady_clock::time_point deadline);
  void Asked(const std::shared_ptr<Scan>& scan, HolderQueries::Answers answers);
  void Done(const std::shared_ptr<Scan>& scan, std::size_t dropped, std::uint64_t bytes);

  boost::asio::io_context& io_;
  FileServer& fs_;
  const std::shared_ptr<StorageWork> storage_;
  const std::shared_ptr<const PeerLinks> links_;
  const std::shared_ptr<HolderQueries> holders_;
  std::function<void(const std::vector<std::uint64_t>&)> reach_;
  const std::function<std::shared_ptr<const Placement>()> placement_;
  const ChunkTrimOptions options_;
  struct Timer;  // an Asio steady_timer, kept out of this header
  std::unique_ptr<Timer> timer_;
  bool running_ = false;
  bool stopped_ = false;
  std::chrono::steady_clock::time_point placement_changed_{};
  std::chrono::steady_clock::time_point last_pass_{};
  PlacementStatus status_;
};

}  // namespace foreverfs::server
