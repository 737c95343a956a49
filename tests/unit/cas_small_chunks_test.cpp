// The small-chunk store's write-behind (cas/small_chunks.h): a Put is a record in a log and a
// blob in memory until the committer makes it a row. What a crash of the process must find
// (every Put that returned), what a torn log tail may lose (only the torn record and what
// follows it in that log), and that a removal is not undone by a replay.
#include <gtest/gtest.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>
#include <vector>

#include "cas/small_chunks.h"
#include "crypto/crypto.h"
#include "unit/test_util.h"

namespace foreverfs::cas {
namespace {

namespace fs = std::filesystem;
using test::Pattern;
using test::TempDir;

std::vector<fs::path> Logs(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().starts_with("small.db-log.")) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::unique_ptr<SmallChunks> OpenAt(const fs::path& dir) {
  auto s = SmallChunks::Open(dir / "small.db");
  EXPECT_TRUE(s.ok()) << s.status().message();
  return s.ok() ? std::move(*s) : nullptr;
}

// A store whose blobs all stay waiting (no committer), and whose end is as a kill -9: its
// destructor neither commits nor deletes the logs.
std::unique_ptr<SmallChunks> OpenWithoutCommitter(const fs::path& dir) {
  auto store = OpenAt(dir);
  if (store) store->AbandonForTest();
  return store;
}

struct Blob {
  ChunkId id;
  Bytes data;
};

Blob MakeBlob(std::size_t size, std::uint32_t seed) {
  Bytes data = Pattern(size, seed);
  ChunkId id = crypto::Sha256::Of(data);
  id[0] = static_cast<std::uint8_t>(seed);  // distinct ids for equal (empty) contents
  return {id, std::move(data)};
}

constexpr std::size_t kHeader = 44;  // the record's header (small_chunks.h)

// Puts that returned survive the process dying before any commit (the store abandoned, as by
// kill -9): they read back from memory before, and from the database after the replay at the
// next Open, which deletes the log. Sizes 0, 1, a page, and the largest small blob.
TEST(SmallChunkLogTest, PutsSurviveACrashBeforeTheirCommit) {
  TempDir dir;
  std::vector<Blob> blobs;
  for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{4096}, kMaxSmallBlob}) {
    blobs.push_back(MakeBlob(size, static_cast<std::uint32_t>(blobs.size() + 1)));
  }
  {
    auto store = OpenWithoutCommitter(dir.path());
    ASSERT_TRUE(store);
    for (const Blob& b : blobs) ASSERT_TRUE(store->Put(b.id, b.data).ok());
    EXPECT_EQ(store->WaitingForTest().first, blobs.size());
    for (const Blob& b : blobs) {
      EXPECT_TRUE(store->Has(b.id));
      auto got = store->Get(b.id);
      ASSERT_TRUE(got.ok()) << got.status().message();
      EXPECT_EQ(*got, b.data);
      // Parts of a waiting blob: at 0, inside, at its end, past it and at the largest offset.
      const std::size_t n = b.data.size();
      for (std::size_t offset : {std::size_t{0}, n / 2, n, n + 1, SIZE_MAX}) {
        Bytes out(100, 0xee);
        auto e = store->ReadAt(b.id, offset, out);
        ASSERT_TRUE(e.ok()) << e.status().message();
        EXPECT_EQ(e->total, n);
        const std::size_t want = offset >= n ? 0 : std::min<std::size_t>(100, n - offset);
        ASSERT_EQ(e->n, want) << offset;
        EXPECT_TRUE(std::equal(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(want),
                               b.data.begin() + static_cast<std::ptrdiff_t>(std::min(offset, n))));
      }
      auto size_only = store->ReadAt(b.id, 0, MutableByteSpan());
      ASSERT_TRUE(size_only.ok());
      EXPECT_EQ(size_only->total, n);
    }
  }
  ASSERT_EQ(Logs(dir.path()).size(), 1u);
  auto store = OpenAt(dir.path());
  ASSERT_TRUE(store);
  EXPECT_TRUE(Logs(dir.path()).empty()) << "the replayed log was deleted";
  EXPECT_EQ(store->WaitingForTest().first, 0u);
  for (const Blob& b : blobs) {
    auto got = store->Get(b.id);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_EQ(*got, b.data);
  }
  EXPECT_EQ(store->Usage().chunks, blobs.size());
}

