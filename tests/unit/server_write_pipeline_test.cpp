// WritePipeline alone, over a FileServer (its FileHost) on a fault-injecting store: chunks land
// in the order they were handed over, with the ids of their bytes (padded to their length, all
// zeros a hole); a store's refusal reaches the owner with the chunk's bytes, so nothing is lost;
// the buffer slots the host allows are bounded and given back.

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <vector>

#include "cas/chunk_store.h"
#include "cas/testing/faulty_store.h"
#include "cas/testing/memory_store.h"
#include "server/file_server.h"
#include "server/write_pipeline.h"
#include "unit/test_util.h"

namespace foreverfs::server {
namespace {

constexpr std::size_t kCS = cas::kChunkSize;

struct LandedChunk {
  std::uint64_t index;
  Result<cas::ChunkId> id;
  Bytes data;
};

class WritePipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = NamespaceDb::Open(dir_.path() / "ns.db");
    ASSERT_TRUE(db.ok()) << db.status().message();
    db_ = std::move(*db);
    auto faulty = std::make_unique<cas::FaultyChunkStore>(cas::MakeMemoryStore(), 7);
    faulty_ = faulty.get();
    store_ = std::move(faulty);
    std::filesystem::create_directories(dir_.path() / "staging");
    fs_ = std::make_unique<FileServer>(*db_, *store_, cas::ChunkHasher(test::FixedKey(0x33)),
                                       dir_.path() / "staging");
  }

  FileHost& host() { return *fs_; }
  cas::ChunkId IdOf(ByteSpan data) { return cas::ChunkHasher(test::FixedKey(0x33)).IdOf(data); }

  // Reaps down to `keep`, recording every chunk handed over; `result` is what the owner says.
  Status Reap(WritePipeline& p, std::size_t keep, Status result = Ok()) {
    return p.Reap(keep,
                  [&](std::uint64_t index, const Result<cas::ChunkId>& id, const Bytes& data) {
                    landed_.push_back({index, id, data});
                    return id.ok() ? Ok() : (result.ok() ? id.status() : result);
                  });
  }

  test::TempDir dir_;
  std::unique_ptr<NamespaceDb> db_;
  cas::FaultyChunkStore* faulty_ = nullptr;
  std::unique_ptr<cas::ChunkStore> store_;
  std::unique_ptr<FileServer> fs_;
  std::vector<LandedChunk> landed_;
};

TEST_F(WritePipelineTest, ChunksLandInOrderWithTheIdsOfTheirBytes) {
  WritePipeline p(host());
  constexpr std::uint64_t kChunks = 6;
  for (std::uint64_t i = 0; i < kChunks; ++i) {
    const Bytes data = test::Pattern(kCS, static_cast<std::uint32_t>(i + 1));
    // Gathered in two writes, as a writer of 512 KiB blocks would.
    ASSERT_TRUE(p.Start(i, ByteSpan(data).first(kCS / 2)));
    EXPECT_EQ(p.index(), i);
    EXPECT_FALSE(p.full());
    ASSERT_TRUE(p.Continues(i, kCS / 2));
    EXPECT_FALSE(p.Continues(i, kCS / 2 + 1));
    p.Append(ByteSpan(data).subspan(kCS / 2));
    ASSERT_TRUE(p.full());
    p.Submit(kCS);
    EXPECT_EQ(p.index(), WritePipeline::kNone);
    ASSERT_TRUE(Reap(p, WritePipeline::kMaxInFlight).ok());
    EXPECT_LE(p.in_flight(), WritePipeline::kMaxInFlight);
  }
  ASSERT_TRUE(Reap(p, 0).ok());
  EXPECT_EQ(p.in_flight(), 0u);
  ASSERT_EQ(landed_.size(), kChunks);
  for (std::uint64_t i = 0; i < kChunks; ++i) {
    const Bytes data = test::Pattern(kCS, static_cast<std::uint32_t>(i + 1));
    EXPECT_EQ(landed_[i].index, i);
    ASSERT_TRUE(landed_[i].id.ok()) << landed_[i].id.status().message();
    EXPECT_EQ(*landed_[i].id, IdOf(data));
    EXPECT_TRUE(store_->Has(*landed_[i].id));
    EXPECT_EQ(landed_[i].data, data);
  }
}

TEST_F(WritePipelineTest, AChunkIsPaddedToItsLengthAndZerosAreAHole) {
  WritePipeline p(host());
  const Bytes head = test::Pattern(100, 9);
  ASSERT_TRUE(p.Start(0, head));
  p.Submit(4096, /*background=*/false);
  ASSERT_TRUE(p.Start(1, Bytes(kCS, 0)));
  p.Submit(kCS);
  ASSERT_TRUE(Reap(p, 0).ok());
  ASSERT_EQ(landed_.size(), 2u);
  Bytes padded = head;
  padded.resize(4096, 0);
  EXPECT_EQ(landed_[0].data, padded);
  ASSERT_TRUE(landed_[0].id.ok());
  EXPECT_EQ(*landed_[0].id, IdOf(padded));
  ASSERT_TRUE(landed_[1].id.ok());
  EXPECT_EQ(*landed_[1].id, cas::kHoleId);
  std::size_t stored = 0;
  ASSERT_TRUE(store_->ForEach([&](const cas::ChunkId&) { ++stored; }).ok());
  EXPECT_EQ(stored, 1u);  // the hole stored nothing
}

