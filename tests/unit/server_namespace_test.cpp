// NamespaceDb: last-writer-wins records, tombstones, the change feed, cursors, persistence,
// and convergence of nodes that apply the same records in different orders.

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "server/namespace_db.h"
#include "unit/temp_dir.h"

namespace foreverfs::server {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kHuge = 1'000'000;

using test::TempDir;

std::unique_ptr<NamespaceDb> OpenDb(const fs::path& path) {
  auto db = NamespaceDb::Open(path);
  EXPECT_TRUE(db.ok()) << db.status().message();
  return db.ok() ? std::move(*db) : nullptr;
}

InodeRecord File(InodeId id, Version v, std::uint32_t mode = 0644, bool deleted = false) {
  InodeRecord r;
  r.id = id;
  r.kind = InodeKind::kFile;
  r.mode = mode;
  r.size = 10;
  r.mtime_ns = r.ctime_ns = 1234;
  r.version = v;
  r.deleted = deleted;
  return r;
}

InodeRecord Dir(InodeId id, Version v) {
  InodeRecord r = File(id, v, 0755);
  r.kind = InodeKind::kDir;
  r.size = 0;
  return r;
}

// An entry whose writer saw everything before it (replaces = its own version): plain
// last-writer-wins, no conflict names.
DentryRecord Entry(InodeId parent, std::string name, InodeId child, Version v,
                   bool deleted = false) {
  DentryRecord d{parent, std::move(name), child, v, deleted};
  d.replaces = v;
  return d;
}

ChangeSet Inodes(std::vector<InodeRecord> r) { return {std::move(r), {}}; }
ChangeSet Dentries(std::vector<DentryRecord> d) { return {{}, std::move(d)}; }

ChangeSet ApplyOk(NamespaceDb& db, const ChangeSet& cs, std::optional<std::uint64_t> peer = {},
                  std::uint64_t up_to = 0) {
  auto won = db.Apply(cs, peer, up_to);
  EXPECT_TRUE(won.ok()) << won.status().message();
  return won.ok() ? std::move(*won) : ChangeSet{};
}

class NamespaceDbTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = OpenDb(dir_.path() / "ns.db");
    ASSERT_NE(db_, nullptr);
  }
  TempDir dir_;
  std::unique_ptr<NamespaceDb> db_;
};

// AnyInodeIn (which a new inode-id block is checked with) at the ends of the id space, where
// the stored signed ids change sign: ids a peer may send, 2, 2^63 - 1, 2^63 and 2^64 - 1, each
// found by a range of one and by its block, and not by the neighbouring ones.
TEST_F(NamespaceDbTest, AnyInodeInFindsIdsAtTheEndsOfTheIdSpace) {
  constexpr std::uint64_t kBlock = std::uint64_t{1} << 20;
  constexpr std::uint64_t kTop63 = (std::uint64_t{1} << 63) - 1;
  const std::vector<std::uint64_t> ids{2, kTop63, kTop63 + 1, ~std::uint64_t{0}};
  EXPECT_FALSE(db_->AnyInodeIn(kTop63 - kBlock + 1, kTop63));
  std::vector<InodeRecord> recs;
  for (std::uint64_t id : ids) recs.push_back(File(id, {100, 1}));
  ApplyOk(*db_, Inodes(recs));
  for (std::uint64_t id : ids) {
    SCOPED_TRACE(id);
    EXPECT_TRUE(db_->AnyInodeIn(id, id));
    const std::uint64_t first = id & ~(kBlock - 1);
    EXPECT_TRUE(db_->AnyInodeIn(first, first | (kBlock - 1)));
  }
  EXPECT_FALSE(db_->AnyInodeIn(3, kBlock - 1));                      // past 2 in its block
  EXPECT_FALSE(db_->AnyInodeIn(kTop63 - kBlock + 1, kTop63 - 1));    // below 2^63 - 1
  EXPECT_FALSE(db_->AnyInodeIn(kTop63 + 2, ~std::uint64_t{0} - 1));  // between 2^63 and the top
  EXPECT_FALSE(db_->AnyInodeIn(kBlock, 2 * kBlock - 1));             // the second block
}

TEST_F(NamespaceDbTest, NewDatabaseHasRootAndNodeId) {
  EXPECT_NE(db_->node_id(), 0u);
  auto root = db_->GetInode(kRootId);
  ASSERT_TRUE(root.ok()) << root.status().message();
  EXPECT_EQ(root->kind, InodeKind::kDir);
  EXPECT_EQ(root->mode, 0755u);
  EXPECT_EQ(root->version, (Version{0, 0}));
  auto list = db_->ListDir(kRootId);
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
  EXPECT_EQ(db_->LastSeq(), 0u);
  // The root is implicit on every node and never part of the feed.
  auto changes = db_->ChangesSince(0, kHuge, kHuge);
  ASSERT_TRUE(changes.ok());
  EXPECT_TRUE(changes->inodes.empty());
  EXPECT_TRUE(changes->dentries.empty());
  EXPECT_EQ(changes->up_to, 0u);
  EXPECT_EQ(db_->GetInode(2).status().code(), Code::kNotFound);
}