// A log cut anywhere in its last record (a power failure before a Sync): the records before it
// are replayed, the torn one is dropped, and the store goes on (a Put after it survives the next
// crash too). Cuts at the record's first byte (nothing torn), second, last header byte, first
// blob byte and last byte; then a flipped byte in the middle record, which its CRC catches.
TEST(SmallChunkLogTest, ReplayStopsAtATornOrDamagedRecord) {
  const Blob a = MakeBlob(100, 1), b = MakeBlob(200, 2), c = MakeBlob(300, 3), d = MakeBlob(5, 4);
  const std::uint64_t ab = 2 * kHeader + 300;  // records a and b
  const std::uint64_t whole = ab + kHeader + 300;
  struct Case {
    std::uint64_t cut;    // the log's size after the damage
    std::ptrdiff_t flip;  // or a byte to flip (-1: none)
    std::size_t kept;     // blobs of a, b, c replayed
  };
  const Case cases[] = {{ab, -1, 2},
                        {ab + 1, -1, 2},
                        {ab + kHeader - 1, -1, 2},
                        {ab + kHeader, -1, 2},
                        {whole - 1, -1, 2},
                        {whole, -1, 3},
                        {whole, static_cast<std::ptrdiff_t>(kHeader + 100 + kHeader + 50), 1},
                        {whole, static_cast<std::ptrdiff_t>(kHeader + 100 + 6), 1},
                        {whole, static_cast<std::ptrdiff_t>(kHeader + 100 + 0), 1},    // magic
                        {whole, static_cast<std::ptrdiff_t>(kHeader + 100 + 41), 1},   // CRC
                        {whole, static_cast<std::ptrdiff_t>(kHeader + 100 + 10), 1}};  // id
  for (const Case& k : cases) {
    SCOPED_TRACE(testing::Message() << "cut " << k.cut << " flip " << k.flip);
    TempDir dir;
    {
      auto store = OpenWithoutCommitter(dir.path());
      ASSERT_TRUE(store);
      for (const Blob* x : {&a, &b, &c}) ASSERT_TRUE(store->Put(x->id, x->data).ok());
    }
    const auto logs = Logs(dir.path());
    ASSERT_EQ(logs.size(), 1u);
    ASSERT_EQ(fs::file_size(logs[0]), whole);
    Bytes bytes = test::ReadFileBytes(logs[0]);
    if (k.flip >= 0) bytes[static_cast<std::size_t>(k.flip)] ^= 0x10;
    bytes.resize(k.cut);
    test::WriteFileBytes(logs[0], bytes);
    {
      auto store = OpenAt(dir.path());
      ASSERT_TRUE(store);
      const Blob* all[] = {&a, &b, &c};
      for (std::size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(store->Has(all[i]->id), i < k.kept) << i;
        if (i < k.kept) {
          EXPECT_EQ(*store->Get(all[i]->id), all[i]->data);
        }
      }
      store->AbandonForTest();
      ASSERT_TRUE(store->Put(d.id, d.data).ok());
    }
    auto store = OpenAt(dir.path());
    ASSERT_TRUE(store);
    EXPECT_TRUE(store->Has(d.id)) << "a Put after the torn record was lost";
    EXPECT_EQ(store->Has(a.id), k.kept >= 1);
  }
}

// A blob removed while it still waits (its record in a log) stays removed after a crash: Remove
// commits first, and the commit deletes the log, so no replay brings it back. The other blob
// of that log stays.
TEST(SmallChunkLogTest, ARemovedBlobDoesNotComeBackAtTheNextReplay) {
  TempDir dir;
  const Blob x = MakeBlob(1000, 1), y = MakeBlob(2000, 2);
  {
    auto store = OpenWithoutCommitter(dir.path());
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->Put(x.id, x.data).ok());
    ASSERT_TRUE(store->Put(y.id, y.data).ok());
    ASSERT_EQ(store->WaitingForTest().first, 2u);
    auto removed = store->Remove(x.id);
    ASSERT_TRUE(removed.ok()) << removed.status().message();
    EXPECT_TRUE(*removed);
    EXPECT_FALSE(store->Has(x.id));
    EXPECT_TRUE(Logs(dir.path()).empty());
  }
  auto store = OpenAt(dir.path());
  ASSERT_TRUE(store);
  EXPECT_FALSE(store->Has(x.id)) << "the removed blob came back";
  EXPECT_TRUE(store->Has(y.id));
}

