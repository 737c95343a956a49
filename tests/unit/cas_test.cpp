// The ChunkStore contract, run against every store and stack, plus the on-disk specifics.

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cas/chunk_store.h"
#include "cas/testing/faulty_store.h"
#include "cas/testing/memory_store.h"
#include "unit/test_util.h"

namespace foreverfs::cas {
namespace {

namespace fs = std::filesystem;

crypto::ClusterKey TestKey(std::uint8_t fill = 0x17) {
  crypto::ClusterKey key;
  key.secret.fill(fill);
  return key;
}

// A directory removed at the end of the test.
using test::TempDir;

using test::Pattern;
using test::ReadFileBytes;
using test::WriteFileBytes;

fs::path ChunkPath(const fs::path& root, const ChunkId& id) {
  const std::string hex = Hex(id);
  return root / hex.substr(0, 2) / hex;
}

// Where stores before the one-level layout kept a chunk.
fs::path TwoLevelPath(const fs::path& root, const ChunkId& id) {
  const std::string hex = Hex(id);
  return root / hex.substr(0, 2) / hex.substr(2, 2) / hex;
}

// The row of root/small.db holding `id` (a disk store keeps blobs of up to kMaxSmallBlob bytes
// there), read or replaced behind the store's back. The store must be closed: it holds the
// database exclusively.
std::optional<Bytes> ReadRow(const fs::path& root, const ChunkId& id) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open((root / "small.db").c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, "SELECT data FROM chunks WHERE id = ?", -1, &st, nullptr),
            SQLITE_OK);
  sqlite3_bind_blob(st, 1, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
  std::optional<Bytes> out;
  if (sqlite3_step(st) == SQLITE_ROW) {
    const auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(st, 0));
    out = Bytes(p, p + sqlite3_column_bytes(st, 0));
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

void WriteRow(const fs::path& root, const ChunkId& id, ByteSpan blob) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((root / "small.db").c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO chunks(id, data) VALUES(?, ?)", -1, &st,
                               nullptr),
            SQLITE_OK);
  static const std::uint8_t kNone = 0;
  sqlite3_bind_blob(st, 1, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
  sqlite3_bind_blob(st, 2, blob.empty() ? &kNone : blob.data(), static_cast<int>(blob.size()),
                    SQLITE_STATIC);
  EXPECT_EQ(sqlite3_step(st), SQLITE_DONE) << sqlite3_errmsg(db);
  sqlite3_finalize(st);
  sqlite3_close(db);
}

std::vector<fs::path> FilesUnder(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out.push_back(e.path());
  }
  return out;
}

// ---- Factories for the typed contract suite. Every store is named with the test key's ids so
// that the verifying stacks accept the same calls as the bare stores. A factory builds the
// store under test and says, as traits, where it legitimately differs from the others:
//   Name()    the test name suffix;
//   kOnDisk   its blobs are files under the root (damaged through the file system), otherwise
//             they are in its bottom store (damaged through that store);
//   kMaxPut   the largest Put it accepts: a chunk (kMaxChunkSize) for the stacks that see
//             plaintext, a blob (kMaxChunkSize + kMaxBlobOverhead) for the stores that hold what
//             the wrappers above them made;
//   kVerifies Get and ReadAt report damaged bytes as kCorruption; a store that does not verify
//             returns the bytes it holds, and the wrappers above it check them.

// What a factory built: the store under test, and the store at the bottom of its stack that
// holds the blobs (owned by `store`; null where only the files can be reached).
struct Built {
  std::unique_ptr<ChunkStore> store;
  ChunkStore* bottom = nullptr;
};

constexpr std::size_t kMaxBlob = kMaxChunkSize + kMaxBlobOverhead;

crypto::Key256 TestDataKey() { return crypto::DeriveKey(TestKey().secret, "test"); }

struct MemoryFactory {
  static std::string Name() { return "Memory"; }
  static constexpr bool kOnDisk = false;
  static constexpr std::size_t kMaxPut = kMaxBlob;
  static constexpr bool kVerifies = false;
  static Built Make(const fs::path&) {
    Built b{MakeMemoryStore()};
    b.bottom = b.store.get();
    return b;
  }
};

// Small blobs in the database, the others files (Disk, as the program has it), or every blob a
// file (DiskFiles, as older versions wrote them, and still read).
template <std::size_t kSmallBlobs>
struct DiskFactoryOf {
  static std::string Name() { return kSmallBlobs ? "Disk" : "DiskFiles"; }
  static constexpr bool kOnDisk = true;
  static constexpr std::size_t kMaxPut = kMaxBlob;
  static constexpr bool kVerifies = false;
  static Built Make(const fs::path& root) {
    auto store = MakeDiskStore(root, {}, kSmallBlobs);
    EXPECT_TRUE(store.ok()) << store.status().message();
    if (!store.ok()) return {};
    Built b{std::move(*store)};
    b.bottom = b.store.get();
    return b;
  }
};
using DiskFactory = DiskFactoryOf<kMaxSmallBlob>;
using DiskFilesFactory = DiskFactoryOf<0>;

// Builds Inner and puts `wrap` of it on top; the blobs stay in Inner's bottom store.
template <typename Inner, typename Wrap>
Built Over(const fs::path& root, Wrap wrap) {
  Built inner = Inner::Make(root);
  if (!inner.store) return {};
  return {wrap(std::move(inner.store)), inner.bottom};
}

template <typename Inner>
struct EncryptingFactory {
  static std::string Name() { return "Encrypting" + Inner::Name(); }
  static constexpr bool kOnDisk = Inner::kOnDisk;
  static constexpr std::size_t kMaxPut = kMaxChunkSize;
  static constexpr bool kVerifies = true;
  static Built Make(const fs::path& root) {
    return Over<Inner>(
        root, [](auto inner) { return MakeEncryptingStore(std::move(inner), TestDataKey()); });
  }
};

// The program's stack, Encrypting(Disk), as MakeLocalStore builds it.
struct LocalStoreFactory {
  static std::string Name() { return "LocalStore"; }
  static constexpr bool kOnDisk = true;
  static constexpr std::size_t kMaxPut = kMaxChunkSize;
  static constexpr bool kVerifies = true;
  static Built Make(const fs::path& root) {
    auto store = MakeLocalStore(root, TestKey());
    EXPECT_TRUE(store.ok()) << store.status().message();
    if (!store.ok()) return {};
    return {std::move(*store), nullptr};
  }
};

template <typename Inner>
struct VerifyingFactory {
  static std::string Name() { return "Verifying" + Inner::Name(); }
  static constexpr bool kOnDisk = Inner::kOnDisk;
  static constexpr std::size_t kMaxPut = kMaxChunkSize;
  static constexpr bool kVerifies = true;
  static Built Make(const fs::path& root) {
    return Over<Inner>(root, [](auto inner) {
      return MakeVerifyingStore(std::move(inner), MakeHasher(TestKey()));
    });
  }
};

// With no faults set, the fault-injecting wrapper is bound by the contract like any store.
template <typename Inner>
struct FaultyFactory {
  static std::string Name() { return "Faulty" + Inner::Name(); }
  static constexpr bool kOnDisk = Inner::kOnDisk;
  static constexpr std::size_t kMaxPut = Inner::kMaxPut;
  static constexpr bool kVerifies = Inner::kVerifies;
  static Built Make(const fs::path& root) {
    return Over<Inner>(root, [](std::unique_ptr<ChunkStore> inner) -> std::unique_ptr<ChunkStore> {
      return std::make_unique<FaultyChunkStore>(std::move(inner), 42);
    });
  }
};

template <typename Factory>
class ChunkStoreContractTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Built built = Factory::Make(root());
    store_ = std::move(built.store);
    bottom_ = built.bottom;
    ASSERT_NE(store_, nullptr);
    ASSERT_TRUE(Factory::kOnDisk || bottom_ != nullptr);
  }

  fs::path root() const { return dir_.path() / "store"; }

  ChunkId IdOf(ByteSpan data) const { return hasher_.IdOf(data); }

  ChunkId PutOk(ByteSpan data) {
    const ChunkId id = IdOf(data);
    Status s = store_->Put(id, data);
    EXPECT_TRUE(s.ok()) << s.message();
    return id;
  }

  std::set<ChunkId> Listed() {
    std::set<ChunkId> ids;
    std::size_t calls = 0;
    Status s = store_->ForEach([&](const ChunkId& id) {
      ids.insert(id);
      ++calls;
    });
    EXPECT_TRUE(s.ok()) << s.message();
    EXPECT_EQ(calls, ids.size()) << "ForEach reported an id twice";
    return ids;
  }

  // Closes the store, runs `fn`, and opens it again (a disk store holds its database
  // exclusively while open).
  void Reopen(const std::function<void()>& fn) {
    store_.reset();
    bottom_ = nullptr;
    fn();
    Built built = Factory::Make(root());
    store_ = std::move(built.store);
    bottom_ = built.bottom;
    ASSERT_NE(store_, nullptr);
  }

  // The blob held for `id` at the bottom of the stack: the file or the database's row, or the
  // bottom store's bytes.
  Bytes Blob(const ChunkId& id) {
    if (Factory::kOnDisk) {
      if (fs::exists(ChunkPath(root(), id))) return ReadFileBytes(ChunkPath(root(), id));
      std::optional<Bytes> row;
      Reopen([&] { row = ReadRow(root(), id); });
      EXPECT_TRUE(row.has_value()) << "chunk " << Hex(id) << " is neither a file nor a row";
      return row.value_or(Bytes{});
    }
    Result<Bytes> blob = bottom_->Get(id);
    EXPECT_TRUE(blob.ok()) << blob.status().message();
    return blob.ok() ? *blob : Bytes{};
  }

  // Replaces the blob held for `id`, behind the back of every layer above the bottom.
  void SetBlob(const ChunkId& id, ByteSpan blob) {
    if (Factory::kOnDisk) {
      if (fs::exists(ChunkPath(root(), id))) {
        WriteFileBytes(ChunkPath(root(), id), blob);
      } else {
        Reopen([&] { WriteRow(root(), id, blob); });
      }
      return;
    }
    ASSERT_TRUE(bottom_->Remove(id).ok());
    ASSERT_TRUE(bottom_->Put(id, blob).ok());
  }

  TempDir dir_;
  ChunkHasher hasher_ = MakeHasher(TestKey());
  std::unique_ptr<ChunkStore> store_;
  ChunkStore* bottom_ = nullptr;
};

