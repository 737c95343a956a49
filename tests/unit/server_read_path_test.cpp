// OpenFile::Read over a store that can hold reads back and records prefetch hints: a read of a
// committed chunk holds no lock of the file while the store works (a write, a read and a stat
// of the same file go on meanwhile), and a large read at a chunk's start (a sequential
// reader's read-ahead) asks the store for that chunk and the next, at the bounds of that rule.

#include <fcntl.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cas/chunk_store.h"
#include "cas/testing/memory_store.h"
#include "unit/file_server_fixture.h"
#include "unit/test_util.h"

namespace foreverfs::server {
namespace {

using namespace std::chrono_literals;
constexpr std::size_t kCS = cas::kChunkSize;

// Passes everything to a memory store; ReadAt and Get wait while the gate is closed; Prefetch
// only records its id.
class GatedStore final : public cas::ChunkStore {
 public:
  GatedStore() : inner_(cas::MakeMemoryStore()) {}

  Status Put(const cas::ChunkId& id, ByteSpan data) override { return inner_->Put(id, data); }
  Status Sync() override { return inner_->Sync(); }
  Result<Bytes> Get(const cas::ChunkId& id) override {
    Pass();
    return inner_->Get(id);
  }
  Result<cas::Extent> ReadAt(const cas::ChunkId& id, std::size_t offset,
                             MutableByteSpan out) override {
    Pass();
    return inner_->ReadAt(id, offset, out);
  }
  void Prefetch(const cas::ChunkId& id) override {
    std::lock_guard lock(mu_);
    prefetched_.push_back(id);
  }
  bool Has(const cas::ChunkId& id) override { return inner_->Has(id); }
  Status Remove(const cas::ChunkId& id) override { return inner_->Remove(id); }
  Status ForEach(const std::function<void(const cas::ChunkId&)>& fn) override {
    return inner_->ForEach(fn);
  }

  void Close() {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  void Open() {
    {
      std::lock_guard lock(mu_);
      closed_ = false;
    }
    cv_.notify_all();
  }
  // Waits until a read is held at the closed gate.
  bool WaitForWaiter() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return waiting_ > 0; });
  }
  std::vector<cas::ChunkId> TakePrefetched() {
    std::lock_guard lock(mu_);
    return std::exchange(prefetched_, {});
  }

 private:
  void Pass() {
    std::unique_lock lock(mu_);
    ++waiting_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !closed_; });
    --waiting_;
  }

  std::unique_ptr<cas::ChunkStore> inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false;
  int waiting_ = 0;
  std::vector<cas::ChunkId> prefetched_;
};

class ReadPathTest : public test::FileServerFixture {
 protected:
  void SetUp() override {
    auto gated = std::make_unique<GatedStore>();
    gated_ = gated.get();
    store_ = std::move(gated);
    Open();
  }

  // A committed file "name" with `chunks` (written at their chunk's offset, nullopt a hole)
  // and `size` bytes; returns a fresh handle open for reading and writing.
  std::uint64_t File(const std::string& name, const std::vector<std::optional<Bytes>>& chunks,
                     std::uint64_t size) {
    auto c = fs_->Create(kRootId, name, 0644, 0, 0, O_RDWR);
    EXPECT_TRUE(c.ok()) << c.status().message();
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      if (chunks[i]) {
        EXPECT_TRUE(fs_->Write(c->handle, i * kCS, *chunks[i]).ok());
      }
    }
    EXPECT_TRUE(fs_->SetAttr(c->attr.rec.id, {.size = size}).ok());
    EXPECT_TRUE(fs_->Flush(c->handle).ok());
    fs_->Release(c->handle);
    auto h = fs_->Open(c->attr.rec.id, O_RDWR);
    EXPECT_TRUE(h.ok()) << h.status().message();
    inode_ = c->attr.rec.id;
    return *h;
  }
  cas::ChunkId IdOf(const Bytes& b) { return cas::ChunkHasher(test::FixedChunkKey()).IdOf(b); }
  std::vector<cas::ChunkId> PrefetchedBy(std::uint64_t h, std::uint64_t offset, std::size_t n) {
    (void)gated_->TakePrefetched();
    Bytes buf(n);
    auto r = fs_->Read(h, offset, buf);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return gated_->TakePrefetched();
  }

  GatedStore* gated_ = nullptr;
  InodeId inode_ = 0;
};