int PageSizeOf(const fs::path& path) {
  sqlite3* raw = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  int size = -1;
  if (sqlite3_prepare_v2(raw, "PRAGMA page_size", -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    size = sqlite3_column_int(st, 0);
  }
  sqlite3_finalize(st);
  sqlite3_close(raw);
  return size;
}

// New databases use 1 KiB pages (every commit writes whole pages to the WAL, about seven of
// them for a create: a quarter of the bytes); a database made with 4 KiB pages keeps them and
// works as before, records larger than many pages included.
TEST_F(NamespaceDbTest, NewDatabasesUseSmallPagesAndOldOnesKeepTheirs) {
  db_.reset();
  EXPECT_EQ(PageSizeOf(dir_.path() / "ns.db"), 1024);
  const fs::path old = dir_.path() / "old.db";
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(old.c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw, "PRAGMA page_size=4096; CREATE TABLE t(a); DROP TABLE t;", nullptr,
                           nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(raw);
  }
  ASSERT_EQ(PageSizeOf(old), 4096);
  for (const fs::path& path : {dir_.path() / "ns.db", old}) {
    SCOPED_TRACE(path.string());
    auto db = OpenDb(path);
    ASSERT_NE(db, nullptr);
    InodeRecord big = File(9, {200, 1});
    for (std::uint64_t i = 0; i < 50'000; ++i) {  // 2 MB of manifest: thousands of pages
      crypto::Digest id{};
      id[0] = static_cast<std::uint8_t>(i);
      id[1] = static_cast<std::uint8_t>(i >> 8);
      big.manifest.Set(i * 3, id);
    }
    big.size = 150'000ull << 20;
    ApplyOk(*db, Inodes({big}));
    auto got = db->GetInode(9);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_EQ(got->manifest, big.manifest);
  }
  EXPECT_EQ(PageSizeOf(old), 4096);
  EXPECT_EQ(PageSizeOf(dir_.path() / "ns.db"), 1024);
}

TEST_F(NamespaceDbTest, TwoDatabasesGetDifferentNodeIds) {
  auto other = OpenDb(dir_.path() / "other.db");
  ASSERT_NE(other, nullptr);
  EXPECT_NE(other->node_id(), db_->node_id());
}

TEST_F(NamespaceDbTest, InodeLastWriterWins) {
  auto won = ApplyOk(*db_, Inodes({File(5, {100, 1}, 0600)}));
  EXPECT_EQ(won.inodes.size(), 1u);
  EXPECT_EQ(db_->LastSeq(), 1u);

  // Older: ignored.
  won = ApplyOk(*db_, Inodes({File(5, {99, 7}, 0611)}));
  EXPECT_TRUE(won.empty());
  EXPECT_EQ(db_->GetInode(5)->mode, 0600u);
  // Equal version: ignored, even with other content.
  won = ApplyOk(*db_, Inodes({File(5, {100, 1}, 0622)}));
  EXPECT_TRUE(won.empty());
  EXPECT_EQ(db_->GetInode(5)->mode, 0600u);
  EXPECT_EQ(db_->LastSeq(), 1u);
  // Same HLC, greater node id: newer.
  won = ApplyOk(*db_, Inodes({File(5, {100, 2}, 0633)}));
  EXPECT_EQ(won.inodes.size(), 1u);
  EXPECT_EQ(db_->GetInode(5)->mode, 0633u);
  // Newer HLC: wins.
  won = ApplyOk(*db_, Inodes({File(5, {101, 0}, 0644)}));
  EXPECT_EQ(won.inodes.size(), 1u);
  auto r = db_->GetInode(5);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, File(5, {101, 0}, 0644));
  EXPECT_EQ(db_->LastSeq(), 3u);
}

TEST_F(NamespaceDbTest, RecordsRoundTripEveryField) {
  InodeRecord r = File(7, {55, 9});
  r.kind = InodeKind::kSymlink;
  r.uid = 1001;
  r.gid = 1002;
  r.size = 5ull << 40;
  r.mtime_ns = -5;
  r.ctime_ns = std::numeric_limits<std::int64_t>::max();
  r.symlink_target = "../some/where";
  r.manifest = {crypto::Digest{}, crypto::Sha256::Of(AsBytes("a")),
                crypto::Sha256::Of(AsBytes("b"))};
  InodeRecord big_id = File(~0ull, {56, 9});  // ids use all 64 bits
  ApplyOk(*db_, Inodes({r, big_id}));
  EXPECT_EQ(*db_->GetInode(7), r);
  EXPECT_EQ(*db_->GetInode(~0ull), big_id);
  DentryRecord d = Entry(~0ull, std::string(255, 'x'), 7, {~0ull >> 1, ~0ull});
  ApplyOk(*db_, Dentries({d}));
  auto got = db_->GetDentry(~0ull, std::string(255, 'x'));
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(*got, d);
}

TEST_F(NamespaceDbTest, DentryLastWriterWins) {
  ApplyOk(*db_, Inodes({File(5, {1, 1}), File(6, {1, 1})}));
  auto won = ApplyOk(*db_, Dentries({Entry(kRootId, "a", 5, {10, 1})}));
  EXPECT_EQ(won.dentries.size(), 1u);
  EXPECT_TRUE(ApplyOk(*db_, Dentries({Entry(kRootId, "a", 6, {9, 1})})).empty());
  EXPECT_TRUE(ApplyOk(*db_, Dentries({Entry(kRootId, "a", 6, {10, 1})})).empty());
  EXPECT_EQ(db_->GetDentry(kRootId, "a")->child, 5u);
  EXPECT_EQ(ApplyOk(*db_, Dentries({Entry(kRootId, "a", 6, {11, 1})})).dentries.size(), 1u);
  EXPECT_EQ(db_->GetDentry(kRootId, "a")->child, 6u);
  // Names are case-sensitive and distinct keys.
  ApplyOk(*db_, Dentries({Entry(kRootId, "A", 5, {12, 1})}));
  EXPECT_EQ(db_->GetDentry(kRootId, "A")->child, 5u);
  EXPECT_EQ(db_->GetDentry(kRootId, "a")->child, 6u);
}

TEST_F(NamespaceDbTest, OneBatchWithTwoVersionsOfOneKeyKeepsTheNewest) {
  auto won = ApplyOk(*db_, Inodes({File(5, {3, 1}, 0603), File(5, {1, 1}, 0601),
                                   File(5, {4, 1}, 0604), File(5, {2, 1}, 0602)}));
  EXPECT_EQ(won.inodes.size(), 2u);  // {3,1} then {4,1}
  EXPECT_EQ(db_->GetInode(5)->mode, 0604u);
}