// A log that cannot be deleted after its blobs became rows (here a directory in its place)
// makes the commit fail, so a Remove removes nothing (the log would bring the blob back at the
// next Open); the next commit deletes it, and the Remove then goes through.
TEST(SmallChunkLogTest, ALogThatCannotBeDeletedFailsTheRemoveUntilItGoes) {
  TempDir dir;
  auto store = OpenWithoutCommitter(dir.path());
  ASSERT_TRUE(store);
  const Blob x = MakeBlob(1000, 1);
  ASSERT_TRUE(store->Put(x.id, x.data).ok());
  const fs::path log = dir.path() / "small.db-log.0";
  ASSERT_TRUE(fs::exists(log));
  fs::rename(log, dir.path() / "moved");
  fs::create_directory(log);
  test::WriteFileBytes(log / "in-the-way", Pattern(1, 1));
  auto removed = store->Remove(x.id);
  ASSERT_FALSE(removed.ok());
  EXPECT_NE(removed.status().message().find(log.string()), std::string::npos)
      << removed.status().message();
  EXPECT_TRUE(store->Has(x.id));
  fs::remove_all(log);
  removed = store->Remove(x.id);
  ASSERT_TRUE(removed.ok()) << removed.status().message();
  EXPECT_TRUE(*removed);
  EXPECT_FALSE(store->Has(x.id));
}

// Waits (up to 10 s) until nothing waits and no log is left.
bool AllCommitted(SmallChunks& store, const fs::path& dir) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  // What is left is at most the log made ahead for the next Put, empty.
  const auto only_the_next_log = [&] {
    const auto logs = Logs(dir);
    return logs.empty() || (logs.size() == 1 && fs::file_size(logs[0]) == 0);
  };
  while (store.WaitingForTest().first != 0 || !only_the_next_log()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// The committer makes waiting blobs rows by itself, within about kGroupAge, and deletes their
// log: the first group, and every later one (a group of one blob, far below kGroupChunks and
// kGroupBytes, once the committer has gone back to sleep), without any other call.
TEST(SmallChunkLogTest, TheCommitterMakesRowsOfEveryGroupAndDeletesTheLogs) {
  TempDir dir;
  auto store = OpenAt(dir.path());
  ASSERT_TRUE(store);
  for (std::uint32_t i = 1; i <= 3; ++i) {
    SCOPED_TRACE(i);
    const Blob x = MakeBlob(3000, i);
    ASSERT_TRUE(store->Put(x.id, x.data).ok());
    if (i > 1) {
      // The Put wrote to the log the committer made ahead, numbered after the last one.
      const auto logs = Logs(dir.path());
      ASSERT_EQ(logs.size(), 1u);
      EXPECT_EQ(logs[0].filename(), "small.db-log." + std::to_string(i - 1));
      EXPECT_EQ(fs::file_size(logs[0]), kHeader + 3000);
    }
    ASSERT_TRUE(AllCommitted(*store, dir.path()));
    ASSERT_EQ(Logs(dir.path()).size(), 1u) << "the next log, made ahead";
    EXPECT_EQ(Logs(dir.path())[0].filename(), "small.db-log." + std::to_string(i));
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // the committer sleeps again
    EXPECT_EQ(*store->Get(x.id), x.data);
  }
  EXPECT_EQ(store->Usage().chunks, 3u);
  store.reset();
  EXPECT_TRUE(Logs(dir.path()).empty()) << "closing deletes the empty log made ahead";
}

// A log made ahead and left by a crash is empty: the next Open deletes it, and Puts go on
// from there.
TEST(SmallChunkLogTest, AnEmptyLogMadeAheadIsDeletedByTheNextOpen) {
  TempDir dir;
  const Blob x = MakeBlob(3000, 1), y = MakeBlob(5, 2);
  {
    auto store = OpenAt(dir.path());
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->Put(x.id, x.data).ok());
    ASSERT_TRUE(AllCommitted(*store, dir.path()));
    ASSERT_EQ(Logs(dir.path()).size(), 1u);
    store->AbandonForTest();  // as kill -9: the empty log stays
  }
  ASSERT_EQ(Logs(dir.path()).size(), 1u);
  auto store = OpenWithoutCommitter(dir.path());
  ASSERT_TRUE(store);
  EXPECT_EQ(*store->Get(x.id), x.data);
  ASSERT_TRUE(store->Put(y.id, y.data).ok());
  const auto logs = Logs(dir.path());
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_EQ(fs::file_size(logs[0]), kHeader + 5) << "the old empty log is gone";
}