using StoreTypes = ::testing::Types<
    MemoryFactory, DiskFactory, DiskFilesFactory, EncryptingFactory<MemoryFactory>,
    EncryptingFactory<DiskFactory>, EncryptingFactory<DiskFilesFactory>, LocalStoreFactory,
    VerifyingFactory<MemoryFactory>, VerifyingFactory<DiskFactory>,
    VerifyingFactory<EncryptingFactory<MemoryFactory>>, VerifyingFactory<LocalStoreFactory>,
    FaultyFactory<MemoryFactory>, FaultyFactory<DiskFactory>, FaultyFactory<LocalStoreFactory>,
    VerifyingFactory<FaultyFactory<MemoryFactory>>>;

class StoreNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    return T::Name();
  }
};

TYPED_TEST_SUITE(ChunkStoreContractTest, StoreTypes, StoreNames);

// ReadAt agrees with Get for every size around the segment boundaries and every kind of range:
// inside one segment, across several, past the end, and empty.
TYPED_TEST(ChunkStoreContractTest, ReadAtMatchesGet) {
  constexpr std::size_t kSeg = 16 * 1024;
  for (std::size_t size :
       {std::size_t{0}, std::size_t{1}, kSeg - 1, kSeg, kSeg + 1, 3 * kSeg + 7, kMaxChunkSize}) {
    const Bytes data = Pattern(size, static_cast<std::uint8_t>(size));
    const ChunkId id = this->PutOk(data);
    for (std::size_t off : {std::size_t{0}, std::size_t{1}, kSeg - 3, kSeg, size / 2,
                            size ? size - 1 : 0, size, size + 5}) {
      for (std::size_t len :
           {std::size_t{0}, std::size_t{1}, std::size_t{4096}, 2 * kSeg + 9, kMaxChunkSize}) {
        Bytes out(len, 0xee);
        auto got = this->store_->ReadAt(id, off, out);
        ASSERT_TRUE(got.ok()) << got.status().message() << " size " << size << " off " << off;
        const std::size_t want = off < size ? std::min(len, size - off) : 0;
        ASSERT_EQ(got->n, want) << "size " << size << " off " << off << " len " << len;
        if (len > 0) {
          EXPECT_EQ(got->total, size);
        }
        EXPECT_TRUE(std::equal(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(want),
                               data.begin() + static_cast<std::ptrdiff_t>(std::min(off, size))))
            << "size " << size << " off " << off << " len " << len;
      }
    }
  }
  Bytes out(10);
  EXPECT_EQ(this->store_->ReadAt(this->IdOf(AsBytes("absent")), 0, out).status().code(),
            Code::kNotFound);
}

TYPED_TEST(ChunkStoreContractTest, PutGetRoundTrip) {
  const Bytes data = Pattern(4096, 1);
  const ChunkId id = this->PutOk(data);
  Result<Bytes> got = this->store_->Get(id);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(*got, data);
}

TYPED_TEST(ChunkStoreContractTest, GetMissingIsNotFound) {
  const ChunkId id = this->IdOf(AsBytes("never stored"));
  Result<Bytes> got = this->store_->Get(id);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), Code::kNotFound);
  EXPECT_NE(got.status().message().find(Hex(id)), std::string::npos) << got.status().message();
}

TYPED_TEST(ChunkStoreContractTest, Has) {
  const Bytes data = Pattern(100, 2);
  const ChunkId id = this->IdOf(data);
  EXPECT_FALSE(this->store_->Has(id));
  this->PutOk(data);
  EXPECT_TRUE(this->store_->Has(id));
}

TYPED_TEST(ChunkStoreContractTest, Remove) {
  const Bytes a = Pattern(100, 3);
  const Bytes b = Pattern(100, 4);
  const ChunkId ida = this->PutOk(a);
  const ChunkId idb = this->PutOk(b);
  ASSERT_TRUE(this->store_->Remove(ida).ok());
  EXPECT_FALSE(this->store_->Has(ida));
  EXPECT_EQ(this->store_->Get(ida).status().code(), Code::kNotFound);
  EXPECT_TRUE(this->store_->Has(idb));
  // Removing an absent chunk is Ok.
  EXPECT_TRUE(this->store_->Remove(ida).ok());
  EXPECT_TRUE(this->store_->Remove(this->IdOf(AsBytes("never stored"))).ok());
  // A removed chunk can be stored again.
  this->PutOk(a);
  EXPECT_EQ(*this->store_->Get(ida), a);
}

TYPED_TEST(ChunkStoreContractTest, ForEachListsExactlyTheStoredIds) {
  EXPECT_TRUE(this->Listed().empty());
  std::set<ChunkId> expected;
  for (std::uint32_t i = 0; i < 40; ++i) expected.insert(this->PutOk(Pattern(10 + i, 100 + i)));
  EXPECT_EQ(this->Listed(), expected);
  const ChunkId gone = *expected.begin();
  ASSERT_TRUE(this->store_->Remove(gone).ok());
  expected.erase(gone);
  EXPECT_EQ(this->Listed(), expected);
}

TYPED_TEST(ChunkStoreContractTest, PutTwiceIsIdempotent) {
  const Bytes data = Pattern(5000, 5);
  const ChunkId id = this->PutOk(data);
  this->PutOk(data);
  EXPECT_EQ(*this->store_->Get(id), data);
  EXPECT_EQ(this->Listed(), std::set<ChunkId>{id});
}

TYPED_TEST(ChunkStoreContractTest, EmptyChunk) {
  const ChunkId id = this->PutOk({});
  EXPECT_TRUE(this->store_->Has(id));
  Result<Bytes> got = this->store_->Get(id);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_TRUE(got->empty());
}

TYPED_TEST(ChunkStoreContractTest, FullSizeChunk) {
  const Bytes data = Pattern(kMaxChunkSize, 6);
  const ChunkId id = this->PutOk(data);
  Result<Bytes> got = this->store_->Get(id);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(*got, data);
}

TYPED_TEST(ChunkStoreContractTest, ConcurrentPutsAndGets) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 25;
  // Every thread stores its own chunks plus a set shared by all threads, and reads both back.
  std::vector<Bytes> shared;
  for (int i = 0; i < 5; ++i) shared.push_back(Pattern(2000 + i, 900 + i));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const Bytes own = Pattern(1000 + i, static_cast<std::uint32_t>(t * 1000 + i));
        const Bytes& common = shared[static_cast<std::size_t>(i) % shared.size()];
        for (const Bytes* data : {&own, &common}) {
          const ChunkId id = this->hasher_.IdOf(*data);
          if (!this->store_->Put(id, *data).ok()) ++failures;
          Result<Bytes> got = this->store_->Get(id);
          if (!got.ok() || *got != *data) ++failures;
          if (!this->store_->Has(id)) ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(this->Listed().size(), static_cast<std::size_t>(kThreads * kPerThread) + shared.size());
}

// The largest Put the store promises to take is stored whole; one byte more is refused with
// kInvalid and leaves nothing behind.
TYPED_TEST(ChunkStoreContractTest, LargestPutIsStoredAndOneByteMoreRefused) {
  constexpr std::size_t kMax = TypeParam::kMaxPut;
  const Bytes largest = Pattern(kMax, 41);
  const ChunkId id = this->PutOk(largest);
  Result<Bytes> got = this->store_->Get(id);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(*got, largest);
  Bytes tail(100);
  auto e = this->store_->ReadAt(id, kMax - 10, tail);
  ASSERT_TRUE(e.ok()) << e.status().message();
  EXPECT_EQ(e->n, 10u);
  EXPECT_EQ(e->total, kMax);

  const Bytes over = Pattern(kMax + 1, 42);
  const ChunkId over_id = this->IdOf(over);
  EXPECT_EQ(this->store_->Put(over_id, over).code(), Code::kInvalid);
  EXPECT_FALSE(this->store_->Has(over_id));
  EXPECT_EQ(this->store_->Get(over_id).status().code(), Code::kNotFound);
  EXPECT_EQ(this->Listed(), std::set<ChunkId>{id});
}

TYPED_TEST(ChunkStoreContractTest, MissingIdIsNotFoundEverywhere) {
  const ChunkId id = this->IdOf(AsBytes("never stored"));
  EXPECT_FALSE(this->store_->Has(id));
  Bytes out(10);
  EXPECT_EQ(this->store_->ReadAt(id, 0, out).status().code(), Code::kNotFound);
  EXPECT_EQ(this->store_->ReadAt(id, 5000, out).status().code(), Code::kNotFound);
  EXPECT_TRUE(this->store_->Remove(id).ok());
  EXPECT_TRUE(this->Listed().empty());
  EXPECT_TRUE(this->store_->Sync().ok());
}

TYPED_TEST(ChunkStoreContractTest, ForEachIsEmptyOnceEverythingIsRemoved) {
  std::set<ChunkId> ids;
  for (std::uint32_t i = 0; i < 10; ++i) ids.insert(this->PutOk(Pattern(i * 7, 300 + i)));
  EXPECT_EQ(this->Listed(), ids);
  for (const ChunkId& id : ids) ASSERT_TRUE(this->store_->Remove(id).ok());
  EXPECT_TRUE(this->Listed().empty());
  for (const ChunkId& id : ids) EXPECT_FALSE(this->store_->Has(id));
}

