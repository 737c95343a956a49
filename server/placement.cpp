#include "server/placement.h"

#include <algorithm>

namespace foreverfs::server {
namespace {

// SplitMix64's finalizer: a bijection with good avalanche, cheap enough for ~20 calls a pick.
std::uint64_t Mix(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

constexpr std::uint64_t kOwnerMask = (std::uint64_t{1} << Placement::kOwnerBits) - 1;
constexpr std::uint64_t kPositionMask = ~kOwnerMask;

}  // namespace

std::uint32_t Placement::WeightOf(std::uint64_t capacity_bytes) {
  const std::uint64_t units =
      capacity_bytes / kWeightUnit + (capacity_bytes % kWeightUnit >= kWeightUnit / 2 ? 1 : 0);
  return static_cast<std::uint32_t>(std::clamp<std::uint64_t>(units, 1, kMaxWeight));
}

Placement::Placement(const std::vector<Member>& members, std::uint32_t points) {
  const std::uint64_t per_unit = std::max<std::uint32_t>(points, 1);
  // By id, the first of each id: indices then order as ids do.
  std::vector<Member> sorted = members;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const Member& a, const Member& b) { return a.id < b.id; });
  sorted.erase(std::unique(sorted.begin(), sorted.end(),
                           [](const Member& a, const Member& b) { return a.id == b.id; }),
               sorted.end());
  if (sorted.size() > kMaxMembers) sorted.resize(kMaxMembers);
  std::uint64_t total = 0;
  for (const Member& m : sorted) total += std::clamp<std::uint32_t>(m.weight, 1, kMaxWeight);
  ring_.reserve(total * per_unit);
  ids_.reserve(sorted.size());
  for (const Member& m : sorted) {
    const std::uint64_t index = ids_.size();
    ids_.push_back(m.id);
    const std::uint64_t n = std::clamp<std::uint32_t>(m.weight, 1, kMaxWeight) * per_unit;
    for (std::uint64_t p = 0; p < n; ++p) {
      ring_.push_back((Mix(m.id ^ Mix(0x706c6163656d656eull + p)) & kPositionMask) | index);
    }
  }
  std::sort(ring_.begin(), ring_.end());
  index_.assign((1u << 16) + 1, static_cast<std::uint32_t>(ring_.size()));
  std::size_t p = 0;
  for (std::uint32_t b = 0; b < (1u << 16); ++b) {
    while (p < ring_.size() && (ring_[p] >> 48) < b) ++p;
    index_[b] = static_cast<std::uint32_t>(p);
  }
}

std::uint64_t Placement::KeyOf(const cas::ChunkId& id) {
  std::uint64_t k = 0;
  for (std::size_t i = 0; i < 8 && i < id.size(); ++i) k |= std::uint64_t{id[i]} << (8 * i);
  return k;
}

std::vector<std::uint64_t> Placement::Pick(std::uint64_t key, std::size_t n) const {
  std::vector<std::uint64_t> picked;  // member indices
  n = std::min(n, ids_.size());
  picked.reserve(n);
  const std::size_t points = ring_.size();
  for (std::size_t r = 0; r < n; ++r) {
    std::uint64_t best_dist = 0, best = 0;
    bool found = false;
    for (int j = 0; j < kProbes; ++j) {
      const std::uint64_t h =
          Mix(key ^ Mix((std::uint64_t{r} << 32) | static_cast<unsigned>(j))) & kPositionMask;
      const std::size_t b = h >> 48;
      auto it = std::lower_bound(ring_.begin() + index_[b], ring_.begin() + index_[b + 1], h);
      // The nearest point clockwise whose member is not picked yet (the ring wraps).
      for (std::size_t step = 0; step < points; ++step, ++it) {
        if (it == ring_.end()) it = ring_.begin();
        const std::uint64_t owner = *it & kOwnerMask;
        if (std::find(picked.begin(), picked.end(), owner) != picked.end()) continue;
        const std::uint64_t dist = (*it & kPositionMask) - h;  // wraps as the ring does
        // Indices order as ids do: a tie goes to the smaller id.
        if (!found || dist < best_dist || (dist == best_dist && owner < best)) {
          best = owner, best_dist = dist, found = true;
        }
        break;
      }
    }
    if (!found) break;
    picked.push_back(best);
  }
  for (std::uint64_t& i : picked) i = ids_[i];
  return picked;
}

}  // namespace foreverfs::server
