// Placement at scale, simulated (issue 16.5): the real placement code (server/placement.h)
// over up to 10,000 members, with chunk keys computed, not stored. Prints:
//  - load: max/mean chunks per member over --chunks placements, equal weights (goal <= 1.10);
//  - mixed capacities (weights 1, 2 and 4, a third each): each member's share against its
//    capacity share, the worst ratio either way (goal within 10%);
//  - movement: the fraction of chunks whose holders change when one member joins and when one
//    leaves, against the ideal 1/n, for 1 and 3 holders (goal within 10% of 1/n);
//  - cost of one pick at 100, 1,000 and 10,000 members, against plain rendezvous hashing
//    (one hash per member: the O(members) scheme it replaces).
//
//   build/foreverfs_placement_sim [--members N] [--chunks N] [--sample N] [--threads N]

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "server/placement.h"

using foreverfs::server::Placement;
using Clock = std::chrono::steady_clock;

namespace {

std::uint64_t Mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::vector<Placement::Member> Members(std::size_t n, bool mixed) {
  std::vector<Placement::Member> out;
  for (std::size_t i = 0; i < n; ++i) {
    out.push_back({Mix(0xabcdef ^ i), mixed ? std::uint32_t{1} << (i % 3) : 1u});
  }
  return out;
}

// Counts per member id of the first holder of `chunks` keys, in `threads` threads.
std::vector<std::pair<std::uint64_t, std::uint64_t>> Loads(const Placement& p,
                                                           std::uint64_t chunks, int threads) {
  std::vector<std::vector<std::pair<std::uint64_t, std::uint64_t>>> parts(threads);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      std::vector<std::pair<std::uint64_t, std::uint64_t>> counts;  // (id, n) sorted by id
      std::vector<std::uint64_t> picks;
      picks.reserve(1 << 16);
      auto flush = [&] {
        std::sort(picks.begin(), picks.end());
        for (std::size_t i = 0; i < picks.size();) {
          std::size_t j = i;
          while (j < picks.size() && picks[j] == picks[i]) ++j;
          auto it = std::lower_bound(counts.begin(), counts.end(), std::make_pair(picks[i], 0ull),
                                     [](auto& a, auto& b) { return a.first < b.first; });
          if (it == counts.end() || it->first != picks[i]) it = counts.insert(it, {picks[i], 0});
          it->second += j - i;
          i = j;
        }
        picks.clear();
      };
      for (std::uint64_t k = t; k < chunks; k += threads) {
        picks.push_back(p.Pick(Mix(k), 1).front());
        if (picks.size() == picks.capacity()) flush();
      }
      flush();
      parts[t] = std::move(counts);
    });
  }
  for (auto& t : ts) t.join();
  std::vector<std::pair<std::uint64_t, std::uint64_t>> all;
  for (auto& part : parts) all.insert(all.end(), part.begin(), part.end());
  std::sort(all.begin(), all.end());
  std::vector<std::pair<std::uint64_t, std::uint64_t>> merged;
  for (auto& [id, n] : all) {
    if (!merged.empty() && merged.back().first == id) {
      merged.back().second += n;
    } else {
      merged.push_back({id, n});
    }
  }
  return merged;
}

double Moved(const Placement& a, const Placement& b, std::uint64_t sample, std::size_t holders) {
  std::uint64_t moved = 0;
  for (std::uint64_t k = 0; k < sample; ++k) {
    auto x = a.Pick(Mix(k ^ 0x5555), holders), y = b.Pick(Mix(k ^ 0x5555), holders);
    std::sort(x.begin(), x.end());
    std::sort(y.begin(), y.end());
    std::vector<std::uint64_t> gone;
    std::set_difference(x.begin(), x.end(), y.begin(), y.end(), std::back_inserter(gone));
    moved += gone.size();
  }
  return static_cast<double>(moved) / static_cast<double>(sample * holders);
}

// Plain rendezvous hashing, the scheme Placement replaced: one hash per member, highest wins.
std::uint64_t Rendezvous(const std::vector<std::uint64_t>& ids, std::uint64_t key) {
  std::uint64_t best = 0, best_score = 0;
  for (std::uint64_t id : ids) {
    const std::uint64_t s = Mix(id ^ key);
    if (s >= best_score) best = id, best_score = s;
  }
  return best;
}