// A blob of the wrong size (a power failure after the rename can leave a file empty or cut
// short) is replaced by the next Put of the same chunk; a whole one is left alone.
TYPED_TEST(ChunkStoreContractTest, PutRewritesABlobOfTheWrongSize) {
  const Bytes data = Pattern(40000, 51);
  const ChunkId id = this->PutOk(data);
  const Bytes blob = this->Blob(id);
  ASSERT_FALSE(blob.empty());
  for (std::size_t keep : {std::size_t{0}, std::size_t{1}, blob.size() / 2, blob.size() - 1}) {
    this->SetBlob(id, ByteSpan(blob).first(keep));
    Result<Bytes> damaged = this->store_->Get(id);
    EXPECT_TRUE(!damaged.ok() || *damaged != data) << "kept " << keep;
    ASSERT_TRUE(this->store_->Put(id, data).ok()) << "kept " << keep;
    Result<Bytes> got = this->store_->Get(id);
    ASSERT_TRUE(got.ok()) << "kept " << keep << ": " << got.status().message();
    EXPECT_EQ(*got, data) << "kept " << keep;
    if (TypeParam::kOnDisk && !fs::exists(ChunkPath(this->root(), id))) {  // a row: counted right
      EXPECT_EQ(this->store_->PackedUsage().chunks, 1u);
      EXPECT_EQ(this->store_->PackedUsage().bytes, blob.size()) << "kept " << keep;
    }
    EXPECT_EQ(this->Blob(id), blob) << "kept " << keep;
  }
  EXPECT_EQ(this->Listed(), std::set<ChunkId>{id});
}

// A blob damaged where it is kept: a store that verifies reports kCorruption naming the chunk,
// from Get and from a ReadAt of the whole chunk, and never hands back wrong bytes; one that
// does not verify hands back exactly what it holds, for the layer above to check.
TYPED_TEST(ChunkStoreContractTest, DamagedBlobIsCorruptionNeverWrongBytes) {
  const Bytes data = Pattern(40000, 61);
  const ChunkId id = this->PutOk(data);
  const Bytes blob = this->Blob(id);
  for (std::size_t pos : {std::size_t{0}, blob.size() / 2, blob.size() - 1}) {
    Bytes bad = blob;
    bad[pos] ^= 0x10;
    this->SetBlob(id, bad);
    Result<Bytes> got = this->store_->Get(id);
    Bytes whole(data.size());
    auto part = this->store_->ReadAt(id, 0, whole);
    if constexpr (TypeParam::kVerifies) {
      ASSERT_FALSE(got.ok()) << "flipped byte " << pos << " was not detected";
      EXPECT_EQ(got.status().code(), Code::kCorruption);
      EXPECT_NE(got.status().message().find(Hex(id)), std::string::npos) << got.status().message();
      EXPECT_EQ(part.status().code(), Code::kCorruption) << "flipped byte " << pos;
    } else {
      ASSERT_TRUE(got.ok()) << got.status().message();
      EXPECT_EQ(*got, bad);
      ASSERT_TRUE(part.ok()) << part.status().message();
      EXPECT_EQ(whole, bad);
    }
  }
  this->SetBlob(id, blob);
  EXPECT_EQ(*this->store_->Get(id), data);
}

// Readers racing writers of the same full-size chunks see either nothing or the whole chunk.
TYPED_TEST(ChunkStoreContractTest, ConcurrentReadersSeeNothingOrTheWholeChunk) {
  std::vector<Bytes> chunks;
  for (std::uint32_t i = 0; i < 3; ++i) chunks.push_back(Pattern(kMaxChunkSize - i, 700 + i));
  std::vector<ChunkId> ids;
  for (const Bytes& c : chunks) ids.push_back(this->IdOf(c));
  std::atomic<int> failures{0};
  std::atomic<bool> writers_done{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < 3; ++round) {
        for (std::size_t i = 0; i < chunks.size(); ++i) {
          if (!this->store_->Put(ids[i], chunks[i]).ok()) ++failures;
        }
      }
    });
  }
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      do {
        for (std::size_t i = 0; i < chunks.size(); ++i) {
          Result<Bytes> got = this->store_->Get(ids[i]);
          if (got.ok() ? *got != chunks[i] : got.status().code() != Code::kNotFound) ++failures;
        }
      } while (!writers_done.load());
    });
  }
  threads[0].join();
  threads[1].join();
  writers_done = true;
  for (std::size_t t = 2; t < threads.size(); ++t) threads[t].join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(this->Listed(), std::set<ChunkId>(ids.begin(), ids.end()));
}

// ---- Faults injected by the fault-injecting wrapper (with none set it passes the contract).

class FaultyStoreTest : public ::testing::Test {
 protected:
  FaultyStoreTest() {
    auto inner = MakeMemoryStore();
    inner_ = inner.get();
    faulty_ = std::make_unique<FaultyChunkStore>(std::move(inner), 7);
  }
  ChunkStore* inner_;
  std::unique_ptr<FaultyChunkStore> faulty_;
  ChunkHasher hasher_ = MakeHasher(TestKey());
};

TEST_F(FaultyStoreTest, FullRefusesEveryPutWithNoSpace) {
  faulty_->Set({.full = true});
  const Bytes data = Pattern(100, 1);
  const ChunkId id = hasher_.IdOf(data);
  EXPECT_EQ(faulty_->Put(id, data).code(), Code::kNoSpace);
  EXPECT_FALSE(faulty_->Has(id));
  faulty_->Set({});
  EXPECT_TRUE(faulty_->Put(id, data).ok());
  EXPECT_TRUE(inner_->Has(id));
}

TEST_F(FaultyStoreTest, IoErrorsOnPutAndGet) {
  const Bytes data = Pattern(100, 2);
  const ChunkId id = hasher_.IdOf(data);
  faulty_->Set({.put_io_error = 1});
  EXPECT_EQ(faulty_->Put(id, data).code(), Code::kIOError);
  EXPECT_FALSE(inner_->Has(id));
  faulty_->Set({.get_io_error = 1});
  ASSERT_TRUE(faulty_->Put(id, data).ok());
  EXPECT_EQ(faulty_->Get(id).status().code(), Code::kIOError);
  Bytes out(10);
  EXPECT_EQ(faulty_->ReadAt(id, 0, out).status().code(), Code::kIOError);
  faulty_->Set({});
  EXPECT_EQ(*faulty_->Get(id), data);
}

TEST_F(FaultyStoreTest, BitFlipChangesOneBitAndVerifyingCatchesIt) {
  const Bytes data = Pattern(1000, 3);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(faulty_->Put(id, data).ok());
  faulty_->Set({.get_bit_flip = 1});
  for (int i = 0; i < 20; ++i) {
    Result<Bytes> got = faulty_->Get(id);
    ASSERT_TRUE(got.ok());
    ASSERT_EQ(got->size(), data.size());
    int bits = 0;
    for (std::size_t j = 0; j < data.size(); ++j) {
      bits += std::popcount(static_cast<unsigned>((*got)[j] ^ data[j]));
    }
    EXPECT_EQ(bits, 1);
  }
  EXPECT_EQ(*inner_->Get(id), data) << "the stored bytes stay whole";
  // Verifying over the faulty store turns the flip into kCorruption.
  auto inner = MakeMemoryStore();
  ASSERT_TRUE(inner->Put(id, data).ok());
  auto faulty = std::make_unique<FaultyChunkStore>(std::move(inner), 8);
  faulty->Set({.get_bit_flip = 1});
  auto verifying = MakeVerifyingStore(std::move(faulty), hasher_);
  EXPECT_EQ(verifying->Get(id).status().code(), Code::kCorruption);
}

TEST_F(FaultyStoreTest, PowerLossDropsOnlyWhatWasNotSynced) {
  const Bytes a = Pattern(10, 4), b = Pattern(10, 5), c = Pattern(10, 6);
  const ChunkId ida = hasher_.IdOf(a), idb = hasher_.IdOf(b), idc = hasher_.IdOf(c);
  ASSERT_TRUE(faulty_->Put(ida, a).ok());
  ASSERT_TRUE(faulty_->Sync().ok());
  ASSERT_TRUE(faulty_->Put(idb, b).ok());
  ASSERT_TRUE(faulty_->Put(idc, c).ok());
  ASSERT_TRUE(faulty_->Put(ida, a).ok());  // already durable: not lost again
  EXPECT_EQ(faulty_->LoseUnsynced(), 2u);
  EXPECT_TRUE(faulty_->Has(ida));
  EXPECT_FALSE(faulty_->Has(idb));
  EXPECT_FALSE(faulty_->Has(idc));
  EXPECT_EQ(faulty_->LoseUnsynced(), 0u);
}

TEST_F(FaultyStoreTest, SameSeedSameFaults) {
  auto run = [&](std::uint64_t seed) {
    FaultyChunkStore store(MakeMemoryStore(), seed);
    store.Set({.put_io_error = 0.5});
    std::vector<bool> ok;
    for (std::uint32_t i = 0; i < 64; ++i) {
      const Bytes d = Pattern(8, i);
      ok.push_back(store.Put(hasher_.IdOf(d), d).ok());
    }
    return ok;
  };
  const std::vector<bool> first = run(99);
  EXPECT_EQ(run(99), first);
  EXPECT_NE(std::count(first.begin(), first.end(), true), 0);
  EXPECT_NE(std::count(first.begin(), first.end(), false), 0);
}

// ---- Disk store specifics.

TEST(DiskStoreTest, LayoutIsShardedByHex) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(store.ok()) << store.status().message();
  const Bytes data = Pattern(777, 7);
  const ChunkId id = MakeHasher(TestKey()).IdOf(data);
  ASSERT_TRUE((*store)->Put(id, data).ok());
  const fs::path path = ChunkPath(dir.path(), id);
  ASSERT_TRUE(fs::is_regular_file(path)) << path;
  EXPECT_EQ(ReadFileBytes(path), data);
}

