// FileServer without peers: the path API, the handle data path against a byte-vector model,
// copy-on-write chunk staging, and the namespace operations with their error codes.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cas/chunk_store.h"
#include "cas/testing/memory_store.h"
#include "server/file_server.h"
#include "unit/test_util.h"

namespace foreverfs::server {
namespace {

namespace fs = std::filesystem;

constexpr std::uint64_t kCS = cas::kChunkSize;

using test::TempDir;

using test::FixedKey;
using test::Pattern;

std::string Name(const DirEntry& e) { return e.name; }

// Hands every call to `inner`; tests override what they make fail.
class ForwardingStore : public cas::ChunkStore {
 public:
  explicit ForwardingStore(cas::ChunkStore& inner) : inner_(inner) {}
  Status Put(const cas::ChunkId& id, ByteSpan data) override { return inner_.Put(id, data); }
  Status Sync() override { return inner_.Sync(); }
  Result<Bytes> Get(const cas::ChunkId& id) override { return inner_.Get(id); }
  Result<cas::Extent> ReadAt(const cas::ChunkId& id, std::size_t offset,
                             MutableByteSpan out) override {
    return inner_.ReadAt(id, offset, out);
  }
  bool Has(const cas::ChunkId& id) override { return inner_.Has(id); }
  Status Remove(const cas::ChunkId& id) override { return inner_.Remove(id); }
  Status ForEach(const std::function<void(const cas::ChunkId&)>& fn) override {
    return inner_.ForEach(fn);
  }

 protected:
  cas::ChunkStore& inner_;
};

class FileServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = NamespaceDb::Open(dir_.path() / "ns.db");
    ASSERT_TRUE(db.ok()) << db.status().message();
    db_ = std::move(*db);
    store_ = cas::MakeMemoryStore();
    fs::create_directories(dir_.path() / "staging");
    fs_ = std::make_unique<FileServer>(*db_, *store_, cas::ChunkHasher(FixedKey()),
                                       dir_.path() / "staging");
    fs_->SetOnLocalChange([this] { ++local_changes_; });
  }

  // Streams `data` into `path` in uneven pieces (the callback may return less than asked).
  Status StoreBytes(std::string_view path, const Bytes& data, std::size_t piece = 100'003) {
    std::size_t at = 0;
    return fs_->Store(path, [&](MutableByteSpan buf) -> Result<std::size_t> {
      std::size_t n = std::min({piece, buf.size(), data.size() - at});
      if (n > 0) std::memcpy(buf.data(), data.data() + at, n);
      at += n;
      return n;
    });
  }

  Result<Bytes> GetBytes(std::string_view path) {
    Bytes out;
    Status s = fs_->Get(path, [&](ByteSpan b) {
      out.insert(out.end(), b.begin(), b.end());
      return Ok();
    });
    if (!s.ok()) return s;
    return out;
  }

  Bytes ReadRange(std::uint64_t h, std::uint64_t off, std::size_t len) {
    Bytes out(len);
    auto n = fs_->Read(h, off, out);
    EXPECT_TRUE(n.ok()) << n.status().message();
    out.resize(n.ok() ? *n : 0);
    return out;
  }

  // Reading all of the file through handle `h` gives `model` (else the first difference).
  void ExpectWholeFile(std::uint64_t h, const Bytes& model, int step) {
    Bytes all = ReadRange(h, 0, model.size() + 10);
    ASSERT_EQ(all.size(), model.size()) << "step " << step;
    ASSERT_TRUE(all == model) << "step " << step << ": first difference at "
                              << (std::mismatch(all.begin(), all.end(), model.begin()).first -
                                  all.begin());
  }

  // Creates /`name` holding `content`, committed; returns its open handle.
  std::uint64_t CommittedFile(std::string_view name, const Bytes& content) {
    const std::uint64_t h = CreateFile(name);
    WriteAt(h, 0, content);
    EXPECT_TRUE(fs_->Flush(h).ok());
    return h;
  }

  // Closes `h`, then reads `path` back whole through the path API: it must be `model`.
  void ExpectClosedAs(std::uint64_t h, std::string_view path, const Bytes& model) {
    fs_->Release(h);
    auto got = GetBytes(path);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_TRUE(*got == model);
  }

  void WriteAt(std::uint64_t h, std::uint64_t off, ByteSpan data) {
    auto n = fs_->Write(h, off, data);
    ASSERT_TRUE(n.ok()) << n.status().message();
    ASSERT_EQ(*n, data.size());
  }

  std::uint64_t CreateFile(std::string_view name, int flags = O_RDWR, InodeId parent = kRootId) {
    auto c = fs_->Create(parent, name, 0644, 1000, 1000, flags);
    EXPECT_TRUE(c.ok()) << c.status().message();
    return c.ok() ? c->handle : 0;
  }

  std::set<cas::ChunkId> StoredChunks() {
    std::set<cas::ChunkId> ids;
    EXPECT_TRUE(store_->ForEach([&](const cas::ChunkId& id) { ids.insert(id); }).ok());
    return ids;
  }

  std::vector<std::string> RootNames() {
    auto list = fs_->ReadDir(kRootId);
    EXPECT_TRUE(list.ok());
    std::vector<std::string> names;
    if (list.ok()) std::transform(list->begin(), list->end(), std::back_inserter(names), Name);
    return names;
  }

  InodeId IdOf(std::string_view path) {
    auto a = fs_->Resolve(path);
    EXPECT_TRUE(a.ok()) << path << ": " << a.status().message();
    return a.ok() ? a->rec.id : 0;
  }

  TempDir dir_;
  std::unique_ptr<NamespaceDb> db_;
  std::unique_ptr<cas::ChunkStore> store_;
  std::unique_ptr<FileServer> fs_;
  int local_changes_ = 0;
};

// Files and directories made one after another get consecutive inode ids (one directory's
// records sit together in the namespace); the namespace's AnyInodeIn, which a new block is
// checked with, sees the block taken up to the last id and free after it.
TEST_F(FileServerTest, NewInodesTakeConsecutiveIds) {
  std::vector<InodeId> ids;
  for (int i = 0; i < 5; ++i) {
    const std::string name = "f" + std::to_string(i);
    fs_->Release(CreateFile(name));
    ids.push_back(IdOf("/" + name));
  }
  ASSERT_TRUE(fs_->Mkdir(kRootId, "d", 0755, 0, 0).ok());
  ids.push_back(IdOf("/d"));
  for (std::size_t i = 1; i < ids.size(); ++i) EXPECT_EQ(ids[i], ids[i - 1] + 1) << i;
  const InodeId first = ids[0] & ~(InodeIds::kBlockSize - 1);
  const InodeId end = first | (InodeIds::kBlockSize - 1);
  EXPECT_TRUE(db_->AnyInodeIn(first, end));
  EXPECT_TRUE(db_->AnyInodeIn(ids.back(), ids.back()));
  EXPECT_FALSE(db_->AnyInodeIn(ids.back() + 1, end));
  ASSERT_TRUE(fs_->Remove("/f0").ok());  // a tombstone still holds its id
  EXPECT_TRUE(db_->AnyInodeIn(ids[0], ids[0]));
}

// --- Path API ------------------------------------------------------------------------------

TEST_F(FileServerTest, StoreGetRemoveByPath) {
  const Bytes data = Pattern(5 * kMiB + 123, 1);
  ASSERT_TRUE(StoreBytes("/big.bin", data).ok());
  EXPECT_GT(local_changes_, 0);

  auto got = GetBytes("/big.bin");
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(got->size(), data.size());
  EXPECT_TRUE(*got == data);

  auto attr = fs_->Resolve("big.bin");
  ASSERT_TRUE(attr.ok());
  EXPECT_EQ(attr->rec.size, data.size());
  EXPECT_EQ(attr->rec.kind, InodeKind::kFile);
  EXPECT_EQ(attr->rec.manifest.size(), 6u);
  EXPECT_EQ(StoredChunks().size(), 6u);

  ASSERT_TRUE(fs_->Remove("/big.bin").ok());
  EXPECT_EQ(GetBytes("/big.bin").status().code(), Code::kNotFound);
  EXPECT_EQ(fs_->Remove("/big.bin").code(), Code::kNotFound);
  EXPECT_TRUE(RootNames().empty());
}

TEST_F(FileServerTest, StoreReplacesAndHandlesEmptyAndNestedPaths) {
  ASSERT_TRUE(StoreBytes("/f", Pattern(3 * kMiB, 2)).ok());
  const Bytes shorter = Pattern(1000, 3);
  ASSERT_TRUE(StoreBytes("/f", shorter).ok());
  EXPECT_TRUE(*GetBytes("/f") == shorter);
  EXPECT_EQ(fs_->Resolve("/f")->rec.size, 1000u);

  ASSERT_TRUE(StoreBytes("/empty", {}).ok());
  auto empty = GetBytes("/empty");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());

  EXPECT_EQ(StoreBytes("/no/such/dir/f", shorter).code(), Code::kNotFound);
  ASSERT_TRUE(fs_->Mkdir(kRootId, "d", 0755, 0, 0).ok());
  ASSERT_TRUE(StoreBytes("/d/inner", shorter).ok());
  EXPECT_TRUE(*GetBytes("d//inner") == shorter);  // empty components are skipped
  EXPECT_EQ(GetBytes("/d").status().code(), Code::kIsDir);
  EXPECT_EQ(fs_->Remove("/d").code(), Code::kNotEmpty);
  ASSERT_TRUE(fs_->Remove("/d/inner").ok());
  ASSERT_TRUE(fs_->Remove("/d").ok());
  EXPECT_EQ(fs_->Store("/", [](MutableByteSpan) -> Result<std::size_t> { return 0; }).code(),
            Code::kInvalid);
}

TEST_F(FileServerTest, StoreAndGetPropagateCallbackErrors) {
  Status s = fs_->Store("/f", [](MutableByteSpan) -> Result<std::size_t> {
    return Err(Code::kIOError, "source broke");
  });
  EXPECT_EQ(s.code(), Code::kIOError);
  ASSERT_TRUE(StoreBytes("/g", Pattern(10, 4)).ok());
  s = fs_->Get("/g", [](ByteSpan) { return Err(Code::kNoSpace, "sink full"); });
  EXPECT_EQ(s.code(), Code::kNoSpace);
}

// --- Handles -------------------------------------------------------------------------------

TEST_F(FileServerTest, CreateWriteReadFlushRelease) {
  auto c = fs_->Create(kRootId, "f", 0640, 1000, 1001, O_RDWR | O_CREAT);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->attr.rec.mode, 0640u);
  EXPECT_EQ(c->attr.rec.uid, 1000u);
  EXPECT_EQ(c->attr.rec.gid, 1001u);
  const std::uint64_t h = c->handle;
  WriteAt(h, 0, AsBytes("hello, world"));
  // Readable and visible in attributes before any commit.
  EXPECT_EQ(AsChars(ReadRange(h, 0, 100)), "hello, world");
  EXPECT_EQ(AsChars(ReadRange(h, 7, 5)), "world");
  EXPECT_TRUE(ReadRange(h, 12, 10).empty());
  EXPECT_TRUE(ReadRange(h, 1000, 10).empty());
  EXPECT_EQ(fs_->GetAttr(c->attr.rec.id)->rec.size, 12u);
  EXPECT_EQ(db_->GetInode(c->attr.rec.id)->size, 0u) << "not committed yet";

  ASSERT_TRUE(fs_->Flush(h).ok());
  EXPECT_EQ(db_->GetInode(c->attr.rec.id)->size, 12u);
  fs_->Release(h);
  EXPECT_EQ(fs_->Read(h, 0, MutableByteSpan()).status().code(), Code::kBadHandle);
  EXPECT_EQ(fs_->Write(h, 0, AsBytes("x")).status().code(), Code::kBadHandle);
  EXPECT_EQ(fs_->Flush(h).code(), Code::kBadHandle);

  auto h2 = fs_->Open(c->attr.rec.id, O_RDONLY);
  ASSERT_TRUE(h2.ok());
  EXPECT_EQ(AsChars(ReadRange(*h2, 0, 100)), "hello, world");
  fs_->Release(*h2);

  EXPECT_EQ(fs_->Create(kRootId, "f", 0644, 0, 0, O_RDWR | O_CREAT | O_EXCL).status().code(),
            Code::kExists);
  // Without O_EXCL, Create opens the existing file.
  auto again = fs_->Create(kRootId, "f", 0644, 0, 0, O_RDWR | O_CREAT);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->attr.rec.id, c->attr.rec.id);
  EXPECT_EQ(AsChars(ReadRange(again->handle, 0, 100)), "hello, world");
  fs_->Release(again->handle);
}

