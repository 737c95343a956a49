// Placement (multi-probe consistent hashing): distinct holders, order-independence, bounds,
// minimal movement when a member joins or leaves, each member's share with mixed weights, and
// WeightOf.

#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <set>
#include <vector>

#include "server/placement.h"

namespace foreverfs::server {
namespace {

std::vector<Placement::Member> Equal(std::size_t n, std::uint64_t base = 1000) {
  std::vector<Placement::Member> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back({base + i * 7919, 1});
  return out;
}

TEST(PlacementTest, PicksDistinctMembersAndAllOfThemWhenThereAreFewer) {
  EXPECT_TRUE(Placement().Pick(42, 3).empty());
  EXPECT_TRUE(Placement(Equal(5)).Pick(42, 0).empty());
  Placement p(Equal(5));
  EXPECT_EQ(p.size(), 5u);
  for (std::uint64_t key : {0ull, 1ull, ~0ull, 0x8000000000000000ull}) {
    for (std::size_t n : {1u, 3u, 5u, 6u, 1000u}) {
      auto got = p.Pick(key, n);
      EXPECT_EQ(got.size(), std::min<std::size_t>(n, 5)) << key << " " << n;
      EXPECT_EQ(std::set<std::uint64_t>(got.begin(), got.end()).size(), got.size());
    }
  }
}

TEST(PlacementTest, SameMembersInAnyOrderGiveTheSamePicks) {
  auto members = Equal(50);
  Placement a(members);
  std::reverse(members.begin(), members.end());
  members.push_back(members.front());  // a duplicate counts once
  Placement b(members);
  EXPECT_EQ(b.size(), 50u);
  for (std::uint64_t key = 0; key < 2000; ++key)
    EXPECT_EQ(a.Pick(key * 0x9e3779b9, 3), b.Pick(key * 0x9e3779b9, 3));
}

TEST(PlacementTest, AJoiningMemberOnlyTakesChunksForItselfAndALeavingOneOnlyGivesUpItsOwn) {
  auto members = Equal(40);
  Placement before(members);
  members.push_back({999'999, 1});
  Placement after(members);
  auto smaller = Equal(40);
  const std::uint64_t gone = smaller[17].id;
  smaller.erase(smaller.begin() + 17);
  Placement left(smaller);
  std::size_t moved_in = 0, moved_out = 0;
  for (std::uint64_t k = 0; k < 20000; ++k) {
    const std::uint64_t key = k * 0x9e3779b97f4a7c15ull;
    const auto x = before.Pick(key, 1).front(), y = after.Pick(key, 1).front();
    if (x != y) {
      EXPECT_EQ(y, 999'999u) << "a chunk moved between two members that were there before";
      ++moved_in;
    }
    const auto z = left.Pick(key, 1).front();
    if (x != z) {
      EXPECT_EQ(x, gone) << "a chunk of a member that stayed moved";
      ++moved_out;
    }
  }
  // About 1/41 and 1/40 of 20,000: 488 and 500.
  EXPECT_GT(moved_in, 250u);
  EXPECT_LT(moved_in, 800u);
  EXPECT_GT(moved_out, 250u);
  EXPECT_LT(moved_out, 800u);
}

TEST(PlacementTest, WeightsSetTheShareAndAreClamped) {
  std::vector<Placement::Member> members;
  for (std::uint64_t i = 0; i < 30; ++i) members.push_back({i + 1, i < 15 ? 1u : 3u});
  Placement p(members);
  std::size_t light = 0, heavy = 0;
  for (std::uint64_t k = 0; k < 60000; ++k) {
    (p.Pick(k * 0x9e3779b97f4a7c15ull, 1).front() <= 15 ? light : heavy)++;
  }
  const double ratio = static_cast<double>(heavy) / static_cast<double>(light);
  EXPECT_GT(ratio, 2.5);
  EXPECT_LT(ratio, 3.5);
  // Weight 0 counts as 1, and more than kMaxWeight as kMaxWeight: both still place.
  Placement edge({{1, 0}, {2, 0xFFFFFFFFu}});
  EXPECT_EQ(edge.Pick(5, 2).size(), 2u);
}

TEST(PlacementTest, EachMemberGetsItsCapacityShareWithin15PercentWithMixedWeights) {
  // 200 members weighing 1, 2 and 4 (a third each): every member's share of 2M chunks against
  // its weight's share of the total, so a weight-1 member expects about 4,300 chunks.
  std::vector<Placement::Member> members;
  std::uint64_t total_weight = 0;
  for (std::uint64_t i = 0; i < 200; ++i) {
    members.push_back({0x9e3779b97f4a7c15ull * (i + 1), 1u << (i % 3)});
    total_weight += members.back().weight;
  }
  Placement p(members);
  std::map<std::uint64_t, std::uint64_t> count;
  const std::uint64_t keys = 2'000'000;
  for (std::uint64_t k = 0; k < keys; ++k)
    ++count[p.Pick(k * 0xbf58476d1ce4e5b9ull + 7, 1).front()];
  double lo = 10, hi = 0;
  for (const auto& m : members) {
    const double want = static_cast<double>(keys) * m.weight / static_cast<double>(total_weight);
    const double ratio = static_cast<double>(count[m.id]) / want;
    lo = std::min(lo, ratio);
    hi = std::max(hi, ratio);
  }
  EXPECT_GT(lo, 0.85);
  EXPECT_LT(hi, 1.15);
  std::cout << "share / capacity share per member: " << lo << " to " << hi << "\n";
}

TEST(PlacementTest, WeightOfIsCapacityIn64GiBUnitsRoundedAndBounded) {
  constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
  EXPECT_EQ(Placement::WeightOf(0), 1u);
  EXPECT_EQ(Placement::WeightOf(1), 1u);
  EXPECT_EQ(Placement::WeightOf(96 * kGiB - 1), 1u);  // under 96 GiB: all weigh 1
  EXPECT_EQ(Placement::WeightOf(96 * kGiB), 2u);
  EXPECT_EQ(Placement::WeightOf(1024 * kGiB), 16u);
  EXPECT_EQ(Placement::WeightOf(Placement::kWeightUnit * Placement::kMaxWeight),
            Placement::kMaxWeight);
  EXPECT_EQ(Placement::WeightOf(Placement::kWeightUnit * (Placement::kMaxWeight + 5)),
            Placement::kMaxWeight);
  EXPECT_EQ(Placement::WeightOf(~std::uint64_t{0}), Placement::kMaxWeight);
}

}  // namespace
}  // namespace foreverfs::server