TEST_F(WritePipelineTest, AStoreRefusalReachesTheOwnerWithTheBytes) {
  WritePipeline p(host());
  faulty_->Set({.full = true});
  for (std::uint64_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(p.Start(i, test::Pattern(kCS, static_cast<std::uint32_t>(i + 20))));
    p.Submit(kCS);
  }
  EXPECT_EQ(p.in_flight(), 3u);  // Submit never waits; the owner reaps
  Status s = Reap(p, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kNoSpace);
  // Every chunk was handed over despite the first error, in order, with its bytes.
  ASSERT_EQ(landed_.size(), 3u);
  for (std::uint64_t i = 0; i < 3; ++i) {
    EXPECT_EQ(landed_[i].index, i);
    ASSERT_FALSE(landed_[i].id.ok());
    EXPECT_EQ(landed_[i].id.status().code(), Code::kNoSpace);
    EXPECT_EQ(landed_[i].data, test::Pattern(kCS, static_cast<std::uint32_t>(i + 20)));
  }
  // The owner's own error (staging failed too, say) is what Reap reports.
  landed_.clear();
  ASSERT_TRUE(p.Start(3, test::Pattern(kCS, 30)));
  p.Submit(kCS);
  s = Reap(p, 0, Err(Code::kIOError, "staging failed"));
  EXPECT_EQ(s.code(), Code::kIOError);
  // Once the store takes chunks again, they land.
  faulty_->Set({});
  landed_.clear();
  ASSERT_TRUE(p.Start(4, test::Pattern(kCS, 31)));
  p.Submit(kCS);
  ASSERT_TRUE(Reap(p, 0).ok());
  ASSERT_EQ(landed_.size(), 1u);
  EXPECT_TRUE(landed_[0].id.ok());
}

TEST_F(WritePipelineTest, BufferedAndInFlightChunksAreVisibleUntilReaped) {
  WritePipeline p(host());
  const Bytes a = test::Pattern(kCS, 1), b = test::Pattern(1000, 2);
  ASSERT_TRUE(p.Start(2, a));
  p.Submit(kCS);
  ASSERT_TRUE(p.Start(5, b));
  ASSERT_NE(p.Gathered(2), nullptr);
  EXPECT_EQ(*p.Gathered(2), a);
  ASSERT_NE(p.Gathered(5), nullptr);
  EXPECT_EQ(*p.Gathered(5), b);
  EXPECT_EQ(p.Gathered(3), nullptr);
  EXPECT_TRUE(p.Holds(2));
  EXPECT_FALSE(p.Holds(4));
  EXPECT_TRUE(p.InFlightAt(2 * kCS + 10, 2 * kCS + 20));
  EXPECT_FALSE(p.InFlightAt(3 * kCS, 4 * kCS));  // the buffer is not in flight
  EXPECT_FALSE(p.InFlightAt(0, 2 * kCS));        // [0, 2 MiB) ends where chunk 2 starts
  EXPECT_EQ(p.NextAtOrAfter(0), 2u);
  EXPECT_EQ(p.NextAtOrAfter(3), 5u);
  EXPECT_EQ(p.NextAtOrAfter(6), WritePipeline::kNone);
  ASSERT_TRUE(Reap(p, 0).ok());
  EXPECT_FALSE(p.Holds(2));
  EXPECT_TRUE(p.Holds(5));
  p.Drop();
  EXPECT_FALSE(p.Holds(5));
  EXPECT_EQ(p.index(), WritePipeline::kNone);
}

TEST_F(WritePipelineTest, BufferSlotsAreBoundedAndGivenBack) {
  std::vector<std::unique_ptr<WritePipeline>> pipes;
  for (;;) {
    auto p = std::make_unique<WritePipeline>(host());
    if (!p->Start(0, test::Pattern(10, 1))) break;
    pipes.push_back(std::move(p));
    ASSERT_LT(pipes.size(), 1000u) << "no bound on sequential-write buffers";
  }
  const std::size_t bound = pipes.size();
  EXPECT_GT(bound, 0u);
  WritePipeline late(host());
  EXPECT_FALSE(late.Start(0, test::Pattern(10, 1)));
  // A pipeline keeps its slot from chunk to chunk, and Drop gives it back.
  pipes[0]->Submit(10);
  ASSERT_TRUE(Reap(*pipes[0], 0).ok());
  EXPECT_TRUE(pipes[0]->Start(1, test::Pattern(10, 2)));
  EXPECT_FALSE(late.Start(0, test::Pattern(10, 1)));
  pipes[0]->Drop();
  EXPECT_TRUE(late.Start(0, test::Pattern(10, 1)));
  late.Drop();
  // Destroying a pipeline gives its slot back too.
  pipes.clear();
  for (std::size_t i = 0; i < bound; ++i) {
    pipes.push_back(std::make_unique<WritePipeline>(host()));
    EXPECT_TRUE(pipes.back()->Start(0, test::Pattern(10, 1))) << i;
  }
}

}  // namespace
}  // namespace foreverfs::server
