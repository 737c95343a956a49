// New inode ids (server/inode_ids.h): consecutive within a block, a fresh block after 2^20,
// never 0 or 1 (whatever the random source draws), unique across threads.

#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "server/inode_ids.h"

namespace foreverfs::server {
namespace {

// A random source that hands out the given values in turn.
std::function<std::uint64_t()> Draws(std::deque<std::uint64_t> values) {
  return [values = std::move(values)]() mutable {
    EXPECT_FALSE(values.empty()) << "more blocks drawn than expected";
    if (values.empty()) return std::uint64_t{0x5555} << InodeIds::kIndexBits;
    const std::uint64_t v = values.front();
    values.pop_front();
    return v;
  };
}

TEST(InodeIdsTest, IdsOfOneBlockAreConsecutiveThenANewBlockIsDrawn) {
  constexpr std::uint64_t kBlockA = 0x123456789ab, kBlockB = 0xfffffffffff;  // 44 bits each
  InodeIds ids({}, Draws({kBlockA << InodeIds::kIndexBits, ~std::uint64_t{0}}));
  EXPECT_EQ(ids.Next(), kBlockA << InodeIds::kIndexBits);
  for (std::uint64_t i = 1; i < InodeIds::kBlockSize; ++i) {
    const std::uint64_t id = ids.Next();
    if (id != ((kBlockA << InodeIds::kIndexBits) | i)) {
      FAIL() << "id " << i << " of the block is " << std::hex << id;
    }
  }
  // The block is used up: the next id comes from the next draw (its low 20 bits dropped), the
  // top block of the id space; its last id is 2^64 - 1.
  EXPECT_EQ(ids.Next(), kBlockB << InodeIds::kIndexBits);
  EXPECT_EQ(ids.Next(), (kBlockB << InodeIds::kIndexBits) | 1);
  std::uint64_t last = 0;
  for (std::uint64_t i = 2; i < InodeIds::kBlockSize; ++i) last = ids.Next();
  EXPECT_EQ(last, ~std::uint64_t{0});
}

// A block that holds a known id is drawn again; the in-use question covers exactly the block.
TEST(InodeIdsTest, ABlockInUseIsDrawnAgain) {
  constexpr std::uint64_t kTaken = 0xabc, kFree = 0xdef;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> asked;
  InodeIds ids(
      [&](std::uint64_t lo, std::uint64_t hi) {
        asked.emplace_back(lo, hi);
        return lo >> InodeIds::kIndexBits == kTaken;
      },
      Draws({kTaken << InodeIds::kIndexBits, kFree << InodeIds::kIndexBits}));
  EXPECT_EQ(ids.Next(), kFree << InodeIds::kIndexBits);
  ASSERT_EQ(asked.size(), 2u);
  EXPECT_EQ(asked[0], std::make_pair(kTaken << InodeIds::kIndexBits,
                                     ((kTaken + 1) << InodeIds::kIndexBits) - 1));
  EXPECT_EQ(ids.Next(), (kFree << InodeIds::kIndexBits) | 1);  // not asked again within a block
  EXPECT_EQ(asked.size(), 2u);
}

// Every draw in use: after kMaxDraws the last drawn block is taken rather than looping forever.
TEST(InodeIdsTest, EveryBlockInUseEndsAfterMaxDraws) {
  int draws = 0;
  InodeIds ids([](std::uint64_t, std::uint64_t) { return true; },
               [&] { return std::uint64_t(++draws) << InodeIds::kIndexBits; });
  EXPECT_EQ(ids.Next(), std::uint64_t(InodeIds::kMaxDraws) << InodeIds::kIndexBits);
  EXPECT_EQ(draws, InodeIds::kMaxDraws);
}

TEST(InodeIdsTest, BlockZeroSkipsNoIdAndTheRoot) {
  InodeIds ids({}, Draws({0x7ffff}));  // only index bits: block 0
  EXPECT_EQ(ids.Next(), 2u);
  EXPECT_EQ(ids.Next(), 3u);
}

TEST(InodeIdsTest, ThreadsGetDistinctIds) {
  InodeIds ids;
  constexpr int kThreads = 4, kEach = 20000;
  std::vector<std::vector<std::uint64_t>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) got[t].push_back(ids.Next());
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::uint64_t> all;
  for (const auto& g : got) {
    EXPECT_TRUE(std::is_sorted(g.begin(), g.end()));  // one block: each thread's ids ascend
    all.insert(g.begin(), g.end());
  }
  EXPECT_EQ(all.size(), std::size_t{kThreads} * kEach);
  EXPECT_GT(*all.begin(), 1u);
  // Two stores (two nodes) draw different blocks.
  InodeIds other;
  EXPECT_FALSE(all.contains(other.Next()));
}

}  // namespace
}  // namespace foreverfs::server
