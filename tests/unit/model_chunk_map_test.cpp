// ChunkMap at its edges: indices 0 and 2^64-1, empty ranges, holes never stored, and a record
// whose last chunk index a peer set to 2^64-1 refused by ValidateInode.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>

#include "model/chunk_map.h"
#include "model/records.h"

namespace foreverfs::model {
namespace {

using ::testing::HasSubstr;
constexpr std::uint64_t kLast = std::numeric_limits<std::uint64_t>::max();

crypto::Digest D(std::uint8_t v) {
  crypto::Digest d{};
  d[0] = v;
  return d;
}

TEST(ChunkMapTest, IndicesAtZeroAndAtTheLargestValue) {
  ChunkMap m;
  EXPECT_FALSE(m.LastIndex());
  EXPECT_FALSE(m.NextData(0));
  EXPECT_FALSE(m.NextData(kLast));
  m.Set(kLast, D(2));
  m.Set(0, D(1));
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(m.Get(0), D(1));
  EXPECT_EQ(m.Get(kLast), D(2));
  EXPECT_TRUE(m.IsHole(1));
  EXPECT_TRUE(m.IsHole(kLast - 1));
  EXPECT_EQ(*m.LastIndex(), kLast);
  EXPECT_EQ(*m.NextData(1), kLast);
  EXPECT_EQ(*m.NextData(kLast), kLast);
  // An empty punch and a cut at the largest index change nothing; a cut at 0 empties it.
  m.Punch(5, 5);
  m.Punch(kLast, kLast);
  m.KeepFirst(kLast);
  EXPECT_EQ(m.size(), 1u);  // chunk 2^64-1 is at or past the cut
  m.KeepFirst(0);
  EXPECT_TRUE(m.empty());
}

TEST(ChunkMapTest, HolesAreNeverStoredAndAppendKeepsOrder) {
  ChunkMap m;
  m.Set(3, ChunkMap::Hole());
  EXPECT_TRUE(m.empty());
  m.Set(3, D(1));
  m.Set(3, ChunkMap::Hole());  // writing zeros over a chunk makes it a hole again
  EXPECT_TRUE(m.empty());
  EXPECT_TRUE(m.Append(0, D(1)));
  EXPECT_FALSE(m.Append(0, D(2)));  // not after the last
  EXPECT_FALSE(m.Append(1, ChunkMap::Hole()));
  EXPECT_TRUE(m.Append(kLast, D(3)));
  EXPECT_FALSE(m.Append(kLast, D(4)));
  EXPECT_EQ(m.size(), 2u);
  m.Punch(0, kLast);
  EXPECT_EQ(m.size(), 1u);
  EXPECT_EQ(m.Get(kLast), D(3));
}

// A peer's record listing chunk 2^64-1 of a small file is refused, as any chunk past the end.
TEST(ChunkMapTest, ARecordWithTheLargestChunkIndexIsRefused) {
  InodeRecord r;
  r.id = 9;
  r.kind = InodeKind::kFile;
  r.size = 1;
  r.manifest.Set(kLast, D(1));
  EXPECT_THAT(ValidateInode(r).message(), HasSubstr("past the end"));
  r.size = kMaxFileSize;
  EXPECT_THAT(ValidateInode(r).message(), HasSubstr("past the end"));
  r.manifest.clear();
  r.manifest.Set(kMaxFileSize / kChunkSpan - 1, D(1));  // the last chunk a 16 TiB file has
  EXPECT_TRUE(ValidateInode(r).ok());
  r.manifest.Set(kMaxFileSize / kChunkSpan, D(1));  // one past it
  EXPECT_FALSE(ValidateInode(r).ok());
}

}  // namespace
}  // namespace foreverfs::model