TEST_F(NamespaceDbTest, TombstonesHideAndDoNotResurrect) {
  ApplyOk(*db_, {{File(5, {1, 1}), Dir(6, {1, 1})},
                 {Entry(kRootId, "f", 5, {2, 1}), Entry(kRootId, "d", 6, {2, 1})}});
  ASSERT_EQ(db_->ListDir(kRootId)->size(), 2u);
  EXPECT_TRUE(db_->HasLiveEntries(kRootId));
  EXPECT_EQ(db_->LinksTo(5)->size(), 1u);

  // Dentry tombstone: entry gone, inode still there.
  ApplyOk(*db_, Dentries({Entry(kRootId, "f", 5, {3, 1}, /*deleted=*/true)}));
  EXPECT_EQ(db_->GetDentry(kRootId, "f").status().code(), Code::kNotFound);
  EXPECT_TRUE(db_->GetInode(5).ok());
  EXPECT_TRUE(db_->LinksTo(5)->empty());
  auto list = db_->ListDir(kRootId);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "d");

  // An older live version arriving late does not bring it back.
  ApplyOk(*db_, Dentries({Entry(kRootId, "f", 5, {2, 9})}));
  EXPECT_EQ(db_->GetDentry(kRootId, "f").status().code(), Code::kNotFound);

  // Inode tombstone: the entry that still points at it is hidden too.
  ApplyOk(*db_, Inodes({[] {
    auto r = Dir(6, {4, 1});
    r.deleted = true;
    return r;
  }()}));
  EXPECT_EQ(db_->GetInode(6).status().code(), Code::kNotFound);
  EXPECT_EQ(db_->GetDentry(kRootId, "d").status().code(), Code::kNotFound);
  EXPECT_TRUE(db_->ListDir(kRootId)->empty());
  EXPECT_FALSE(db_->HasLiveEntries(kRootId));
  ApplyOk(*db_, Inodes({Dir(6, {3, 7})}));
  EXPECT_EQ(db_->GetInode(6).status().code(), Code::kNotFound);

  // A newer live version after a tombstone is a re-creation.
  ApplyOk(*db_, Dentries({Entry(kRootId, "f", 5, {9, 1})}));
  EXPECT_EQ(db_->GetDentry(kRootId, "f")->child, 5u);

  // Tombstones are in the feed, so they replicate.
  auto changes = db_->ChangesSince(0, kHuge, kHuge);
  ASSERT_TRUE(changes.ok());
  bool saw_inode_tomb = std::any_of(changes->inodes.begin(), changes->inodes.end(),
                                    [](const InodeRecord& r) { return r.id == 6 && r.deleted; });
  EXPECT_TRUE(saw_inode_tomb);
}

TEST_F(NamespaceDbTest, ListDirIsSortedAndSkipsEntriesWhoseInodeIsUnknown) {
  ApplyOk(*db_, Inodes({File(5, {1, 1}), File(6, {1, 1}), File(7, {1, 1})}));
  ApplyOk(*db_, Dentries({Entry(kRootId, "c", 5, {1, 1}), Entry(kRootId, "a", 6, {1, 1}),
                          Entry(kRootId, "b", 7, {1, 1}), Entry(kRootId, "z", 99, {1, 1})}));
  auto list = db_->ListDir(kRootId);
  ASSERT_TRUE(list.ok());
  std::vector<std::string> names;
  for (auto& d : *list) names.push_back(d.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(db_->GetDentry(kRootId, "z").status().code(), Code::kNotFound);
}

TEST_F(NamespaceDbTest, ChangesSinceReturnsChangesInOrderWithUpTo) {
  // Interleave inode and dentry changes across transactions.
  ApplyOk(*db_, Inodes({File(5, {1, 1})}));                   // seq 1
  ApplyOk(*db_, Dentries({Entry(kRootId, "a", 5, {1, 1})}));  // seq 2
  ApplyOk(*db_, Inodes({File(6, {1, 1})}));                   // seq 3
  ApplyOk(*db_, Dentries({Entry(kRootId, "b", 6, {1, 1})}));  // seq 4
  ApplyOk(*db_, Inodes({File(5, {2, 1}, 0600)}));             // seq 5: inode 5 moves last
  EXPECT_EQ(db_->LastSeq(), 5u);

  auto all = db_->ChangesSince(0, kHuge, kHuge);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->up_to, 5u);
  ASSERT_EQ(all->inodes.size(), 2u);
  EXPECT_EQ(all->inodes[0].id, 6u);  // seq 3
  EXPECT_EQ(all->inodes[1].id, 5u);  // seq 5
  EXPECT_EQ(all->inodes[1].mode, 0600u);
  ASSERT_EQ(all->dentries.size(), 2u);
  EXPECT_EQ(all->dentries[0].name, "a");
  EXPECT_EQ(all->dentries[1].name, "b");

  // One record at a time walks the sequence in order: seq 2 (a), 3 (6), 4 (b), 5 (5).
  std::vector<std::string> walked;
  std::uint64_t since = 0;
  for (int guard = 0; guard < 10; ++guard) {
    auto page = db_->ChangesSince(since, 1, kHuge);
    ASSERT_TRUE(page.ok());
    if (page->inodes.empty() && page->dentries.empty()) {
      EXPECT_EQ(page->up_to, 5u);
      break;
    }
    ASSERT_EQ(page->inodes.size() + page->dentries.size(), 1u);
    EXPECT_GT(page->up_to, since);
    since = page->up_to;
    walked.push_back(page->inodes.empty() ? "d:" + page->dentries[0].name
                                          : "i:" + std::to_string(page->inodes[0].id));
  }
  EXPECT_EQ(walked, (std::vector<std::string>{"d:a", "i:6", "d:b", "i:5"}));

  auto tail = db_->ChangesSince(3, kHuge, kHuge);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(tail->up_to, 5u);
  EXPECT_EQ(tail->inodes.size(), 1u);
  EXPECT_EQ(tail->dentries.size(), 1u);

  auto none = db_->ChangesSince(5, kHuge, kHuge);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->inodes.empty() && none->dentries.empty());
  EXPECT_EQ(none->up_to, 5u);
}

