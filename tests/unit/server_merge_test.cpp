// The namespace merge (server/namespace_merge.h) over records held in maps, without SQLite:
// every row of doc/namespace.md's tables, both arrival orders where the rule must converge, a
// store failure, and a differential check that the SQLite view (NamespaceDb::Apply) writes
// exactly what the map view does for the same random batches.

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "server/content_clock.h"
#include "server/namespace_db.h"
#include "server/namespace_merge.h"
#include "unit/temp_dir.h"

namespace foreverfs::server {
namespace {

// The stored records in maps, as the merge sees them through RecordView.
class MapRecords final : public RecordView {
 public:
  MapRecords() {
    InodeRecord root;
    root.id = kRootId;
    root.kind = InodeKind::kDir;
    root.mode = 0755;
    inodes_[kRootId] = root;
  }

  std::optional<InodeRecord> Inode(InodeId id) override {
    auto it = inodes_.find(id);
    if (it == inodes_.end()) return std::nullopt;
    return it->second;
  }
  std::optional<DentryRecord> Entry(InodeId parent, std::string_view name) override {
    auto it = entries_.find({parent, std::string(name)});
    if (it == entries_.end()) return std::nullopt;
    return it->second;
  }
  std::vector<DentryRecord> NamesOf(InodeId child) override {
    std::vector<DentryRecord> out;
    for (const auto& [key, d] : entries_) {
      if (d.child == child) out.push_back(d);
    }
    return out;
  }
  std::optional<Version> NewestLiveEntryIn(InodeId dir) override {
    std::optional<Version> best;
    for (const auto& [key, d] : entries_) {
      if (d.parent != dir || d.deleted) continue;
      auto child = inodes_.find(d.child);
      if (child == inodes_.end() || child->second.deleted) continue;
      if (!best || d.version > *best) best = d.version;
    }
    return best;
  }
  Status Put(const InodeRecord& r) override {
    if (fail_after_ == 0) return Err(Code::kNoSpace, "disk full (test)");
    if (fail_after_ > 0) --fail_after_;
    inodes_[r.id] = r;
    ++writes_;
    return Ok();
  }
  Status Put(const DentryRecord& d) override {
    if (fail_after_ == 0) return Err(Code::kNoSpace, "disk full (test)");
    if (fail_after_ > 0) --fail_after_;
    entries_[{d.parent, d.name}] = d;
    ++writes_;
    return Ok();
  }

  ChangeSet Apply(const ChangeSet& cs) {
    ChangeSet won;
    Status s = Merge(*this, cs, won);
    EXPECT_TRUE(s.ok()) << s.message();
    return won;
  }
  // Live entries of `dir`: name -> child.
  std::map<std::string, InodeId> Live(InodeId dir) const {
    std::map<std::string, InodeId> out;
    for (const auto& [key, d] : entries_) {
      if (d.parent == dir && !d.deleted) out[d.name] = d.child;
    }
    return out;
  }
  bool operator==(const MapRecords& o) const {
    return inodes_ == o.inodes_ && entries_ == o.entries_;
  }