TEST(DiskStoreTest, NoTempFilesLeft) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(store.ok());
  std::set<fs::path> expected;
  for (std::uint32_t i = 0; i < 20; ++i) {
    const Bytes data = Pattern(100 + i, i);
    ChunkId id = crypto::Sha256::Of(data);
    ASSERT_TRUE((*store)->Put(id, data).ok());
    ASSERT_TRUE((*store)->Put(id, data).ok());
    expected.insert(ChunkPath(dir.path(), id));
  }
  EXPECT_TRUE(fs::is_empty(dir.path() / "tmp"));
  expected.insert(dir.path() / "layout");
  for (const char* db : {"small.db", "small.db-wal"}) {  // the small-blob database, empty here
    if (fs::exists(dir.path() / db)) expected.insert(dir.path() / db);
  }
  const std::vector<fs::path> files = FilesUnder(dir.path());
  EXPECT_EQ(std::set<fs::path>(files.begin(), files.end()), expected);
}

// Directories are made when a put finds them missing: the first chunk of a shard, a shard
// removed since (an operator cleaning up, a test), and the tmp directory removed under a
// running store all still put, and a shard that cannot be made is an error naming it.
TEST(DiskStoreTest, MissingDirectoriesAreMadeOnPut) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(store.ok()) << store.status().message();
  const Bytes a = Pattern(300, 31), b = Pattern(301, 32), c = Pattern(302, 33);
  const ChunkId ida = crypto::Sha256::Of(a), idb = crypto::Sha256::Of(b),
                idc = crypto::Sha256::Of(c);
  ASSERT_TRUE((*store)->Put(ida, a).ok());
  fs::remove_all(ChunkPath(dir.path(), ida).parent_path());
  fs::remove_all(dir.path() / "tmp");
  ASSERT_TRUE((*store)->Put(ida, a).ok());
  ASSERT_TRUE((*store)->Put(idb, b).ok());
  EXPECT_EQ(ReadFileBytes(ChunkPath(dir.path(), ida)), a);
  EXPECT_EQ(ReadFileBytes(ChunkPath(dir.path(), idb)), b);
  EXPECT_TRUE(fs::is_empty(dir.path() / "tmp"));
  // A file where the shard should be: the put fails, names it, leaves no temp.
  const fs::path top = ChunkPath(dir.path(), idc).parent_path();
  fs::remove_all(top);
  WriteFileBytes(top, Pattern(1, 1));
  const Status s = (*store)->Put(idc, c);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(top.filename().string()), std::string::npos) << s.message();
  EXPECT_TRUE(fs::is_empty(dir.path() / "tmp"));
}

std::size_t OpenDescriptors() {
  return static_cast<std::size_t>(
      std::distance(fs::directory_iterator("/proc/self/fd"), fs::directory_iterator()));
}

Bytes ReadChunk(ChunkStore& store, const ChunkId& id, std::size_t offset, std::size_t n,
                Code* code = nullptr) {
  Bytes out(n);
  auto e = store.ReadAt(id, offset, out);
  if (code) *code = e.ok() ? Code::kOk : e.status().code();
  if (!e.ok()) return {};
  out.resize(e->n);
  return out;
}

// Reads keep chunk files open (bounded), but never serve a file the store no longer names:
// removed behind the store's back, replaced by a rename (a Put healing a short file does
// that), removed through the store, or rewritten in place (what a disk fault looks like).
TEST(DiskStoreTest, OpenFilesKeptForReadsFollowTheFilesOnDisk) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path(), 4, 0);
  ASSERT_TRUE(store.ok()) << store.status().message();
  ChunkStore& st = **store;
  const Bytes a = Pattern(5000, 41), b = Pattern(5000, 42);
  const ChunkId id = crypto::Sha256::Of(a);
  ASSERT_TRUE(st.Put(id, a).ok());
  const fs::path path = ChunkPath(dir.path(), id);
  EXPECT_EQ(ReadChunk(st, id, 100, 50), Bytes(a.begin() + 100, a.begin() + 150));

  fs::remove(path);  // behind the store's back
  Code code{};
  EXPECT_TRUE(ReadChunk(st, id, 0, 10, &code).empty());
  EXPECT_EQ(code, Code::kNotFound);

  ASSERT_TRUE(st.Put(id, a).ok());
  EXPECT_EQ(ReadChunk(st, id, 0, 10), Bytes(a.begin(), a.begin() + 10));
  WriteFileBytes(dir.path() / "other", b);  // replaced by a rename: a new file under the name
  fs::rename(dir.path() / "other", path);
  EXPECT_EQ(ReadChunk(st, id, 0, 5000), b);

  WriteFileBytes(path, a);  // rewritten in place (same file): the new bytes are read
  EXPECT_EQ(ReadChunk(st, id, 4990, 100), Bytes(a.begin() + 4990, a.end()));
  ::truncate(path.c_str(), 100);  // cut short in place: the size read is the new one
  EXPECT_EQ(ReadChunk(st, id, 0, 5000), Bytes(a.begin(), a.begin() + 100));

  ASSERT_TRUE(st.Remove(id).ok());
  EXPECT_TRUE(ReadChunk(st, id, 0, 10, &code).empty());
  EXPECT_EQ(code, Code::kNotFound);
  // A file grown past the limit behind an open descriptor is refused as before.
  ASSERT_TRUE(st.Put(id, a).ok());
  EXPECT_EQ(ReadChunk(st, id, 0, 1).size(), 1u);
  ::truncate(path.c_str(), static_cast<off_t>(kMaxChunkSize + kMaxBlobOverhead + 1));
  EXPECT_TRUE(ReadChunk(st, id, 0, 1, &code).empty());
  EXPECT_EQ(code, Code::kCorruption);
}

TEST(DiskStoreTest, OpenFilesKeptForReadsAreBounded) {
  for (std::size_t bound : {std::size_t{0}, std::size_t{1}, std::size_t{4}}) {
    SCOPED_TRACE(bound);
    TempDir dir;
    const std::size_t before = OpenDescriptors();
    {
      auto store = MakeDiskStore(dir.path(), bound, 0);
      ASSERT_TRUE(store.ok());
      const std::size_t with_store = OpenDescriptors();
      std::vector<std::pair<ChunkId, Bytes>> chunks;
      for (std::uint32_t i = 0; i < 10; ++i) {
        Bytes data = Pattern(1000 + i, 50 + i);
        const ChunkId id = crypto::Sha256::Of(data);
        ASSERT_TRUE((*store)->Put(id, data).ok());
        chunks.emplace_back(id, std::move(data));
      }
      for (int round = 0; round < 2; ++round) {
        for (const auto& [id, data] : chunks) {
          EXPECT_EQ(ReadChunk(**store, id, 1, 3), Bytes(data.begin() + 1, data.begin() + 4));
          EXPECT_LE(OpenDescriptors(), with_store + bound);
        }
      }
      EXPECT_EQ(OpenDescriptors(), with_store + bound);
    }
    EXPECT_EQ(OpenDescriptors(), before) << "the store's descriptors close with it";
  }
  EXPECT_LE(DefaultOpenChunkFiles(), 1024u);  // (0 under a limit below 16 descriptors)
}

// Prefetch is a hint: an absent chunk, a removed one or a store that keeps no descriptors
// change nothing; a present chunk is then read as it is, through the descriptor Prefetch kept
// (within the bound); the encrypting store passes it on.
TEST(DiskStoreTest, PrefetchIsAHintThatKeepsTheFileOpenForTheRead) {
  for (std::size_t bound : {std::size_t{0}, std::size_t{1}, std::size_t{4}}) {
    SCOPED_TRACE(bound);
    TempDir dir;
    auto store = MakeDiskStore(dir.path(), bound, 0);
    ASSERT_TRUE(store.ok());
    ChunkStore& st = **store;
    const std::size_t with_store = OpenDescriptors();
    const Bytes data = Pattern(100000, 70);
    const ChunkId id = crypto::Sha256::Of(data);
    const ChunkId absent = crypto::Sha256::Of(Pattern(10, 71));
    st.Prefetch(absent);
    EXPECT_EQ(OpenDescriptors(), with_store) << "nothing kept for a chunk that is not there";
    ASSERT_TRUE(st.Put(id, data).ok());
    st.Prefetch(id);
    EXPECT_EQ(OpenDescriptors(), with_store + std::min<std::size_t>(bound, 1));
    st.Prefetch(id);  // again: the same descriptor
    EXPECT_EQ(OpenDescriptors(), with_store + std::min<std::size_t>(bound, 1));
    EXPECT_EQ(ReadChunk(st, id, 5, 10), Bytes(data.begin() + 5, data.begin() + 15));
    ASSERT_TRUE(st.Remove(id).ok());
    st.Prefetch(id);
    Code code{};
    EXPECT_TRUE(ReadChunk(st, id, 0, 10, &code).empty());
    EXPECT_EQ(code, Code::kNotFound) << "a prefetch does not bring a removed chunk back";
    EXPECT_LE(OpenDescriptors(), with_store + bound);
  }
  // Through the encryption: the hint reaches the disk store under it.
  TempDir dir;
  auto disk = MakeDiskStore(dir.path(), 4, 0);
  ASSERT_TRUE(disk.ok());
  auto sealed = MakeEncryptingStore(std::move(*disk), TestDataKey());
  const Bytes data = Pattern(50000, 72);
  const ChunkId id = crypto::Sha256::Of(data);
  ASSERT_TRUE(sealed->Put(id, data).ok());
  const std::size_t before = OpenDescriptors();
  sealed->Prefetch(id);
  EXPECT_EQ(OpenDescriptors(), before + 1);
  EXPECT_EQ(ReadChunk(*sealed, id, 16380, 10), Bytes(data.begin() + 16380, data.begin() + 16390));
}