TEST_F(NamespaceDbTest, ChangesSinceHonoursRecordAndByteLimits) {
  std::size_t record_bytes = 0;
  for (InodeId id = 10; id < 20; ++id) {
    InodeRecord r = File(id, {id, 1});
    r.size = 10 * kMiB;
    r.manifest.assign(10, crypto::Sha256::Of(AsBytes(std::to_string(id))));
    record_bytes = net::EncodedSize(r);
    ApplyOk(*db_, Inodes({r}));
  }
  ASSERT_EQ(db_->LastSeq(), 10u);

  auto three = db_->ChangesSince(0, 3, kHuge);
  ASSERT_TRUE(three.ok());
  ASSERT_EQ(three->inodes.size(), 3u);
  EXPECT_EQ(three->inodes[0].id, 10u);
  EXPECT_EQ(three->up_to, 3u);

  // Room for two and a half records allows two.
  auto two = db_->ChangesSince(0, kHuge, record_bytes * 5 / 2);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->inodes.size(), 2u);
  EXPECT_EQ(two->up_to, 2u);

  // A record over the limit still goes alone, so the feed always moves.
  auto one = db_->ChangesSince(4, kHuge, 5);
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one->inodes.size(), 1u);
  EXPECT_EQ(one->inodes[0].id, 14u);
  EXPECT_EQ(one->up_to, 5u);

  // Paging with both limits visits every record exactly once.
  std::vector<InodeId> seen;
  std::uint64_t since = 0;
  for (int guard = 0; guard < 20; ++guard) {
    auto page = db_->ChangesSince(since, 3, record_bytes * 3 / 2);
    ASSERT_TRUE(page.ok());
    if (page->inodes.empty()) break;
    for (auto& r : page->inodes) seen.push_back(r.id);
    since = page->up_to;
  }
  std::vector<InodeId> expected;
  for (InodeId id = 10; id < 20; ++id) expected.push_back(id);
  EXPECT_EQ(seen, expected);
}

// Many large manifests: every batch fits in a frame, and entries interleaved with them arrive in
// change order, none skipped (the inode query stops early; entries after it must wait).
TEST_F(NamespaceDbTest, ChangesSinceBoundsBatchesByEncodedSize) {
  constexpr std::size_t kBudget = net::kMaxFrameSize / 4;
  std::vector<std::uint64_t> order;  // 1 = inode, 2 = entry, by sequence
  for (InodeId id = 100; id < 112; ++id) {
    InodeRecord r = File(id, {id, 1});
    r.size = 30000 * kMiB;
    for (std::uint64_t i = 0; i < 30000; ++i) {
      crypto::Digest d{};
      d[0] = static_cast<std::uint8_t>(id);
      d[1] = static_cast<std::uint8_t>(i);
      d[2] = static_cast<std::uint8_t>(i >> 8);
      r.manifest.Set(i, d);
    }
    ApplyOk(*db_, Inodes({r}));
    DentryRecord d{kRootId, fmt::format("n{}", id), id, {id, 1}};
    ApplyOk(*db_, ChangeSet{{}, {d}});
  }
  std::uint64_t since = 0;
  std::size_t inodes = 0, dentries = 0, batches = 0;
  for (int guard = 0; guard < 100; ++guard) {
    auto page = db_->ChangesSince(since, 512, kBudget);
    ASSERT_TRUE(page.ok());
    if (page->inodes.empty() && page->dentries.empty()) break;
    ++batches;
    const Bytes frame = net::EncodeFrame(*page);
    EXPECT_LE(frame.size(), net::kMaxFrameSize);
    // Each inode arrives before (or with) its entry, which came after it.
    inodes += page->inodes.size();
    dentries += page->dentries.size();
    EXPECT_LE(dentries, inodes);
    since = page->up_to;
  }
  EXPECT_EQ(inodes, 12u);
  EXPECT_EQ(dentries, 12u);
  EXPECT_GE(batches, 4u);  // 12 records of 1.2 MB in batches of at most 4 MiB
}

TEST_F(NamespaceDbTest, CursorIsWrittenOnlyWithAPeerBatch) {
  ApplyOk(*db_, Inodes({File(5, {1, 1})}), 42, 7);
  EXPECT_EQ(db_->Cursor(42), 7u);
  ApplyOk(*db_, Inodes({File(5, {1, 1})}));  // nothing won, no cursor
  EXPECT_EQ(db_->Cursor(42), 7u);
  // An empty batch from a peer still moves its cursor (an empty Changes carries up_to).
  ApplyOk(*db_, ChangeSet{}, 42, 9);
  EXPECT_EQ(db_->Cursor(42), 9u);
  EXPECT_EQ(db_->LastSeq(), 1u);
}

TEST_F(NamespaceDbTest, CursorsPersistAcrossReopen) {
  EXPECT_EQ(db_->Cursor(42), 0u);
  ApplyOk(*db_, Inodes({File(5, {1, 1})}), 42, 17);
  ApplyOk(*db_, Inodes({File(6, {1, 1})}), 43, 3);
  EXPECT_EQ(db_->Cursor(42), 17u);
  EXPECT_EQ(db_->Cursor(43), 3u);
  EXPECT_EQ(db_->Cursor(44), 0u);
  db_.reset();
  db_ = OpenDb(dir_.path() / "ns.db");
  ASSERT_NE(db_, nullptr);
  EXPECT_EQ(db_->Cursor(42), 17u);
  EXPECT_EQ(db_->Cursor(43), 3u);
}