double NsPerPick(const std::function<void(std::uint64_t)>& pick, std::uint64_t n) {
  const auto t0 = Clock::now();
  for (std::uint64_t k = 0; k < n; ++k) pick(k);
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count() /
         static_cast<double>(n);
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t members = 10000;
  std::uint64_t chunks = 100'000'000, sample = 10'000'000;
  int threads = 2;
  std::uint32_t points = Placement::kPoints;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const auto v = std::strtoull(argv[i + 1], nullptr, 10);
    if (a == "--members") members = v;
    if (a == "--chunks") chunks = v;
    if (a == "--sample") sample = v;
    if (a == "--threads") threads = static_cast<int>(std::max<unsigned long long>(1, v));
    if (a == "--points") points = static_cast<std::uint32_t>(v);
  }
  fmt::print("placement: multi-probe consistent hashing, {} probes, {} point(s) per unit of weight; {} members\n",
             Placement::kProbes, points, members);

  const auto t0 = Clock::now();
  Placement equal(Members(members, false), points);
  auto loads = Loads(equal, chunks, threads);
  std::uint64_t max = 0, min = loads.size() < members ? 0 : ~0ull;
  for (auto& [id, n] : loads) max = std::max(max, n), min = std::min(min, n);
  const double mean = static_cast<double>(chunks) / static_cast<double>(members);
  fmt::print("load, equal weights: max/mean {:.3f}, min/mean {:.3f} over {} placements ({} members got none; {:.0f} s)\n",
             static_cast<double>(max) / mean, static_cast<double>(min) / mean, chunks, members - loads.size(),
             std::chrono::duration<double>(Clock::now() - t0).count());

  auto mixed_members = Members(members, true);
  Placement mixed(mixed_members, points);
  std::uint64_t total_weight = 0;
  for (auto& m : mixed_members) total_weight += m.weight;
  auto mixed_loads = Loads(mixed, chunks, threads);
  double worst_hi = 0, worst_lo = 1e9;
  double class_share[3] = {0, 0, 0}, class_cap[3] = {0, 0, 0};
  for (std::size_t i = 0; i < mixed_members.size(); ++i) {
    auto it = std::lower_bound(mixed_loads.begin(), mixed_loads.end(),
                               std::make_pair(mixed_members[i].id, 0ull),
                               [](auto& a, auto& b) { return a.first < b.first; });
    const double got = it != mixed_loads.end() && it->first == mixed_members[i].id
                           ? static_cast<double>(it->second)
                           : 0.0;
    const double want = static_cast<double>(chunks) * mixed_members[i].weight /
                        static_cast<double>(total_weight);
    worst_hi = std::max(worst_hi, got / want);
    worst_lo = std::min(worst_lo, got / want);
    class_share[i % 3] += got;
    class_cap[i % 3] += want;
  }
  fmt::print(
      "load, capacities 1:2:4 (a third each): per member, share / capacity share from {:.3f} to "
      "{:.3f}; per class {:.3f} {:.3f} {:.3f}\n",
      worst_lo, worst_hi, class_share[0] / class_cap[0], class_share[1] / class_cap[1],
      class_share[2] / class_cap[2]);

  auto plus = Members(members + 1, false);
  Placement joined(plus, points);
  auto minus = Members(members, false);
  minus.erase(minus.begin() + static_cast<std::ptrdiff_t>(members / 2));
  Placement left(minus, points);
  for (std::size_t holders : {std::size_t{1}, std::size_t{3}}) {
    const double join = Moved(equal, joined, sample, holders);
    const double leave = Moved(equal, left, sample, holders);
    fmt::print(
        "movement, {} holder{}: one joins {:.6f} of copies moved (ideal 1/(n+1) = {:.6f}, "
        "ratio {:.2f}); one leaves {:.6f} (ideal 1/n = {:.6f}, ratio {:.2f}); {} chunks\n",
        holders, holders > 1 ? "s" : "", join, 1.0 / static_cast<double>(members + 1),
        join * static_cast<double>(members + 1), leave, 1.0 / static_cast<double>(members),
        leave * static_cast<double>(members), sample);
  }

  for (std::size_t n : {std::size_t{100}, std::size_t{1000}, std::size_t{10000}}) {
    Placement p(Members(n, false), points);
    std::vector<std::uint64_t> ids;
    for (auto& m : Members(n, false)) ids.push_back(m.id);
    volatile std::uint64_t sink = 0;
    const double one = NsPerPick([&](std::uint64_t k) { sink = sink + p.Pick(Mix(k), 1)[0]; }, 200000);
    const double three = NsPerPick([&](std::uint64_t k) { sink = sink + p.Pick(Mix(k), 3)[0]; }, 200000);
    const double hrw = NsPerPick(
        [&](std::uint64_t k) {
          sink = sink + Rendezvous(ids, Mix(k));
        },
        n >= 10000 ? 2000 : 20000);
    fmt::print(
        "cost per chunk at {:>5} members: {:>6.0f} ns (1 holder), {:>6.0f} ns (3 holders); "
        "plain rendezvous {:>8.0f} ns (1 holder), {:.0f}x\n",
        n, one, three, hrw, hrw / one);
  }
  return 0;
}
