#pragma once
// Version vectors over file content ("content clocks"): which writes a file version descends
// from. Two versions whose clocks do not dominate one another were written concurrently.

#include <algorithm>
#include <vector>

#include "net/messages.h"

namespace foreverfs::server {

using ContentClock = std::vector<model::ClockEntry>;  // sorted by node, nodes unique

// True if `a` has seen every write `b` has.
inline bool Dominates(const ContentClock& a, const ContentClock& b) {
  for (const auto& e : b) {
    auto it =
        std::lower_bound(a.begin(), a.end(), e.node,
                         [](const model::ClockEntry& x, std::uint64_t n) { return x.node < n; });
    if (it == a.end() || it->node != e.node || it->hlc < e.hlc) return false;
  }
  return true;
}

// `clock` plus a write by `node` at `hlc`.
inline ContentClock Advance(ContentClock clock, std::uint64_t node, std::uint64_t hlc) {
  auto it = std::lower_bound(clock.begin(), clock.end(), node,
                             [](const model::ClockEntry& x, std::uint64_t n) { return x.node < n; });
  if (it != clock.end() && it->node == node) {
    it->hlc = std::max(it->hlc, hlc);
  } else {
    clock.insert(it, {node, hlc});
  }
  if (clock.size() > model::kMaxClockEntries) {
    // Forget the oldest writer: at worst a later comparison keeps one copy too many.
    auto oldest = std::min_element(clock.begin(), clock.end(),
                                   [](const auto& x, const auto& y) { return x.hlc < y.hlc; });
    clock.erase(oldest);
  }
  return clock;
}

// The newest write in the clock (names conflict copies).
inline model::ClockEntry Latest(const ContentClock& clock) {
  model::ClockEntry best{};
  for (const auto& e : clock) {
    if (e.hlc > best.hlc || (e.hlc == best.hlc && e.node > best.node)) best = e;
  }
  return best;
}

}  // namespace foreverfs::server