TEST_F(NamespaceDbTest, ReopenKeepsNodeIdDataAndSequence) {
  const auto node = db_->node_id();
  ApplyOk(*db_, {{File(5, {1000, 1}), Dir(6, {1001, 1})},
                 {Entry(kRootId, "f", 5, {1002, 1}), Entry(kRootId, "d", 6, {1003, 1})}});
  const auto seq = db_->LastSeq();
  EXPECT_EQ(db_->MaxHlc(), 1003u);
  db_.reset();

  db_ = OpenDb(dir_.path() / "ns.db");
  ASSERT_NE(db_, nullptr);
  EXPECT_EQ(db_->node_id(), node);
  // A reopened database continues after every number it reserved (see the next test).
  EXPECT_GE(db_->LastSeq(), seq);
  EXPECT_EQ(db_->MaxHlc(), 1003u);
  EXPECT_EQ(*db_->GetInode(5), File(5, {1000, 1}));
  EXPECT_EQ(db_->GetDentry(kRootId, "d")->child, 6u);
  EXPECT_EQ(db_->ListDir(kRootId)->size(), 2u);
  // New changes continue the sequence rather than reusing it.
  ApplyOk(*db_, Inodes({File(7, {1, 1})}));
  EXPECT_GT(db_->LastSeq(), seq);
  auto tail = db_->ChangesSince(seq, kHuge, kHuge);
  ASSERT_EQ(tail->inodes.size(), 1u);
  EXPECT_EQ(tail->inodes[0].id, 7u);
}

// A power failure may lose the last commits (synchronous=NORMAL): simulated by copying the
// database files at one moment, committing more, and reopening the copy. Peers may already
// have seen the lost commits' sequence numbers, so the new changes must get greater ones, or
// a peer whose cursor is past them would never receive them.
TEST_F(NamespaceDbTest, NumbersLostToAPowerFailureAreNeverHandedOutAgain) {
  ApplyOk(*db_, Inodes({File(5, {1000, 1})}));
  const fs::path db = dir_.path() / "ns.db";
  const fs::path snap = dir_.path() / "snapshot";
  fs::create_directories(snap);
  for (const char* suffix : {"", "-wal", "-shm"}) {
    const fs::path f = db.string() + suffix;
    if (fs::exists(f)) fs::copy_file(f, snap / (std::string("ns.db") + suffix));
  }
  for (std::uint64_t i = 0; i < 50; ++i) ApplyOk(*db_, Inodes({File(100 + i, {2000 + i, 1})}));
  const auto seen_by_peers = db_->LastSeq();
  db_.reset();
  db_ = OpenDb(snap / "ns.db");  // what the disk held after the power failure
  ASSERT_NE(db_, nullptr);
  EXPECT_FALSE(db_->GetInode(100).ok()) << "the snapshot should predate the later commits";
  ApplyOk(*db_, Inodes({File(7, {3000, 1})}));
  EXPECT_GT(db_->LastSeq(), seen_by_peers);
  auto tail = db_->ChangesSince(seen_by_peers, kHuge, kHuge);
  ASSERT_TRUE(tail.ok());
  ASSERT_EQ(tail->inodes.size(), 1u);
  EXPECT_EQ(tail->inodes[0].id, 7u);
}

TEST_F(NamespaceDbTest, ForEachLiveManifestVisitsLiveFilesOnly) {
  InodeRecord a = File(5, {1, 1});
  a.manifest = {crypto::Sha256::Of(AsBytes("a"))};
  InodeRecord gone = File(6, {1, 1}, 0644, /*deleted=*/true);
  InodeRecord big = File(~0ull - 3, {1, 1});  // negative as a SQLite integer
  ApplyOk(*db_, Inodes({a, gone, big, Dir(7, {1, 1})}));
  std::vector<InodeId> seen;
  ASSERT_TRUE(db_->ForEachLiveManifest([&](const InodeRecord& r) { seen.push_back(r.id); }).ok());
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<InodeId>{5, ~0ull - 3}));
}

// --- Convergence ---------------------------------------------------------------------------

using DentryKey = std::pair<InodeId, std::string>;

struct State {
  std::map<InodeId, InodeRecord> inodes;
  std::map<DentryKey, DentryRecord> dentries;
  bool operator==(const State&) const = default;
};

State Snapshot(NamespaceDb& db) {
  State s;
  auto all = db.ChangesSince(0, kHuge, kHuge);
  EXPECT_TRUE(all.ok());
  for (auto& r : all->inodes) EXPECT_TRUE(s.inodes.emplace(r.id, r).second) << "inode twice";
  for (auto& d : all->dentries) {
    EXPECT_TRUE(s.dentries.emplace(DentryKey{d.parent, d.name}, d).second) << "dentry twice";
  }
  return s;
}

// The records of `a` that `b` lacks or holds differently, for failure messages.
std::string Describe(const State& a, const State& b) {
  std::string out;
  for (auto& [key, d] : a.dentries) {
    auto it = b.dentries.find(key);
    if (it == b.dentries.end() || !(it->second == d)) {
      out += fmt::format("\n  dentry ({}, {}) -> {} v{}.{} del={} differs", key.first, key.second,
                         d.child, d.version.hlc, d.version.node, d.deleted);
    }
  }
  for (auto& [id, r] : a.inodes) {
    auto it = b.inodes.find(id);
    if (it == b.inodes.end() || !(it->second == r)) {
      out += fmt::format("\n  inode {} v{}.{} del={} differs", id, r.version.hlc, r.version.node,
                         r.deleted);
    }
  }
  return out;
}