// Readers on several threads while chunks are removed and put again: each read is the
// chunk's bytes or "not found", never anything else (TSan checks the cache's locking).
TEST(DiskStoreTest, ReadsRacingRemovesAndPutsSeeWholeChunksOrNone) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path(), 3, 0);
  ASSERT_TRUE(store.ok());
  ChunkStore& st = **store;
  std::vector<std::pair<ChunkId, Bytes>> chunks;
  for (std::uint32_t i = 0; i < 6; ++i) {
    Bytes data = Pattern(2000, 60 + i);
    const ChunkId id = crypto::Sha256::Of(data);
    ASSERT_TRUE(st.Put(id, data).ok());
    chunks.emplace_back(id, std::move(data));
  }
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      for (std::size_t n = static_cast<std::size_t>(t); !stop.load(); ++n) {
        const auto& [id, data] = chunks[n % chunks.size()];
        Code code{};
        const Bytes got = ReadChunk(st, id, 0, data.size(), &code);
        if (!(code == Code::kNotFound || (code == Code::kOk && got == data))) ++bad;
      }
    });
  }
  for (int i = 0; i < 300; ++i) {
    const auto& [id, data] = chunks[static_cast<std::size_t>(i) % chunks.size()];
    ASSERT_TRUE(st.Remove(id).ok());
    ASSERT_TRUE(st.Put(id, data).ok());
  }
  stop = true;
  for (auto& r : readers) r.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(DiskStoreTest, StaleTempFilesAreCleanedOnOpen) {
  TempDir dir;
  fs::create_directories(dir.path() / "tmp");
  WriteFileBytes(dir.path() / "tmp" / "half-written.1234", Pattern(10, 1));
  WriteFileBytes(dir.path() / "tmp" / "another", Pattern(10, 2));
  auto store = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(store.ok()) << store.status().message();
  EXPECT_TRUE(fs::is_directory(dir.path() / "tmp"));
  EXPECT_TRUE(fs::is_empty(dir.path() / "tmp"));
}

TEST(DiskStoreTest, ForEachIgnoresForeignFiles) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(store.ok());
  const Bytes data = Pattern(50, 8);
  const ChunkId id = crypto::Sha256::Of(data);
  ASSERT_TRUE((*store)->Put(id, data).ok());
  const std::string hex = Hex(id);
  const fs::path shard = ChunkPath(dir.path(), id).parent_path();
  // A valid-looking name in the wrong shard, a non-hex name, an uppercase name, a stray file in
  // tmp/ and directories that are not shards.
  std::string misplaced = hex;
  misplaced[0] = misplaced[0] == '0' ? '1' : '0';
  WriteFileBytes(shard / misplaced, data);
  WriteFileBytes(shard / (hex + ".tmp"), data);
  std::string upper = hex;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  if (upper != hex) WriteFileBytes(shard / upper, data);
  WriteFileBytes(dir.path() / "tmp" / hex, data);
  fs::create_directories(dir.path() / "zz" / "zz");
  WriteFileBytes(dir.path() / "zz" / "zz" / hex, data);
  WriteFileBytes(dir.path() / "README", data);
  // And a chunk left in a two-level directory: not the store's (Open moves them all).
  fs::create_directories(TwoLevelPath(dir.path(), id).parent_path());
  WriteFileBytes(TwoLevelPath(dir.path(), id), data);
  std::vector<ChunkId> listed;
  ASSERT_TRUE((*store)->ForEach([&](const ChunkId& c) { listed.push_back(c); }).ok());
  EXPECT_EQ(listed, std::vector<ChunkId>{id});
}

// A store written with the two-level layout (root/ab/cd/<hex>) is moved to one level when it is
// opened: every chunk reads back, lists and is removable; the emptied directories are gone; a
// directory holding a foreign name keeps it; the layout file says it is done.
TEST(DiskStoreTest, OpenMovesATwoLevelStoreToOneLevel) {
  TempDir dir;
  std::vector<std::pair<ChunkId, Bytes>> chunks;
  for (std::uint32_t i = 0; i < 40; ++i) {
    Bytes data = Pattern(1 + i * 97, static_cast<std::uint8_t>(i));
    const ChunkId id = crypto::Sha256::Of(data);
    fs::create_directories(TwoLevelPath(dir.path(), id).parent_path());
    WriteFileBytes(TwoLevelPath(dir.path(), id), data);
    chunks.emplace_back(id, std::move(data));
  }
  // A stray name beside the first chunk, and an empty two-level directory.
  const fs::path stray_dir = TwoLevelPath(dir.path(), chunks[0].first).parent_path();
  WriteFileBytes(stray_dir / "notes.txt", Pattern(3, 1));
  fs::create_directories(dir.path() / "ff" / "00");
  auto store = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(store.ok()) << store.status().message();
  std::set<ChunkId> listed;
  ASSERT_TRUE((*store)->ForEach([&](const ChunkId& c) { listed.insert(c); }).ok());
  EXPECT_EQ(listed.size(), chunks.size());
  for (const auto& [id, data] : chunks) {
    EXPECT_TRUE(listed.count(id));
    EXPECT_FALSE(fs::exists(TwoLevelPath(dir.path(), id))) << Hex(id);
    auto got = (*store)->Get(id);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_EQ(*got, data);
  }
  EXPECT_TRUE(fs::exists(stray_dir / "notes.txt"));
  EXPECT_FALSE(fs::exists(dir.path() / "ff" / "00"));
  EXPECT_TRUE(fs::is_regular_file(dir.path() / "layout"));
  ASSERT_TRUE((*store)->Remove(chunks[1].first).ok());
  EXPECT_FALSE((*store)->Has(chunks[1].first));
}

// A move cut short (a crash after some renames): the next Open finds no layout file and
// finishes; once the file is there, a two-level directory made later is not looked at again.
TEST(DiskStoreTest, AnInterruptedMoveFinishesAtTheNextOpen) {
  TempDir dir;
  const Bytes a = Pattern(500, 1), b = Pattern(501, 2), c = Pattern(502, 3);
  const ChunkId ida = crypto::Sha256::Of(a), idb = crypto::Sha256::Of(b),
                idc = crypto::Sha256::Of(c);
  // a already moved, b not yet.
  fs::create_directories(ChunkPath(dir.path(), ida).parent_path());
  WriteFileBytes(ChunkPath(dir.path(), ida), a);
  fs::create_directories(TwoLevelPath(dir.path(), idb).parent_path());
  WriteFileBytes(TwoLevelPath(dir.path(), idb), b);
  {
    auto store = MakeDiskStore(dir.path(), {}, 0);
    ASSERT_TRUE(store.ok()) << store.status().message();
    EXPECT_EQ(*(*store)->Get(ida), a);
    EXPECT_EQ(*(*store)->Get(idb), b);
  }
  fs::create_directories(TwoLevelPath(dir.path(), idc).parent_path());
  WriteFileBytes(TwoLevelPath(dir.path(), idc), c);
  auto store = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(store.ok()) << store.status().message();
  EXPECT_TRUE(fs::exists(TwoLevelPath(dir.path(), idc)));
  EXPECT_FALSE((*store)->Has(idc));
  EXPECT_EQ(*(*store)->Get(idb), b);
}

// A chunk that cannot be moved (its destination is a directory) fails the open and names it;
// nothing is lost and no layout file is written, so the next open tries again.
TEST(DiskStoreTest, AMoveThatFailsNamesTheChunk) {
  TempDir dir;
  const Bytes a = Pattern(600, 4);
  const ChunkId id = crypto::Sha256::Of(a);
  fs::create_directories(TwoLevelPath(dir.path(), id).parent_path());
  WriteFileBytes(TwoLevelPath(dir.path(), id), a);
  fs::create_directories(ChunkPath(dir.path(), id) / "x");
  auto store = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find(Hex(id)), std::string::npos) << store.status().message();
  EXPECT_EQ(ReadFileBytes(TwoLevelPath(dir.path(), id)), a);
  EXPECT_FALSE(fs::exists(dir.path() / "layout"));
  fs::remove_all(ChunkPath(dir.path(), id));
  auto again = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ(*(*again)->Get(id), a);
}

TEST(DiskStoreTest, OversizedFileIsCorruption) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(store.ok());
  const Bytes small = Pattern(10, 9);
  const ChunkId id = crypto::Sha256::Of(small);
  ASSERT_TRUE((*store)->Put(id, small).ok());
  constexpr std::size_t kLimit = kMaxChunkSize + kMaxBlobOverhead;
  WriteFileBytes(ChunkPath(dir.path(), id), Bytes(kLimit + 1, 0));
  EXPECT_EQ((*store)->Get(id).status().code(), Code::kCorruption);
  Bytes part(10);
  EXPECT_EQ((*store)->ReadAt(id, 0, part).status().code(), Code::kCorruption);
  // A size query (an empty read, one stat) checks the same.
  EXPECT_EQ((*store)->ReadAt(id, 0, MutableByteSpan()).status().code(), Code::kCorruption);
  // The largest blob the wrappers can produce is accepted.
  WriteFileBytes(ChunkPath(dir.path(), id), Bytes(kLimit, 0));
  EXPECT_TRUE((*store)->Get(id).ok());
  EXPECT_TRUE((*store)->ReadAt(id, 0, part).ok());
  auto size = (*store)->ReadAt(id, 0, MutableByteSpan());
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(size->n, 0u);
  EXPECT_EQ(size->total, kLimit);
  // Not there, or a directory in its place.
  EXPECT_EQ(
      (*store)->ReadAt(crypto::Sha256::Of(AsBytes("absent")), 0, MutableByteSpan()).status().code(),
      Code::kNotFound);
  fs::remove(ChunkPath(dir.path(), id));
  fs::create_directory(ChunkPath(dir.path(), id));
  EXPECT_EQ((*store)->ReadAt(id, 0, MutableByteSpan()).status().code(), Code::kCorruption);
  EXPECT_EQ((*store)->ReadAt(id, 0, part).status().code(), Code::kCorruption);
  // And Put refuses what Get would refuse.
  EXPECT_EQ((*store)->Put(crypto::Sha256::Of(AsBytes("x")), Bytes(kLimit + 1, 0)).code(),
            Code::kInvalid);
}