  std::map<InodeId, InodeRecord> inodes_;
  std::map<std::pair<InodeId, std::string>, DentryRecord> entries_;
  int fail_after_ = -1;  // Puts that succeed before every later one fails; -1: never fails
  int writes_ = 0;
};

constexpr std::uint64_t kA = 0xa, kB = 0xb;
constexpr std::uint64_t kSec = 1'000'000'000;  // an hlc of 1 s

InodeRecord File(InodeId id, Version v, std::vector<model::ClockEntry> clock,
                 bool deleted = false) {
  InodeRecord r;
  r.id = id;
  r.kind = InodeKind::kFile;
  r.mode = 0644;
  r.size = 3;
  r.version = v;
  r.content_clock = std::move(clock);
  r.deleted = deleted;
  return r;
}

InodeRecord Dir(InodeId id, Version v, bool deleted = false) {
  InodeRecord r = File(id, v, {}, deleted);
  r.kind = InodeKind::kDir;
  r.size = 0;
  return r;
}

// An entry; by default its writer knowingly replaced whatever the name held (replaces = v).
DentryRecord Name(InodeId parent, std::string name, InodeId child, Version v, bool deleted = false,
                  std::optional<Version> replaces = std::nullopt) {
  DentryRecord d{parent, std::move(name), child, v, deleted};
  d.replaces = replaces.value_or(v);
  return d;
}

bool StartsWith(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// Table 1, first and last rows: newer wins, older and equal change nothing.
TEST(MergeTest, InodeLastWriterWinsAndEqualOrOlderWritesNothing) {
  MapRecords m;
  auto won = m.Apply({{File(5, {10, kA}, {{kA, 10}})}, {}});
  ASSERT_EQ(won.inodes.size(), 1u);
  auto newer = File(5, {20, kA}, {{kA, 20}});
  newer.mode = 0600;
  EXPECT_EQ(m.Apply({{newer}, {}}).inodes.size(), 1u);
  EXPECT_EQ(m.inodes_[5].mode, 0600u);
  const int writes = m.writes_;
  EXPECT_TRUE(m.Apply({{newer}, {}}).empty());                          // equal
  EXPECT_TRUE(m.Apply({{File(5, {15, kA}, {{kA, 10}})}, {}}).empty());  // older, seen
  EXPECT_EQ(m.writes_, writes);
  EXPECT_EQ(m.inodes_[5].mode, 0600u);
}

// Table 1, second and fifth rows: concurrent content keeps the loser as a conflict copy beside
// the original, whichever arrives first, and both orders end in the same records.
TEST(MergeTest, ConcurrentWritesKeepTheLoserAsACopyInEitherOrder) {
  const auto base = Name(kRootId, "f", 5, {1, kA});
  const auto mine = File(5, {5 * kSec, kA}, {{kA, 5 * kSec}});
  const auto theirs = File(5, {6 * kSec, kB}, {{kB, 6 * kSec}});
  MapRecords one, two;
  one.Apply({{File(5, {1, kA}, {})}, {base}});
  two.Apply({{File(5, {1, kA}, {})}, {base}});
  one.Apply({{mine}, {}});
  one.Apply({{theirs}, {}});
  two.Apply({{theirs}, {}});
  auto won = two.Apply({{mine}, {}});
  EXPECT_TRUE(one == two);
  EXPECT_EQ(one.inodes_[5].version, theirs.version);
  auto live = one.Live(kRootId);
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live.at("f"), 5u);
  auto copy = std::find_if(live.begin(), live.end(),
                           [](const auto& e) { return StartsWith(e.first, "f.conflict-"); });
  ASSERT_NE(copy, live.end());
  EXPECT_EQ(one.inodes_[copy->second].content_clock, mine.content_clock);
  // The loser arriving second wrote only the copy (its inode and its name).
  EXPECT_EQ(won.inodes.size(), 1u);
  EXPECT_EQ(won.dentries.size(), 1u);
  // Seen again, the conflict writes nothing more.
  EXPECT_TRUE(two.Apply({{mine}, {}}).empty());
}

// A hostile batch: two different records of one inode (and of one entry) with one version,
// then a newer record. The first of each version stands and the second is dropped, so applying
// the batch again writes nothing, whatever the records before it. (The changes fuzzer found the
// inode case: the second record was equal to the first on the first pass and lost to the newer
// one, as a conflict copy, on the second.)
TEST(MergeTest, ASecondRecordWithOneVersionIsDroppedAndTheBatchAppliesOnce) {
  const auto first = File(5, {5 * kSec, kB}, {{kA, 4 * kSec}, {kB, 5 * kSec}});
  auto second = first;
  second.content_clock = {{kA, 4 * kSec}, {kB + 1, 5 * kSec}};
  auto newer = File(5, {6 * kSec, kA}, {{kA, 6 * kSec}});
  newer.kind = InodeKind::kSymlink;
  newer.content_clock.clear();
  newer.symlink_target = "t";
  const auto name = Name(kRootId, "f", 5, {1, kA});
  auto name_twin = name;
  name_twin.child = 6;
  for (bool with_base : {false, true}) {
    SCOPED_TRACE(with_base ? "over an older version" : "into an empty store");
    MapRecords m;
    if (with_base) m.Apply({{File(5, {1, kA}, {{kA, 1}})}, {}});
    const ChangeSet batch{{first, second, newer}, {name, name_twin}};
    auto won = m.Apply(batch);
    EXPECT_EQ(m.inodes_[5].version, newer.version);
    EXPECT_EQ(m.Entry(kRootId, "f")->child, 5u);  // the first entry of its version stands
    // The first record lost to the newer one concurrently and is kept as a copy; the second is
    // not (it was dropped), so exactly one copy exists.
    int copies = 0;
    for (const auto& [id, r] : m.inodes_) {
      if (id != 5 && id != kRootId && r.kind == InodeKind::kFile) {
        ++copies;
        EXPECT_EQ(r.content_clock, first.content_clock);
      }
    }
    EXPECT_EQ(copies, 1);
    const int writes = m.writes_;
    auto again = m.Apply(batch);
    EXPECT_TRUE(again.inodes.empty()) << again.inodes.size() << " inodes written again";
    EXPECT_TRUE(again.dentries.empty()) << again.dentries.size() << " entries written again";
    EXPECT_EQ(m.writes_, writes);
  }
}

// A newer write whose content descends from the old one replaces it without a copy.
TEST(MergeTest, AWriteThatSawTheOldContentMakesNoCopy) {
  MapRecords m;
  m.Apply({{File(5, {1, kA}, {{kA, 1}})}, {Name(kRootId, "f", 5, {1, kA})}});
  m.Apply({{File(5, {2, kB}, {{kA, 1}, {kB, 2}})}, {}});
  EXPECT_EQ(m.Live(kRootId).size(), 1u);
}

// Table 1, third row: a file written after a delete it had not seen gets its name back,
// whichever arrives first, with the delete's inode and entry tombstones in one batch, or in two
// with the entry's first. (The entry's tombstone arriving in a later batch than the inode's,
// after the write, is a known gap: doc/namespace.md.)
TEST(MergeTest, AWriteTheDeleteDidNotSeeGetsItsNameBack) {
  const auto del_inode = File(5, {10, kA}, {{kA, 1}}, true);
  const auto del_entry = Name(kRootId, "f", 5, {10, kA}, true);
  const ChangeSet write{{File(5, {20, kB}, {{kA, 1}, {kB, 20}})}, {}};
  const std::vector<std::vector<ChangeSet>> orders{
      {{{del_inode}, {del_entry}}, write},
      {write, {{del_inode}, {del_entry}}},
      {write, {{}, {del_entry}}, {{del_inode}, {}}},
      {{{}, {del_entry}}, write, {{del_inode}, {}}},
  };
  MapRecords first;
  for (std::size_t o = 0; o < orders.size(); ++o) {
    SCOPED_TRACE(o);
    MapRecords m;
    m.Apply({{File(5, {1, kA}, {{kA, 1}})}, {Name(kRootId, "f", 5, {1, kA})}});
    for (const auto& batch : orders[o]) m.Apply(batch);
    EXPECT_FALSE(m.inodes_[5].deleted);
    EXPECT_EQ(m.Live(kRootId), (std::map<std::string, InodeId>{{"f", 5}}));
    if (o == 0) first = m;
    EXPECT_TRUE(m == first);
  }
}

// An unlink of the last name (inode and entry tombstoned with one version) and a rename
// (tombstone and new name with one version) restore nothing, in one batch or two.
TEST(MergeTest, UnlinkAndRenameRestoreNothing) {
  for (bool split : {false, true}) {
    SCOPED_TRACE(split);
    MapRecords m;
    m.Apply({{File(5, {1, kA}, {{kA, 1}}), File(6, {1, kA}, {{kA, 1}})},
             {Name(kRootId, "f", 5, {1, kA}), Name(kRootId, "g", 6, {1, kA})}});
    const auto unlink_inode = File(5, {10, kA}, {{kA, 1}}, true);
    const auto unlink_entry = Name(kRootId, "f", 5, {10, kA}, true);
    const auto rename_old = Name(kRootId, "g", 6, {11, kA}, true);
    const auto rename_new = Name(kRootId, "h", 6, {11, kA});
    if (split) {
      m.Apply({{}, {unlink_entry, rename_old}});
      m.Apply({{unlink_inode}, {rename_new}});
    } else {
      m.Apply({{unlink_inode}, {unlink_entry, rename_old, rename_new}});
    }
    EXPECT_TRUE(m.inodes_[5].deleted);
    EXPECT_EQ(m.Live(kRootId), (std::map<std::string, InodeId>{{"h", 6}}));
  }
}

// A delete that saw the content wins for good.
TEST(MergeTest, ADeleteThatSawTheContentStays) {
  MapRecords m;
  m.Apply({{File(5, {1, kA}, {{kA, 1}})}, {Name(kRootId, "f", 5, {1, kA})}});
  m.Apply({{File(5, {10, kB}, {{kA, 1}}, true)}, {Name(kRootId, "f", 5, {10, kB}, true)}});
  EXPECT_TRUE(m.inodes_[5].deleted);
  EXPECT_TRUE(m.Live(kRootId).empty());
}

// Table 2: two nodes create one name for different files; the older keeps a conflict name, in
// either order; a name replaced knowingly (replaces = the old version) does not.
TEST(MergeTest, TwoCreatesOfOneNameKeepBothFilesInEitherOrder) {
  const auto a = Name(kRootId, "n", 5, {10, kA}, false, Version{});
  const auto b = Name(kRootId, "n", 6, {20, kB}, false, Version{});
  MapRecords one, two;
  for (auto* m : {&one, &two}) m->Apply({{File(5, {10, kA}, {}), File(6, {20, kB}, {})}, {}});
  one.Apply({{}, {a}});
  one.Apply({{}, {b}});
  two.Apply({{}, {b}});
  two.Apply({{}, {a}});
  EXPECT_TRUE(one == two);
  auto live = one.Live(kRootId);
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live.at("n"), 6u);
  EXPECT_TRUE(StartsWith(std::next(live.begin())->first, "n.conflict-"));
  EXPECT_EQ(std::next(live.begin())->second, 5u);

