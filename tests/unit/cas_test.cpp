// The ChunkStore contract, run against every store and stack, plus the on-disk specifics.

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cas/chunk_store.h"
#include "cas/testing/memory_store.h"
#include "unit/temp_dir.h"

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

Bytes Pattern(std::size_t size, std::uint32_t seed) {
  Bytes b(size);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : b) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<std::uint8_t>(x >> 24);
  }
  return b;
}

Bytes ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const fs::path& p, ByteSpan data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

fs::path ChunkPath(const fs::path& root, const ChunkId& id) {
  const std::string hex = Hex(id);
  return root / hex.substr(0, 2) / hex.substr(2, 2) / hex;
}

std::vector<fs::path> FilesUnder(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out.push_back(e.path());
  }
  return out;
}

// ---- Factories for the typed contract suite. Every store is named with the test key's ids so
// that the verifying stack accepts the same calls as the bare stores.

struct MemoryFactory {
  std::unique_ptr<ChunkStore> Make(const fs::path&) { return MakeMemoryStore(); }
};

struct DiskFactory {
  std::unique_ptr<ChunkStore> Make(const fs::path& root) {
    auto store = MakeDiskStore(root);
    EXPECT_TRUE(store.ok()) << store.status().message();
    return std::move(*store);
  }
};

struct EncryptingMemoryFactory {
  std::unique_ptr<ChunkStore> Make(const fs::path&) {
    return MakeEncryptingStore(MakeMemoryStore(), crypto::DeriveKey(TestKey().secret, "test"));
  }
};

struct LocalStoreFactory {
  std::unique_ptr<ChunkStore> Make(const fs::path& root) {
    auto store = MakeLocalStore(root, TestKey());
    EXPECT_TRUE(store.ok()) << store.status().message();
    return std::move(*store);
  }
};

template <typename Factory>
class ChunkStoreContractTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = Factory().Make(dir_.path() / "store");
    ASSERT_NE(store_, nullptr);
  }

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

  TempDir dir_;
  ChunkHasher hasher_ = MakeHasher(TestKey());
  std::unique_ptr<ChunkStore> store_;
};

using StoreTypes =
    ::testing::Types<MemoryFactory, DiskFactory, EncryptingMemoryFactory, LocalStoreFactory>;

class StoreNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    if (std::is_same_v<T, MemoryFactory>) return "Memory";
    if (std::is_same_v<T, DiskFactory>) return "Disk";
    if (std::is_same_v<T, EncryptingMemoryFactory>) return "EncryptingMemory";
    return "LocalStore";
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

// ---- Disk store specifics.

TEST(DiskStoreTest, LayoutIsShardedByHex) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path());
  ASSERT_TRUE(store.ok()) << store.status().message();
  const Bytes data = Pattern(777, 7);
  const ChunkId id = MakeHasher(TestKey()).IdOf(data);
  ASSERT_TRUE((*store)->Put(id, data).ok());
  const fs::path path = ChunkPath(dir.path(), id);
  ASSERT_TRUE(fs::is_regular_file(path)) << path;
  EXPECT_EQ(ReadFile(path), data);
}

TEST(DiskStoreTest, NoTempFilesLeft) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path());
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
  const std::vector<fs::path> files = FilesUnder(dir.path());
  EXPECT_EQ(std::set<fs::path>(files.begin(), files.end()), expected);
}

TEST(DiskStoreTest, StaleTempFilesAreCleanedOnOpen) {
  TempDir dir;
  fs::create_directories(dir.path() / "tmp");
  WriteFile(dir.path() / "tmp" / "half-written.1234", Pattern(10, 1));
  WriteFile(dir.path() / "tmp" / "another", Pattern(10, 2));
  auto store = MakeDiskStore(dir.path());
  ASSERT_TRUE(store.ok()) << store.status().message();
  EXPECT_TRUE(fs::is_directory(dir.path() / "tmp"));
  EXPECT_TRUE(fs::is_empty(dir.path() / "tmp"));
}

TEST(DiskStoreTest, ForEachIgnoresForeignFiles) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path());
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
  WriteFile(shard / misplaced, data);
  WriteFile(shard / (hex + ".tmp"), data);
  std::string upper = hex;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  if (upper != hex) WriteFile(shard / upper, data);
  WriteFile(dir.path() / "tmp" / hex, data);
  fs::create_directories(dir.path() / "zz" / "zz");
  WriteFile(dir.path() / "zz" / "zz" / hex, data);
  WriteFile(dir.path() / "README", data);
  std::vector<ChunkId> listed;
  ASSERT_TRUE((*store)->ForEach([&](const ChunkId& c) { listed.push_back(c); }).ok());
  EXPECT_EQ(listed, std::vector<ChunkId>{id});
}