TEST(DiskStoreTest, PutOfExistingIdDoesNotRewrite) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(store.ok());
  const Bytes data = Pattern(10, 10);
  const ChunkId id = crypto::Sha256::Of(data);
  ASSERT_TRUE((*store)->Put(id, data).ok());
  struct stat before {};
  ASSERT_EQ(::stat(ChunkPath(dir.path(), id).c_str(), &before), 0);
  ASSERT_TRUE((*store)->Put(id, data).ok());
  struct stat after {};
  ASSERT_EQ(::stat(ChunkPath(dir.path(), id).c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);
}

TEST(DiskStoreTest, ReopenSeesChunks) {
  TempDir dir;
  const Bytes data = Pattern(300, 11);
  const ChunkId id = crypto::Sha256::Of(data);
  {
    auto store = MakeDiskStore(dir.path(), {}, 0);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->Put(id, data).ok());
  }
  auto store = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(*(*store)->Get(id), data);
}

TEST(DiskStoreTest, UnusableRootFails) {
  TempDir dir;
  WriteFileBytes(dir.path() / "file", Pattern(1, 1));
  auto store = MakeDiskStore(dir.path() / "file", {}, 0);
  EXPECT_FALSE(store.ok());
}

// ---- Small blobs: rows of root/small.db.

// Blobs of 0 bytes up to kMaxSmallBlob are rows, larger ones files; each reads back whole and
// in parts (offsets and lengths at 0, inside, at the end, past it and at the largest), is
// listed once, survives a reopen and goes with Remove.
TEST(DiskStoreTest, SmallBlobsAreRowsAndLargerOnesFiles) {
  TempDir dir;
  const std::size_t sizes[] = {
      0, 1, 4095, 16 * 1024 + 33, kMaxSmallBlob - 1, kMaxSmallBlob, kMaxSmallBlob + 1, 200'000};
  std::map<ChunkId, Bytes> blobs;
  std::uint64_t rows = 0, row_bytes = 0;
  const auto usage_is = [](ChunkStore& st, std::uint64_t chunks, std::uint64_t bytes) {
    const ChunkStore::Packed p = st.PackedUsage();
    EXPECT_EQ(p.chunks, chunks);
    EXPECT_EQ(p.bytes, bytes);
  };
  {
    auto store = MakeDiskStore(dir.path());
    ASSERT_TRUE(store.ok()) << store.status().message();
    for (std::size_t size : sizes) {
      const Bytes data = Pattern(size, static_cast<std::uint32_t>(size + 1));
      const ChunkId id = crypto::Sha256::Of(data);
      ASSERT_TRUE((*store)->Put(id, data).ok()) << size;
      ASSERT_TRUE((*store)->Put(id, data).ok()) << size;  // again: no change
      EXPECT_EQ(fs::exists(ChunkPath(dir.path(), id)), size > kMaxSmallBlob) << size;
      blobs[id] = data;
      if (size <= kMaxSmallBlob) ++rows, row_bytes += size;
    }
    usage_is(**store, rows, row_bytes);
  }
  auto store = MakeDiskStore(dir.path());
  ASSERT_TRUE(store.ok()) << store.status().message();
  ChunkStore& st = **store;
  usage_is(st, rows, row_bytes);  // counted again at open
  std::multiset<ChunkId> listed;
  ASSERT_TRUE(st.ForEach([&](const ChunkId& id) { listed.insert(id); }).ok());
  EXPECT_EQ(listed.size(), blobs.size());
  for (const auto& [id, data] : blobs) {
    SCOPED_TRACE(testing::Message() << data.size() << " bytes");
    EXPECT_EQ(listed.count(id), 1u);
    EXPECT_TRUE(st.Has(id));
    auto got = st.Get(id);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_EQ(*got, data);
    const std::size_t n = data.size();
    for (std::size_t offset : {std::size_t{0}, std::size_t{1}, n / 2, n, n + 1, SIZE_MAX}) {
      for (std::size_t len : {std::size_t{0}, std::size_t{1}, std::size_t{4096}, n}) {
        Bytes out(len, 0xee);
        auto e = st.ReadAt(id, offset, out);
        ASSERT_TRUE(e.ok()) << offset << "+" << len << ": " << e.status().message();
        EXPECT_EQ(e->total, n);
        const std::size_t want = offset >= n ? 0 : std::min(len, n - offset);
        ASSERT_EQ(e->n, want) << offset << "+" << len;
        EXPECT_TRUE(std::equal(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(want),
                               data.begin() + static_cast<std::ptrdiff_t>(std::min(offset, n))))
            << offset << "+" << len;
      }
    }
  }
  for (const auto& [id, data] : blobs) {
    ASSERT_TRUE(st.Remove(id).ok());
    if (data.size() <= kMaxSmallBlob) --rows, row_bytes -= data.size();
    usage_is(st, rows, row_bytes);
    EXPECT_FALSE(st.Has(id));
    EXPECT_EQ(st.Get(id).status().code(), Code::kNotFound);
    Bytes out(10);
    EXPECT_EQ(st.ReadAt(id, 0, out).status().code(), Code::kNotFound);
    EXPECT_EQ(st.ReadAt(id, 0, MutableByteSpan()).status().code(), Code::kNotFound);
    EXPECT_TRUE(st.Remove(id).ok()) << "removing an absent chunk is Ok";
  }
  std::size_t left = 0;
  ASSERT_TRUE(st.ForEach([&](const ChunkId&) { ++left; }).ok());
  EXPECT_EQ(left, 0u);
}

// The database is the store's alone: reopened, it keeps its write-ahead index in memory (no
// -shm file), and a second store on the same directory is refused while the first is open.
// ForEach goes past its batches of 4,096 rows, and its callback may remove what it is given.
TEST(DiskStoreTest, TheSmallBlobDatabaseIsExclusiveAndListsInBatches) {
  TempDir dir;
  std::set<ChunkId> ids;
  {
    auto store = MakeDiskStore(dir.path());
    ASSERT_TRUE(store.ok()) << store.status().message();
    for (std::uint32_t i = 0; i < 4096 + 10; ++i) {
      const Bytes data = Pattern(8, i);
      const ChunkId id = crypto::Sha256::Of(data);
      ASSERT_TRUE((*store)->Put(id, data).ok());
      ids.insert(id);
    }
  }
  auto store = MakeDiskStore(dir.path());
  ASSERT_TRUE(store.ok()) << store.status().message();
  EXPECT_TRUE((*store)->Has(*ids.begin()));
  EXPECT_FALSE(fs::exists(dir.path() / "small.db-shm"));
  auto second = MakeDiskStore(dir.path());
  EXPECT_FALSE(second.ok()) << "a second store opened the database";
  std::set<ChunkId> listed;
  std::size_t calls = 0;
  ASSERT_TRUE((*store)
                  ->ForEach([&](const ChunkId& id) {
                    ++calls;
                    listed.insert(id);
                    EXPECT_TRUE((*store)->Remove(id).ok());
                  })
                  .ok());
  EXPECT_EQ(calls, ids.size());
  EXPECT_EQ(listed, ids);
  EXPECT_EQ((*store)->PackedUsage().chunks, 0u);
  std::size_t left = 0;
  ASSERT_TRUE((*store)->ForEach([&](const ChunkId&) { ++left; }).ok());
  EXPECT_EQ(left, 0u);
}

// A store written by an older version has files for small blobs: they are read, listed once
// and removed with the chunk. A Put that finds one cut short (a power failure) writes the row
// and removes the file, so no id is kept twice.
TEST(DiskStoreTest, ChunkFilesOfSmallBlobsFromOlderVersionsAreReadAndHealed) {
  TempDir dir;
  const Bytes a = Pattern(3000, 81), b = Pattern(5000, 82);
  const ChunkId ida = crypto::Sha256::Of(a), idb = crypto::Sha256::Of(b);
  {
    auto old = MakeDiskStore(dir.path(), {}, 0);
    ASSERT_TRUE(old.ok());
    ASSERT_TRUE((*old)->Put(ida, a).ok());
    ASSERT_TRUE((*old)->Put(idb, b).ok());
  }
  WriteFileBytes(ChunkPath(dir.path(), idb), ByteSpan(b).first(100));  // cut short
  auto store = MakeDiskStore(dir.path());
  ASSERT_TRUE(store.ok());
  ChunkStore& st = **store;
  EXPECT_EQ(*st.Get(ida), a);
  ASSERT_TRUE(st.Put(ida, a).ok());  // whole: left as it is
  EXPECT_TRUE(fs::exists(ChunkPath(dir.path(), ida)));
  EXPECT_EQ(st.PackedUsage().chunks, 0u);
  ASSERT_TRUE(st.Put(idb, b).ok());  // cut short: a row now, the file gone
  EXPECT_FALSE(fs::exists(ChunkPath(dir.path(), idb)));
  EXPECT_EQ(st.PackedUsage().chunks, 1u);
  EXPECT_EQ(st.PackedUsage().bytes, b.size());
  EXPECT_EQ(*st.Get(idb), b);
  std::multiset<ChunkId> listed;
  ASSERT_TRUE(st.ForEach([&](const ChunkId& id) { listed.insert(id); }).ok());
  EXPECT_EQ(listed, (std::multiset<ChunkId>{ida, idb}));
  ASSERT_TRUE(st.Remove(ida).ok());
  EXPECT_FALSE(fs::exists(ChunkPath(dir.path(), ida)));
  EXPECT_FALSE(st.Has(ida));
}

// Only a store that has kept every small blob as a row since it was made says so
// (small-blobs-are-rows), and only such a store puts a small blob without looking for a file of
// it: a store opened once by something writing small blobs as files (an older version; here
// small_blobs = 0) loses the mark for good, and so does one that was not empty when first
// opened by this version.
TEST(DiskStoreTest, OnlyAStoreMadeWithSmallBlobsAsRowsIsMarkedSo) {
  const auto marked = [](const fs::path& root) {
    return fs::exists(root / "small-blobs-are-rows");
  };
  TempDir dir;
  const Bytes a = Pattern(3000, 91), b = Pattern(4000, 92);
  const ChunkId ida = crypto::Sha256::Of(a), idb = crypto::Sha256::Of(b);
  {
    auto store = MakeDiskStore(dir.path());
    ASSERT_TRUE(store.ok());
    EXPECT_TRUE(marked(dir.path()));
    ASSERT_TRUE((*store)->Put(ida, a).ok());
    EXPECT_FALSE(fs::exists(ChunkPath(dir.path(), ida)));
    EXPECT_EQ(*(*store)->Get(ida), a);
  }
  {
    auto store = MakeDiskStore(dir.path());  // reopened: still marked
    ASSERT_TRUE(store.ok());
    EXPECT_TRUE(marked(dir.path()));
  }
  {
    auto files = MakeDiskStore(dir.path(), {}, 0);
    ASSERT_TRUE(files.ok());
    EXPECT_FALSE(marked(dir.path()));
    ASSERT_TRUE((*files)->Put(idb, b).ok());
    EXPECT_TRUE(fs::exists(ChunkPath(dir.path(), idb)));
  }
  WriteFileBytes(ChunkPath(dir.path(), idb), ByteSpan(b).first(10));  // cut short
  {
    auto store = MakeDiskStore(dir.path());
    ASSERT_TRUE(store.ok());
    EXPECT_FALSE(marked(dir.path())) << "not made now: it may hold small chunk files";
    ASSERT_TRUE((*store)->Put(idb, b).ok());
    EXPECT_FALSE(fs::exists(ChunkPath(dir.path(), idb))) << "the short file was not replaced";
    EXPECT_EQ(*(*store)->Get(idb), b);
    EXPECT_EQ(*(*store)->Get(ida), a);
  }
  TempDir used;
  WriteFileBytes(used.path() / "something", Pattern(1, 1));
  auto store = MakeDiskStore(used.path());
  ASSERT_TRUE(store.ok());
  EXPECT_FALSE(marked(used.path()));
}

// Puts, reads and removes of small blobs from several threads at once: every read sees the
// whole blob or kNotFound, never a part (run under TSan in CI).
TEST(DiskStoreTest, SmallBlobsFromManyThreads) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path());
  ASSERT_TRUE(store.ok());
  ChunkStore& st = **store;
  std::vector<Bytes> data;
  std::vector<ChunkId> ids;
  for (std::uint32_t i = 0; i < 16; ++i) {
    data.push_back(Pattern(1000 + 997 * i, 90 + i));
    ids.push_back(crypto::Sha256::Of(data.back()));
  }
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 200; ++round) {
        const std::size_t i = static_cast<std::size_t>((round * 7 + t * 3) % 16);
        if ((round + t) % 3 == 0) {
          if (!st.Put(ids[i], data[i]).ok()) ++bad;
        } else if ((round + t) % 3 == 1) {
          auto got = st.Get(ids[i]);
          if (got.ok() ? *got != data[i] : got.status().code() != Code::kNotFound) ++bad;
        } else if (!st.Remove(ids[i]).ok()) {
          ++bad;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
}

// ---- Wrappers.

TEST(VerifyingStoreTest, RefusesWrongId) {
  ChunkHasher hasher = MakeHasher(TestKey());
  auto store = MakeVerifyingStore(MakeMemoryStore(), hasher);
  const Bytes data = Pattern(100, 12);
  const ChunkId wrong = hasher.IdOf(Pattern(100, 13));
  Status s = store->Put(wrong, data);
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find(Hex(wrong)), std::string::npos) << s.message();
  EXPECT_FALSE(store->Has(wrong));
  // The plain SHA-256 is not the id either: ids are keyed.
  EXPECT_EQ(store->Put(crypto::Sha256::Of(data), data).code(), Code::kCorruption);
  EXPECT_TRUE(store->Put(hasher.IdOf(data), data).ok());
}