TEST(NamespaceConvergenceTest, AnyApplyOrderGivesTheSameState) {
  std::mt19937_64 rng(20240611);
  auto pick = [&](std::uint64_t n) {
    return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng);
  };
  const std::vector<std::string> names = {"a", "b", "c", "d"};

  // 300 records over 8 inodes and 3 x 4 dentry keys. Versions are unique (node = index), as
  // they are in a real cluster where one node never issues one version twice.
  std::vector<InodeRecord> inodes;
  std::vector<DentryRecord> dentries;
  for (std::uint64_t i = 0; i < 300; ++i) {
    Version v{1 + pick(150), 1 + i};
    if (pick(2) == 0) {
      // Inodes 2 and 3 are directories that are never deleted or named, 4..9 files: records
      // derived to repair the tree (revived or renamed directories) are tested further down.
      const InodeId id = 2 + pick(8);
      InodeRecord r = id < 4 ? Dir(id, v) : File(id, v);
      r.mode = static_cast<std::uint32_t>(pick(01000));
      r.size = id < 4 ? 0 : pick(1 << 20);
      r.deleted = id >= 4 && pick(5) == 0;
      if (!r.deleted && r.kind == InodeKind::kFile) {
        r.manifest.assign(pick(3), crypto::Sha256::Of(AsBytes(std::to_string(i))));
      }
      inodes.push_back(r);
    } else {
      dentries.push_back(
          Entry(1 + pick(3), names[pick(names.size())], 4 + pick(6), v, pick(4) == 0));
    }
  }

  // The expected state: per key, the record with the greatest version.
  State expected;
  for (auto& r : inodes) {
    auto [it, fresh] = expected.inodes.emplace(r.id, r);
    if (!fresh && it->second.version < r.version) it->second = r;
  }
  for (auto& d : dentries) {
    auto [it, fresh] = expected.dentries.emplace(DentryKey{d.parent, d.name}, d);
    if (!fresh && it->second.version < d.version) it->second = d;
  }

  TempDir dir;
  std::vector<State> states;
  for (int node = 0; node < 5; ++node) {
    auto db = OpenDb(dir.path() / ("node" + std::to_string(node) + ".db"));
    ASSERT_NE(db, nullptr);
    // Shuffle inode and dentry records together, then apply them in batches of 1..10.
    struct Op {
      bool is_inode;
      std::size_t index;
    };
    std::vector<Op> ops;
    for (std::size_t i = 0; i < inodes.size(); ++i) ops.push_back({true, i});
    for (std::size_t i = 0; i < dentries.size(); ++i) ops.push_back({false, i});
    std::mt19937_64 order(1000 + node);
    std::shuffle(ops.begin(), ops.end(), order);
    for (std::size_t at = 0; at < ops.size();) {
      ChangeSet batch;
      std::size_t n = 1 + order() % 10;
      for (; n > 0 && at < ops.size(); --n, ++at) {
        if (ops[at].is_inode) {
          batch.inodes.push_back(inodes[ops[at].index]);
        } else {
          batch.dentries.push_back(dentries[ops[at].index]);
        }
      }
      ApplyOk(*db, batch, /*peer=*/77, /*up_to=*/at);
    }
    states.push_back(Snapshot(*db));
    EXPECT_EQ(states.back(), expected) << "node " << node;

    // The live views agree with the records too.
    for (InodeId id = 2; id < 10; ++id) {
      auto it = expected.inodes.find(id);
      bool live = it != expected.inodes.end() && !it->second.deleted;
      auto got = db->GetInode(id);
      EXPECT_EQ(got.ok(), live) << "inode " << id;
      if (got.ok() && live) {
        EXPECT_EQ(*got, it->second);
      }
    }
    for (InodeId parent = 1; parent <= 3; ++parent) {
      auto list = db->ListDir(parent);
      ASSERT_TRUE(list.ok());
      std::vector<DentryRecord> want;
      for (auto& [key, d] : expected.dentries) {
        if (key.first != parent || d.deleted) continue;
        auto child = expected.inodes.find(d.child);
        if (child == expected.inodes.end() || child->second.deleted) continue;
        want.push_back(d);
      }
      EXPECT_EQ(*list, want) << "directory " << parent;
    }
    EXPECT_EQ(db->Cursor(77), ops.size());
  }
  for (std::size_t i = 1; i < states.size(); ++i) EXPECT_EQ(states[i], states[0]);
}

// Node A removes directory d (it saw it empty) while node B creates d/f. In either order, d
// comes back with its name and f stays reachable; both nodes end the same.
TEST(NamespaceConvergenceTest, ADirectoryDeletedWhileAFileWasCreatedInItComesBack) {
  TempDir dir;
  InodeRecord d = Dir(10, {5, 1});
  DentryRecord d_entry = Entry(kRootId, "d", 10, {5, 1});
  // A: rmdir d.
  DentryRecord d_tomb = Entry(kRootId, "d", 10, {20, 1}, true);
  InodeRecord d_gone = Dir(10, {21, 1});
  d_gone.deleted = true;
  // B: create d/f.
  InodeRecord f = File(11, {19, 2});
  f.content_clock = {{2, 19}};
  DentryRecord f_entry = Entry(10, "f", 11, {19, 2});
  std::vector<State> states;
  for (int order = 0; order < 2; ++order) {
    auto db = OpenDb(dir.path() / ("r" + std::to_string(order) + ".db"));
    ASSERT_NE(db, nullptr);
    ApplyOk(*db, {{d}, {d_entry}});
    ChangeSet a{{d_gone}, {d_tomb}}, b{{f}, {f_entry}};
    ApplyOk(*db, order == 0 ? a : b);
    ApplyOk(*db, order == 0 ? b : a);
    auto back = db->GetDentry(kRootId, "d");
    ASSERT_TRUE(back.ok()) << "order " << order;
    EXPECT_EQ(back->child, 10u);
    EXPECT_TRUE(db->GetInode(10).ok());
    auto inside = db->GetDentry(10, "f");
    ASSERT_TRUE(inside.ok());
    EXPECT_EQ(inside->child, 11u);
    states.push_back(Snapshot(*db));
  }
  EXPECT_TRUE(states[0] == states[1]);
}