TEST(DiskStoreTest, OversizedFileIsCorruption) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path());
  ASSERT_TRUE(store.ok());
  const Bytes small = Pattern(10, 9);
  const ChunkId id = crypto::Sha256::Of(small);
  ASSERT_TRUE((*store)->Put(id, small).ok());
  constexpr std::size_t kLimit = kMaxChunkSize + kMaxBlobOverhead;
  WriteFile(ChunkPath(dir.path(), id), Bytes(kLimit + 1, 0));
  EXPECT_EQ((*store)->Get(id).status().code(), Code::kCorruption);
  Bytes part(10);
  EXPECT_EQ((*store)->ReadAt(id, 0, part).status().code(), Code::kCorruption);
  // The largest blob the wrappers can produce is accepted.
  WriteFile(ChunkPath(dir.path(), id), Bytes(kLimit, 0));
  EXPECT_TRUE((*store)->Get(id).ok());
  EXPECT_TRUE((*store)->ReadAt(id, 0, part).ok());
  // And Put refuses what Get would refuse.
  EXPECT_EQ((*store)->Put(crypto::Sha256::Of(AsBytes("x")), Bytes(kLimit + 1, 0)).code(),
            Code::kInvalid);
}

TEST(DiskStoreTest, PutOfExistingIdDoesNotRewrite) {
  TempDir dir;
  auto store = MakeDiskStore(dir.path());
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
    auto store = MakeDiskStore(dir.path());
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->Put(id, data).ok());
  }
  auto store = MakeDiskStore(dir.path());
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(*(*store)->Get(id), data);
}

TEST(DiskStoreTest, UnusableRootFails) {
  TempDir dir;
  WriteFile(dir.path() / "file", Pattern(1, 1));
  auto store = MakeDiskStore(dir.path() / "file");
  EXPECT_FALSE(store.ok());
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
  auto disk = MakeDiskStore(dir.path());
  ASSERT_TRUE(disk.ok());
  auto store = MakeVerifyingStore(std::move(*disk), hasher);
  const Bytes data = Pattern(100, 14);
  const ChunkId id = hasher.IdOf(data);
  ASSERT_TRUE(store->Put(id, data).ok());
  Bytes bad = data;
  bad[50] ^= 0x80;
  WriteFile(ChunkPath(dir.path(), id), bad);
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
  const Bytes data = Pattern(10000, 16);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(store->Put(id, data).ok());
  const fs::path path = ChunkPath(dir_.path(), id);
  const Bytes blob = ReadFile(path);
  ASSERT_EQ(blob.size(), 1 + data.size() + crypto::Aead::kTagSize);
  for (std::size_t pos : {std::size_t{0}, std::size_t{1}, blob.size() / 2, blob.size() - 1}) {
    Bytes bad = blob;
    bad[pos] ^= 0x01;
    WriteFile(path, bad);
    Result<Bytes> got = store->Get(id);
    ASSERT_FALSE(got.ok()) << "flipped byte " << pos << " was not detected";
    EXPECT_EQ(got.status().code(), Code::kCorruption);
    EXPECT_NE(got.status().message().find(Hex(id)), std::string::npos) << got.status().message();
  }
  // Truncated and emptied blobs are corrupt too.
  WriteFile(path, ByteSpan(blob).first(blob.size() - 1));
  EXPECT_EQ(store->Get(id).status().code(), Code::kCorruption);
  WriteFile(path, {});
  EXPECT_EQ(store->Get(id).status().code(), Code::kCorruption);
  WriteFile(path, blob);
  EXPECT_EQ(*store->Get(id), data);
}

// A power failure after a chunk's rename can leave its file empty or cut short; the next Put of
// the same content (another file with the same bytes, a peer's copy) must write it again.
TEST_F(LocalStoreTest, APutHealsABlobLeftEmptyOrShort) {
  auto store = Open(dir_.path());
  const Bytes data = Pattern(50000, 21);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(store->Put(id, data).ok());
  const fs::path path = ChunkPath(dir_.path(), id);
  const Bytes blob = ReadFile(path);
  for (std::size_t keep : {std::size_t{0}, std::size_t{1}, blob.size() / 2, blob.size() - 1}) {
    WriteFile(path, ByteSpan(blob).first(keep));
    EXPECT_FALSE(store->Get(id).ok()) << keep;
    ASSERT_TRUE(store->Put(id, data).ok()) << keep;
    auto got = store->Get(id);
    ASSERT_TRUE(got.ok()) << "kept " << keep << ": " << got.status().message();
    EXPECT_EQ(*got, data);
  }
  // A whole blob is not rewritten (its inode stays the same).
  const auto ino = fs::status(path).type() == fs::file_type::regular ? ReadFile(path) : Bytes{};
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  ASSERT_TRUE(store->Put(id, data).ok());
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);
  EXPECT_EQ(ino, ReadFile(path));
}