TEST(VerifyingStoreTest, GetDetectsBytesThatNoLongerMatch) {
  TempDir dir;
  ChunkHasher hasher = MakeHasher(TestKey());
  auto disk = MakeDiskStore(dir.path(), {}, 0);
  ASSERT_TRUE(disk.ok());
  auto store = MakeVerifyingStore(std::move(*disk), hasher);
  const Bytes data = Pattern(100, 14);
  const ChunkId id = hasher.IdOf(data);
  ASSERT_TRUE(store->Put(id, data).ok());
  Bytes bad = data;
  bad[50] ^= 0x80;
  WriteFileBytes(ChunkPath(dir.path(), id), bad);
  Result<Bytes> got = store->Get(id);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), Code::kCorruption);
  EXPECT_NE(got.status().message().find(Hex(id)), std::string::npos);
}

TEST(HasherTest, KeyedAndDeterministic) {
  const Bytes data = Pattern(64, 15);
  EXPECT_EQ(MakeHasher(TestKey()).IdOf(data), MakeHasher(TestKey()).IdOf(data));
  EXPECT_NE(MakeHasher(TestKey()).IdOf(data), MakeHasher(TestKey(0x18)).IdOf(data));
  const crypto::Key256 id_key = crypto::DeriveKey(TestKey().secret, "foreverfs chunk-id v1");
  EXPECT_EQ(MakeHasher(TestKey()).IdOf(data), crypto::HmacSha256(id_key, data));
}

class LocalStoreTest : public ::testing::Test {
 protected:
  std::unique_ptr<ChunkStore> Open(const fs::path& root, std::uint8_t key_fill = 0x17) {
    auto store = MakeLocalStore(root, TestKey(key_fill));
    EXPECT_TRUE(store.ok()) << store.status().message();
    return store.ok() ? std::move(*store) : nullptr;
  }
  TempDir dir_;
  ChunkHasher hasher_ = MakeHasher(TestKey());
};

TEST_F(LocalStoreTest, FlippedByteOnDiskIsCorruption) {
  auto store = Open(dir_.path());
  const Bytes data = Pattern(100000, 16);  // a file (larger than kMaxSmallBlob)
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(store->Put(id, data).ok());
  const fs::path path = ChunkPath(dir_.path(), id);
  const Bytes blob = ReadFileBytes(path);
  const std::size_t segments = (data.size() + kSegmentSize - 1) / kSegmentSize;
  ASSERT_EQ(blob.size(), 1 + data.size() + segments * crypto::Aead::kTagSize);
  for (std::size_t pos : {std::size_t{0}, std::size_t{1}, blob.size() / 2, blob.size() - 1}) {
    Bytes bad = blob;
    bad[pos] ^= 0x01;
    WriteFileBytes(path, bad);
    Result<Bytes> got = store->Get(id);
    ASSERT_FALSE(got.ok()) << "flipped byte " << pos << " was not detected";
    EXPECT_EQ(got.status().code(), Code::kCorruption);
    EXPECT_NE(got.status().message().find(Hex(id)), std::string::npos) << got.status().message();
  }
  // Truncated and emptied blobs are corrupt too.
  WriteFileBytes(path, ByteSpan(blob).first(blob.size() - 1));
  EXPECT_EQ(store->Get(id).status().code(), Code::kCorruption);
  WriteFileBytes(path, {});
  EXPECT_EQ(store->Get(id).status().code(), Code::kCorruption);
  WriteFileBytes(path, blob);
  EXPECT_EQ(*store->Get(id), data);
}

// A power failure after a chunk's rename can leave its file empty or cut short; the next Put of
// the same content (another file with the same bytes, a peer's copy) must write it again.
TEST_F(LocalStoreTest, APutHealsABlobLeftEmptyOrShort) {
  auto store = Open(dir_.path());
  const Bytes data = Pattern(150000, 21);  // a file
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(store->Put(id, data).ok());
  const fs::path path = ChunkPath(dir_.path(), id);
  const Bytes blob = ReadFileBytes(path);
  for (std::size_t keep : {std::size_t{0}, std::size_t{1}, blob.size() / 2, blob.size() - 1}) {
    WriteFileBytes(path, ByteSpan(blob).first(keep));
    EXPECT_FALSE(store->Get(id).ok()) << keep;
    ASSERT_TRUE(store->Put(id, data).ok()) << keep;
    auto got = store->Get(id);
    ASSERT_TRUE(got.ok()) << "kept " << keep << ": " << got.status().message();
    EXPECT_EQ(*got, data);
  }
  // A whole blob is not rewritten (its inode stays the same).
  const auto ino =
      fs::status(path).type() == fs::file_type::regular ? ReadFileBytes(path) : Bytes{};
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  ASSERT_TRUE(store->Put(id, data).ok());
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);
  EXPECT_EQ(ino, ReadFileBytes(path));
}

TEST_F(LocalStoreTest, BlobOnDiskDoesNotContainPlaintext) {
  auto store = Open(dir_.path());
  std::string text;
  while (text.size() < 80000) text += "attack at dawn, bring the secret plans. ";  // a file
  const ByteSpan data = AsBytes(text);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(store->Put(id, data).ok());
  const Bytes blob = ReadFileBytes(ChunkPath(dir_.path(), id));
  ASSERT_FALSE(blob.empty());
  EXPECT_EQ(blob[0], 2) << "format version";
  const std::string_view needle = "attack at dawn";
  const std::string_view haystack = AsChars(blob);
  EXPECT_EQ(haystack.find(needle), std::string_view::npos);
}