TEST_F(FileServerTest, ReleaseCommitsAndTwoHandlesShareState) {
  const std::uint64_t a = CreateFile("f");
  const InodeId id = IdOf("/f");
  auto b = fs_->Open(id, O_RDWR);
  ASSERT_TRUE(b.ok());
  WriteAt(a, 0, AsBytes("aaaa"));
  WriteAt(*b, 2, AsBytes("bbbb"));
  EXPECT_EQ(AsChars(ReadRange(a, 0, 10)), "aabbbb");
  fs_->Release(a);  // commits both handles' writes
  EXPECT_EQ(db_->GetInode(id)->size, 6u);
  fs_->Release(*b);
  EXPECT_TRUE(*GetBytes("/f") == Bytes(AsBytes("aabbbb").begin(), AsBytes("aabbbb").end()));
}

class FileServerModelTest : public FileServerTest,
                            public ::testing::WithParamInterface<std::uint64_t> {};

TEST_P(FileServerModelTest, RandomWritesAndTruncatesMatchAModel) {
  std::mt19937_64 rng(GetParam());
  auto pick = [&](std::uint64_t lo, std::uint64_t hi) {
    return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng);
  };
  std::uint64_t h = CreateFile("model");
  const InodeId id = IdOf("/model");
  Bytes model;
  std::uint32_t seed = 100;
  std::uint64_t last_end = 0;

  auto check_all = [&](const char* when, int step) {
    auto attr = fs_->GetAttr(id);
    ASSERT_TRUE(attr.ok());
    ASSERT_EQ(attr->rec.size, model.size()) << when << " step " << step;
    ExpectWholeFile(h, model, step);
  };

  for (int step = 0; step < 150; ++step) {
    const auto op = pick(0, 99);
    if (op < 55) {
      // A write, often straddling a chunk boundary, often continuing the previous one (the
      // sequential buffer), sometimes from a chunk's start.
      const auto where = pick(0, 9);
      std::uint64_t off = where < 3   ? pick(1, 4) * kCS - pick(0, 5000)
                          : where < 5 ? std::min<std::uint64_t>(last_end, 5 * kCS)
                          : where < 6 ? pick(0, 4) * kCS
                                      : pick(0, 9 * kCS / 2);
      std::size_t len =
          static_cast<std::size_t>(pick(0, 9) < 2 ? pick(kCS, 2 * kCS) : pick(1, 300'000));
      Bytes data = Pattern(len, ++seed);
      WriteAt(h, off, data);
      last_end = off + len;
      if (model.size() < off + len) model.resize(off + len, 0);
      std::copy(data.begin(), data.end(), model.begin() + static_cast<std::ptrdiff_t>(off));
    } else if (op < 70) {
      // Truncate down or up (through SetAttr, which commits).
      std::uint64_t size = pick(0, 9) < 3 ? pick(0, 5) * kCS : pick(0, 5 * kCS);
      SetAttrRequest req;
      req.size = size;
      auto a = fs_->SetAttr(id, req);
      ASSERT_TRUE(a.ok()) << a.status().message();
      EXPECT_EQ(a->rec.size, size);
      model.resize(size, 0);
    } else if (op < 80) {
      ASSERT_TRUE(fs_->Flush(h).ok());
    } else if (op < 85) {
      // Close and reopen: everything must have been committed.
      fs_->Release(h);
      auto rec = db_->GetInode(id);
      ASSERT_TRUE(rec.ok());
      ASSERT_EQ(rec->size, model.size());
      auto reopened = fs_->Open(id, O_RDWR);
      ASSERT_TRUE(reopened.ok());
      h = *reopened;
    } else {
      // A random read.
      std::uint64_t off = pick(0, model.size() + 10);
      std::size_t len = static_cast<std::size_t>(pick(0, 3 * kCS));
      Bytes got = ReadRange(h, off, len);
      std::size_t want = off >= model.size() ? 0 : std::min<std::size_t>(len, model.size() - off);
      ASSERT_EQ(got.size(), want) << "step " << step;
      ASSERT_TRUE(
          std::equal(got.begin(), got.end(), model.begin() + static_cast<std::ptrdiff_t>(off)))
          << "step " << step;
    }
    if (step % 10 == 0) check_all("periodic", step);
  }
  check_all("end", -1);
  fs_->Release(h);
  auto got = GetBytes("/model");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(*got == model);
}

INSTANTIATE_TEST_SUITE_P(Seeds, FileServerModelTest,
                         ::testing::Values(7, 1234, 99, 5, 42, 2026, 31337, 8));

// Small writes into committed chunks (page staging: only the pages written are staged, the
// rest read from the old chunk until the commit merges them), page-aligned and not, with
// reads, hole punches, zeroed ranges, growth and commits between them, against a model.
class FileServerPageModelTest : public FileServerTest,
                                public ::testing::WithParamInterface<std::uint64_t> {};

TEST_P(FileServerPageModelTest, SmallWritesIntoCommittedChunksMatchAModel) {
  constexpr std::uint64_t kPage = 4096;
  std::mt19937_64 rng(GetParam());
  auto pick = [&](std::uint64_t lo, std::uint64_t hi) {
    return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng);
  };
  // 3.5 chunks, committed: the old chunks the writes below land in (the last one short).
  Bytes model = Pattern(static_cast<std::size_t>(3 * kCS + kCS / 2 + 100), 1);
  std::uint64_t h = CommittedFile("pages", model);
  const InodeId id = IdOf("/pages");
  std::uint32_t seed = 100;
  auto check_all = [&](int step) { ExpectWholeFile(h, model, step); };

  for (int step = 0; step < 300; ++step) {
    const auto op = pick(0, 99);
    if (op < 45) {
      // Whole pages (fio, databases), or any bytes (a page cut at either end or both), rarely
      // past the end; a chunk's first and last page and its last byte often.
      const auto kind = pick(0, 9);
      std::uint64_t off;
      std::size_t len;
      if (kind < 5) {
        off = pick(0, (model.size() + kPage) / kPage) * kPage;
        len = static_cast<std::size_t>(pick(1, 4) * kPage);
      } else if (kind < 7) {
        off = pick(1, 4) * kCS - pick(0, 2) * kPage - pick(0, 1);
        len = static_cast<std::size_t>(pick(1, 3 * kPage));
      } else {
        off = pick(0, model.size() + 2 * kPage);
        len = static_cast<std::size_t>(pick(1, 9000));
      }
      Bytes data = Pattern(len, ++seed);
      WriteAt(h, off, data);
      if (model.size() < off + len) model.resize(off + len, 0);
      std::copy(data.begin(), data.end(), model.begin() + static_cast<std::ptrdiff_t>(off));
    } else if (op < 52) {
      // A hole punched or a range zeroed, not committed: whole chunks become holes, the
      // partial ends are written as zeros.
      const std::uint64_t off = pick(0, model.size());
      const std::uint64_t len = pick(1, pick(0, 1) ? 3 * kPage : 2 * kCS);
      const bool punch = pick(0, 1);
      const int mode = punch ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE;
      ASSERT_TRUE(fs_->Fallocate(h, mode, off, len).ok()) << "step " << step;
      const std::uint64_t end =
          punch ? std::min<std::uint64_t>(off + len, model.size()) : off + len;
      if (model.size() < end) model.resize(end, 0);
      std::fill(model.begin() + static_cast<std::ptrdiff_t>(off),
                model.begin() + static_cast<std::ptrdiff_t>(end), 0);
    } else if (op < 56) {
      // The file grows without a commit (fallocate mode 0): the old chunks' ends read as zeros.
      const std::uint64_t size = model.size() + pick(1, kCS);
      ASSERT_TRUE(fs_->Fallocate(h, 0, 0, size).ok());
      model.resize(size, 0);
    } else if (op < 61) {
      // Truncate (SetAttr commits): into the middle of a chunk, often one written in part.
      const std::uint64_t size = pick(0, 9) < 2 ? pick(1, 4) * kCS : pick(0, 4 * kCS);
      SetAttrRequest req;
      req.size = size;
      ASSERT_TRUE(fs_->SetAttr(id, req).ok());
      model.resize(size, 0);
    } else if (op < 68) {
      ASSERT_TRUE(fs_->Flush(h).ok());
    } else if (op < 71) {
      fs_->Release(h);
      auto reopened = fs_->Open(id, O_RDWR);
      ASSERT_TRUE(reopened.ok());
      h = *reopened;
    } else {
      // Reads of a page, of bytes across staged and unstaged pages, of whole chunks, with a
      // read window (which must never hold a page older than what was written since).
      const std::uint64_t off =
          pick(0, 9) < 5 ? pick(0, model.size() / kPage) * kPage : pick(0, model.size() + 10);
      const std::size_t len =
          static_cast<std::size_t>(pick(0, 1) ? pick(1, 3 * kPage) : pick(1, 2 * kCS));
      Bytes got(len), wbuf(ReadWindow::kSize);
      ReadWindow w;
      w.buf = wbuf;
      auto n = fs_->Read(h, off, got, &w);
      ASSERT_TRUE(n.ok()) << n.status().message();
      const std::size_t want =
          off >= model.size() ? 0 : std::min<std::size_t>(len, model.size() - off);
      ASSERT_EQ(*n, want) << "step " << step;
      ASSERT_TRUE(std::equal(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(want),
                             model.begin() + static_cast<std::ptrdiff_t>(off)))
          << "step " << step << " read at " << off;
      if (w.n) {
        ASSERT_LE(w.offset + w.n, model.size());
        ASSERT_TRUE(std::equal(wbuf.begin(), wbuf.begin() + static_cast<std::ptrdiff_t>(w.n),
                               model.begin() + static_cast<std::ptrdiff_t>(w.offset)))
            << "step " << step << ": a stale read window at " << w.offset;
      }
    }
    if (step % 20 == 0) check_all(step);
  }
  check_all(-1);
  ExpectClosedAs(h, "/pages", model);
}

INSTANTIATE_TEST_SUITE_P(Seeds, FileServerPageModelTest,
                         ::testing::Values(1, 2, 3, 17, 99, 2026, 4242, 65537));

// Page staging at its boundaries: one byte at a chunk's first and last byte, a page exactly
// at a chunk's end, the last page of a short last chunk and its last byte, one byte past the
// end, a hole punched across two chunks staged in part, and a truncate into a page then
// growth, each checked against a model.
TEST_F(FileServerTest, PageStagingAtTheBoundaries) {
  constexpr std::uint64_t kPage = 4096;
  Bytes model = Pattern(static_cast<std::size_t>(2 * kCS + 5000), 1);
  const std::uint64_t h = CommittedFile("b", model);
  std::uint32_t seed = 10;
  auto write = [&](std::uint64_t off, std::size_t len) {
    const Bytes d = Pattern(len, ++seed);
    WriteAt(h, off, d);
    if (model.size() < off + len) model.resize(off + len, 0);
    std::copy(d.begin(), d.end(), model.begin() + static_cast<std::ptrdiff_t>(off));
    ExpectWholeFile(h, model, static_cast<int>(seed));
  };
  write(0, 1);
  write(kCS - 1, 1);
  write(kCS - kPage, kPage);
  write(2 * kCS + 4999, 1);
  write(2 * kCS + 4096, 904);
  write(2 * kCS + 4095, 2);
  write(kCS + kPage, kPage);
  write(2 * kCS + 5000, 1);
  ASSERT_TRUE(fs_->Flush(h).ok());
  ExpectWholeFile(h, model, 100);
  write(2 * kCS + 4999, 1);
  write(kCS - 1, 1);
  write(kCS, 1);
  ASSERT_TRUE(fs_->Fallocate(h, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, kCS - 10, 20).ok());
  std::fill(model.begin() + kCS - 10, model.begin() + kCS + 10, 0);
  ExpectWholeFile(h, model, 101);
  SetAttrRequest req;
  req.size = 2 * kCS + 4097;
  ASSERT_TRUE(fs_->SetAttr(IdOf("/b"), req).ok());
  model.resize(static_cast<std::size_t>(2 * kCS + 4097));
  ASSERT_TRUE(fs_->Fallocate(h, 0, 0, 3 * kCS).ok());
  model.resize(static_cast<std::size_t>(3 * kCS), 0);
  ExpectWholeFile(h, model, 102);
  write(2 * kCS + 8000, 1);
  ASSERT_TRUE(fs_->Flush(h).ok());
  ExpectWholeFile(h, model, 103);
  ExpectClosedAs(h, "/b", model);
}