// Concurrent writers: content clocks that do not dominate each other, deletes that did not see
// a write, names created on two nodes at once. The conflict copies and restored names derived
// from them must come out the same whatever order the records arrive in.
TEST(NamespaceConvergenceTest, ConflictResolutionConvergesInAnyOrder) {
  std::mt19937_64 rng(99);
  auto pick = [&](std::uint64_t n) {
    return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng);
  };
  std::vector<InodeRecord> inodes;
  std::vector<DentryRecord> dentries;
  const std::vector<std::string> names = {"a", "b", "c"};
  for (InodeId id = 2; id < 8; ++id) {
    // Each file gets a name first, then concurrent versions from nodes 1..3.
    dentries.push_back(Entry(kRootId, names[id % 3] + std::to_string(id), id, {1, 100 + id}));
    InodeRecord base = File(id, {2, 100 + id});
    base.content_clock = {{100 + id, 2}};
    inodes.push_back(base);
  }
  for (std::uint64_t i = 0; i < 120; ++i) {
    const std::uint64_t writer = 1 + pick(3);
    const Version v{10 + i * 3 + pick(3), writer};
    if (pick(4) != 0) {
      InodeRecord r = File(2 + pick(6), v);
      r.content_clock.clear();
      for (std::uint64_t n = 1; n <= 3; ++n) {
        if (n == writer) {
          r.content_clock.push_back({n, v.hlc});
        } else if (pick(2) == 0) {
          r.content_clock.push_back({n, 1 + pick(v.hlc)});
        }
      }
      r.deleted = pick(6) == 0;
      if (!r.deleted)
        r.manifest.assign(1 + pick(2), crypto::Sha256::Of(AsBytes(std::to_string(i))));
      inodes.push_back(r);
    } else {
      DentryRecord d = Entry(kRootId, names[pick(3)], 2 + pick(6), v, pick(5) == 0);
      if (pick(2) == 0) d.replaces = {};  // created without seeing what is there
      dentries.push_back(d);
    }
  }
  TempDir dir;
  std::vector<std::unique_ptr<NamespaceDb>> dbs;
  for (int node = 0; node < 6; ++node) {
    dbs.push_back(OpenDb(dir.path() / ("c" + std::to_string(node) + ".db")));
    auto& db = dbs.back();
    ASSERT_NE(db, nullptr);
    std::vector<std::pair<bool, std::size_t>> ops;
    for (std::size_t i = 0; i < inodes.size(); ++i) ops.push_back({true, i});
    for (std::size_t i = 0; i < dentries.size(); ++i) ops.push_back({false, i});
    std::mt19937_64 order(500 + node);
    // The first names always arrive first (files are named before they are written).
    std::shuffle(ops.begin() + 12, ops.end(), order);
    std::stable_partition(ops.begin(), ops.begin() + 12, [](auto& op) { return !op.first; });
    for (std::size_t at = 0; at < ops.size();) {
      ChangeSet batch;
      for (std::size_t n = 1 + order() % 6; n > 0 && at < ops.size(); --n, ++at) {
        if (ops[at].first) {
          batch.inodes.push_back(inodes[ops[at].second]);
        } else {
          batch.dentries.push_back(dentries[ops[at].second]);
        }
      }
      ApplyOk(*db, batch);
    }
  }
  // Where a conflict copy lands depends on what a node knew when it noticed the conflict, so
  // the records nodes derive may differ; like every record they replicate. Exchange everything
  // (as the change feeds do) until nothing new arrives, then every node must hold the same.
  for (int round = 0; round < 4; ++round) {
    for (auto& from : dbs) {
      auto all = from->ChangesSince(0, kHuge, kHuge);
      ASSERT_TRUE(all.ok());
      for (auto& to : dbs) ApplyOk(*to, {all->inodes, all->dentries});
    }
  }
  std::vector<State> states;
  for (std::size_t node = 0; node < dbs.size(); ++node) {
    states.push_back(Snapshot(*dbs[node]));
    // No live file with content is left without a name.
    for (auto& [id, rec] : states.back().inodes) {
      if (rec.deleted || rec.kind != InodeKind::kFile) continue;
      EXPECT_FALSE(dbs[node]->LinksTo(id)->empty())
          << "inode " << id << " lost its name on node " << node;
    }
  }
  std::size_t copies = 0;
  for (auto& [key, d] : states[0].dentries)
    copies += key.second.find(".conflict-") != std::string::npos;
  EXPECT_GT(copies, 0u);
  for (std::size_t i = 1; i < states.size(); ++i) {
    EXPECT_TRUE(states[i] == states[0]) << "node " << i << Describe(states[i], states[0]) << "\n vs"
                                        << Describe(states[0], states[i]);
  }
}

// Sends every record each node holds to every node, as the change feeds do, until nothing new
// arrives.
void ExchangeAll(std::vector<std::unique_ptr<NamespaceDb>>& dbs, std::mt19937_64& order) {
  for (int round = 0; round < 4; ++round) {
    for (auto& from : dbs) {
      auto all = from->ChangesSince(0, kHuge, kHuge);
      ASSERT_TRUE(all.ok());
      std::vector<DentryRecord> d = all->dentries;
      std::shuffle(d.begin(), d.end(), order);
      for (auto& to : dbs) {
        for (std::size_t at = 0; at < d.size();) {
          ChangeSet batch{at == 0 ? all->inodes : std::vector<InodeRecord>{}, {}};
          for (std::size_t n = 1 + order() % 4; n > 0 && at < d.size(); --n, ++at)
            batch.dentries.push_back(d[at]);
          ApplyOk(*to, batch);
        }
      }
    }
  }
}

// The path from the root to `dir` following live names, or "" if it is not reachable.
std::string PathOf(NamespaceDb& db, InodeId dir) {
  std::string path;
  for (int depth = 0; depth < 64 && dir != kRootId; ++depth) {
    auto names = db.LinksTo(dir);
    if (!names.ok() || names->size() != 1) return "";
    path = "/" + names->front().name + path;
    dir = names->front().parent;
  }
  return dir == kRootId ? path : "";
}