TEST_F(LocalStoreTest, BlobOnDiskDoesNotContainPlaintext) {
  auto store = Open(dir_.path());
  std::string text;
  while (text.size() < 8192) text += "attack at dawn, bring the secret plans. ";
  const ByteSpan data = AsBytes(text);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(store->Put(id, data).ok());
  const Bytes blob = ReadFile(ChunkPath(dir_.path(), id));
  ASSERT_FALSE(blob.empty());
  EXPECT_EQ(blob[0], 2) << "format version";
  const std::string_view needle = "attack at dawn";
  const std::string_view haystack = AsChars(blob);
  EXPECT_EQ(haystack.find(needle), std::string_view::npos);
}

TEST_F(LocalStoreTest, EncryptionIsConvergentAcrossNodes) {
  TempDir other;
  auto a = Open(dir_.path());
  auto b = Open(other.path());
  const Bytes data = Pattern(3000, 17);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(a->Put(id, data).ok());
  ASSERT_TRUE(b->Put(id, data).ok());
  EXPECT_EQ(ReadFile(ChunkPath(dir_.path(), id)), ReadFile(ChunkPath(other.path(), id)));
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
  const Bytes data = Pattern(100, 19);
  const ChunkId id = hasher_.IdOf(data);
  ASSERT_TRUE(store->Put(id, data).ok());
  Bytes blob = ReadFile(ChunkPath(dir_.path(), id));
  blob[0] = 1;  // the format before segments
  WriteFile(ChunkPath(dir_.path(), id), blob);
  Result<Bytes> got = store->Get(id);
  EXPECT_EQ(got.status().code(), Code::kCorruption);
  EXPECT_NE(got.status().message().find(Hex(id)), std::string::npos);
  Bytes part(10);
  EXPECT_EQ(store->ReadAt(id, 0, part).status().code(), Code::kCorruption);
}

TEST_F(LocalStoreTest, BlobSwappedBetweenIdsIsCorruption) {
  // The id is bound into the blob (key and AAD): a blob copied under another id fails.
  auto store = Open(dir_.path());
  const Bytes a = Pattern(100, 20);
  const Bytes b = Pattern(100, 21);
  const ChunkId ida = hasher_.IdOf(a);
  const ChunkId idb = hasher_.IdOf(b);
  ASSERT_TRUE(store->Put(ida, a).ok());
  ASSERT_TRUE(store->Put(idb, b).ok());
  WriteFile(ChunkPath(dir_.path(), idb), ReadFile(ChunkPath(dir_.path(), ida)));
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
  const Bytes blob = ReadFile(path);
  constexpr std::size_t kSeg = 16 * 1024, kSealed = kSeg + crypto::Aead::kTagSize;
  ASSERT_EQ(blob.size(), 1 + data.size() + (data.size() / kSeg) * crypto::Aead::kTagSize);
  Bytes bad = blob;
  bad[1 + 5 * kSealed + 100] ^= 0x40;  // in segment 5
  WriteFile(path, bad);
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
  WriteFile(path, bad);
  EXPECT_EQ(store->ReadAt(id, 2 * kSeg, four).status().code(), Code::kCorruption);
  EXPECT_EQ(store->ReadAt(id, 3 * kSeg, four).status().code(), Code::kCorruption);
  // Cut at a segment boundary: the length is bound into every segment, so none opens.
  WriteFile(path, ByteSpan(blob).first(1 + 10 * kSealed));
  EXPECT_EQ(store->ReadAt(id, 0, four).status().code(), Code::kCorruption);
  EXPECT_EQ(store->ReadAt(id, 9 * kSeg, four).status().code(), Code::kCorruption);
  WriteFile(path, blob);
  ASSERT_TRUE(store->ReadAt(id, 5 * kSeg + 8192, four).ok());
  EXPECT_TRUE(std::equal(four.begin(), four.end(), data.begin() + 5 * kSeg + 8192));
}

TEST(EncryptingStoreTest, RefusesOversizedChunk) {
  auto store = MakeEncryptingStore(MakeMemoryStore(), crypto::Key256{});
  EXPECT_EQ(store->Put(ChunkId{1}, Bytes(kMaxChunkSize + 1, 0)).code(), Code::kInvalid);
}

}  // namespace
}  // namespace foreverfs::cas