// Puts from several threads while the committer commits groups and makes the next log
// ahead, then a crash (nothing committed at the end): every acknowledged blob reads back
// before and after the replay, and what is left afterwards is one log at most, empty. Run
// under TSan in CI, which also sees the committer and the puts share the log state.
TEST(SmallChunkLogTest, PutsFromSeveralThreadsAcrossGroupsSurviveACrash) {
  TempDir dir;
  constexpr std::uint32_t kThreads = 4, kEach = 300;
  std::vector<Blob> blobs;
  for (std::uint32_t i = 0; i < kThreads * kEach; ++i) blobs.push_back(MakeBlob(1 + i % 700, i));
  for (auto& b : blobs) {  // ids distinct beyond the seed byte MakeBlob sets
    b.id[1] = static_cast<std::uint8_t>(&b - blobs.data());
    b.id[2] = static_cast<std::uint8_t>((&b - blobs.data()) >> 8);
  }
  {
    auto store = OpenAt(dir.path());
    ASSERT_TRUE(store);
    std::vector<std::thread> threads;
    std::atomic<int> failed{0};
    for (std::uint32_t t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (std::uint32_t i = 0; i < kEach; ++i) {
          const Blob& b = blobs[t * kEach + i];
          if (!store->Put(b.id, b.data).ok()) ++failed;
          // Now and then a pause past the group age, so that groups close between puts.
          if (i % 97 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(12));
        }
      });
    }
    for (auto& th : threads) th.join();
    ASSERT_EQ(failed.load(), 0);
    for (const auto& b : blobs) ASSERT_EQ(*store->Get(b.id), b.data);
    store->AbandonForTest();  // as kill -9: what waits stays in the logs only
  }
  auto store = OpenWithoutCommitter(dir.path());
  ASSERT_TRUE(store);
  for (const auto& b : blobs) ASSERT_EQ(*store->Get(b.id), b.data);
  EXPECT_EQ(store->Usage().chunks, blobs.size());
  EXPECT_TRUE(Logs(dir.path()).empty()) << "the replay deletes every log, the empty one too";
}

// A Put of a blob that waits with the same size writes no second record; one of another size
// (the same id: a blob cut short elsewhere) does, and replaces it.
TEST(SmallChunkLogTest, APutOfAWaitingBlobWritesNoSecondRecord) {
  TempDir dir;
  auto store = OpenWithoutCommitter(dir.path());
  ASSERT_TRUE(store);
  const Blob x = MakeBlob(3000, 1);
  ASSERT_TRUE(store->Put(x.id, x.data).ok());
  ASSERT_TRUE(store->Put(x.id, x.data).ok());
  ASSERT_EQ(Logs(dir.path()).size(), 1u);
  EXPECT_EQ(fs::file_size(Logs(dir.path())[0]), kHeader + 3000);
  const Bytes shorter(x.data.begin(), x.data.begin() + 100);
  ASSERT_TRUE(store->Put(x.id, shorter).ok());
  EXPECT_EQ(fs::file_size(Logs(dir.path())[0]), 2 * kHeader + 3000 + 100);
  EXPECT_EQ(*store->Get(x.id), shorter);
  EXPECT_EQ(store->WaitingForTest(), (std::pair<std::size_t, std::size_t>{1, 100}));
}

