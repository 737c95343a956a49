#pragma once
// Placement: which members hold a chunk. Multi-probe consistent hashing (Appleton and
// O'Reilly, 2015): every member has points on a 64-bit ring (one per unit of weight, so a
// member with twice the capacity has twice the points), a chunk's key is hashed kProbes times,
// and each probe's nearest point clockwise is a candidate; the candidate nearest its probe
// wins. The n holders of a chunk are picked one after another, each with its own probes,
// skipping the members picked already.
//
// Why this scheme: a pick costs kProbes binary searches, O(log members), where rendezvous
// hashing costs one hash per member; a member that joins only takes chunks for itself (a
// probe's nearest point changes only to one of the newcomer's), and one that leaves only gives
// up its own, so movement stays minimal; and many probes even out the ring's uneven arcs
// (max/mean load 1.09 at 10,000 members with equal weights; the low tail is wider: see the
// README). bench/placement_sim.cpp measures all of it.
//
// Immutable once built; any thread.

#include <cstdint>
#include <utility>
#include <vector>

#include "cas/chunk_store.h"

namespace foreverfs::server {

class Placement {
 public:
  struct Member {
    std::uint64_t id = 0;
    std::uint32_t weight = 1;  // points on the ring, at least 1 (relative capacity)
  };
  static constexpr int kProbes = 21;
  static constexpr std::uint32_t kMaxWeight = 1024;

  Placement() = default;
  // Duplicate ids count once (the first); weights are clamped to 1..kMaxWeight. Each unit of
  // weight is `points` points on the ring (at least 1).
  explicit Placement(const std::vector<Member>& members, std::uint32_t points = kPoints);
  static constexpr std::uint32_t kPoints = 4;

  // The `n` members that hold `key`, in pick order (all of them when there are no more than
  // `n`).
  std::vector<std::uint64_t> Pick(std::uint64_t key, std::size_t n) const;
  std::vector<std::uint64_t> Pick(const cas::ChunkId& id, std::size_t n) const {
    return Pick(KeyOf(id), n);
  }
  static std::uint64_t KeyOf(const cas::ChunkId& id);

  std::size_t size() const { return members_; }

 private:
  std::vector<std::pair<std::uint64_t, std::uint64_t>> points_;  // (ring position, member id)
  // index_[b]: the first point at or after b << 48, so a probe's search starts near its point.
  std::vector<std::uint32_t> index_;
  std::size_t members_ = 0;
};

}  // namespace foreverfs::server