// Three nodes move directories around concurrently, each on its own view (moves into each
// other, the same directory to two places). Merged in any order, every node ends with the same
// tree: each directory has exactly one name and is reachable from the root, with its files.
TEST(NamespaceConvergenceTest, ConcurrentDirectoryMovesLeaveOneTreeOnEveryNode) {
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    std::mt19937_64 rng(seed);
    TempDir dir;
    std::vector<std::unique_ptr<NamespaceDb>> dbs;
    ChangeSet base;
    for (InodeId id = 2; id < 8; ++id) {
      base.inodes.push_back(Dir(id, {1, 100}));
      base.dentries.push_back(Entry(kRootId, "d" + std::to_string(id), id, {1, 100 + id}));
      base.inodes.push_back(File(100 + id, {1, 100}));
      base.dentries.push_back(Entry(id, "f", 100 + id, {1, 200 + id}));
    }
    for (int node = 0; node < 5; ++node) {
      dbs.push_back(OpenDb(dir.path() / ("m" + std::to_string(node) + ".db")));
      ASSERT_NE(dbs.back(), nullptr);
      ApplyOk(*dbs.back(), base);
    }
    // Nodes 0..2 each make three moves on what they see; nodes 3 and 4 only watch.
    for (std::uint64_t node = 0; node < 3; ++node) {
      auto& db = *dbs[node];
      for (std::uint64_t step = 0; step < 3; ++step) {
        const InodeId moved = 2 + rng() % 6;
        const InodeId target = rng() % 3 == 0 ? kRootId : 2 + rng() % 6;
        auto from = db.LinksTo(moved);
        ASSERT_TRUE(from.ok() && from->size() == 1);
        // Locally a directory never moves into itself (FileServer::Rename refuses).
        if (target == moved || PathOf(db, target).find(PathOf(db, moved) + "/") == 0) continue;
        const Version v{1000 + step * 10 + rng() % 5, node + 1};
        DentryRecord tomb = from->front();
        tomb.deleted = true;
        tomb.version = tomb.replaces = v;
        ApplyOk(db, {{}, {tomb, Entry(target, "m" + std::to_string(moved), moved, v)}});
      }
    }
    ExchangeAll(dbs, rng);
    std::vector<State> states;
    for (std::size_t node = 0; node < dbs.size(); ++node) {
      states.push_back(Snapshot(*dbs[node]));
      for (InodeId id = 2; id < 8; ++id) {
        const std::string path = PathOf(*dbs[node], id);
        EXPECT_NE(path, "") << "directory " << id << " unreachable on node " << node;
        auto f = dbs[node]->GetDentry(id, "f");
        EXPECT_TRUE(f.ok() && f->child == 100 + id) << path;
      }
      if (node > 0) {
        EXPECT_TRUE(states[node] == states[0])
            << "node " << node << Describe(states[node], states[0]) << "\n vs"
            << Describe(states[0], states[node]);
      }
    }
  }
}

}  // namespace
}  // namespace foreverfs::server

namespace foreverfs::server {
namespace {

// The member list is replaced whole and read back across a reopen; ForgetMember drops a node
// from the members tombstones wait for.
TEST_F(NamespaceDbTest, ClusterMembersPersistAndForgetMemberDropsATombstoneHolder) {
  EXPECT_TRUE(db_->LoadClusterMembers().empty());
  std::vector<NamespaceDb::ClusterMember> rows{
      {1, "10.0.0.1:3000", 1, 0, -1},
      {UINT64_MAX, std::string(255, 'a'), 4, std::uint64_t{1} << 62, 123456},
  };
  ASSERT_TRUE(db_->SaveClusterMembers(rows).ok());
  ASSERT_TRUE(db_->SaveClusterMembers({rows[1]}).ok());  // replaces, not appends
  ASSERT_TRUE(db_->AddMember(7).ok());
  ASSERT_TRUE(db_->AddMember(8).ok());
  ASSERT_TRUE(db_->ForgetMember(7).ok());
  db_.reset();
  db_ = OpenDb(dir_.path() / "ns.db");
  ASSERT_NE(db_, nullptr);
  auto back = db_->LoadClusterMembers();
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].node, UINT64_MAX);
  EXPECT_EQ(back[0].addr, rows[1].addr);
  EXPECT_EQ(back[0].state, 4);
  EXPECT_EQ(back[0].incarnation, std::uint64_t{1} << 62);
  EXPECT_EQ(back[0].unseen_ms, 123456);
  EXPECT_EQ(back[0].weight, 1u);
  auto members = db_->Members();
  ASSERT_EQ(members.size(), 1u);
  EXPECT_EQ(members[0].node, 8u);
}

// Placement weights are kept with the member list, at their bounds; a member list saved by a
// build without weights (no weight column) gets the column, every member weighing 1.
TEST_F(NamespaceDbTest, ClusterMemberWeightsPersistAndOldListsGetThem) {
  std::vector<NamespaceDb::ClusterMember> rows{
      {1, "a:1", 1, 0, -1, 1}, {2, "b:1", 1, 3, 10, 1024}, {3, "c:1", 2, 4, 20, UINT32_MAX}};
  ASSERT_TRUE(db_->SaveClusterMembers(rows).ok());
  db_.reset();
  const auto path = dir_.path() / "ns.db";
  db_ = OpenDb(path);
  ASSERT_NE(db_, nullptr);
  auto back = db_->LoadClusterMembers();
  ASSERT_EQ(back.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(back[i].weight, rows[i].weight) << i;
  db_.reset();
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw,
                           "DROP TABLE cluster_members;"
                           " CREATE TABLE cluster_members(node INTEGER PRIMARY KEY, addr TEXT,"
                           " state INTEGER NOT NULL, incarnation INTEGER NOT NULL,"
                           " unseen_ms INTEGER NOT NULL);"
                           " INSERT INTO cluster_members VALUES(5, 'e:1', 1, 7, 0);",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(raw);
  }
  db_ = OpenDb(path);
  ASSERT_NE(db_, nullptr);
  back = db_->LoadClusterMembers();
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].node, 5u);
  EXPECT_EQ(back[0].incarnation, 7u);
  EXPECT_EQ(back[0].weight, 1u);
  ASSERT_TRUE(db_->SaveClusterMembers({{5, "e:1", 1, 8, 0, 9}}).ok());
  db_.reset();
  db_ = OpenDb(path);  // and again: the column is there now
  ASSERT_NE(db_, nullptr);
  back = db_->LoadClusterMembers();
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].weight, 9u);
}

}  // namespace
}  // namespace foreverfs::server