// Logs left by several runs replay in the order of their numbers (9 before 10, which a
// comparison of names would swap), so a later record of an id wins, as a later Put would.
TEST(SmallChunkLogTest, LogsReplayInTheOrderOfTheirNumbers) {
  TempDir dir;
  const Blob x = MakeBlob(3000, 1);
  const Bytes older(x.data.begin(), x.data.begin() + 10);
  // Each run leaves one log, numbered 0; renamed to 10 (the newer content) and 9 (the older).
  const auto run_leaving = [&](const Bytes& bytes, const fs::path& as) {
    auto store = OpenWithoutCommitter(dir.path());
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->Put(x.id, bytes).ok());
    store.reset();
    ASSERT_TRUE(fs::exists(dir.path() / "small.db-log.0"));
    fs::rename(dir.path() / "small.db-log.0", as);
  };
  run_leaving(x.data, dir.path() / "aside");
  run_leaving(older, dir.path() / "small.db-log.9");
  fs::rename(dir.path() / "aside", dir.path() / "small.db-log.10");
  auto store = OpenAt(dir.path());
  ASSERT_TRUE(store);
  EXPECT_EQ(*store->Get(x.id), x.data) << "log 9 replayed after log 10";
  EXPECT_TRUE(Logs(dir.path()).empty());
}

// Before a fork: what waits is committed and the committer ends; the next Put starts it again.
TEST(SmallChunkLogTest, BeforeForkCommitsAndTheNextPutStartsTheCommitter) {
  TempDir dir;
  auto store = OpenAt(dir.path());
  ASSERT_TRUE(store);
  const Blob x = MakeBlob(3000, 1), y = MakeBlob(4000, 2);
  ASSERT_TRUE(store->Put(x.id, x.data).ok());
  ASSERT_TRUE(store->BeforeFork().ok());
  EXPECT_EQ(store->WaitingForTest().first, 0u);
  for (const auto& log : Logs(dir.path())) EXPECT_EQ(fs::file_size(log), 0u) << log;
  ASSERT_TRUE(store->Put(y.id, y.data).ok());
  EXPECT_TRUE(AllCommitted(*store, dir.path())) << "no committer after BeforeFork";
  EXPECT_EQ(store->Usage().chunks, 2u);
}

// Memory stays bounded when nothing commits in the background: a Put that would leave more than
// kMaxWaitingBytes waiting commits first. Every blob reads back, before and after a reopen.
TEST(SmallChunkLogTest, WaitingBytesStayBounded) {
  TempDir dir;
  std::vector<Blob> blobs;
  const std::size_t count = SmallChunks::kMaxWaitingBytes / kMaxSmallBlob + 3;
  {
    auto store = OpenWithoutCommitter(dir.path());
    ASSERT_TRUE(store);
    std::size_t most = 0;
    for (std::size_t i = 0; i < count; ++i) {
      blobs.push_back(MakeBlob(kMaxSmallBlob, static_cast<std::uint32_t>(i)));
      ASSERT_TRUE(store->Put(blobs.back().id, blobs.back().data).ok()) << i;
      most = std::max(most, store->WaitingForTest().second);
    }
    EXPECT_LT(most, SmallChunks::kMaxWaitingBytes);
    for (const Blob& b : blobs) EXPECT_EQ(*store->Get(b.id), b.data);
  }
  auto store = OpenAt(dir.path());
  ASSERT_TRUE(store);
  EXPECT_EQ(store->Usage().chunks, count);
  for (const Blob& b : blobs) EXPECT_EQ(*store->Get(b.id), b.data);
}

