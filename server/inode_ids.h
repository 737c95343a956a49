#pragma once
// New inode ids: unique in the cluster without asking anyone, and close together when made
// together. An id is a random 44-bit block number and a 20-bit index in the block; a node takes
// a fresh random block when it starts and whenever it has used all 2^20 ids of the current one.
//
// Why not a random 64-bit id each: the namespace tables are keyed by id, so random ids put the
// files of one directory (made by one `tar -x` or one build) on as many B-tree pages as there
// are files, among every other row, tombstones included. A cold `ls -l` of 10,000 entries then
// read a page per entry: 0.09 s in a fresh store, 0.34-0.44 s after 100,000 files had been
// made and deleted. Ids from one block sit on neighbouring pages, and an insert lands on the
// page the previous one touched.
//
// Uniqueness: two nodes (or two runs of one) clash only if they draw the same block, about
// B^2 / 2^45 for B blocks ever drawn in a cluster (1e-5 for 20,000 runs), against F^2 / 2^65
// for F files with random ids (3e-4 for 1e8 files). A clash would cost more than one file
// (both runs count from the block's start), so a drawn block that holds any id this node
// knows of (its own earlier runs', or one replicated here from another node) is drawn again.
//
// Thread-safe.

#include <cstdint>
#include <functional>
#include <utility>

#include "base/mutex.h"
#include "crypto/crypto.h"

namespace foreverfs::server {

class InodeIds {
 public:
  static constexpr int kIndexBits = 20;
  static constexpr std::uint64_t kBlockSize = std::uint64_t{1} << kIndexBits;
  static constexpr int kMaxDraws = 64;

  // `in_use(lo, hi)` says whether any id in [lo, hi] is taken (none if empty); `random`
  // draws a block (tests pass their own), the default is the system's CSPRNG.
  explicit InodeIds(std::function<bool(std::uint64_t lo, std::uint64_t hi)> in_use = {},
                    std::function<std::uint64_t()> random = crypto::RandomU64)
      : in_use_(std::move(in_use)), random_(std::move(random)) {}

  // A new id, never 0 or 1 (no id; the root).
  std::uint64_t Next() {
    MutexLock lock(mu_);
    for (;;) {
      if (index_ == kBlockSize) {
        // A block in use is drawn again (a few times at most: a store of a billion files
        // holds a block in 2^24); after kMaxDraws the last one is taken, since a store whose
        // every draw is taken is not one a random id would do better in.
        for (int draw = 0; draw < kMaxDraws; ++draw) {
          block_ = random_() >> kIndexBits;
          if (!in_use_ || !in_use_(block_ << kIndexBits, (block_ << kIndexBits) | (kBlockSize - 1)))
            break;
        }
        index_ = 0;
      }
      const std::uint64_t id = (block_ << kIndexBits) | index_++;
      if (id > 1) return id;
    }
  }

 private:
  Mutex mu_;
  const std::function<bool(std::uint64_t, std::uint64_t)> in_use_;
  const std::function<std::uint64_t()> random_;
  std::uint64_t block_ GUARDED_BY(mu_) = 0;
  std::uint64_t index_ GUARDED_BY(mu_) = kBlockSize;  // used up: the first Next draws a block
};

}  // namespace foreverfs::server
