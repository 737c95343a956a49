// FileServer at the edges of what a syscall or a peer can carry: sizes and offsets at every
// boundary up to 2^64-1, sparse files that cost what they hold, hole punching and SEEK_DATA /
// SEEK_HOLE, every file type mknod makes, records from peers over the limits or from a clock far
// ahead, and a schema-5 database opened by this build.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>

#include "cas/chunk_store.h"
#include "server/file_server.h"
#include "server/hlc.h"
#include "unit/file_server_fixture.h"

namespace foreverfs::server {
namespace {

constexpr std::uint64_t kCS = cas::kChunkSize;
constexpr std::uint64_t kMax = model::kMaxFileSize;
constexpr std::uint64_t kI64Max = std::numeric_limits<std::int64_t>::max();

class LimitsTest : public test::FileServerFixture {
 protected:
  std::uint64_t Create(std::string_view name) {
    auto c = fs_->Create(kRootId, name, 0644, 0, 0, O_RDWR);
    EXPECT_TRUE(c.ok()) << c.status().message();
    return c.ok() ? c->handle : 0;
  }
  InodeId IdOf(std::string_view name) { return fs_->Lookup(kRootId, name)->rec.id; }
  Bytes Read(std::uint64_t h, std::uint64_t off, std::size_t len) {
    Bytes out(len);
    auto n = fs_->Read(h, off, out);
    EXPECT_TRUE(n.ok()) << n.status().message();
    out.resize(n.ok() ? *n : 0);
    return out;
  }
  Status Truncate(InodeId id, std::uint64_t size) {
    SetAttrRequest req;
    req.size = size;
    auto a = fs_->SetAttr(id, req);
    return a.ok() ? Ok() : a.status();
  }
};

TEST_F(LimitsTest, TruncateAtEveryBoundary) {
  const std::uint64_t h = Create("f");
  const InodeId id = IdOf("f");
  for (std::uint64_t size : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{1} << 31,
                             std::uint64_t{1} << 32, kMax - 1, kMax}) {
    ASSERT_TRUE(Truncate(id, size).ok()) << size;
    EXPECT_EQ(fs_->GetAttr(id)->rec.size, size);
  }
  for (std::uint64_t size :
       {kMax + 1, std::uint64_t{1} << 62, kI64Max, std::numeric_limits<std::uint64_t>::max()}) {
    Status s = Truncate(id, size);
    EXPECT_EQ(ToErrno(s), EFBIG) << size << ": " << s.message();
    EXPECT_EQ(fs_->GetAttr(id)->rec.size, kMax) << "a failed truncate changed the size";
  }
  // A 16 TiB file made by truncate holds nothing: no chunk, a few bytes of record.
  ASSERT_TRUE(fs_->Flush(h).ok());
  auto rec = db_->GetInode(id);
  EXPECT_EQ(rec->size, kMax);
  EXPECT_TRUE(rec->manifest.empty());
  EXPECT_LT(net::EncodedSize(*rec), 256u);
  // Reads anywhere in it are zeros, and at or past the end are empty.
  EXPECT_EQ(Read(h, kMax - 10, 100), Bytes(10, 0));
  EXPECT_EQ(Read(h, (kMax / 2) + 12345, 4096), Bytes(4096, 0));
  EXPECT_TRUE(Read(h, kMax, 100).empty());
  EXPECT_TRUE(Read(h, kI64Max, 100).empty());
  EXPECT_TRUE(Read(h, std::numeric_limits<std::uint64_t>::max(), 100).empty());
  fs_->Release(h);
}

TEST_F(LimitsTest, WritesUpToTheLargestSizeAndEfbigPastIt) {
  const std::uint64_t h = Create("f");
  const InodeId id = IdOf("f");
  const Bytes five = {1, 2, 3, 4, 5};
  // The last byte a file may hold.
  auto n = fs_->Write(h, kMax - 1, ByteSpan(five.data(), 1));
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(*n, 1u);
  // Across the limit: a short write, as a local filesystem does.
  n = fs_->Write(h, kMax - 3, five);
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(*n, 3u);
  for (std::uint64_t off : {kMax, kMax + 1, std::uint64_t{1} << 62, kI64Max,
                            std::numeric_limits<std::uint64_t>::max() - 2}) {
    n = fs_->Write(h, off, five);
    EXPECT_EQ(ToErrno(n.status()), EFBIG) << off;
  }
  // A zero-length write anywhere succeeds and changes nothing.
  n = fs_->Write(h, kI64Max, ByteSpan());
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  ASSERT_TRUE(fs_->Flush(h).ok());
  auto rec = db_->GetInode(id);
  EXPECT_EQ(rec->size, kMax);
  EXPECT_EQ(rec->manifest.size(), 1u) << "only the last chunk holds data";
  EXPECT_EQ(Read(h, kMax - 4, 10), (Bytes{0, 1, 2, 3}));
  // Appending to a file at the largest size.
  auto ha = fs_->Open(id, O_WRONLY | O_APPEND);
  ASSERT_TRUE(ha.ok());
  EXPECT_EQ(ToErrno(fs_->Write(*ha, 0, five).status()), EFBIG);
  fs_->Release(*ha);
  fs_->Release(h);
}

// The last chunk of the largest file, committed, then written in part (page staging): its
// first byte, its last page whole, its last byte, and a write across the limit (short), each
// read back before and after the commit.
TEST_F(LimitsTest, PagesOfTheLastChunkOfTheLargestFile) {
  constexpr std::uint64_t kChunk = cas::kChunkSize;
  const std::uint64_t h = Create("f");
  Bytes model = test::Pattern(kChunk, 7);
  const std::uint64_t start = kMax - kChunk;
  ASSERT_TRUE(fs_->Write(h, start, model).ok());
  ASSERT_TRUE(fs_->Flush(h).ok());
  auto put = [&](std::uint64_t off, const Bytes& data, std::size_t want) {
    auto n = fs_->Write(h, off, data);
    ASSERT_TRUE(n.ok()) << n.status().message();
    ASSERT_EQ(*n, want) << off;
    std::copy_n(data.begin(), want, model.begin() + static_cast<std::ptrdiff_t>(off - start));
  };
  put(start, Bytes{9}, 1);
  put(kMax - 4096, test::Pattern(4096, 8), 4096);
  put(kMax - 1, Bytes{10}, 1);
  put(kMax - 2, Bytes{11, 12, 13, 14, 15}, 2);
  EXPECT_EQ(Read(h, start, kChunk + 10), model);
  ASSERT_TRUE(fs_->Flush(h).ok());
  EXPECT_EQ(Read(h, start, kChunk + 10), model);
  EXPECT_EQ(db_->GetInode(IdOf("f"))->size, kMax);
  fs_->Release(h);
}

TEST_F(LimitsTest, FallocateAtBoundaries) {
  const std::uint64_t h = Create("f");
  const InodeId id = IdOf("f");
  EXPECT_TRUE(fs_->Fallocate(h, 0, 0, 10).ok());
  EXPECT_EQ(fs_->GetAttr(id)->rec.size, 10u);
  EXPECT_TRUE(fs_->Fallocate(h, 0, kMax - 1, 1).ok());
  EXPECT_EQ(fs_->GetAttr(id)->rec.size, kMax);
  EXPECT_EQ(ToErrno(fs_->Fallocate(h, 0, kMax, 1)), EFBIG);
  EXPECT_EQ(ToErrno(fs_->Fallocate(h, 0, kI64Max, kI64Max)), EFBIG);
  EXPECT_EQ(ToErrno(fs_->Fallocate(h, FALLOC_FL_PUNCH_HOLE, 0, 1)), EOPNOTSUPP);
  EXPECT_EQ(ToErrno(fs_->Fallocate(h, FALLOC_FL_COLLAPSE_RANGE, 0, kCS)), EOPNOTSUPP);
  EXPECT_EQ(ToErrno(fs_->Fallocate(h, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, kI64Max, 1)),
            EFBIG);
  EXPECT_EQ(fs_->GetAttr(id)->rec.size, kMax) << "a failed fallocate changed the size";
  fs_->Release(h);
}

// Random writes, punches and zero-ranges against a byte model, then a commit and a reopen.
TEST_F(LimitsTest, PunchHoleAndZeroRangeMatchAModel) {
  const std::uint64_t h = Create("f");
  const InodeId id = IdOf("f");
  std::mt19937_64 rng(7);
  const std::size_t span = 5 * kCS + 777;
  Bytes model;
  auto write = [&](std::uint64_t off, std::size_t len) {
    Bytes data(len);
    for (auto& c : data) c = static_cast<std::uint8_t>(rng() | 1);
    auto n = fs_->Write(h, off, data);
    ASSERT_TRUE(n.ok());
    if (model.size() < off + len) model.resize(off + len, 0);
    std::memcpy(model.data() + off, data.data(), len);
  };
  write(0, span);
  for (int round = 0; round < 60; ++round) {
    const std::uint64_t off = rng() % span;
    const std::uint64_t len = 1 + rng() % (2 * kCS);
    switch (rng() % 4) {
      case 0:
        write(off, static_cast<std::size_t>(std::min<std::uint64_t>(len, 70000)));
        break;
      case 1: {
        ASSERT_TRUE(fs_->Fallocate(h, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len).ok());
        const std::uint64_t end = std::min<std::uint64_t>(off + len, model.size());
        if (off < end) std::memset(model.data() + off, 0, end - off);
        break;
      }
      case 2: {
        ASSERT_TRUE(fs_->Fallocate(h, FALLOC_FL_ZERO_RANGE, off, len).ok());
        if (model.size() < off + len) model.resize(off + len, 0);
        std::memset(model.data() + off, 0, len);
        break;
      }
      case 3:
        ASSERT_TRUE(fs_->Flush(h).ok());
        break;
    }
    ASSERT_EQ(fs_->GetAttr(id)->rec.size, model.size()) << "round " << round;
    ASSERT_EQ(Read(h, 0, model.size() + 10), model) << "round " << round;
  }
  ASSERT_TRUE(fs_->Flush(h).ok());
  fs_->Release(h);
  auto h2 = fs_->Open(id, O_RDONLY);
  ASSERT_TRUE(h2.ok());
  EXPECT_EQ(Read(*h2, 0, model.size() + 10), model);
  fs_->Release(*h2);
}

TEST_F(LimitsTest, PunchingWholeChunksStoresNothingForThem) {
  const std::uint64_t h = Create("f");
  const InodeId id = IdOf("f");
  const Bytes data(4 * kCS, 0x77);
  ASSERT_TRUE(fs_->Write(h, 0, data).ok());
  ASSERT_TRUE(fs_->Flush(h).ok());
  EXPECT_EQ(db_->GetInode(id)->manifest.size(), 4u);
  // Chunks 1 and 2 whole, and half of chunk 3.
  ASSERT_TRUE(
      fs_->Fallocate(h, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, kCS, 2 * kCS + kCS / 2).ok());
  ASSERT_TRUE(fs_->Flush(h).ok());
  auto rec = db_->GetInode(id);
  EXPECT_EQ(rec->size, 4 * kCS);
  EXPECT_EQ(rec->manifest.size(), 2u);
  EXPECT_TRUE(rec->manifest.IsHole(1));
  EXPECT_TRUE(rec->manifest.IsHole(2));
  Bytes expect = data;
  std::memset(expect.data() + kCS, 0, 2 * kCS + kCS / 2);
  EXPECT_EQ(Read(h, 0, 4 * kCS), expect);
  fs_->Release(h);
}

TEST_F(LimitsTest, SeekDataAndHoleAtChunkGranularity) {
  const std::uint64_t h = Create("f");
  const InodeId id = IdOf("f");
  // Data in chunks 2 and 5 of a 10 TiB file; chunk 5 only buffered/staged, not committed.
  ASSERT_TRUE(Truncate(id, 10ull << 40).ok());
  const Bytes one = {9};
  ASSERT_TRUE(fs_->Write(h, 2 * kCS + 100, one).ok());
  ASSERT_TRUE(fs_->Flush(h).ok());
  ASSERT_TRUE(fs_->Write(h, 5 * kCS, one).ok());
  auto seek = [&](std::uint64_t off, bool data) { return fs_->Seek(h, off, data); };
  EXPECT_EQ(*seek(0, true), 2 * kCS);
  EXPECT_EQ(*seek(2 * kCS + 5, true), 2 * kCS + 5);
  EXPECT_EQ(*seek(3 * kCS, true), 5 * kCS);
  EXPECT_EQ(ToErrno(seek(6 * kCS, true).status()), ENXIO);
  EXPECT_EQ(*seek(0, false), 0u);
  EXPECT_EQ(*seek(2 * kCS, false), 3 * kCS);
  EXPECT_EQ(*seek(5 * kCS + 9, false), 6 * kCS);
  EXPECT_EQ(*seek((10ull << 40) - 1, false), (10ull << 40) - 1);
  for (std::uint64_t off : {std::uint64_t{10} << 40, kMax, kI64Max}) {
    EXPECT_EQ(ToErrno(seek(off, true).status()), ENXIO) << off;
    EXPECT_EQ(ToErrno(seek(off, false).status()), ENXIO) << off;
  }
  fs_->Release(h);
}

TEST_F(LimitsTest, EveryFileTypeMknodMakes) {
  struct Case {
    const char* name;
    std::uint32_t type;
    InodeKind kind;
    std::uint64_t rdev;
  };
  const Case cases[] = {
      {"blk", S_IFBLK, InodeKind::kBlockDevice, makedev(8, 1)},
      {"chr", S_IFCHR, InodeKind::kCharDevice, makedev(1, 3)},
      {"sock", S_IFSOCK, InodeKind::kSocket, 0},
      {"fifo", S_IFIFO, InodeKind::kFifo, 0},
      {"reg", S_IFREG, InodeKind::kFile, 0},
  };
  for (const auto& c : cases) {
    auto a = fs_->Mknod(kRootId, c.name, c.type | 0640, 1000, 100, c.rdev);
    ASSERT_TRUE(a.ok()) << c.name << ": " << a.status().message();
    EXPECT_EQ(a->rec.kind, c.kind);
    EXPECT_EQ(a->rec.rdev, c.rdev);
    EXPECT_EQ(a->rec.mode, 0640u);
    // Stat, rename, link and unlink as any entry.
    auto l = fs_->Lookup(kRootId, c.name);
    ASSERT_TRUE(l.ok());
    EXPECT_EQ(l->rec.rdev, c.rdev);
    const std::string moved = std::string(c.name) + ".moved";
    ASSERT_TRUE(fs_->Rename(kRootId, c.name, kRootId, moved, 0).ok());
    ASSERT_TRUE(fs_->Link(l->rec.id, kRootId, std::string(c.name) + ".link").ok());
    EXPECT_EQ(fs_->GetAttr(l->rec.id)->nlink, 2u);
    ASSERT_TRUE(fs_->Unlink(kRootId, moved).ok());
    EXPECT_EQ(fs_->Lookup(kRootId, std::string(c.name) + ".link")->rec.rdev, c.rdev);
  }
  // A device number survives a reopen of the database.
  fs_.reset();
  Open();
  EXPECT_EQ(fs_->Lookup(kRootId, "blk.link")->rec.rdev, makedev(8, 1));
  EXPECT_EQ(ToErrno(fs_->Mknod(kRootId, "bad", 0170000 | 0644, 0, 0).status()), EINVAL);
  EXPECT_EQ(ToErrno(fs_->Mknod(kRootId, "dir", S_IFDIR | 0755, 0, 0).status()), EINVAL);
}

InodeRecord RemoteFile(std::uint64_t id, std::uint64_t size) {
  InodeRecord r;
  r.id = id;
  r.kind = InodeKind::kFile;
  r.mode = 0644;
  r.size = size;
  r.version = {Hlc::WallNs(), 999};
  r.content_clock = {{999, r.version.hlc}};
  return r;
}

// One bad record costs a log line; the others in its batch apply and the cursor moves on.
TEST_F(LimitsTest, ARemoteRecordOverTheLimitsIsRefusedAlone) {
  std::vector<InodeRecord> inodes;
  std::vector<DentryRecord> dentries;
  auto add = [&](InodeRecord r, const std::string& name) {
    dentries.push_back({kRootId, name, r.id, r.version});
    inodes.push_back(std::move(r));
  };
  add(RemoteFile(101, 5), "good1");
  add(RemoteFile(102, kMax + 1), "too-big");
  InodeRecord past_end = RemoteFile(103, kCS);
  past_end.manifest.Set(7, crypto::Digest{1});
  add(past_end, "chunk-past-end");
  InodeRecord future = RemoteFile(104, 5);
  future.version.hlc = std::numeric_limits<std::uint64_t>::max() - 1;
  add(future, "from-the-future");
  InodeRecord far = RemoteFile(105, 5);
  far.version.hlc += 3600ull * 1000000000;  // an hour ahead
  add(far, "an-hour-ahead");
  InodeRecord clock = RemoteFile(106, 5);
  clock.content_clock = {{999, std::numeric_limits<std::uint64_t>::max()}};
  add(clock, "poisoned-clock");
  add(RemoteFile(107, kMax), "good2");
  auto won = fs_->ApplyRemote(net::Changes{42, inodes, dentries}, 999);
  ASSERT_TRUE(won.ok()) << won.status().message();
  EXPECT_TRUE(fs_->GetAttr(101).ok());
  EXPECT_TRUE(fs_->GetAttr(107).ok());
  EXPECT_EQ(fs_->GetAttr(107)->rec.size, kMax);
  for (InodeId bad : {102, 103, 104, 105, 106}) {
    EXPECT_FALSE(fs_->GetAttr(bad).ok()) << bad;
  }
  EXPECT_EQ(db_->Cursor(999), 42u);
  // This node never confirms (FeedAck) past the batch that held a refused record: the peer
  // must not purge a tombstone this node refused while it still holds what it deleted.
  EXPECT_EQ(db_->AckCap(999), 0u);
  EXPECT_EQ(db_->AckCap(998), UINT64_MAX);  // another peer: nothing refused
  // Local writes still win afterwards: the clock was not dragged to the future.
  auto h = fs_->Open(101, O_RDWR);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(fs_->Write(*h, 0, Bytes{1, 2, 3}).ok());
  ASSERT_TRUE(fs_->Flush(*h).ok());
  fs_->Release(*h);
  EXPECT_LT(db_->GetInode(101)->version.hlc, Hlc::WallNs() + 1000000000ull);
  EXPECT_EQ(db_->GetInode(101)->version.node, db_->node_id());
  // The allowed skew is configurable.
  fs_->SetMaxClockSkew(std::chrono::hours(2));
  far.version.hlc = Hlc::WallNs() + 3600ull * 1000000000;
  ASSERT_TRUE(fs_->ApplyRemote(net::Changes{43, {far}, {}}, 999).ok());
  EXPECT_TRUE(fs_->GetAttr(105).ok());
  EXPECT_EQ(db_->AckCap(999), 0u);  // a later refusal or acceptance never raises the cap
  EXPECT_EQ(db_->Cursor(999), 43u);
}

// A database written by the previous schema (dense manifests, no rdev) opens and reads the same.
TEST_F(LimitsTest, ASchemaFiveDatabaseIsConverted) {
  fs_.reset();
  db_.reset();
  const auto path = dir_.path() / "old.db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const char* schema5 =
      "CREATE TABLE meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
      "CREATE TABLE inodes(id INTEGER PRIMARY KEY, kind INTEGER, mode INTEGER,"
      " uid INTEGER, gid INTEGER, size INTEGER, mtime INTEGER, ctime INTEGER, hlc INTEGER,"
      " node INTEGER, deleted INTEGER, target TEXT, manifest BLOB, seq INTEGER, atime INTEGER,"
      " xattrs BLOB, clock BLOB);"
      "CREATE TABLE dentries(parent INTEGER, name TEXT, child INTEGER,"
      " hlc INTEGER, node INTEGER, deleted INTEGER, seq INTEGER, rep_hlc INTEGER,"
      " rep_node INTEGER, PRIMARY KEY(parent, name)) WITHOUT ROWID;"
      "CREATE TABLE cursors(peer INTEGER PRIMARY KEY, seq INTEGER);"
      "INSERT INTO meta VALUES('schema', 5), ('node_id', 77);"
      "INSERT INTO inodes VALUES(1, 2, 493, 0, 0, 0, 0, 0, 0, 0, 0, '', x'', 0, 0, x'', x'');"
      "INSERT INTO dentries VALUES(1, 'f', 500, 10, 77, 0, 2, 0, 0);";
  ASSERT_EQ(sqlite3_exec(db, schema5, nullptr, nullptr, nullptr), SQLITE_OK);
  // A file of three chunks, the middle one a hole.
  Bytes dense(96, 0);
  dense[0] = 0xA1;
  dense[64] = 0xC3;
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "INSERT INTO inodes VALUES(500, 1, 420, 0, 0, 3000000, 0, 0, 10, "
                               "77, 0, '', ?, 1, 0, x'', x'')",
                               -1, &st, nullptr),
            SQLITE_OK);
  sqlite3_bind_blob(st, 1, dense.data(), static_cast<int>(dense.size()), SQLITE_STATIC);
  ASSERT_EQ(sqlite3_step(st), SQLITE_DONE);
  sqlite3_finalize(st);
  sqlite3_close(db);

  auto opened = NamespaceDb::Open(path);
  ASSERT_TRUE(opened.ok()) << opened.status().message();
  auto rec = (*opened)->GetInode(500);
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->size, 3000000u);
  EXPECT_EQ(rec->rdev, 0u);
  ASSERT_EQ(rec->manifest.size(), 2u);
  EXPECT_EQ(rec->manifest[0][0], 0xA1);
  EXPECT_TRUE(rec->manifest.IsHole(1));
  EXPECT_EQ(rec->manifest[2][0], 0xC3);
  EXPECT_EQ((*opened)->node_id(), 77u);
  opened->reset();
  // And opens again as the current schema.
  auto again = NamespaceDb::Open(path);
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ((*again)->GetInode(500)->manifest.size(), 2u);
}

}  // namespace
}  // namespace foreverfs::server