// A full disk while a record is written (RLIMIT_FSIZE: a short write, then EFBIG): the Put
// fails naming the log, its partial record is taken back, and the next Put's record follows the
// earlier ones, so a crash then loses nothing that was acknowledged. The limit falls at the
// record's first byte, second, and last.
TEST(SmallChunkLogTest, AFullDiskFailsThePutNamingTheLogAndLosesNothingElse) {
  const Blob a = MakeBlob(500, 1), b = MakeBlob(600, 2), c = MakeBlob(700, 3);
  const std::uint64_t one = kHeader + 500;
  for (std::uint64_t limit : {one, one + 1, one + kHeader + 600 - 1}) {
    SCOPED_TRACE(limit);
    TempDir dir;
    {
      auto store = OpenWithoutCommitter(dir.path());
      ASSERT_TRUE(store);
      ASSERT_TRUE(store->Put(a.id, a.data).ok());
      const Status s = test::WithFileSizeLimit(limit, [&] { return store->Put(b.id, b.data); });
      EXPECT_FALSE(s.ok());
      EXPECT_NE(s.message().find("small.db-log."), std::string::npos) << s.message();
      EXPECT_FALSE(store->Has(b.id));
      ASSERT_TRUE(store->Put(c.id, c.data).ok());
    }
    auto store = OpenAt(dir.path());
    ASSERT_TRUE(store);
    EXPECT_TRUE(store->Has(a.id));
    EXPECT_FALSE(store->Has(b.id));
    EXPECT_TRUE(store->Has(c.id)) << "the Put after the failed one was lost";
  }
}

// The same on the log the committer made ahead (the first record written to it fails at its
// first, second or last byte): the failed Put names the log and is taken back, the Put after it
// writes to the same log, and a crash then loses nothing acknowledged.
TEST(SmallChunkLogTest, AFailedFirstWriteToTheLogMadeAheadLosesNothingElse) {
  const Blob a = MakeBlob(500, 1), b = MakeBlob(600, 2), c = MakeBlob(700, 3);
  for (std::uint64_t limit : {std::uint64_t{0}, std::uint64_t{1}, kHeader + 600 - 1}) {
    SCOPED_TRACE(limit);
    TempDir dir;
    {
      auto store = OpenAt(dir.path());
      ASSERT_TRUE(store);
      ASSERT_TRUE(store->Put(a.id, a.data).ok());
      ASSERT_TRUE(AllCommitted(*store, dir.path()));
      ASSERT_EQ(Logs(dir.path()).size(), 1u) << "the log made ahead";
      const fs::path ahead = Logs(dir.path())[0];
      const Status s = test::WithFileSizeLimit(limit, [&] { return store->Put(b.id, b.data); });
      EXPECT_FALSE(s.ok());
      EXPECT_NE(s.message().find(ahead.string()), std::string::npos) << s.message();
      EXPECT_FALSE(store->Has(b.id));
      ASSERT_TRUE(store->Put(c.id, c.data).ok());
      EXPECT_EQ(fs::file_size(ahead), kHeader + 700) << "c follows in the same log, b is gone";
      store->AbandonForTest();
    }
    auto store = OpenWithoutCommitter(dir.path());
    ASSERT_TRUE(store);
    EXPECT_EQ(*store->Get(a.id), a.data);
    EXPECT_FALSE(store->Has(b.id));
    EXPECT_EQ(*store->Get(c.id), c.data) << "the Put after the failed one was lost";
  }
}

// A record whose length is the largest blob's is replayed; one a byte longer (a whole record
// with a valid CRC, as damage or a hostile file could make) ends the log there. A Put of a blob
// a byte over the limit is refused and writes nothing.
TEST(SmallChunkLogTest, RecordLengthsAtTheLimitAndJustPastIt) {
  const auto record = [](const ChunkId& id, const Bytes& blob) {
    Bytes h(kHeader, 0);
    std::memcpy(h.data(), "FFS1", 4);
    const auto len = static_cast<std::uint32_t>(blob.size());
    for (int i = 0; i < 4; ++i) h[4 + i] = static_cast<std::uint8_t>(len >> (24 - 8 * i));
    std::memcpy(h.data() + 8, id.data(), id.size());
    uLong crc = crc32(0L, h.data() + 4, 36);
    if (!blob.empty()) crc = crc32(crc, blob.data(), static_cast<uInt>(blob.size()));
    for (int i = 0; i < 4; ++i) h[40 + i] = static_cast<std::uint8_t>(crc >> (24 - 8 * i));
    h.insert(h.end(), blob.begin(), blob.end());
    return h;
  };
  const Blob at = MakeBlob(kMaxSmallBlob, 1), past = MakeBlob(kMaxSmallBlob + 1, 2),
             after = MakeBlob(10, 3);
  TempDir dir;
  Bytes log = record(at.id, at.data);
  const Bytes second = record(past.id, past.data), third = record(after.id, after.data);
  log.insert(log.end(), second.begin(), second.end());
  log.insert(log.end(), third.begin(), third.end());
  test::WriteFileBytes(dir.path() / "small.db-log.0", log);
  auto store = OpenWithoutCommitter(dir.path());
  ASSERT_TRUE(store);
  EXPECT_EQ(*store->Get(at.id), at.data);
  EXPECT_FALSE(store->Has(past.id));
  EXPECT_FALSE(store->Has(after.id)) << "replay went on past a record over the limit";
  const Status s = store->Put(past.id, past.data);
  EXPECT_EQ(s.code(), Code::kInvalid) << s.message();
  EXPECT_TRUE(Logs(dir.path()).empty()) << "a refused Put wrote a record";
}