// Small chunks are rows of small.db: a row damaged there (a flipped byte, cut short, emptied)
// fails its tag and is reported as corruption naming the chunk; the row put back reads again.
TEST_F(LocalStoreTest, ARowDamagedInTheDatabaseIsCorruption) {
  const Bytes data = Pattern(10000, 23);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(Open(dir_.path())->Put(id, data).ok());
  ASSERT_FALSE(fs::exists(ChunkPath(dir_.path(), id)));
  const std::optional<Bytes> blob = ReadRow(dir_.path(), id);
  ASSERT_TRUE(blob.has_value());
  ASSERT_EQ(blob->size(), 1 + data.size() + crypto::Aead::kTagSize);
  std::vector<Bytes> damaged;
  for (std::size_t pos : {std::size_t{0}, std::size_t{1}, blob->size() / 2, blob->size() - 1}) {
    damaged.push_back(*blob);
    damaged.back()[pos] ^= 0x01;
  }
  damaged.emplace_back(blob->begin(), blob->end() - 1);
  damaged.emplace_back();
  for (const Bytes& bad : damaged) {
    WriteRow(dir_.path(), id, bad);
    auto store = Open(dir_.path());
    Result<Bytes> got = store->Get(id);
    ASSERT_FALSE(got.ok()) << "damage of a " << bad.size() << "-byte row was not detected";
    EXPECT_EQ(got.status().code(), Code::kCorruption);
    EXPECT_NE(got.status().message().find(Hex(id)), std::string::npos) << got.status().message();
    Bytes part(100);
    EXPECT_FALSE(store->ReadAt(id, 0, part).ok());
  }
  WriteRow(dir_.path(), id, *blob);
  EXPECT_EQ(*Open(dir_.path())->Get(id), data);
}

TEST_F(LocalStoreTest, TheSmallChunkDatabaseHoldsNoPlaintext) {
  auto store = Open(dir_.path());
  std::string text;
  while (text.size() < 8192) text += "attack at dawn, bring the secret plans. ";
  ASSERT_TRUE(store->Put(hasher_.IdOf(AsBytes(text)), AsBytes(text)).ok());
  const auto plaintext_in = [&](const char* name) {
    if (!fs::exists(dir_.path() / name)) return false;
    const Bytes bytes = ReadFileBytes(dir_.path() / name);
    return AsChars(bytes).find("attack at dawn") != std::string_view::npos;
  };
  // Open (the blob in a small-chunk log, or its row in the write-ahead log) and closed (folded
  // into the database).
  for (const fs::path& f : FilesUnder(dir_.path())) {
    EXPECT_FALSE(plaintext_in(fs::relative(f, dir_.path()).c_str())) << f;
  }
  store.reset();
  EXPECT_FALSE(plaintext_in("small.db-wal"));
  EXPECT_FALSE(plaintext_in("small.db"));
  ASSERT_TRUE(ReadRow(dir_.path(), hasher_.IdOf(AsBytes(text))).has_value());
}

TEST_F(LocalStoreTest, EncryptionIsConvergentAcrossNodes) {
  TempDir other;
  auto a = Open(dir_.path());
  auto b = Open(other.path());
  const Bytes data = Pattern(100000, 17);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(a->Put(id, data).ok());
  ASSERT_TRUE(b->Put(id, data).ok());
  EXPECT_EQ(ReadFileBytes(ChunkPath(dir_.path(), id)), ReadFileBytes(ChunkPath(other.path(), id)));
}

TEST_F(LocalStoreTest, AnotherClusterKeyCannotRead) {
  const Bytes data = Pattern(3000, 18);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(Open(dir_.path())->Put(id, data).ok());
  auto stranger = Open(dir_.path(), 0x99);
  EXPECT_TRUE(stranger->Has(id));
  EXPECT_EQ(stranger->Get(id).status().code(), Code::kCorruption);
}

TEST_F(LocalStoreTest, UnknownBlobVersionIsCorruption) {
  auto store = Open(dir_.path());
  const Bytes data = Pattern(70000, 19);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(store->Put(id, data).ok());
  Bytes blob = ReadFileBytes(ChunkPath(dir_.path(), id));
  blob[0] = 1;  // the format before segments
  WriteFileBytes(ChunkPath(dir_.path(), id), blob);
  Result<Bytes> got = store->Get(id);
  EXPECT_EQ(got.status().code(), Code::kCorruption);
  EXPECT_NE(got.status().message().find(Hex(id)), std::string::npos);
  Bytes part(10);
  EXPECT_EQ(store->ReadAt(id, 0, part).status().code(), Code::kCorruption);
}

TEST_F(LocalStoreTest, BlobSwappedBetweenIdsIsCorruption) {
  // The id is bound into the blob (key and AAD): a blob copied under another id fails.
  auto store = Open(dir_.path());
  const Bytes a = Pattern(70000, 20);
  const Bytes b = Pattern(70000, 21);
  const ChunkId ida = hasher_.IdOf(a);
  const ChunkId idb = hasher_.IdOf(b);
  ASSERT_TRUE(store->Put(ida, a).ok());
  ASSERT_TRUE(store->Put(idb, b).ok());
  WriteFileBytes(ChunkPath(dir_.path(), idb), ReadFileBytes(ChunkPath(dir_.path(), ida)));
  EXPECT_EQ(store->Get(idb).status().code(), Code::kCorruption);
}

// Segments: a part of a chunk opens only the segments it covers, and each is authenticated on
// its own, bound to its place and to the chunk's length.
TEST_F(LocalStoreTest, DamageInOneSegmentFailsReadsOfItAndNoOthers) {
  auto store = Open(dir_.path());
  const Bytes data = Pattern(kMaxChunkSize, 22);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(store->Put(id, data).ok());
  const fs::path path = ChunkPath(dir_.path(), id);
  const Bytes blob = ReadFileBytes(path);
  constexpr std::size_t kSeg = 16 * 1024, kSealed = kSeg + crypto::Aead::kTagSize;
  ASSERT_EQ(blob.size(), 1 + data.size() + (data.size() / kSeg) * crypto::Aead::kTagSize);
  Bytes bad = blob;
  bad[1 + 5 * kSealed + 100] ^= 0x40;  // in segment 5
  WriteFileBytes(path, bad);
  Bytes four(4096);
  EXPECT_EQ(store->ReadAt(id, 5 * kSeg + 8192, four).status().code(), Code::kCorruption);
  EXPECT_EQ(store->ReadAt(id, 5 * kSeg - 10, four).status().code(), Code::kCorruption)
      << "a read spanning segments 4 and 5";
  auto ok = store->ReadAt(id, 7 * kSeg, four);
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_TRUE(std::equal(four.begin(), four.end(), data.begin() + 7 * kSeg));
  EXPECT_EQ(store->Get(id).status().code(), Code::kCorruption);
  // Two segments swapped: both fail (the index is in the nonce and the associated data).
  bad = blob;
  std::swap_ranges(bad.begin() + 1 + 2 * kSealed, bad.begin() + 1 + 3 * kSealed,
                   bad.begin() + 1 + 3 * kSealed);
  WriteFileBytes(path, bad);
  EXPECT_EQ(store->ReadAt(id, 2 * kSeg, four).status().code(), Code::kCorruption);
  EXPECT_EQ(store->ReadAt(id, 3 * kSeg, four).status().code(), Code::kCorruption);
  // Cut at a segment boundary: the length is bound into every segment, so none opens.
  WriteFileBytes(path, ByteSpan(blob).first(1 + 10 * kSealed));
  EXPECT_EQ(store->ReadAt(id, 0, four).status().code(), Code::kCorruption);
  EXPECT_EQ(store->ReadAt(id, 9 * kSeg, four).status().code(), Code::kCorruption);
  WriteFileBytes(path, blob);
  ASSERT_TRUE(store->ReadAt(id, 5 * kSeg + 8192, four).ok());
  EXPECT_TRUE(std::equal(four.begin(), four.end(), data.begin() + 5 * kSeg + 8192));
}

// The store caches chunk keys in slots chosen by the id's first bytes: ids that share a slot
// each get their own key, read after read, and a cached key is the derived one (a store that
// never saw the other ids seals the same blob).
TEST(EncryptingStoreTest, ChunksSharingAKeySlotKeepTheirOwnKeys) {
  crypto::Key256 key{};
  key[0] = 7;
  auto inner = MakeMemoryStore();
  ChunkStore* blobs = inner.get();
  auto store = MakeEncryptingStore(std::move(inner), key);
  std::vector<ChunkId> ids;
  std::vector<Bytes> datas;
  for (std::uint8_t i = 0; i < 4; ++i) {
    ChunkId id{};
    id[0] = 0x12;
    id[1] = 0x34;  // one slot for all four
    id[31] = i;
    ids.push_back(id);
    datas.push_back(Bytes(40000 + i, static_cast<std::uint8_t>(0xa0 + i)));
    ASSERT_TRUE(store->Put(id, datas.back()).ok());
  }
  for (int round = 0; round < 3; ++round) {
    for (std::size_t i : {0u, 3u, 1u, 2u, 0u}) {
      auto got = store->Get(ids[i]);
      ASSERT_TRUE(got.ok()) << i << ": " << got.status().message();
      EXPECT_EQ(*got, datas[i]) << i;
      Bytes part(4096);
      ASSERT_TRUE(store->ReadAt(ids[i], 20000, part).ok()) << i;
      EXPECT_EQ(part, Bytes(4096, static_cast<std::uint8_t>(0xa0 + i))) << i;
    }
  }
  // Each blob is what a store that never saw the other ids seals (convergent encryption under
  // the derived key), and opens there.
  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto fresh_inner = MakeMemoryStore();
    ChunkStore* fresh_blobs = fresh_inner.get();
    auto fresh = MakeEncryptingStore(std::move(fresh_inner), key);
    ASSERT_TRUE(fresh->Put(ids[i], datas[i]).ok());
    auto mine = blobs->Get(ids[i]);
    auto theirs = fresh_blobs->Get(ids[i]);
    ASSERT_TRUE(mine.ok() && theirs.ok());
    EXPECT_EQ(*mine, *theirs) << i;
  }
}

TEST(EncryptingStoreTest, RefusesOversizedChunk) {
  auto store = MakeEncryptingStore(MakeMemoryStore(), crypto::Key256{});
  EXPECT_EQ(store->Put(ChunkId{1}, Bytes(kMaxChunkSize + 1, 0)).code(), Code::kInvalid);
}

}  // namespace
}  // namespace foreverfs::cas
