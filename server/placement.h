#pragma once
// Placement: which members hold a chunk. Multi-probe consistent hashing (Appleton and
// O'Reilly, 2015): every member has points on a 64-bit ring (kPoints per unit of weight, so a
// member with twice the capacity has twice the points), a chunk's key is hashed kProbes times,
// and each probe's nearest point clockwise is a candidate; the candidate nearest its probe
// wins. The n holders of a chunk are picked one after another, each with its own probes,
// skipping the members picked already.
//
// Why this scheme: a pick costs kProbes binary searches, O(log members), where rendezvous
// hashing costs one hash per member; a member that joins only takes chunks for itself (a
// probe's nearest point changes only to one of the newcomer's), and one that leaves only gives
// up its own, so movement stays minimal; and many probes and points even out the ring's uneven
// arcs. Measured at 10,000 members over 100M placements (bench/placement_sim.cpp, README
// "Placement at 10,000 members"), with 64 points per unit of weight: equal weights, max/mean
// load 1.070 and min/mean 0.893; weights 1:2:4, each member's share 0.898 to 1.076 of its
// capacity share (part of which is the sampling noise of ~4,300 chunks per weight-1 member;
// 0.904 to 1.066 over 400M placements, where equal weights give min/mean 0.894 still).
// With 4 points it was 1.089 and 0.523, and 0.442 to 1.102: a member's share depends on where
// its few points fall, and the low tail is what more probes do not even out.
//
// Weights are capacities (the daemon's --capacity) in units of kWeightUnit (64 GiB), rounded,
// 1 to kMaxWeight (WeightOf): the points, and so the memory (8 bytes a point) and the time to
// build a placement, grow with the weights, and must stay bounded. So every member under
// 96 GiB weighs 1 (small members of mixed sizes get equal shares), and every one above 64 TiB
// weighs kMaxWeight. Each 64 GiB of the cluster's total capacity is 64 points, 512 bytes: the
// ring takes 8 MiB per PiB of total capacity, and building it sorts every point (1,000
// members of 1 TiB: 1M points, 8 MiB, 0.1 s; of 16 TiB: 16M points, 128 MiB, 2.3 s, measured on
// a loaded 2-core VM). The daemon builds one per change of the member list, on its event
// thread: clusters of many petabytes want a coarser unit.
//
// Immutable once built; any thread.

#include <cstdint>
#include <vector>

#include "cas/chunk_store.h"

namespace foreverfs::server {

class Placement {
 public:
  struct Member {
    std::uint64_t id = 0;
    std::uint32_t weight = 1;  // relative capacity, 1 to kMaxWeight (WeightOf)
    bool operator==(const Member&) const = default;
  };
  static constexpr int kProbes = 21;
  static constexpr std::uint32_t kMaxWeight = 1024;
  static constexpr std::uint32_t kPoints = 64;  // points on the ring per unit of weight
  static constexpr std::uint64_t kWeightUnit = std::uint64_t{64} << 30;  // 64 GiB
  static constexpr int kOwnerBits = 24;
  static constexpr std::size_t kMaxMembers = std::size_t{1} << kOwnerBits;

  // The weight of a member with `capacity_bytes`: in units of kWeightUnit, rounded to nearest,
  // at least 1, at most kMaxWeight.
  static std::uint32_t WeightOf(std::uint64_t capacity_bytes);

  Placement() = default;
  // Duplicate ids count once (the first); weights are clamped to 1..kMaxWeight. Each unit of
  // weight is `points` points on the ring (at least 1). Beyond kMaxMembers (16.7M), the
  // members with the highest ids are left out.
  explicit Placement(const std::vector<Member>& members, std::uint32_t points = kPoints);

  // The `n` members that hold `key`, in pick order (all of them when there are no more than
  // `n`).
  std::vector<std::uint64_t> Pick(std::uint64_t key, std::size_t n) const;
  std::vector<std::uint64_t> Pick(const cas::ChunkId& id, std::size_t n) const {
    return Pick(KeyOf(id), n);
  }
  static std::uint64_t KeyOf(const cas::ChunkId& id);

  std::size_t size() const { return ids_.size(); }

 private:
  // The ring: one 64-bit word a point, its position on the ring (the top 40 bits of a 64-bit
  // hash) above its member's index in ids_ (24 bits), sorted; so a probe's search and the
  // member it finds are one memory access. ids_ is in id order, so that two points at one
  // position order, and their tie breaks, by id whatever order the members were given in.
  std::vector<std::uint64_t> ring_;
  std::vector<std::uint64_t> ids_;
  // index_[b]: the first point at or after b << 48, so a probe's search starts near its point.
  std::vector<std::uint32_t> index_;
};

}  // namespace foreverfs::server