  MapRecords knowing;
  knowing.Apply({{File(5, {10, kA}, {}), File(6, {20, kB}, {})}, {a}});
  knowing.Apply({{}, {Name(kRootId, "n", 6, {20, kB}, false, a.version)}});
  EXPECT_EQ(knowing.Live(kRootId), (std::map<std::string, InodeId>{{"n", 6}}));
}

// Table 3, first row: a directory deleted while a file was created in it comes back.
TEST(MergeTest, ADirectoryDeletedWhileSomethingWasCreatedInItComesBack) {
  MapRecords m;
  m.Apply({{Dir(7, {1, kA})}, {Name(kRootId, "d", 7, {1, kA})}});
  m.Apply({{File(8, {30, kB}, {{kB, 30}})}, {Name(7, "x", 8, {30, kB})}});
  m.Apply({{Dir(7, {40, kA}, true)}, {Name(kRootId, "d", 7, {40, kA}, true)}});
  EXPECT_FALSE(m.inodes_[7].deleted);
  EXPECT_EQ(m.inodes_[7].version, (Version{41, kA}));
  EXPECT_EQ(m.Live(kRootId), (std::map<std::string, InodeId>{{"d", 7}}));
  EXPECT_EQ(m.Live(7), (std::map<std::string, InodeId>{{"x", 8}}));
}

// An empty deleted directory stays deleted.
TEST(MergeTest, AnEmptyDeletedDirectoryStaysDeleted) {
  MapRecords m;
  m.Apply({{Dir(7, {1, kA})}, {Name(kRootId, "d", 7, {1, kA})}});
  m.Apply({{Dir(7, {40, kA}, true)}, {Name(kRootId, "d", 7, {40, kA}, true)}});
  EXPECT_TRUE(m.inodes_[7].deleted);
  EXPECT_TRUE(m.Live(kRootId).empty());
}

// Table 3, second row: a directory moved on two nodes keeps the newer name only.
TEST(MergeTest, ADirectoryMovedTwiceAtOnceKeepsTheNewerName) {
  MapRecords m;
  m.Apply({{Dir(7, {1, kA})}, {Name(kRootId, "d", 7, {1, kA})}});
  m.Apply({{}, {Name(kRootId, "d", 7, {10, kA}, true), Name(kRootId, "x", 7, {10, kA})}});
  m.Apply({{}, {Name(kRootId, "d", 7, {11, kB}, true), Name(kRootId, "y", 7, {11, kB})}});
  EXPECT_EQ(m.Live(kRootId), (std::map<std::string, InodeId>{{"y", 7}}));
}

// Table 3, third row: two directories moved into each other; the newer move is undone.
TEST(MergeTest, DirectoriesMovedIntoEachOtherLeaveOneTree) {
  MapRecords m;
  m.Apply({{Dir(7, {1, kA}), Dir(8, {1, kA})},
           {Name(kRootId, "a", 7, {1, kA}), Name(kRootId, "b", 8, {1, kA})}});
  // Node A moves a into b; node B moves b into a.
  m.Apply({{}, {Name(kRootId, "a", 7, {10, kA}, true), Name(8, "a", 7, {10, kA})}});
  m.Apply({{}, {Name(kRootId, "b", 8, {11, kB}, true), Name(7, "b", 8, {11, kB})}});
  // b's move (the newer) is undone: b is back in the root, a stays inside b.
  EXPECT_EQ(m.Live(kRootId), (std::map<std::string, InodeId>{{"b", 8}}));
  EXPECT_EQ(m.Live(8), (std::map<std::string, InodeId>{{"a", 7}}));
  EXPECT_TRUE(m.Live(7).empty());
}

// The names of a directory can arrive before its record (another batch, another peer's feed),
// or while its record is a tombstone: the tree is repaired when the record comes (alive), not
// only when a name does. A live directory's newer record (an mtime) leaves its names alone.
TEST(MergeTest, ADirectoryWhoseRecordComesAfterItsNamesIsPutInOneTree) {
  for (bool tombstone_first : {false, true}) {
    SCOPED_TRACE(tombstone_first);
    MapRecords m;
    if (tombstone_first) m.Apply({{Dir(7, {1, kA}, true)}, {}});
    m.Apply({{}, {Name(kRootId, "x", 7, {10, kA})}});
    m.Apply({{}, {Name(kRootId, "y", 7, {11, kB})}});
    // Both names are live while the directory is unknown or deleted: nothing to keep in a tree.
    EXPECT_EQ(m.Live(kRootId).size(), 2u);
    m.Apply({{Dir(7, {12, kA})}, {}});
    EXPECT_EQ(m.Live(kRootId), (std::map<std::string, InodeId>{{"y", 7}}));
    m.Apply({{Dir(7, {13, kB})}, {}});
    EXPECT_EQ(m.Live(kRootId), (std::map<std::string, InodeId>{{"y", 7}}));
  }
}

// A store that fails part-way ends the merge with its error (the caller rolls back).
TEST(MergeTest, AStoreFailureEndsTheMergeWithItsError) {
  for (int ok_puts : {0, 1, 2}) {
    SCOPED_TRACE(ok_puts);
    MapRecords m;
    m.fail_after_ = ok_puts;
    ChangeSet won;
    Status s = Merge(
        m, {{File(5, {1, kA}, {}), File(6, {1, kA}, {})}, {Name(kRootId, "f", 5, {1, kA})}}, won);
    EXPECT_EQ(s.code(), Code::kNoSpace);
    EXPECT_EQ(won.inodes.size() + won.dentries.size(), static_cast<std::size_t>(ok_puts));
  }
}

// The conflict name fits in 255 bytes whatever the original's length, and says who and when.
TEST(MergeTest, ConflictNamesFitTheNameLimit) {
  for (std::size_t n : {std::size_t{1}, std::size_t{200}, model::kMaxNameSize}) {
    std::string name = ConflictName(std::string(n, 'x'), {kB, 6 * kSec}, 0x1234);
    EXPECT_LE(name.size(), model::kMaxNameSize);
    EXPECT_TRUE(model::ValidName(name)) << name;
    EXPECT_NE(name.find(".conflict-000000000000000b-19700101-000006-1234"), std::string::npos)
        << name;
  }
}

// Random batches from three nodes: the SQLite view (NamespaceDb::Apply) and the map view write
// the same records in the same order, batch by batch.
TEST(MergeTest, TheSqliteViewWritesWhatTheMapViewWrites) {
  test::TempDir dir;
  auto db = NamespaceDb::Open(dir.path() / "ns.db");
  ASSERT_TRUE(db.ok()) << db.status().message();
  MapRecords m;
  std::mt19937_64 rng(20261203);
  auto pick = [&](std::uint64_t n) { return rng() % n; };
  const std::vector<InodeId> files{10, 11, 12, 13}, dirs{20, 21, 22};
  const std::vector<std::string> names{"a", "b", "c"};
  std::uint64_t hlc = 100;
  for (int batch = 0; batch < 300; ++batch) {
    ChangeSet cs;
    const std::uint64_t node = 1 + pick(3);
    for (std::uint64_t i = 0, n = 1 + pick(4); i < n; ++i) {
      hlc += 1 + pick(3);
      const Version v{hlc - pick(40), node};  // sometimes older than what is stored
      if (pick(2) == 0) {
        const bool is_dir = pick(3) == 0;
        InodeId id = is_dir ? dirs[pick(dirs.size())] : files[pick(files.size())];
        InodeRecord r =
            is_dir ? Dir(id, v, pick(4) == 0) : File(id, v, {{node, v.hlc}}, pick(4) == 0);
        if (!is_dir && pick(2) == 0)
          r.content_clock = Advance({{1 + pick(3), v.hlc - 5}}, node, v.hlc);
        cs.inodes.push_back(r);
      } else {
        const InodeId parent = pick(3) == 0 ? kRootId : dirs[pick(dirs.size())];
        const InodeId child = pick(3) == 0 ? dirs[pick(dirs.size())] : files[pick(files.size())];
        Version replaces = pick(2) == 0 ? v : Version{v.hlc - pick(60), 1 + pick(3)};
        cs.dentries.push_back(
            Name(parent, names[pick(names.size())], child, v, pick(4) == 0, replaces));
      }
    }
    ChangeSet want;
    Status s = Merge(m, cs, want);
    auto got = (*db)->Apply(cs);
    ASSERT_EQ(s.ok(), got.ok()) << "batch " << batch;
    if (!s.ok()) continue;
    ASSERT_EQ(got->inodes, want.inodes) << "batch " << batch;
    ASSERT_EQ(got->dentries, want.dentries) << "batch " << batch;
  }
  // And the final state read back through the database's own queries agrees.
  for (InodeId d : {kRootId, InodeId{20}, InodeId{21}, InodeId{22}}) {
    auto listed = (*db)->ListDir(d);
    ASSERT_TRUE(listed.ok());
    std::map<std::string, InodeId> from_db;
    for (const auto& e : *listed) from_db[e.name] = e.child;
    std::map<std::string, InodeId> from_map;
    for (const auto& [name, child] : m.Live(d)) {
      if (auto it = m.inodes_.find(child); it != m.inodes_.end() && !it->second.deleted) {
        from_map[name] = child;
      }
    }
    EXPECT_EQ(from_db, from_map) << "directory " << d;
  }
}

}  // namespace
}  // namespace foreverfs::server