TEST_F(ReadPathTest, AReadWaitingForTheStoreHoldsNoLockOfTheFile) {
  const Bytes a = test::Pattern(kCS, 1), b = test::Pattern(kCS, 2);
  const std::uint64_t h = File("f", {a, b}, 2 * kCS);
  gated_->Close();
  auto reader = std::async(std::launch::async, [&] {
    Bytes buf(4096);
    auto r = fs_->Read(h, 100, buf);
    return r.ok() ? buf : Bytes();
  });
  ASSERT_TRUE(gated_->WaitForWaiter());
  // Meanwhile, on the same file: a write, a read of what the write left, and a stat (none of
  // which needs the store: the write starts a new chunk, which stays in the write buffer).
  auto other = std::async(std::launch::async, [&] {
    const Bytes x(10, 'x');
    if (!fs_->Write(h, 2 * kCS, x).ok()) return false;
    Bytes back(10);
    auto r = fs_->Read(h, 2 * kCS, back);
    return r.ok() && back == x && fs_->GetAttr(inode_, h).ok();
  });
  const bool went_on = other.wait_for(10s) == std::future_status::ready;
  gated_->Open();
  ASSERT_TRUE(went_on) << "the write waited for the read's store call";
  EXPECT_TRUE(other.get());
  EXPECT_EQ(reader.get(), Bytes(a.begin() + 100, a.begin() + 100 + 4096));
}

TEST_F(ReadPathTest, ALargeReadAtAChunksStartPrefetchesItAndTheNext) {
  const Bytes c0 = test::Pattern(kCS, 3), c1 = test::Pattern(kCS, 4);
  const Bytes c2 = test::Pattern(kCS / 2, 5);
  const std::uint64_t h = File("f", {c0, c1, c2}, 2 * kCS + kCS / 2);
  using Ids = std::vector<cas::ChunkId>;
  constexpr std::size_t k64 = 64 * 1024;
  EXPECT_EQ(PrefetchedBy(h, 0, k64), (Ids{IdOf(c0), IdOf(c1)})) << "at the bound";
  EXPECT_EQ(PrefetchedBy(h, 0, k64 - 1), Ids{}) << "just under it";
  EXPECT_EQ(PrefetchedBy(h, 0, 128 * 1024), (Ids{IdOf(c0), IdOf(c1)}));
  EXPECT_EQ(PrefetchedBy(h, kCS, 128 * 1024), (Ids{IdOf(c1), IdOf(c2)}));
  EXPECT_EQ(PrefetchedBy(h, 2 * kCS, 128 * 1024), Ids{IdOf(c2)}) << "no chunk after the last";
  EXPECT_EQ(PrefetchedBy(h, 4096, 128 * 1024), Ids{}) << "not at a chunk's start";
  EXPECT_EQ(PrefetchedBy(h, kCS + 4096, 4096), Ids{}) << "a small read";
  EXPECT_EQ(PrefetchedBy(h, 3 * kCS, 128 * 1024), Ids{}) << "past the end";
  // A read of the whole file at once: every chunk, each once.
  EXPECT_EQ(PrefetchedBy(h, 0, 3 * kCS), (Ids{IdOf(c0), IdOf(c1), IdOf(c2)}));
}

TEST_F(ReadPathTest, HolesAndChunksBeingWrittenAreNotPrefetched) {
  const Bytes c0 = test::Pattern(kCS, 6), c2 = test::Pattern(kCS, 7);
  const std::uint64_t h = File("f", {c0, std::nullopt, c2}, 3 * kCS);
  using Ids = std::vector<cas::ChunkId>;
  EXPECT_EQ(PrefetchedBy(h, 0, 128 * 1024), Ids{IdOf(c0)}) << "chunk 1 is a hole";
  EXPECT_EQ(PrefetchedBy(h, kCS, 128 * 1024), Ids{}) << "reading the hole itself";
  // Chunk 2 rewritten here and not committed: it is read from staging, not the store.
  ASSERT_TRUE(fs_->Write(h, 2 * kCS + 5, Bytes(3, 'y')).ok());
  EXPECT_EQ(PrefetchedBy(h, kCS, 128 * 1024), Ids{});
  EXPECT_EQ(PrefetchedBy(h, 2 * kCS, 128 * 1024), Ids{});
  ASSERT_TRUE(fs_->Write(h, 0, Bytes(3, 'z')).ok());
  EXPECT_EQ(PrefetchedBy(h, 0, 128 * 1024), Ids{}) << "chunk 0 rewritten too";
}

}  // namespace
}  // namespace foreverfs::server
