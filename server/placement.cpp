#include "server/placement.h"

#include <algorithm>
#include <set>

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

}  // namespace

Placement::Placement(const std::vector<Member>& members, std::uint32_t points) {
  points = std::max<std::uint32_t>(points, 1);
  std::set<std::uint64_t> seen;
  for (const Member& m : members) {
    if (!seen.insert(m.id).second) continue;
    const std::uint32_t w = std::clamp<std::uint32_t>(m.weight, 1, kMaxWeight);
    for (std::uint32_t p = 0; p < w * points; ++p) {
      points_.emplace_back(Mix(m.id ^ Mix(0x706c6163656d656eull + p)), m.id);
    }
  }
  members_ = seen.size();
  std::sort(points_.begin(), points_.end());
  index_.assign((1u << 16) + 1, static_cast<std::uint32_t>(points_.size()));
  std::size_t p = 0;
  for (std::uint32_t b = 0; b < (1u << 16); ++b) {
    while (p < points_.size() && (points_[p].first >> 48) < b) ++p;
    index_[b] = static_cast<std::uint32_t>(p);
  }
}

std::uint64_t Placement::KeyOf(const cas::ChunkId& id) {
  std::uint64_t k = 0;
  for (std::size_t i = 0; i < 8 && i < id.size(); ++i) k |= std::uint64_t{id[i]} << (8 * i);
  return k;
}

std::vector<std::uint64_t> Placement::Pick(std::uint64_t key, std::size_t n) const {
  std::vector<std::uint64_t> out;
  n = std::min(n, members_);
  out.reserve(n);
  for (std::size_t r = 0; r < n; ++r) {
    std::uint64_t best = 0, best_dist = 0;
    bool found = false;
    for (int j = 0; j < kProbes; ++j) {
      const std::uint64_t h = Mix(key ^ Mix((std::uint64_t{r} << 32) | static_cast<unsigned>(j)));
      const std::size_t b = h >> 48;
      auto it = std::lower_bound(points_.begin() + index_[b], points_.begin() + index_[b + 1],
                                 std::make_pair(h, std::uint64_t{0}));
      // The nearest point clockwise whose member is not picked yet (the ring wraps).
      for (std::size_t step = 0; step < points_.size(); ++step, ++it) {
        if (it == points_.end()) it = points_.begin();
        if (std::find(out.begin(), out.end(), it->second) != out.end()) continue;
        const std::uint64_t dist = it->first - h;  // wraps as the ring does
        if (!found || dist < best_dist || (dist == best_dist && it->second < best)) {
          best = it->second, best_dist = dist, found = true;
        }
        break;
      }
    }
    if (!found) break;
    out.push_back(best);
  }
  return out;
}

}  // namespace foreverfs::server