// Every page of a chunk written one at a time, in reverse: the chunk ends up wholly in
// staging (an ordinary dirty chunk), reads right on the way and commits whole.
TEST_F(FileServerTest, AChunkWrittenPageByPageEndsWhollyStaged) {
  constexpr std::uint64_t kPage = 4096;
  Bytes model = Pattern(static_cast<std::size_t>(kCS + 10), 1);
  const std::uint64_t h = CommittedFile("p", model);
  for (std::uint64_t page = kCS / kPage; page-- > 0;) {
    const Bytes d = Pattern(kPage, static_cast<std::uint32_t>(page + 2));
    WriteAt(h, page * kPage, d);
    std::copy(d.begin(), d.end(), model.begin() + static_cast<std::ptrdiff_t>(page * kPage));
    if (page % 64 == 0) ExpectWholeFile(h, model, static_cast<int>(page));
  }
  ASSERT_TRUE(fs_->Flush(h).ok());
  ExpectWholeFile(h, model, -1);
  ExpectClosedAs(h, "/p", model);
}

// A write into a chunk staged in part that fails before it writes (it cannot read the page
// lost by an earlier failed write around it) leaves the pages it did not reach the old
// chunk's: they read, and commit, as the old bytes, never as zeros.
TEST_F(FileServerTest, AFailedWriteIntoAChunkStagedInPartLeavesTheOldBytes) {
  constexpr std::uint64_t kPage = 4096;
  const Bytes old = Pattern(kCS, 1);
  const std::uint64_t h = CommittedFile("f", old);
  const Bytes page = Pattern(kPage, 2);
  WriteAt(h, kPage, page);  // page 1 staged
  // Staging may not grow past its first page: rewriting page 1 fails, and page 1 is lost.
  auto lost = test::WithFileSizeLimit(kPage, [&] { return fs_->Write(h, kPage, page); });
  ASSERT_FALSE(lost.ok());
  // Cut at both ends, so it reads around itself, and page 1 cannot be read.
  auto failed = fs_->Write(h, kPage + 100, Pattern(3 * kPage, 3));
  ASSERT_FALSE(failed.ok());
  const Bytes old_pages(old.begin() + 2 * kPage, old.begin() + 4 * kPage);
  EXPECT_EQ(ReadRange(h, 2 * kPage, 2 * kPage), old_pages);
  Bytes lost_page(kPage);
  EXPECT_FALSE(fs_->Read(h, kPage, lost_page).ok()) << "the lost page reads as an error";
  WriteAt(h, kPage, page);  // whole: readable again
  ASSERT_TRUE(fs_->Flush(h).ok());
  Bytes want = old;
  std::copy(page.begin(), page.end(), want.begin() + kPage);
  ExpectWholeFile(h, want, 0);
  fs_->Release(h);
}

// A truncate into a chunk staged in part that fails (staging full) leaves what it did not
// reach as it was: the chunk's old bytes past the size asked for still read as before (the
// staged page its zeroing cut reads as an error until it is written whole, as before page
// staging), and nothing of it is committed.
TEST_F(FileServerTest, AFailedTruncateIntoAChunkStagedInPartKeepsTheOldBytes) {
  constexpr std::uint64_t kPage = 4096;
  Bytes model = Pattern(2 * kCS, 1);
  const std::uint64_t h = CommittedFile("g", model);
  const Bytes page = Pattern(kPage, 2);
  WriteAt(h, 0, page);
  WriteAt(h, kCS, page);  // chunk 1 is staged in part, in the second slot
  std::copy(page.begin(), page.end(), model.begin());
  std::copy(page.begin(), page.end(), model.begin() + kCS);
  SetAttrRequest req;
  req.size = kCS + 1003;
  auto cut = test::WithFileSizeLimit(kCS, [&] { return fs_->SetAttr(IdOf("/g"), req); });
  ASSERT_FALSE(cut.ok());
  EXPECT_EQ(ReadRange(h, 0, kCS), Bytes(model.begin(), model.begin() + kCS));
  EXPECT_EQ(ReadRange(h, kCS + kPage, kCS - kPage),
            Bytes(model.begin() + kCS + kPage, model.end()));
  Bytes cut_page(kPage);
  EXPECT_FALSE(fs_->Read(h, kCS, cut_page).ok());
  WriteAt(h, kCS, page);
  ASSERT_TRUE(fs_->Flush(h).ok());
  ExpectWholeFile(h, model, 0);
  fs_->Release(h);
}

// A write into part of a chunk that is not stored here (and no peer to ask) fails at once,
// as it did when every such write copied the chunk in: with page staging it would have
// succeeded and left the failure to the commit, which may hold the namespace lock.
TEST_F(FileServerTest, AWriteIntoAChunkNotHereFailsAtOnce) {
  ASSERT_TRUE(StoreBytes("/f", Pattern(kCS, 27)).ok());
  const InodeId id = IdOf("/f");
  ASSERT_TRUE(store_->Remove(db_->GetInode(id)->manifest[0]).ok());
  auto h = fs_->Open(id, O_RDWR);
  ASSERT_TRUE(h.ok());
  auto n = fs_->Write(*h, 4096, Pattern(4096, 28));
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Code::kUnavailable);
  EXPECT_TRUE(fs_->Flush(*h).ok()) << "nothing was written";
  fs_->Release(*h);
}

// Writes in order from a chunk's start go to the chunk store as each chunk fills, before any
// commit, and bypass staging; the file reads right throughout and commits whole.
TEST_F(FileServerTest, SequentialWritesStoreEachChunkAsItFills) {
  const Bytes data = Pattern(3 * kCS + kCS / 2, 31);
  const std::uint64_t h = CreateFile("seq");
  std::size_t at = 0;
  for (std::size_t piece : {std::size_t{4096}, kCS - 4096, kCS / 3, kCS}) {
    WriteAt(h, at, ByteSpan(data).subspan(at, piece));
    at += piece;
  }
  // Stored by the worker threads, without waiting for a commit.
  for (int i = 0; i < 500 && StoredChunks().size() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(StoredChunks().size(), 2u) << "two whole chunks written, none committed yet";
  EXPECT_EQ(db_->GetInode(IdOf("/seq"))->size, 0u);
  Bytes so_far = ReadRange(h, 0, at);
  EXPECT_TRUE(so_far == Bytes(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(at)));
  WriteAt(h, at, ByteSpan(data).subspan(at));
  ASSERT_TRUE(fs_->Flush(h).ok());
  EXPECT_EQ(StoredChunks().size(), 4u);
  fs_->Release(h);
  Bytes back;
  ASSERT_TRUE(fs_->Get("/seq",
                       [&](ByteSpan b) {
                         back.insert(back.end(), b.begin(), b.end());
                         return Ok();
                       })
                  .ok());
  EXPECT_TRUE(back == data);
}

TEST_F(FileServerTest, TruncateDownThenUpReadsZeros) {
  const Bytes data = Pattern(5 * kCS / 2, 11);  // 2.5 chunks
  ASSERT_TRUE(StoreBytes("/f", data).ok());
  const InodeId id = IdOf("/f");
  SetAttrRequest down;
  down.size = 3 * kCS / 2;
  ASSERT_TRUE(fs_->SetAttr(id, down).ok());
  SetAttrRequest up;
  up.size = 3 * kCS;
  ASSERT_TRUE(fs_->SetAttr(id, up).ok());
  auto got = GetBytes("/f");
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 3 * kCS);
  EXPECT_TRUE(std::equal(data.begin(), data.begin() + 3 * kCS / 2, got->begin()));
  EXPECT_TRUE(std::all_of(got->begin() + 3 * kCS / 2, got->end(), [](auto c) { return c == 0; }));
}