// Log numbers at the ends of their range (2^63-1, 2^64-1) are replayed and deleted, and the
// next log is written and replayed after them; a number past 2^64-1 is not a log of ours.
TEST(SmallChunkLogTest, LogNumbersAtTheEndsOfTheirRange) {
  for (const char* number : {"9223372036854775807", "18446744073709551615"}) {
    SCOPED_TRACE(number);
    TempDir dir;
    const Blob x = MakeBlob(10, 1), y = MakeBlob(20, 2);
    {
      auto store = OpenWithoutCommitter(dir.path());
      ASSERT_TRUE(store);
      ASSERT_TRUE(store->Put(x.id, x.data).ok());
    }
    fs::rename(dir.path() / "small.db-log.0", dir.path() / (std::string("small.db-log.") + number));
    test::WriteFileBytes(dir.path() / "small.db-log.18446744073709551616", Pattern(10, 1));
    {
      auto store = OpenWithoutCommitter(dir.path());
      ASSERT_TRUE(store);
      EXPECT_TRUE(store->Has(x.id));
      EXPECT_FALSE(fs::exists(dir.path() / (std::string("small.db-log.") + number)));
      ASSERT_TRUE(store->Put(y.id, y.data).ok());
    }
    auto store = OpenAt(dir.path());
    ASSERT_TRUE(store);
    EXPECT_TRUE(store->Has(x.id));
    EXPECT_TRUE(store->Has(y.id));
    EXPECT_TRUE(fs::exists(dir.path() / "small.db-log.18446744073709551616"));
  }
}

// Names beside the database that only look like logs are left alone, and a log's generation
// keeps counting after a replay (a new log never reuses the name of one being replayed).
TEST(SmallChunkLogTest, OnlyItsOwnLogsAreReplayed) {
  TempDir dir;
  const char* const not_logs[] = {"small.db-log.",  "small.db-log.x",  "small.db-log.1a",
                                  "other.db-log.3", "small.db-log.01", "small.db-log.-1",
                                  "small.db-log.+2"};
  for (const char* name : not_logs) test::WriteFileBytes(dir.path() / name, Pattern(10, 1));
  const Blob x = MakeBlob(10, 1);
  {
    auto store = OpenWithoutCommitter(dir.path());
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->Put(x.id, x.data).ok());
  }
  ASSERT_TRUE(fs::exists(dir.path() / "small.db-log.0"));
  fs::rename(dir.path() / "small.db-log.0", dir.path() / "small.db-log.41");
  {
    auto store = OpenAt(dir.path());
    ASSERT_TRUE(store);
    EXPECT_TRUE(store->Has(x.id));
    store->AbandonForTest();
    ASSERT_TRUE(store->Put(MakeBlob(10, 2).id, MakeBlob(10, 2).data).ok());
  }
  EXPECT_TRUE(fs::exists(dir.path() / "small.db-log.42"));
  for (const char* name : not_logs) EXPECT_TRUE(fs::exists(dir.path() / name)) << name;
}

}  // namespace
}  // namespace foreverfs::cas