TEST_F(FileServerTest, ShrinkingADirtyChunkThenGrowingReadsZeros) {
  const std::uint64_t h = CreateFile("f");
  const InodeId id = IdOf("/f");
  const Bytes data = Pattern(kCS + 500'000, 12);
  WriteAt(h, 0, data);  // chunk 1 dirty, uncommitted
  SetAttrRequest down;
  down.size = kCS + 100;
  ASSERT_TRUE(fs_->SetAttr(id, down).ok());
  // Grow by writing past the end, leaving a gap.
  WriteAt(h, kCS + 300'000, AsBytes("tail"));
  Bytes got = ReadRange(h, 0, 2 * kCS);
  ASSERT_EQ(got.size(), kCS + 300'004);
  EXPECT_TRUE(std::equal(data.begin(), data.begin() + kCS + 100, got.begin()));
  EXPECT_TRUE(std::all_of(got.begin() + kCS + 100, got.begin() + kCS + 300'000,
                          [](auto c) { return c == 0; }));
  EXPECT_EQ(AsChars(ByteSpan(got).subspan(kCS + 300'000)), "tail");

  // Same with a truncate up instead of a write, and after a flush.
  down.size = kCS + 10;
  ASSERT_TRUE(fs_->SetAttr(id, down).ok());
  SetAttrRequest up;
  up.size = 2 * kCS;
  ASSERT_TRUE(fs_->SetAttr(id, up).ok());
  fs_->Release(h);
  auto all = GetBytes("/f");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2 * kCS);
  EXPECT_TRUE(std::equal(data.begin(), data.begin() + kCS + 10, all->begin()));
  EXPECT_TRUE(std::all_of(all->begin() + kCS + 10, all->end(), [](auto c) { return c == 0; }));
}

TEST_F(FileServerTest, ShrinkUncommittedWriteWithinOneChunkThenGrow) {
  // Chunk 0 committed with data; then overwritten (dirty) and shrunk inside the same chunk.
  ASSERT_TRUE(StoreBytes("/f", Pattern(800'000, 13)).ok());
  const InodeId id = IdOf("/f");
  auto h = fs_->Open(id, O_RDWR);
  ASSERT_TRUE(h.ok());
  WriteAt(*h, 0, Pattern(700'000, 14));
  SetAttrRequest req;
  req.size = 1000;
  ASSERT_TRUE(fs_->SetAttr(id, req).ok());
  req.size = 800'000;
  ASSERT_TRUE(fs_->SetAttr(id, req).ok());
  Bytes got = ReadRange(*h, 0, kCS);
  ASSERT_EQ(got.size(), 800'000u);
  Bytes want = Pattern(700'000, 14);
  want.resize(1000);
  want.resize(800'000, 0);
  EXPECT_TRUE(got == want);
  fs_->Release(*h);
}

TEST_F(FileServerTest, OpenWithTruncEmptiesTheFile) {
  ASSERT_TRUE(StoreBytes("/f", Pattern(2 * kCS, 15)).ok());
  const InodeId id = IdOf("/f");
  auto h = fs_->Open(id, O_WRONLY | O_TRUNC);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(fs_->GetAttr(id)->rec.size, 0u);
  WriteAt(*h, 0, AsBytes("new"));
  fs_->Release(*h);
  EXPECT_EQ(AsChars(*GetBytes("/f")), "new");
  // O_TRUNC on a read-only open is ignored.
  auto r = fs_->Open(id, O_RDONLY | O_TRUNC);
  ASSERT_TRUE(r.ok());
  fs_->Release(*r);
  EXPECT_EQ(AsChars(*GetBytes("/f")), "new");
}

TEST_F(FileServerTest, AppendWritesGoToTheEnd) {
  const std::uint64_t h = CreateFile("log", O_WRONLY | O_APPEND);
  WriteAt(h, 0, AsBytes("one,"));
  WriteAt(h, 0, AsBytes("two,"));
  WriteAt(h, 999, AsBytes("three"));
  fs_->Release(h);
  EXPECT_EQ(AsChars(*GetBytes("/log")), "one,two,three");

  // Across a chunk boundary, after reopening with O_APPEND.
  const InodeId id = IdOf("/log");
  SetAttrRequest req;
  req.size = kCS - 2;
  ASSERT_TRUE(fs_->SetAttr(id, req).ok());
  auto a = fs_->Open(id, O_WRONLY | O_APPEND);
  auto plain = fs_->Open(id, O_RDWR);
  ASSERT_TRUE(a.ok() && plain.ok());
  WriteAt(*a, 0, AsBytes("xyzw"));
  WriteAt(*plain, 0, AsBytes("O"));  // a handle without O_APPEND writes where it is told
  fs_->Release(*a);
  fs_->Release(*plain);
  auto got = GetBytes("/log");
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), kCS + 2);
  EXPECT_EQ(AsChars(ByteSpan(*got).first(13)), "One,two,three");
  EXPECT_EQ(AsChars(ByteSpan(*got).last(4)), "xyzw");
}

TEST_F(FileServerTest, SparseFileStoresOnlyWrittenChunks) {
  const std::uint64_t h = CreateFile("sparse");
  WriteAt(h, 3 * kCS, AsBytes("end of a hole"));
  ASSERT_TRUE(fs_->Flush(h).ok());
  fs_->Release(h);
  auto rec = db_->GetInode(IdOf("/sparse"));
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->size, 3 * kCS + 13);
  ASSERT_EQ(rec->manifest.size(), 1u);  // holes take no room
  for (int i = 0; i < 3; ++i) EXPECT_EQ(rec->manifest[static_cast<std::size_t>(i)], cas::kHoleId);
  EXPECT_NE(rec->manifest[3], cas::kHoleId);
  EXPECT_EQ(StoredChunks().size(), 1u);
  auto got = GetBytes("/sparse");
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 3 * kCS + 13);
  EXPECT_TRUE(std::all_of(got->begin(), got->begin() + 3 * kCS, [](auto c) { return c == 0; }));
  EXPECT_EQ(AsChars(ByteSpan(*got).last(13)), "end of a hole");
  // A chunk of zeros written explicitly is a hole too.
  ASSERT_TRUE(StoreBytes("/zeros", Bytes(2 * kCS, 0)).ok());
  EXPECT_EQ(StoredChunks().size(), 1u);
  EXPECT_EQ(GetBytes("/zeros")->size(), 2 * kCS);
}

TEST_F(FileServerTest, OneByteWriteStoresExactlyOneNewChunk) {
  const Bytes data = Pattern(4 * kCS, 16);
  ASSERT_TRUE(StoreBytes("/f", data).ok());
  const InodeId id = IdOf("/f");
  const auto before = StoredChunks();
  ASSERT_EQ(before.size(), 4u);
  const auto old_manifest = db_->GetInode(id)->manifest;

  auto h = fs_->Open(id, O_RDWR);
  ASSERT_TRUE(h.ok());
  const std::uint64_t at = 2 * kCS + 12345;
  const std::uint8_t byte = static_cast<std::uint8_t>(data[at] ^ 0xff);
  WriteAt(*h, at, ByteSpan(&byte, 1));
  ASSERT_TRUE(fs_->Flush(*h).ok());
  fs_->Release(*h);

  const auto after = StoredChunks();
  EXPECT_EQ(after.size(), 5u);
  EXPECT_TRUE(std::includes(after.begin(), after.end(), before.begin(), before.end()));
  const auto manifest = db_->GetInode(id)->manifest;
  ASSERT_EQ(manifest.size(), 4u);
  EXPECT_EQ(manifest[0], old_manifest[0]);
  EXPECT_EQ(manifest[1], old_manifest[1]);
  EXPECT_NE(manifest[2], old_manifest[2]);
  EXPECT_EQ(manifest[3], old_manifest[3]);

  Bytes want = data;
  want[at] = byte;
  EXPECT_TRUE(*GetBytes("/f") == want);
  // Flushing again with nothing written stores and commits nothing.
  const int changes = local_changes_;
  auto h2 = fs_->Open(id, O_RDWR);
  ASSERT_TRUE(h2.ok());
  ASSERT_TRUE(fs_->Flush(*h2).ok());
  fs_->Release(*h2);
  EXPECT_EQ(local_changes_, changes);
  EXPECT_EQ(StoredChunks().size(), 5u);
}

// A commit stores staged chunks on the store queue, two at a time, and the last on its own
// thread: for 0 to 6 chunks (none, the last alone, as many as in flight, one more), each lands
// in its own place of the manifest, and writing the same chunks again after the commit (their
// staging copies were freed) copies them in afresh.
TEST_F(FileServerTest, ACommitOfStagedChunksPutsEachInItsPlace) {
  for (std::uint64_t chunks = 0; chunks <= 6; ++chunks) {
    SCOPED_TRACE(testing::Message() << chunks << " chunks staged");
    const std::string path = "/s" + std::to_string(chunks);
    Bytes model = Pattern(6 * kCS + 777, static_cast<std::uint32_t>(chunks + 40));
    ASSERT_TRUE(StoreBytes(path, model).ok());
    const InodeId id = IdOf(path);
    const auto before = db_->GetInode(id)->manifest;
    for (int round = 0; round < 2; ++round) {
      auto h = fs_->Open(id, O_RDWR);
      ASSERT_TRUE(h.ok());
      // Chunks 6, 4, 2, ... out of order: one byte in the middle of each (copy-on-write).
      for (std::uint64_t k = 0; k < chunks; ++k) {
        const std::uint64_t i = (6 - k) % 7;
        const std::uint64_t at =
            std::min<std::uint64_t>(i * kCS + 1000 + k + round, model.size() - 1);
        const std::uint8_t byte = static_cast<std::uint8_t>(model[at] ^ (0x5a + round));
        WriteAt(*h, at, ByteSpan(&byte, 1));
        model[at] = byte;
      }
      ASSERT_TRUE(fs_->Flush(*h).ok());
      EXPECT_TRUE(ReadRange(*h, 0, model.size()) == model);
      fs_->Release(*h);
      auto got = GetBytes(path);
      ASSERT_TRUE(got.ok());
      ASSERT_TRUE(*got == model) << "round " << round;
    }
    const auto after = db_->GetInode(id)->manifest;
    ASSERT_EQ(after.size(), before.size());
    std::size_t changed = 0;
    for (std::size_t i = 0; i < after.size(); ++i) changed += after[i] != before[i];
    EXPECT_EQ(changed, chunks);
  }
}

// A store that takes `puts_left` more puts, then refuses every one as a full disk does.
class RefusingStore final : public ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::atomic<int> puts_left{1 << 30};
  Status Put(const cas::ChunkId& id, ByteSpan data) override {
    if (puts_left.fetch_sub(1) <= 0) return Err(Code::kNoSpace, "disk full (test)");
    return inner_.Put(id, data);
  }
};

// Chunks the store refuses in the middle of a commit of many stay in staging: the commit
// fails with the store's error, the file reads its new bytes meanwhile, and the next commit,
// once the disk has room, stores what was left. Nothing is lost, whichever chunks were taken.
TEST_F(FileServerTest, StagedChunksTheStoreRefusesAreStoredByTheNextCommit) {
  for (int taken = 0; taken <= 5; ++taken) {
    SCOPED_TRACE(testing::Message() << taken << " puts taken");
    RefusingStore refusing(*store_);
    FileServer fs(*db_, refusing, cas::ChunkHasher(FixedKey()), dir_.path() / "staging");
    const std::string name = "r" + std::to_string(taken);
    Bytes model = Pattern(5 * kCS, static_cast<std::uint32_t>(taken + 70));
    auto c = fs.Create(kRootId, name, 0644, 1000, 1000, O_RDWR);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(fs.Write(c->handle, 0, model).ok());
    ASSERT_TRUE(fs.Flush(c->handle).ok());
    for (std::uint64_t i = 0; i < 5; ++i) {  // five staged chunks
      const std::uint64_t at = i * kCS + 4096 * (i + 1);
      const Bytes piece = Pattern(100, static_cast<std::uint32_t>(i + 200));
      ASSERT_TRUE(fs.Write(c->handle, at, piece).ok());
      std::copy(piece.begin(), piece.end(), model.begin() + static_cast<std::ptrdiff_t>(at));
    }
    refusing.puts_left = taken;
    Status s = fs.Flush(c->handle);
    if (taken < 5) {
      EXPECT_EQ(s.code(), Code::kNoSpace) << s.message();
    } else {
      EXPECT_TRUE(s.ok()) << s.message();
    }
    Bytes got(model.size());
    auto n = fs.Read(c->handle, 0, got);
    ASSERT_TRUE(n.ok());
    EXPECT_TRUE(got == model);
    refusing.puts_left = 1 << 30;
    ASSERT_TRUE(fs.Flush(c->handle).ok());
    fs.Release(c->handle);
    auto rec = db_->GetInode(c->attr.rec.id);
    ASSERT_TRUE(rec.ok());
    Bytes stored;
    for (std::size_t i = 0; i < rec->manifest.size(); ++i) {
      auto chunk = store_->Get(rec->manifest[i]);
      ASSERT_TRUE(chunk.ok()) << "chunk " << i;
      stored.insert(stored.end(), chunk->begin(), chunk->end());
    }
    EXPECT_TRUE(stored == model);
  }
}

// A store that throws (an allocation failing, say) while a commit's staged chunks are stored
// on the store queue: the commit fails with an error instead of the process ending, nothing is
// lost, and the next commit stores the chunks.
TEST_F(FileServerTest, AStoreThatThrowsFailsTheCommitAndLosesNothing) {
  class Throwing final : public ForwardingStore {
   public:
    using ForwardingStore::ForwardingStore;
    std::atomic<bool> fail{false};
    Status Put(const cas::ChunkId& id, ByteSpan data) override {
      if (fail) throw std::runtime_error("out of memory (test)");
      return inner_.Put(id, data);
    }
  };
  Throwing throwing(*store_);
  FileServer fs(*db_, throwing, cas::ChunkHasher(FixedKey()), dir_.path() / "staging");
  Bytes model = Pattern(5 * kCS, 77);
  auto c = fs.Create(kRootId, "t", 0644, 1000, 1000, O_RDWR);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(fs.Write(c->handle, 0, model).ok());
  ASSERT_TRUE(fs.Flush(c->handle).ok());
  for (std::uint64_t i = 0; i < 5; ++i) {
    const std::uint64_t at = i * kCS + 333;
    const Bytes piece = Pattern(50, static_cast<std::uint32_t>(i + 300));
    ASSERT_TRUE(fs.Write(c->handle, at, piece).ok());
    std::copy(piece.begin(), piece.end(), model.begin() + static_cast<std::ptrdiff_t>(at));
  }
  throwing.fail = true;
  Status s = fs.Flush(c->handle);
  EXPECT_EQ(s.code(), Code::kIOError) << s.message();
  throwing.fail = false;
  ASSERT_TRUE(fs.Flush(c->handle).ok());
  fs.Release(c->handle);
  auto h = fs.Open(c->attr.rec.id, O_RDONLY);
  ASSERT_TRUE(h.ok());
  Bytes got(model.size());
  auto n = fs.Read(*h, 0, got);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, model.size());
  EXPECT_TRUE(got == model);
  fs.Release(*h);
}

TEST_F(FileServerTest, SetAttrChangesModeOwnerAndTimes) {
  const std::uint64_t h = CreateFile("f");
  fs_->Release(h);
  const InodeId id = IdOf("/f");
  const auto v0 = db_->GetInode(id)->version;
  SetAttrRequest req;
  req.mode = 0100600;  // file type bits are dropped
  req.uid = 7;
  req.gid = 8;
  req.mtime_ns = 42;
  auto a = fs_->SetAttr(id, req);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->rec.mode, 0600u);
  EXPECT_EQ(a->rec.uid, 7u);
  EXPECT_EQ(a->rec.gid, 8u);
  EXPECT_EQ(a->rec.mtime_ns, 42);
  EXPECT_GT(a->rec.version, v0);
  SetAttrRequest trunc_dir;
  trunc_dir.size = 0;
  EXPECT_EQ(fs_->SetAttr(kRootId, trunc_dir).status().code(), Code::kIsDir);
  EXPECT_EQ(fs_->SetAttr(999, req).status().code(), Code::kNotFound);
}

// tar writes a file, then sets its owner, mode and times, then closes it: the attribute changes
// wait for the commit of the writes, so the file is one namespace commit, not four. Readers on
// this node see the new attributes at once; the committed record gets them at the flush.
TEST_F(FileServerTest, AttributesSetOnAFileWithUncommittedWritesCommitWithThem) {
  const std::uint64_t h = CreateFile("t");
  const InodeId id = IdOf("/t");
  WriteAt(h, 0, Pattern(5000, 3));
  const auto v0 = db_->GetInode(id)->version;
  SetAttrRequest req;
  req.mode = 0640;
  req.uid = 7;
  req.gid = 8;
  req.mtime_ns = 42;
  req.atime_ns = 43;
  auto a = fs_->SetAttr(id, req);
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->rec.mode, 0640u);
  EXPECT_EQ(a->rec.uid, 7u);
  EXPECT_EQ(a->rec.gid, 8u);
  EXPECT_EQ(a->rec.mtime_ns, 42);
  EXPECT_EQ(a->rec.size, 5000u);
  EXPECT_EQ(fs_->GetAttr(id)->rec.mode, 0640u);
  EXPECT_EQ(db_->GetInode(id)->version, v0) << "nothing committed before the flush";
  ASSERT_TRUE(fs_->Flush(h).ok());
  auto rec = db_->GetInode(id);
  EXPECT_EQ(rec->mode, 0640u);
  EXPECT_EQ(rec->uid, 7u);
  EXPECT_EQ(rec->gid, 8u);
  EXPECT_EQ(rec->mtime_ns, 42);
  EXPECT_EQ(rec->atime_ns, 43);
  EXPECT_EQ(rec->size, 5000u);
  // With nothing uncommitted, a change commits at once.
  SetAttrRequest again;
  again.mode = 0600;
  ASSERT_TRUE(fs_->SetAttr(id, again).ok());
  EXPECT_EQ(db_->GetInode(id)->mode, 0600u);
  fs_->Release(h);
  EXPECT_EQ(db_->GetInode(id)->mode, 0600u);
  EXPECT_EQ(db_->GetInode(id)->mtime_ns, 42);
}

TEST_F(FileServerTest, UnlinkWhileOpenKeepsTheHandleReadable) {
  ASSERT_TRUE(StoreBytes("/f", Pattern(1000, 17)).ok());
  const InodeId id = IdOf("/f");
  auto h = fs_->Open(id, O_RDWR);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(fs_->Unlink(kRootId, "f").ok());
  EXPECT_EQ(fs_->Lookup(kRootId, "f").status().code(), Code::kNotFound);
  EXPECT_TRUE(ReadRange(*h, 0, 2000) == Pattern(1000, 17));
  WriteAt(*h, 0, AsBytes("x"));
  EXPECT_TRUE(fs_->Flush(*h).ok());  // nothing to commit to, not an error
  fs_->Release(*h);
  EXPECT_EQ(fs_->GetAttr(id).status().code(), Code::kNotFound);
}

// --- Remote updates of open files ----------------------------------------------------------

// A newer version of `id` as a peer would send it.
InodeRecord RemoteVersion(NamespaceDb& db, InodeId id) {
  auto rec = db.GetInode(id);
  EXPECT_TRUE(rec.ok());
  InodeRecord r = rec.ok() ? *rec : InodeRecord{};
  r.version = {r.version.hlc + 1'000'000, 999};
  return r;
}

// A handle keeps reading the version it opened, whole, when a peer replaces the file; the
// next open gets the new version. (A reader never sees two versions mixed.)
TEST_F(FileServerTest, AnOpenHandleKeepsItsVersionAndTheNextOpenGetsTheRemoteOne) {
  const Bytes old_data = Pattern(2 * kCS, 30);
  ASSERT_TRUE(StoreBytes("/f", old_data).ok());
  const InodeId id = IdOf("/f");
  auto h = fs_->Open(id, O_RDONLY);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(ReadRange(*h, 0, 100) == Bytes(old_data.begin(), old_data.begin() + 100));

  // A peer shrinks the file to half a chunk.
  const Bytes half = Pattern(kCS / 2, 31);
  const auto half_id = cas::ChunkHasher(FixedKey()).IdOf(half);
  ASSERT_TRUE(fs_->StoreChunk(half_id, half).ok());
  InodeRecord r = RemoteVersion(*db_, id);
  r.size = half.size();
  r.manifest.clear();
  r.manifest.Set(0, half_id);
  auto won = fs_->ApplyRemote(net::Changes{1, {r}, {}}, 999);
  ASSERT_TRUE(won.ok());
  ASSERT_EQ(won->inodes.size(), 1u);

  EXPECT_TRUE(ReadRange(*h, 0, 2 * kCS) == old_data) << "the open handle changed version";
  auto h2 = fs_->Open(id, O_RDONLY);
  ASSERT_TRUE(h2.ok());
  EXPECT_TRUE(ReadRange(*h2, 0, 2 * kCS) == half);
  // Attributes and version as each handle reads them (the kernel asks with the handle before
  // a read that depends on the size): never one version's size with another's bytes.
  auto by_old = fs_->GetAttr(id, *h);
  auto by_new = fs_->GetAttr(id, *h2);
  auto plain = fs_->GetAttr(id);
  ASSERT_TRUE(by_old.ok() && by_new.ok() && plain.ok());
  EXPECT_EQ(by_old->rec.size, old_data.size());
  EXPECT_EQ(by_new->rec.size, half.size());
  EXPECT_EQ(plain->rec.size, half.size());
  EXPECT_EQ(by_old->nlink, 1u);
  EXPECT_LT(by_old->rec.version, r.version);
  EXPECT_EQ(fs_->HandleVersion(*h), by_old->rec.version);
  EXPECT_EQ(fs_->HandleVersion(*h2), r.version);
  EXPECT_EQ(fs_->HandleVersion(~std::uint64_t{0}), std::nullopt);
  auto unknown = fs_->GetAttr(id, ~std::uint64_t{0});  // an unknown handle: the file's own
  ASSERT_TRUE(unknown.ok());
  EXPECT_EQ(unknown->rec.size, half.size());
  fs_->Release(*h);
  auto after = fs_->GetAttr(id, *h);  // released: the file's own
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->rec.size, half.size());
  fs_->Release(*h2);
  EXPECT_TRUE(*GetBytes("/f") == half);
}

// A read given a window brings the whole segment around it only from the file's current
// version: a handle still reading an older one reads just what it asked for.
TEST_F(FileServerTest, AReadWindowComesOnlyFromTheCurrentVersion) {
  constexpr std::size_t kW = ReadWindow::kSize;
  const Bytes old_data = Pattern(kCS + 3 * kW + 100, 40);
  ASSERT_TRUE(StoreBytes("/f", old_data).ok());
  const InodeId id = IdOf("/f");
  auto h = fs_->Open(id, O_RDONLY);
  ASSERT_TRUE(h.ok());
  Bytes wbuf(kW);
  auto read = [&](std::uint64_t handle, std::uint64_t off, std::size_t len, ReadWindow& w) {
    w = ReadWindow{};
    w.buf = wbuf;
    Bytes out(len);
    auto n = fs_->Read(handle, off, out, &w);
    EXPECT_TRUE(n.ok());
    out.resize(n.ok() ? *n : 0);
    return out;
  };
  auto slice = [](const Bytes& b, std::size_t off, std::size_t n) {
    return Bytes(b.begin() + off, b.begin() + off + n);
  };
  ReadWindow w;
  EXPECT_EQ(read(*h, kCS + kW + 4096, 4096, w), slice(old_data, kCS + kW + 4096, 4096));
  EXPECT_EQ(w.offset, kCS + kW);
  ASSERT_EQ(w.n, kW);
  EXPECT_EQ(slice(wbuf, 0, kW), slice(old_data, kCS + kW, kW));
  // The last segment is cut at the end of the file; a read of all of it has nothing more.
  EXPECT_EQ(read(*h, kCS + 3 * kW, 50, w), slice(old_data, kCS + 3 * kW, 50));
  EXPECT_EQ(w.offset, kCS + 3 * kW);
  EXPECT_EQ(w.n, 100u);
  EXPECT_EQ(slice(wbuf, 0, 100), slice(old_data, kCS + 3 * kW, 100));
  EXPECT_EQ(read(*h, kCS + 3 * kW, 4096, w), slice(old_data, kCS + 3 * kW, 100));
  EXPECT_EQ(w.n, 0u);
  // Across two segments, at or past the end, and empty: nothing more.
  EXPECT_EQ(read(*h, kW - 4096, 8192, w), slice(old_data, kW - 4096, 8192));
  EXPECT_EQ(w.n, 0u);
  EXPECT_TRUE(read(*h, old_data.size(), 4096, w).empty());
  EXPECT_EQ(w.n, 0u);
  EXPECT_TRUE(read(*h, (std::uint64_t{1} << 63) - 1, 1, w).empty());
  EXPECT_EQ(w.n, 0u);
  EXPECT_TRUE(read(*h, 0, 0, w).empty());
  EXPECT_EQ(w.n, 0u);

  // A peer replaces the file: the open handle keeps its version, without a window.
  const Bytes fresh = Pattern(2 * kW, 41);
  const auto fresh_id = cas::ChunkHasher(FixedKey()).IdOf(fresh);
  ASSERT_TRUE(fs_->StoreChunk(fresh_id, fresh).ok());
  InodeRecord r = RemoteVersion(*db_, id);
  r.size = fresh.size();
  r.manifest.clear();
  r.manifest.Set(0, fresh_id);
  ASSERT_TRUE(fs_->ApplyRemote(net::Changes{1, {r}, {}}, 999).ok());
  EXPECT_EQ(read(*h, 4096, 4096, w), slice(old_data, 4096, 4096));
  EXPECT_EQ(w.n, 0u) << "a window from a version the inode no longer has";
  auto h2 = fs_->Open(id, O_RDONLY);
  ASSERT_TRUE(h2.ok());
  EXPECT_EQ(read(*h2, 4096, 4096, w), slice(fresh, 4096, 4096));
  EXPECT_EQ(w.n, kW);
  EXPECT_EQ(slice(wbuf, 0, kW), slice(fresh, 0, kW));
  EXPECT_EQ(read(*h, 4096, 4096, w), slice(old_data, 4096, 4096));
  EXPECT_EQ(w.n, 0u);
  fs_->Release(*h);
  fs_->Release(*h2);
}

// Uncommitted bytes, holes and a window too small: no window.
TEST_F(FileServerTest, AReadWindowIsNeverOfUncommittedBytesOrHoles) {
  constexpr std::size_t kW = ReadWindow::kSize;
  const std::uint64_t h = CreateFile("f");
  const Bytes data = Pattern(2 * kW, 42);
  WriteAt(h, 0, data);
  Bytes wbuf(kW), out(4096);
  ReadWindow w;
  w.buf = wbuf;
  ASSERT_TRUE(fs_->Read(h, 4096, out, &w).ok());
  EXPECT_EQ(w.n, 0u) << "uncommitted";
  ASSERT_TRUE(fs_->Flush(h).ok());
  ASSERT_TRUE(fs_->Read(h, 4096, out, &w).ok());
  EXPECT_EQ(w.n, kW) << "committed by the flush";
  // One page of the committed chunk rewritten (staged alone): a read of the page beside it
  // comes from the old chunk, but its segment would bring the old page back.
  const Bytes page = Pattern(4096, 43);
  WriteAt(h, 0, page);
  ASSERT_TRUE(fs_->Read(h, 4096, out, &w).ok());
  EXPECT_EQ(w.n, 0u) << "a segment holding a page written since";
  EXPECT_EQ(out, Bytes(data.begin() + 4096, data.begin() + 8192));
  ASSERT_TRUE(fs_->Read(h, 0, out, &w).ok());
  EXPECT_EQ(out, page);
  ASSERT_TRUE(fs_->Flush(h).ok());
  SetAttrRequest grow;
  grow.size = 3 * kCS;
  ASSERT_TRUE(fs_->SetAttr(IdOf("/f"), grow).ok());
  ASSERT_TRUE(fs_->Read(h, 2 * kCS, out, &w).ok());
  EXPECT_EQ(w.n, 0u) << "a hole";
  Bytes small(kW - 1);
  w.buf = small;
  ASSERT_TRUE(fs_->Read(h, 4096, out, &w).ok());
  EXPECT_EQ(w.n, 0u) << "a buffer smaller than a segment";
  EXPECT_EQ(out, Bytes(data.begin() + 4096, data.begin() + 8192));
  fs_->Release(h);
}

TEST_F(FileServerTest, RemoteWriteDoesNotOverrideUncommittedLocalWrites) {
  const std::uint64_t h = CreateFile("f");
  const InodeId id = IdOf("/f");
  WriteAt(h, 0, AsBytes("local"));
  InodeRecord r = RemoteVersion(*db_, id);
  r.size = 3;
  r.manifest.clear();
  ASSERT_TRUE(fs_->ApplyRemote(net::Changes{1, {r}, {}}, 999).ok());
  EXPECT_EQ(AsChars(ReadRange(h, 0, 100)), "local");
  fs_->Release(h);  // commits with a version newer than the remote one
  EXPECT_EQ(AsChars(*GetBytes("/f")), "local");
  EXPECT_GT(db_->GetInode(id)->version, r.version);
}

TEST_F(FileServerTest, RemoteDeleteOfAnOpenFileKeepsItsDataReadable) {
  ASSERT_TRUE(StoreBytes("/f", Pattern(kCS + 10, 34)).ok());
  const InodeId id = IdOf("/f");
  auto h = fs_->Open(id, O_RDONLY);
  ASSERT_TRUE(h.ok());
  InodeRecord r = RemoteVersion(*db_, id);
  r.deleted = true;
  r.manifest.clear();  // as Unlink sends it
  auto d = db_->GetDentry(kRootId, "f");
  ASSERT_TRUE(d.ok());
  DentryRecord tomb = *d;
  tomb.deleted = true;
  tomb.version = r.version;
  ASSERT_TRUE(fs_->ApplyRemote(net::Changes{1, {r}, {tomb}}, 999).ok());
  EXPECT_EQ(fs_->Lookup(kRootId, "f").status().code(), Code::kNotFound);
  // Like a local unlink: the open handle still reads what the file held.
  EXPECT_TRUE(ReadRange(*h, 0, 2 * kCS) == Pattern(kCS + 10, 34));
  fs_->Release(*h);
}

// --- Namespace -----------------------------------------------------------------------------

TEST_F(FileServerTest, MkdirReadDirRmdir) {
  auto d = fs_->Mkdir(kRootId, "d", 0750, 1, 2);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->rec.kind, InodeKind::kDir);
  EXPECT_EQ(d->rec.mode, 0750u);
  EXPECT_EQ(fs_->Mkdir(kRootId, "d", 0755, 0, 0).status().code(), Code::kExists);
  const std::uint64_t h = CreateFile("f", O_RDWR, d->rec.id);
  fs_->Release(h);
  ASSERT_TRUE(fs_->Mkdir(d->rec.id, "sub", 0755, 0, 0).ok());
  ASSERT_TRUE(fs_->Mkdir(kRootId, "a", 0755, 0, 0).ok());

  EXPECT_EQ(RootNames(), (std::vector<std::string>{"a", "d"}));
  auto inner = fs_->ReadDir(d->rec.id);
  ASSERT_TRUE(inner.ok());
  ASSERT_EQ(inner->size(), 2u);
  EXPECT_EQ((*inner)[0].name, "f");
  EXPECT_EQ((*inner)[0].kind, InodeKind::kFile);
  EXPECT_EQ((*inner)[1].name, "sub");
  EXPECT_EQ((*inner)[1].kind, InodeKind::kDir);

  EXPECT_EQ(fs_->Rmdir(kRootId, "d").code(), Code::kNotEmpty);
  EXPECT_EQ(fs_->Rmdir(d->rec.id, "f").code(), Code::kNotDir);
  EXPECT_EQ(fs_->Unlink(d->rec.id, "sub").code(), Code::kIsDir);
  EXPECT_EQ(fs_->ReadDir(IdOf("/d/f")).status().code(), Code::kNotDir);
  EXPECT_EQ(fs_->Mkdir(IdOf("/d/f"), "x", 0755, 0, 0).status().code(), Code::kNotDir);
  ASSERT_TRUE(fs_->Unlink(d->rec.id, "f").ok());
  ASSERT_TRUE(fs_->Rmdir(d->rec.id, "sub").ok());
  ASSERT_TRUE(fs_->Rmdir(kRootId, "d").ok());
  EXPECT_EQ(fs_->Lookup(kRootId, "d").status().code(), Code::kNotFound);
  EXPECT_EQ(fs_->ReadDir(d->rec.id).status().code(), Code::kNotFound);
  EXPECT_EQ(fs_->Mkdir(d->rec.id, "x", 0755, 0, 0).status().code(), Code::kNotFound);
  EXPECT_EQ(fs_->Rmdir(kRootId, "d").code(), Code::kNotFound);
  EXPECT_EQ(fs_->Unlink(kRootId, "nothing").code(), Code::kNotFound);
  EXPECT_EQ(RootNames(), (std::vector<std::string>{"a"}));
  // A name can be used again after removal.
  EXPECT_TRUE(fs_->Mkdir(kRootId, "d", 0755, 0, 0).ok());
}

TEST_F(FileServerTest, SymlinkAndReadLink) {
  auto s = fs_->Symlink(kRootId, "ln", "../target", 0, 0);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->rec.kind, InodeKind::kSymlink);
  EXPECT_EQ(s->rec.size, 9u);
  EXPECT_EQ(*fs_->ReadLink(s->rec.id), "../target");
  EXPECT_EQ(fs_->ReadLink(kRootId).status().code(), Code::kInvalid);
  EXPECT_EQ(fs_->Symlink(kRootId, "ln", "x", 0, 0).status().code(), Code::kExists);
  EXPECT_FALSE(fs_->Symlink(kRootId, "empty", "", 0, 0).ok());
  ASSERT_TRUE(fs_->Unlink(kRootId, "ln").ok());
}

TEST_F(FileServerTest, RenameOverAnExistingFileReplacesIt) {
  ASSERT_TRUE(StoreBytes("/a", Pattern(100, 20)).ok());
  ASSERT_TRUE(StoreBytes("/b", Pattern(200, 21)).ok());
  const InodeId a = IdOf("/a"), b = IdOf("/b");
  ASSERT_TRUE(fs_->Rename(kRootId, "a", kRootId, "b", 0).ok());
  EXPECT_EQ(RootNames(), (std::vector<std::string>{"b"}));
  EXPECT_EQ(IdOf("/b"), a);
  EXPECT_TRUE(*GetBytes("/b") == Pattern(100, 20));
  EXPECT_EQ(fs_->GetAttr(b).status().code(), Code::kNotFound) << "the replaced inode is gone";
  EXPECT_EQ(fs_->Rename(kRootId, "a", kRootId, "c", 0).code(), Code::kNotFound);
}

TEST_F(FileServerTest, RenameNoReplaceAndExchange) {
  ASSERT_TRUE(StoreBytes("/a", Pattern(10, 22)).ok());
  ASSERT_TRUE(StoreBytes("/b", Pattern(10, 23)).ok());
  EXPECT_EQ(fs_->Rename(kRootId, "a", kRootId, "b", RENAME_NOREPLACE).code(), Code::kExists);
  EXPECT_EQ(fs_->Rename(kRootId, "a", kRootId, "b", RENAME_EXCHANGE).code(), Code::kInvalid);
  EXPECT_TRUE(*GetBytes("/b") == Pattern(10, 23));
  ASSERT_TRUE(fs_->Rename(kRootId, "a", kRootId, "c", RENAME_NOREPLACE).ok());
  EXPECT_EQ(RootNames(), (std::vector<std::string>{"b", "c"}));
  // Renaming onto itself changes nothing.
  ASSERT_TRUE(fs_->Rename(kRootId, "c", kRootId, "c", 0).ok());
  EXPECT_EQ(RootNames(), (std::vector<std::string>{"b", "c"}));
}

TEST_F(FileServerTest, RenameDirectories) {
  auto d = fs_->Mkdir(kRootId, "d", 0755, 0, 0);
  ASSERT_TRUE(d.ok());
  auto sub = fs_->Mkdir(d->rec.id, "sub", 0755, 0, 0);
  ASSERT_TRUE(sub.ok());
  auto deep = fs_->Mkdir(sub->rec.id, "deep", 0755, 0, 0);
  ASSERT_TRUE(deep.ok());
  ASSERT_TRUE(StoreBytes("/d/sub/file", Pattern(10, 24)).ok());

  // Into its own subtree, or into itself.
  EXPECT_EQ(fs_->Rename(kRootId, "d", deep->rec.id, "x", 0).code(), Code::kInvalid);
  EXPECT_EQ(fs_->Rename(kRootId, "d", d->rec.id, "x", 0).code(), Code::kInvalid);
  EXPECT_EQ(fs_->Rename(d->rec.id, "sub", sub->rec.id, "x", 0).code(), Code::kInvalid);

  // Over a non-empty directory; over an empty one works.
  ASSERT_TRUE(fs_->Mkdir(kRootId, "full", 0755, 0, 0).ok());
  ASSERT_TRUE(StoreBytes("/full/x", Pattern(1, 25)).ok());
  ASSERT_TRUE(fs_->Mkdir(kRootId, "empty", 0755, 0, 0).ok());
  EXPECT_EQ(fs_->Rename(kRootId, "d", kRootId, "full", 0).code(), Code::kNotEmpty);
  const InodeId empty = IdOf("/empty");
  ASSERT_TRUE(fs_->Rename(kRootId, "d", kRootId, "empty", 0).ok());
  EXPECT_EQ(IdOf("/empty"), d->rec.id);
  EXPECT_EQ(fs_->GetAttr(empty).status().code(), Code::kNotFound);
  EXPECT_TRUE(*GetBytes("/empty/sub/file") == Pattern(10, 24));

  // Kind mismatches.
  EXPECT_EQ(fs_->Rename(kRootId, "full", kRootId, "empty", 0).code(), Code::kNotEmpty);
  EXPECT_EQ(fs_->Rename(IdOf("/full"), "x", kRootId, "empty", 0).code(), Code::kIsDir);
  EXPECT_EQ(fs_->Rename(kRootId, "empty", IdOf("/full"), "x", 0).code(), Code::kNotDir);

  // A directory moves with its contents into another directory.
  ASSERT_TRUE(fs_->Rename(kRootId, "empty", IdOf("/full"), "moved", 0).ok());
  EXPECT_TRUE(*GetBytes("/full/moved/sub/file") == Pattern(10, 24));
  EXPECT_EQ(RootNames(), (std::vector<std::string>{"full"}));
  // Into a parent that is not a directory.
  EXPECT_EQ(fs_->Rename(kRootId, "full", IdOf("/full/x"), "y", 0).code(), Code::kNotDir);
}

TEST_F(FileServerTest, ARenameCycleFromTwoNodesIsUndoneAndEveryDirectoryStaysReachable) {
  // Two nodes each moved one directory into the other at the same time; merged, the two would
  // form a cycle cut off from the root. The newer move is undone: b goes back to the root.
  auto a = fs_->Mkdir(kRootId, "a", 0755, 0, 0);
  auto b = fs_->Mkdir(kRootId, "b", 0755, 0, 0);
  auto c = fs_->Mkdir(kRootId, "c", 0755, 0, 0);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  ASSERT_TRUE(StoreBytes("/b/inside", Pattern(3, 7)).ok());
  ASSERT_TRUE(fs_->Rename(kRootId, "a", b->rec.id, "a", 0).ok());  // local: a into b
  auto entry_a = db_->GetDentry(b->rec.id, "a");
  auto entry_b = db_->GetDentry(kRootId, "b");
  ASSERT_TRUE(entry_a.ok() && entry_b.ok());
  const Version v{entry_a->version.hlc + 1'000, 999};
  DentryRecord gone = *entry_b;
  gone.deleted = true;
  gone.version = v;
  DentryRecord moved{a->rec.id, "b", b->rec.id, v, false};  // remote: b into a
  ASSERT_TRUE(fs_->ApplyRemote(net::Changes{1, {}, {gone, moved}}, 999).ok());
  EXPECT_EQ(RootNames(), (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(IdOf("/b"), b->rec.id);
  EXPECT_EQ(IdOf("/b/a"), a->rec.id);
  EXPECT_TRUE(*GetBytes("/b/inside") == Pattern(3, 7));
  EXPECT_EQ(fs_->Lookup(a->rec.id, "b").status().code(), Code::kNotFound);

  // Applying the same records again changes nothing, and moving into the repaired tree works.
  ASSERT_TRUE(fs_->ApplyRemote(net::Changes{1, {}, {gone, moved}}, 999).ok());
  EXPECT_EQ(RootNames(), (std::vector<std::string>{"b", "c"}));
  ASSERT_TRUE(fs_->Rename(kRootId, "c", a->rec.id, "c", 0).ok());
  EXPECT_EQ(IdOf("/b/a/c"), c->rec.id);
  EXPECT_EQ(fs_->Rename(kRootId, "b", c->rec.id, "b", 0).code(), Code::kInvalid);
}

TEST_F(FileServerTest, NamesAreValidated) {
  const std::string too_long(256, 'n');
  const std::string longest(255, 'n');
  const std::vector<std::string_view> bad_names = {"..", ".", "a/b", "",
                                                   std::string_view("a\0b", 3)};
  for (std::string_view bad : bad_names) {
    EXPECT_EQ(fs_->Mkdir(kRootId, bad, 0755, 0, 0).status().code(), Code::kInvalid) << bad;
    EXPECT_EQ(fs_->Create(kRootId, bad, 0644, 0, 0, O_RDWR).status().code(), Code::kInvalid);
    EXPECT_EQ(fs_->Symlink(kRootId, bad, "t", 0, 0).status().code(), Code::kInvalid);
  }
  EXPECT_EQ(fs_->Mkdir(kRootId, too_long, 0755, 0, 0).status().code(), Code::kNameTooLong);
  EXPECT_EQ(fs_->Create(kRootId, too_long, 0644, 0, 0, O_RDWR).status().code(), Code::kNameTooLong);
  EXPECT_EQ(fs_->Lookup(kRootId, too_long).status().code(), Code::kNameTooLong);
  ASSERT_TRUE(StoreBytes("/f", Pattern(1, 26)).ok());
  EXPECT_EQ(fs_->Rename(kRootId, "f", kRootId, "x/y", 0).code(), Code::kInvalid);
  EXPECT_EQ(fs_->Rename(kRootId, "f", kRootId, too_long, 0).code(), Code::kNameTooLong);
  EXPECT_TRUE(fs_->Mkdir(kRootId, longest, 0755, 0, 0).ok());
  EXPECT_TRUE(fs_->Lookup(kRootId, longest).ok());
  EXPECT_EQ(RootNames(), (std::vector<std::string>{"f", longest}));
}

TEST_F(FileServerTest, LookupErrors) {
  EXPECT_EQ(fs_->Lookup(kRootId, "missing").status().code(), Code::kNotFound);
  EXPECT_EQ(fs_->Lookup(12345, "x").status().code(), Code::kNotFound);
  EXPECT_EQ(fs_->GetAttr(12345).status().code(), Code::kNotFound);
  EXPECT_EQ(fs_->Open(12345, O_RDONLY).status().code(), Code::kNotFound);
  EXPECT_EQ(fs_->Resolve("/a/b").status().code(), Code::kNotFound);
  EXPECT_EQ(fs_->Create(12345, "x", 0644, 0, 0, O_RDWR).status().code(), Code::kNotFound);
  ASSERT_TRUE(fs_->Mkdir(kRootId, "d", 0755, 0, 0).ok());
  auto found = fs_->Lookup(kRootId, "d");
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(found->rec.kind, InodeKind::kDir);
  EXPECT_EQ(fs_->Open(found->rec.id, O_RDWR).status().code(), Code::kIsDir);
  EXPECT_EQ(fs_->Resolve("/")->rec.id, kRootId);
}

// ---- CopyChunk: how a random writer's first write into a committed chunk copies it to staging.

// What CopyChunk handed to its sink, checked to be in order and in pieces of at most
// kCopyPiece bytes.
struct Copied {
  Bytes bytes;
  std::size_t calls = 0;
  bool in_order = true;
  Status Sink(std::uint64_t at, ByteSpan piece) {
    ++calls;
    if (at != bytes.size() || piece.empty() || piece.size() > FileHost::kCopyPiece) {
      in_order = false;
    }
    bytes.insert(bytes.end(), piece.begin(), piece.end());
    return Ok();
  }
};

// A peer holding given chunks, counting fetches.
class CountingRemote : public RemoteChunks {
 public:
  std::map<cas::ChunkId, Bytes> chunks;
  int fetches = 0;
  Result<Bytes> Fetch(const cas::ChunkId& id) override {
    ++fetches;
    auto it = chunks.find(id);
    if (it == chunks.end()) return Err(Code::kUnavailable, "no peer has it");
    return it->second;
  }
};

// OpenFile's view of a file server (its chunk calls are FileHost's).
FileHost& Host(FileServer& fs) { return fs; }

Bytes Prefix(const Bytes& data, std::uint64_t len) {
  Bytes out(static_cast<std::size_t>(len), 0);  // zeros past the chunk's end
  std::copy_n(data.begin(), std::min<std::size_t>(data.size(), out.size()), out.begin());
  return out;
}

TEST_F(FileServerTest, CopyChunkHandsOnALocalChunkInPiecesWithZerosPastItsEnd) {
  const std::size_t kPiece = FileHost::kCopyPiece;
  const Bytes data = Pattern(2 * kPiece + 12'345, 41);
  const cas::ChunkId id = Host(*fs_).ChunkIdOf(data);
  ASSERT_TRUE(Host(*fs_).PutChunk(id, data).ok());
  for (std::uint64_t len :
       {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{kPiece - 1}, std::uint64_t{kPiece},
        std::uint64_t{kPiece + 1}, std::uint64_t{data.size()}, std::uint64_t{data.size() + 1},
        std::uint64_t{cas::kChunkSize}}) {
    Copied c;
    ASSERT_TRUE(Host(*fs_)
                    .CopyChunk(id, len, [&](std::uint64_t at, ByteSpan p) { return c.Sink(at, p); })
                    .ok())
        << len;
    EXPECT_TRUE(c.in_order) << len;
    EXPECT_EQ(c.calls, (len + kPiece - 1) / kPiece) << len;
    EXPECT_EQ(c.bytes, Prefix(data, len)) << len;
  }
}

TEST_F(FileServerTest, CopyChunkFetchesAChunkNotHereOnceAndFailsWithoutPeers) {
  const Bytes data = Pattern(3 * FileHost::kCopyPiece + 7, 42);
  const cas::ChunkId id = Host(*fs_).ChunkIdOf(data);
  Copied none;
  Status s = Host(*fs_).CopyChunk(id, data.size(),
                                  [&](std::uint64_t at, ByteSpan p) { return none.Sink(at, p); });
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.message();
  EXPECT_EQ(none.calls, 0u);
  CountingRemote remote;
  remote.chunks[id] = data;
  fs_->SetRemote(&remote);
  Copied c;
  ASSERT_TRUE(
      Host(*fs_)
          .CopyChunk(id, data.size(), [&](std::uint64_t at, ByteSpan p) { return c.Sink(at, p); })
          .ok());
  EXPECT_EQ(remote.fetches, 1);
  EXPECT_TRUE(c.in_order);
  EXPECT_EQ(c.bytes, data);
  fs_->SetRemote(nullptr);
}

// A local copy that fails part-way (damaged past its first piece): the pieces already handed
// on stay, the rest comes from a peer's copy, and nothing is handed on twice.
TEST_F(FileServerTest, CopyChunkGoesOnFromAPeerWhereTheLocalCopyFails) {
  class FailingPast : public ForwardingStore {
   public:
    FailingPast(cas::ChunkStore& inner, std::size_t from) : ForwardingStore(inner), from_(from) {}
    Result<Bytes> Get(const cas::ChunkId& id) override {
      return Err(Code::kCorruption, "chunk {}: damaged", cas::Hex(id));
    }
    Result<cas::Extent> ReadAt(const cas::ChunkId& id, std::size_t offset,
                               MutableByteSpan out) override {
      if (offset >= from_) return Err(Code::kCorruption, "chunk {}: damaged", cas::Hex(id));
      return inner_.ReadAt(id, offset, out);
    }

   private:
    const std::size_t from_;
  };
  const std::size_t kPiece = FileHost::kCopyPiece;
  auto inner = cas::MakeMemoryStore();
  FailingPast store(*inner, kPiece);
  FileServer fs(*db_, store, cas::ChunkHasher(FixedKey()), dir_.path() / "staging");
  const Bytes data = Pattern(3 * kPiece + 99, 43);
  const cas::ChunkId id = Host(fs).ChunkIdOf(data);
  ASSERT_TRUE(Host(fs).PutChunk(id, data).ok());
  CountingRemote remote;
  remote.chunks[id] = data;
  fs.SetRemote(&remote);
  Copied c;
  ASSERT_TRUE(Host(fs)
                  .CopyChunk(id, data.size() + 5,
                             [&](std::uint64_t at, ByteSpan p) { return c.Sink(at, p); })
                  .ok());
  EXPECT_EQ(remote.fetches, 1);
  EXPECT_TRUE(c.in_order);
  EXPECT_EQ(c.bytes, Prefix(data, data.size() + 5));
  // A sink that fails stops the copy with its error.
  Copied twice;
  Status s = Host(fs).CopyChunk(id, data.size(), [&](std::uint64_t at, ByteSpan p) -> Status {
    if (twice.calls == 1) return Err(Code::kNoSpace, "staging is full");
    return twice.Sink(at, p);
  });
  EXPECT_EQ(s.code(), Code::kNoSpace);
  EXPECT_EQ(twice.calls, 1u);
}

TEST_F(FileServerTest, AFileMissingItsChunkFailsWithoutPeers) {
  ASSERT_TRUE(StoreBytes("/f", Pattern(10, 27)).ok());
  const auto id = db_->GetInode(IdOf("/f"))->manifest[0];
  ASSERT_TRUE(store_->Remove(id).ok());
  EXPECT_EQ(GetBytes("/f").status().code(), Code::kUnavailable);
}

// A read that waits for a chunk from a peer holds its file; stat (getattr, readdirplus) of that
// file must still answer at once from the namespace.
TEST_F(FileServerTest, StatDoesNotWaitForAReadWaitingOnThePeers) {
  class SlowRemote : public RemoteChunks {
   public:
    Result<Bytes> Fetch(const cas::ChunkId& id) override {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return released; });
      return Err(Code::kUnavailable, "chunk {}: no peer", cas::Hex(id));
    }
    void Release() {
      {
        std::lock_guard lock(mu);
        released = true;
      }
      cv.notify_all();
    }
    std::mutex mu;
    std::condition_variable cv;
    bool released = false;
  } remote;
  ASSERT_TRUE(StoreBytes("/f", Pattern(5000, 28)).ok());
  const InodeId id = IdOf("/f");
  ASSERT_TRUE(store_->Remove(db_->GetInode(id)->manifest[0]).ok());
  fs_->SetRemote(&remote);
  auto h = fs_->Open(id, O_RDONLY);
  ASSERT_TRUE(h.ok());
  std::thread reader([&] {
    Bytes out(100);
    EXPECT_FALSE(fs_->Read(*h, 0, out).ok());
  });
  // If getattr waited for the reader, this lets both finish (and the check below fails).
  std::thread watchdog([&] {
    std::this_thread::sleep_for(std::chrono::seconds(2));
    remote.Release();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the reader is waiting
  const auto t0 = std::chrono::steady_clock::now();
  auto a = fs_->GetAttr(id);
  const auto took = std::chrono::steady_clock::now() - t0;
  reader.join();
  watchdog.join();
  fs_->Release(*h);
  fs_->SetRemote(nullptr);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->rec.size, 5000u);
  EXPECT_LT(took, std::chrono::seconds(1)) << "getattr waited for the read";
}

// --- Times (issue 12): as POSIX says ---------------------------------------------------------

struct Times {
  std::int64_t mtime, ctime, atime;
  Version version;
};

class FileServerTimesTest : public FileServerTest {
 protected:
  // A second node beside the fixture's, with its own namespace and store; records move between
  // the two with sync() (everything the sender has, as a peer's feed would bring it).
  struct SecondNode {
    TempDir dir;
    std::unique_ptr<NamespaceDb> db;
    std::unique_ptr<cas::ChunkStore> store = cas::MakeMemoryStore();
    std::unique_ptr<FileServer> fs;
    SecondNode() {
      auto opened = NamespaceDb::Open(dir.path() / "ns.db");
      if (!opened.ok()) return;
      db = std::move(*opened);
      fs = std::make_unique<FileServer>(*db, *store, cas::ChunkHasher(FixedKey()), dir.path());
    }
  };
  static void sync(NamespaceDb& from_db, FileServer& to, std::uint64_t peer) {
    auto changes = from_db.ChangesSince(0, 1'000'000, 1'000'000);
    ASSERT_TRUE(changes.ok());
    ASSERT_TRUE(to.ApplyRemote(*changes, peer).ok());
  }
  Times Of(InodeId id) {
    auto a = fs_->GetAttr(id);
    EXPECT_TRUE(a.ok()) << a.status().message();
    return a.ok() ? Times{a->rec.mtime_ns, a->rec.ctime_ns, a->rec.atime_ns, a->rec.version}
                  : Times{};
  }
  // The clock moves on between two steps, so that "changed" and "unchanged" can be told apart.
  static void Tick() { std::this_thread::sleep_for(std::chrono::milliseconds(2)); }
  InodeId Dir(std::string_view name, InodeId parent = kRootId) {
    auto d = fs_->Mkdir(parent, name, 0755, 1000, 1000);
    EXPECT_TRUE(d.ok()) << d.status().message();
    return d.ok() ? d->rec.id : 0;
  }
  InodeId File(std::string_view name, InodeId parent = kRootId) {
    fs_->Release(CreateFile(name, O_RDWR, parent));
    auto a = fs_->Lookup(parent, name);
    EXPECT_TRUE(a.ok());
    return a.ok() ? a->rec.id : 0;
  }
  // Runs `op`, which must succeed, and checks that `dir`'s mtime and ctime both moved on.
  void ExpectDirChanged(InodeId dir, const std::function<Status()>& op, const char* what) {
    const Times before = Of(dir);
    Tick();
    Status s = op();
    ASSERT_TRUE(s.ok()) << what << ": " << s.message();
    const Times after = Of(dir);
    EXPECT_GT(after.mtime, before.mtime) << what << ": the directory's mtime";
    EXPECT_GT(after.ctime, before.ctime) << what << ": the directory's ctime";
    EXPECT_EQ(after.mtime, after.ctime) << what;
  }
};

Status OkOf(const Result<Attr>& r) { return r.ok() ? Ok() : r.status(); }

TEST_F(FileServerTimesTest, AddingAnEntryUpdatesTheDirectorysMtimeAndCtime) {
  const InodeId d = Dir("d");
  const InodeId f = File("f");
  ExpectDirChanged(
      d,
      [&] {
        auto c = fs_->Create(d, "created", 0644, 1000, 1000, O_RDWR);
        if (c.ok()) fs_->Release(c->handle);
        return c.ok() ? Ok() : c.status();
      },
      "create");
  // The new file and its directory carry the same time, as on ext4.
  EXPECT_EQ(fs_->Lookup(d, "created")->rec.mtime_ns, Of(d).mtime);
  ExpectDirChanged(
      d, [&] { return OkOf(fs_->Mkdir(d, "sub", 0755, 1000, 1000)); }, "mkdir");
  ExpectDirChanged(
      d, [&] { return OkOf(fs_->Symlink(d, "sym", "x", 1000, 1000)); }, "symlink");
  ExpectDirChanged(
      d, [&] { return OkOf(fs_->Mknod(d, "fifo", S_IFIFO | 0644, 1000, 1000)); }, "mknod");
  ExpectDirChanged(
      d, [&] { return OkOf(fs_->Link(f, d, "hard")); }, "link");
}

TEST_F(FileServerTimesTest, RemovingAnEntryUpdatesTheDirectorysMtimeAndCtime) {
  const InodeId d = Dir("d");
  File("f", d);
  File("linked", d);
  ASSERT_TRUE(fs_->Link(fs_->Lookup(d, "linked")->rec.id, kRootId, "other-name").ok());
  Dir("sub", d);
  ExpectDirChanged(
      d, [&] { return fs_->Unlink(d, "f"); }, "unlink");
  ExpectDirChanged(
      d, [&] { return fs_->Unlink(d, "linked"); }, "unlink of one of two links");
  ExpectDirChanged(
      d, [&] { return fs_->Rmdir(d, "sub"); }, "rmdir");
  ExpectDirChanged(
      kRootId, [&] { return fs_->Rmdir(kRootId, "d"); }, "rmdir of d");
}

TEST_F(FileServerTimesTest, RenameUpdatesBothDirectoriesAndTheRenamedInodesCtime) {
  const InodeId a = Dir("a");
  const InodeId b = Dir("b");
  const InodeId other = Dir("other");
  const InodeId f = File("f", a);
  // Within one directory.
  Times file_before = Of(f);
  const Times other_before = Of(other);
  ExpectDirChanged(
      a, [&] { return fs_->Rename(a, "f", a, "g", 0); }, "rename in a");
  Times file_after = Of(f);
  EXPECT_GT(file_after.ctime, file_before.ctime) << "the renamed file's ctime";
  EXPECT_EQ(file_after.mtime, file_before.mtime) << "rename does not change the file's mtime";
  // Across directories: both change.
  const Times a_before = Of(a);
  file_before = Of(f);
  ExpectDirChanged(
      b, [&] { return fs_->Rename(a, "g", b, "h", 0); }, "rename from a to b");
  EXPECT_GT(Of(a).mtime, a_before.mtime) << "the source directory's mtime";
  EXPECT_GT(Of(a).ctime, a_before.ctime) << "the source directory's ctime";
  EXPECT_GT(Of(f).ctime, file_before.ctime);
  // A directory moved: its own ctime too; a directory not involved keeps its times.
  const InodeId sub = Dir("sub", a);
  const Times sub_before = Of(sub);
  ExpectDirChanged(
      b, [&] { return fs_->Rename(a, "sub", b, "sub", 0); }, "rename of a directory");
  EXPECT_GT(Of(sub).ctime, sub_before.ctime);
  EXPECT_EQ(Of(sub).mtime, sub_before.mtime);
  EXPECT_EQ(Of(other).mtime, other_before.mtime);
  EXPECT_EQ(Of(other).ctime, other_before.ctime);
  // Over an existing file that keeps another link: that file's ctime changes too.
  const InodeId victim = File("victim", b);
  ASSERT_TRUE(fs_->Link(victim, a, "victim-link").ok());
  const Times victim_before = Of(victim);
  ExpectDirChanged(
      b, [&] { return fs_->Rename(b, "h", b, "victim", 0); }, "rename over");
  EXPECT_GT(Of(victim).ctime, victim_before.ctime) << "the replaced file lost a link";
}

TEST_F(FileServerTimesTest, AttributeLinkTruncateAndXattrChangesUpdateCtime) {
  const InodeId f = File("f");
  // Each change: ctime moves on; mtime only where the content changed (truncate).
  struct Step {
    const char* what;
    std::function<Status()> op;
    bool mtime;
  };
  const std::vector<Step> steps = {
      {"chmod", [&] { return OkOf(fs_->SetAttr(f, {.mode = 0600})); }, false},
      {"chown", [&] { return OkOf(fs_->SetAttr(f, {.uid = 7, .gid = 8})); }, false},
      {"link", [&] { return OkOf(fs_->Link(f, kRootId, "second")); }, false},
      {"unlink of one link", [&] { return fs_->Unlink(kRootId, "second"); }, false},
      {"setxattr", [&] { return fs_->SetXattr(f, "user.k", AsBytes("v"), 0); }, false},
      {"setxattr again", [&] { return fs_->SetXattr(f, "user.k", AsBytes("w"), 0); }, false},
      {"removexattr", [&] { return fs_->RemoveXattr(f, "user.k"); }, false},
      {"truncate", [&] { return OkOf(fs_->SetAttr(f, {.size = 100})); }, true},
      {"utimes", [&] { return OkOf(fs_->SetAttr(f, {.mtime_ns = 5, .atime_ns = 6})); }, false},
  };
  for (const auto& step : steps) {
    const Times before = Of(f);
    Tick();
    Status s = step.op();
    ASSERT_TRUE(s.ok()) << step.what << ": " << s.message();
    const Times after = Of(f);
    EXPECT_GT(after.ctime, before.ctime) << step.what;
    if (step.mtime) {
      EXPECT_GT(after.mtime, before.mtime) << step.what;
    } else if (std::string_view(step.what) != "utimes") {
      EXPECT_EQ(after.mtime, before.mtime) << step.what;
    }
  }
  EXPECT_EQ(Of(f).mtime, 5);
  EXPECT_EQ(Of(f).atime, 6);
}

TEST_F(FileServerTimesTest, AFailedCallChangesNoTime) {
  const InodeId d = Dir("d");
  const InodeId f = File("f", d);
  const InodeId e = Dir("e", d);
  File("inside", e);
  ASSERT_TRUE(fs_->SetXattr(f, "user.k", AsBytes("v"), 0).ok());
  const std::string long_name(256, 'n');
  struct Step {
    const char* what;
    std::function<Status()> op;
  };
  const std::vector<Step> steps = {
      {"mkdir of an existing name", [&] { return OkOf(fs_->Mkdir(d, "f", 0755, 0, 0)); }},
      {"mkdir of a long name", [&] { return OkOf(fs_->Mkdir(d, long_name, 0755, 0, 0)); }},
      {"create O_EXCL of an existing name",
       [&] {
         auto c = fs_->Create(d, "f", 0644, 0, 0, O_RDWR | O_CREAT | O_EXCL);
         return c.ok() ? Ok() : c.status();
       }},
      {"symlink over an existing name", [&] { return OkOf(fs_->Symlink(d, "f", "t", 0, 0)); }},
      {"mknod of an existing name", [&] { return OkOf(fs_->Mknod(d, "f", S_IFIFO | 0644, 0, 0)); }},
      {"link to an existing name", [&] { return OkOf(fs_->Link(f, d, "e")); }},
      {"link of a directory", [&] { return OkOf(fs_->Link(e, d, "e2")); }},
      {"unlink of a missing name", [&] { return fs_->Unlink(d, "missing"); }},
      {"unlink of a directory", [&] { return fs_->Unlink(d, "e"); }},
      {"rmdir of a directory that is not empty", [&] { return fs_->Rmdir(d, "e"); }},
      {"rmdir of a file", [&] { return fs_->Rmdir(d, "f"); }},
      {"rename of a missing name", [&] { return fs_->Rename(d, "missing", d, "x", 0); }},
      {"rename onto an existing name, no replace",
       [&] { return fs_->Rename(d, "f", d, "e", RENAME_NOREPLACE); }},
      {"rename of a file onto a directory", [&] { return fs_->Rename(d, "f", d, "e", 0); }},
      {"rename of a directory into itself", [&] { return fs_->Rename(d, "e", e, "x", 0); }},
      {"rename exchange", [&] { return fs_->Rename(d, "f", d, "e", RENAME_EXCHANGE); }},
      {"rename to a long name", [&] { return fs_->Rename(d, "f", d, long_name, 0); }},
      {"setxattr create of an existing name",
       [&] { return fs_->SetXattr(f, "user.k", AsBytes("w"), XATTR_CREATE); }},
      {"setxattr replace of a missing name",
       [&] { return fs_->SetXattr(f, "user.none", AsBytes("w"), XATTR_REPLACE); }},
      {"setxattr outside user.", [&] { return fs_->SetXattr(f, "trusted.k", AsBytes("w"), 0); }},
      {"setxattr of a value too large",
       [&] { return fs_->SetXattr(f, "user.big", Bytes(70000, 1), 0); }},
      {"removexattr of a missing name", [&] { return fs_->RemoveXattr(f, "user.none"); }},
      {"truncate of a directory", [&] { return OkOf(fs_->SetAttr(e, {.size = 0})); }},
  };
  for (const auto& step : steps) {
    std::map<InodeId, Times> before;
    for (InodeId id : {kRootId, d, f, e}) before[id] = Of(id);
    Tick();
    EXPECT_FALSE(step.op().ok()) << step.what << " succeeded";
    for (auto& [id, t] : before) {
      const Times now = Of(id);
      EXPECT_EQ(now.mtime, t.mtime) << step.what << ": inode " << id;
      EXPECT_EQ(now.ctime, t.ctime) << step.what << ": inode " << id;
      EXPECT_EQ(now.atime, t.atime) << step.what << ": inode " << id;
      EXPECT_EQ(now.version, t.version) << step.what << ": inode " << id << " was committed";
    }
  }
}

// Creating a file in a directory commits the directory's new times with the entry, in one
// transaction: one change-feed entry more per create, not one commit more.
TEST_F(FileServerTimesTest, ACreateAndItsDirectorysTimesAreOneCommit) {
  const InodeId d = Dir("d");
  const int commits = local_changes_;
  const std::uint64_t seq = db_->LastSeq();
  File("f", d);
  EXPECT_EQ(local_changes_ - commits, 1) << "create + release of an empty file";
  EXPECT_EQ(db_->LastSeq() - seq, 3u) << "the inode, its entry and the directory";
}

// A directory's new times replicate as a record of the directory: a node that removed the
// (empty) directory while another created a file in it must still end with the directory, its
// name and the file, on both nodes, whichever of the two happened later.
TEST_F(FileServerTimesTest, RmdirOnOneNodeWhileACreateInItOnAnotherKeepsTheFile) {
  for (bool create_last : {false, true}) {
    SCOPED_TRACE(create_last ? "the create is later" : "the rmdir is later");
    SecondNode node2;
    ASSERT_TRUE(node2.db);
    FileServer& other = *node2.fs;
    auto& other_db = node2.db;
    const std::string name = create_last ? "d1" : "d2";
    const InodeId d = Dir(name);
    sync(*db_, other, 1);
    auto create = [&] {
      auto c = other.Create(d, "f", 0644, 0, 0, O_RDWR);
      ASSERT_TRUE(c.ok()) << c.status().message();
      other.Release(c->handle);
    };
    if (create_last) {
      ASSERT_TRUE(fs_->Rmdir(kRootId, name).ok());
      Tick();
      create();
    } else {
      create();
      Tick();
      ASSERT_TRUE(fs_->Rmdir(kRootId, name).ok());
    }
    sync(*db_, other, 1);
    sync(*other_db, *fs_, 2);
    for (FileServer* node : {fs_.get(), &other}) {
      auto back = node->Lookup(kRootId, name);
      ASSERT_TRUE(back.ok()) << "the directory has no name";
      EXPECT_EQ(back->rec.id, d);
      EXPECT_TRUE(node->Lookup(d, "f").ok()) << "the file created in it is lost";
    }
  }
}

// A create in a directory does not undo a chmod of that directory made at the same time on
// another node, whichever came first: the create's new times take the version right after
// the one they replace, which loses to any concurrent change of the directory.
TEST_F(FileServerTimesTest, ACreateInADirectoryDoesNotUndoAConcurrentChmodOfIt) {
  for (bool create_last : {false, true}) {
    SCOPED_TRACE(create_last ? "the create is later" : "the chmod is later");
    SecondNode node2;
    ASSERT_TRUE(node2.db);
    FileServer& other = *node2.fs;
    auto& other_db = node2.db;
    const std::string name = create_last ? "d1" : "d2";
    const InodeId d = Dir(name);
    sync(*db_, other, 1);
    auto create = [&] {
      auto c = other.Create(d, "f", 0644, 0, 0, O_RDWR);
      ASSERT_TRUE(c.ok()) << c.status().message();
      other.Release(c->handle);
    };
    auto chmod = [&] { ASSERT_TRUE(fs_->SetAttr(d, {.mode = 0700}).ok()); };
    if (create_last) {
      chmod();
      Tick();
      create();
    } else {
      create();
      Tick();
      chmod();
    }
    sync(*db_, other, 1);
    sync(*other_db, *fs_, 2);
    for (FileServer* node : {fs_.get(), &other}) {
      auto a = node->GetAttr(d);
      ASSERT_TRUE(a.ok());
      EXPECT_EQ(a->rec.mode, 0700u) << "the chmod was undone";
      EXPECT_TRUE(node->Lookup(d, "f").ok());
    }
    EXPECT_EQ(fs_->GetAttr(d)->rec.version, other.GetAttr(d)->rec.version);
  }
}

}  // namespace
}  // namespace foreverfs::server
