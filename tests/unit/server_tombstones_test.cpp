// Tombstones are purged once every member holds them (issue 13.12): the rule of
// NamespaceDb::PurgeTombstones, member by member (no member, one lagging, a cursor exactly at
// the tombstone, an acknowledgement that counts only once the member's own earlier changes
// arrived, a grace of 0), files open here, the conversion of a schema-6 database, and how much
// a namespace of 10,000 created and deleted files shrinks.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "server/file_server.h"
#include "server/hlc.h"
#include "server/namespace_db.h"
#include "unit/file_server_fixture.h"
#include "unit/temp_dir.h"

namespace foreverfs::server {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr std::size_t kHuge = 1'000'000;
constexpr std::uint64_t kM1 = 0x1111, kM2 = 0x2222;

std::unique_ptr<NamespaceDb> OpenDb(const fs::path& path) {
  auto db = NamespaceDb::Open(path);
  EXPECT_TRUE(db.ok()) << db.status().message();
  return db.ok() ? std::move(*db) : nullptr;
}

InodeRecord File(InodeId id, Version v, bool deleted = false) {
  InodeRecord r;
  r.id = id;
  r.kind = InodeKind::kFile;
  r.mode = 0644;
  r.version = v;
  r.deleted = deleted;
  return r;
}

DentryRecord Entry(std::string name, InodeId child, Version v, bool deleted = false) {
  DentryRecord d{kRootId, std::move(name), child, v, deleted};
  d.replaces = v;
  return d;
}

// Every record of the feed (tombstones included).
std::size_t Records(NamespaceDb& db) {
  auto c = db.ChangesSince(0, kHuge, net::kMaxFrameSize);
  EXPECT_TRUE(c.ok());
  return c.ok() ? c->inodes.size() + c->dentries.size() : 0;
}

bool HasInodeRecord(NamespaceDb& db, InodeId id) { return db.GetInodeOrTombstone(id).ok(); }

bool HasEntryRecord(NamespaceDb& db, std::string_view name) {
  auto c = db.ChangesSince(0, kHuge, net::kMaxFrameSize);
  for (const auto& d : c->dentries) {
    if (d.name == name) return true;
  }
  return false;
}

class TombstoneTest : public ::testing::Test {
 protected:
  void SetUp() override { db_ = OpenDb(dir_.path() / "ns.db"); }

  // A file created (hlc 1000) and deleted (hlc 2000) here: the inode's tombstone takes sequence
  // number `inode_seq`, its entry's the next one. Also a live file "keep".
  void CreateAndDelete() {
    ASSERT_TRUE(db_->Apply({{File(10, {1000, 1})}, {Entry("f", 10, {1000, 1})}}).ok());
    ASSERT_TRUE(db_->Apply({{File(11, {1000, 1})}, {Entry("keep", 11, {1000, 1})}}).ok());
    ASSERT_TRUE(
        db_->Apply({{File(10, {2000, 1}, true)}, {Entry("f", 10, {2000, 1}, true)}}).ok());
    entry_seq_ = db_->LastSeq();
    inode_seq_ = entry_seq_ - 1;
  }

  NamespaceDb::PurgeStats Purge(std::uint64_t before_hlc = 1'000'000) {
    auto r = db_->PurgeTombstones(before_hlc, {});
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? *r : NamespaceDb::PurgeStats{};
  }

  void ExpectLiveFileUntouched() {
    EXPECT_TRUE(db_->GetInode(11).ok());
    EXPECT_TRUE(db_->GetDentry(kRootId, "keep").ok());
  }

  test::TempDir dir_;
  std::unique_ptr<NamespaceDb> db_;
  std::uint64_t inode_seq_ = 0, entry_seq_ = 0;
};

// A single node (no member): its tombstones go once older than the grace period, and not
// before; a version exactly at the limit is not older than it.
TEST_F(TombstoneTest, WithNoMemberTombstonesGoAfterTheGrace) {
  CreateAndDelete();
  EXPECT_TRUE(db_->Members().empty());
  const std::size_t before = Records(*db_);
  auto st = Purge(/*before_hlc=*/2000);  // the tombstones' version is 2000: not older
  EXPECT_EQ(st.inodes + st.dentries, 0u);
  EXPECT_TRUE(HasInodeRecord(*db_, 10));
  EXPECT_TRUE(HasEntryRecord(*db_, "f"));

  st = Purge(/*before_hlc=*/2001);
  EXPECT_EQ(st.inodes, 1u);
  EXPECT_EQ(st.dentries, 1u);
  EXPECT_EQ(st.waiting, 0u);
  EXPECT_EQ(st.horizon, db_->LastSeq());
  EXPECT_FALSE(HasInodeRecord(*db_, 10));
  EXPECT_FALSE(HasEntryRecord(*db_, "f"));
  EXPECT_EQ(Records(*db_), before - 2);
  ExpectLiveFileUntouched();
  // Sequence numbers are not handed out again: a peer whose cursor passed them misses nothing.
  const std::uint64_t last = db_->LastSeq();
  db_.reset();
  db_ = OpenDb(dir_.path() / "ns.db");
  ASSERT_TRUE(db_->Apply({{File(12, {3000, 1})}, {}}).ok());
  EXPECT_GT(db_->LastSeq(), last);
}

// Nothing goes while one member has not confirmed it; the cursor exactly at a tombstone's
// sequence number confirms that tombstone (and nothing after it).
TEST_F(TombstoneTest, NotPurgedWhileAnyMemberLagsPurgedAtExactlyItsSequence) {
  CreateAndDelete();
  ASSERT_TRUE(db_->AddMember(kM1).ok());
  ASSERT_TRUE(db_->AddMember(kM2).ok());
  ASSERT_TRUE(db_->RecordAck(kM1, db_->LastSeq(), 0).ok());
  ASSERT_TRUE(db_->RecordAck(kM2, inode_seq_ - 1, 0).ok());
  auto st = Purge();
  EXPECT_EQ(st.inodes + st.dentries, 0u);
  EXPECT_EQ(st.waiting, 2u);
  ASSERT_TRUE(st.slowest.has_value());
  EXPECT_EQ(st.slowest->node, kM2);
  EXPECT_EQ(st.horizon, inode_seq_ - 1);
  EXPECT_TRUE(HasInodeRecord(*db_, 10));

  ASSERT_TRUE(db_->RecordAck(kM2, inode_seq_, 0).ok());  // exactly the inode's tombstone
  st = Purge();
  EXPECT_EQ(st.inodes, 1u);
  EXPECT_EQ(st.dentries, 0u);
  EXPECT_EQ(st.waiting, 1u);
  EXPECT_FALSE(HasInodeRecord(*db_, 10));
  EXPECT_TRUE(HasEntryRecord(*db_, "f"));

  ASSERT_TRUE(db_->RecordAck(kM2, entry_seq_, 0).ok());
  st = Purge();
  EXPECT_EQ(st.dentries, 1u);
  EXPECT_EQ(st.waiting, 0u);
  EXPECT_FALSE(HasEntryRecord(*db_, "f"));
  ExpectLiveFileUntouched();
}

// A member that linked once and never said anything holds everything back.
TEST_F(TombstoneTest, AMemberThatNeverConfirmedBlocksPurging) {
  CreateAndDelete();
  ASSERT_TRUE(db_->AddMember(kM1).ok());
  ASSERT_TRUE(db_->AddMember(kM1).ok());  // twice: still one, still nothing confirmed
  ASSERT_EQ(db_->Members().size(), 1u);
  EXPECT_EQ(db_->Members()[0].confirmed, 0u);
  EXPECT_EQ(Purge().inodes, 0u);
  EXPECT_TRUE(HasInodeRecord(*db_, 10));
  // Our own node id is never a member.
  ASSERT_TRUE(db_->AddMember(db_->node_id()).ok());
  EXPECT_EQ(db_->Members().size(), 1u);
}

// A member confirms what it applied of our feed, but it may have written things before it
// applied our tombstone (a write to the deleted file, say) that have not reached us yet: those
// would find no tombstone here. So its confirmation counts only once our cursor in its feed has
// reached where its feed was when it sent it.
TEST_F(TombstoneTest, AConfirmationCountsOnceTheMembersEarlierChangesArrived) {
  CreateAndDelete();
  ASSERT_TRUE(db_->AddMember(kM1).ok());
  ASSERT_TRUE(db_->RecordAck(kM1, db_->LastSeq(), /*own_seq=*/50).ok());
  EXPECT_EQ(db_->Members()[0].confirmed, 0u);
  EXPECT_EQ(Purge().inodes, 0u);
  // Its changes up to 40 arrive: not yet.
  ASSERT_TRUE(db_->Apply({{File(20, {1500, kM1})}, {Entry("m1", 20, {1500, kM1})}}, kM1, 40).ok());
  EXPECT_EQ(Purge().inodes, 0u);
  // Up to 50: now it counts. (Applying took sequence numbers of ours; they are after it.)
  ASSERT_TRUE(db_->Apply({}, kM1, 50).ok());
  EXPECT_EQ(db_->Members()[0].confirmed, entry_seq_);
  auto st = Purge();
  EXPECT_EQ(st.inodes, 1u);
  EXPECT_EQ(st.dentries, 1u);
  // A later confirmation whose changes are still on their way keeps the earlier one standing.
  ASSERT_TRUE(db_->RecordAck(kM1, db_->LastSeq(), /*own_seq=*/80).ok());
  EXPECT_EQ(db_->Members()[0].confirmed, entry_seq_);
  ASSERT_TRUE(db_->Apply({}, kM1, 80).ok());
  EXPECT_EQ(db_->Members()[0].confirmed, db_->LastSeq());
}

// A relayed confirmation (a neighbour kM2 says member kM1 holds our feed through s) counts once
// our cursor in kM2's feed reaches the relay's via_seq; a later relay is ignored while an earlier
// one waits, unless it waits for less; one past our feed's end, or about ourselves or the relay
// itself, confirms nothing; and forgetting the member drops them.
TEST_F(TombstoneTest, ARelayedConfirmationCountsOnceTheNeighboursChangesArrived) {
  CreateAndDelete();
  ASSERT_TRUE(db_->AddMember(kM1).ok());
  const std::uint64_t all = db_->LastSeq();
  auto confirmed = [&] { return db_->Members()[0].confirmed; };
  db_->RecordRelayedAcks(kM2, net::RelayedFeedAcks{30, {{kM1, all}}});
  EXPECT_EQ(confirmed(), 0u);
  EXPECT_EQ(Purge().inodes, 0u);
  // A later one waiting for more is ignored while the first waits.
  db_->RecordRelayedAcks(kM2, net::RelayedFeedAcks{60, {{kM1, all}}});
  ASSERT_TRUE(db_->Apply({}, kM2, 29).ok());
  EXPECT_EQ(confirmed(), 0u);
  ASSERT_TRUE(db_->Apply({}, kM2, 30).ok());
  EXPECT_EQ(confirmed(), all);
  EXPECT_EQ(Purge().inodes, 1u);
  // Nothing past our end, nothing about ourselves or the relay, and never less than before.
  db_->RecordRelayedAcks(kM2, net::RelayedFeedAcks{0, {{kM1, db_->LastSeq() + 5},
                                                      {db_->node_id(), 1},
                                                      {kM2, 1}}});
  EXPECT_EQ(confirmed(), all);
  EXPECT_EQ(db_->Members().size(), 1u);
  db_->RecordRelayedAcks(kM2, net::RelayedFeedAcks{0, {{kM1, 1}}});
  EXPECT_EQ(confirmed(), all);
  // A pending relay with an unreachable via_seq is replaced by one that waits for less.
  ASSERT_TRUE(db_->AddMember(0x3333).ok());
  db_->RecordRelayedAcks(kM2, net::RelayedFeedAcks{1'000'000, {{0x3333, all}}});
  db_->RecordRelayedAcks(kM2, net::RelayedFeedAcks{30, {{0x3333, all}}});
  auto members = db_->Members();
  ASSERT_EQ(members.size(), 2u);
  EXPECT_EQ(members[1].confirmed, all);
  // Forgotten: its relayed confirmation goes with it.
  ASSERT_TRUE(db_->ForgetMember(0x3333).ok());
  ASSERT_TRUE(db_->AddMember(0x3333).ok());
  EXPECT_EQ(db_->Members()[1].confirmed, 0u);
}

// A confirmation past the end of our feed is not something we handed out: it confirms nothing.
TEST_F(TombstoneTest, AConfirmationPastOurLastChangeConfirmsNothing) {
  CreateAndDelete();
  ASSERT_TRUE(db_->AddMember(kM1).ok());
  ASSERT_TRUE(db_->RecordAck(kM1, db_->LastSeq() + 1'000'000, 0).ok());
  EXPECT_EQ(db_->Members()[0].confirmed, 0u);
  EXPECT_EQ(Purge().inodes, 0u);
  EXPECT_TRUE(HasInodeRecord(*db_, 10));
}

// A member that reports less than it did before lost commits (a power cut before its disk had
// them, a restored copy): what it confirmed earlier no longer holds, at once.
TEST_F(TombstoneTest, AMemberThatReportsLessThanBeforeConfirmsOnlyThat) {
  CreateAndDelete();
  ASSERT_TRUE(db_->AddMember(kM1).ok());
  ASSERT_TRUE(db_->RecordAck(kM1, db_->LastSeq(), 0).ok());
  EXPECT_EQ(db_->Members()[0].confirmed, db_->LastSeq());
  ASSERT_TRUE(db_->RecordAck(kM1, inode_seq_ - 1, 0).ok());
  EXPECT_EQ(db_->Members()[0].confirmed, inode_seq_ - 1);
  EXPECT_EQ(Purge().inodes, 0u);
  EXPECT_TRUE(HasInodeRecord(*db_, 10));
  ASSERT_TRUE(db_->RecordAck(kM1, 0, 0).ok());  // lost everything
  EXPECT_EQ(db_->Members()[0].confirmed, 0u);
}

// The members and what they confirmed survive a restart.
TEST_F(TombstoneTest, MembersArePersisted) {
  CreateAndDelete();
  ASSERT_TRUE(db_->AddMember(kM1).ok());
  ASSERT_TRUE(db_->AddMember(kM2).ok());
  ASSERT_TRUE(db_->RecordAck(kM1, entry_seq_, 0).ok());
  db_.reset();
  db_ = OpenDb(dir_.path() / "ns.db");
  auto members = db_->Members();
  ASSERT_EQ(members.size(), 2u);
  EXPECT_EQ(members[0].node, kM1);
  EXPECT_EQ(members[0].confirmed, entry_seq_);
  EXPECT_EQ(members[1].confirmed, 0u);
  EXPECT_EQ(Purge().inodes, 0u);  // kM2 still holds it back
}

// A schema-6 database (no members table) is converted: the nodes whose feed it pulled (it has
// a cursor for them) become members that confirmed nothing, so nothing is purged until they do.
TEST_F(TombstoneTest, ASchemaSixDatabaseIsConvertedWithItsPeersAsMembers) {
  CreateAndDelete();
  ASSERT_TRUE(db_->Apply({}, kM1, 7).ok());  // a cursor for kM1
  db_.reset();
  const auto path = dir_.path() / "ns.db";
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw,
                           "DROP TABLE members; DROP INDEX inodes_tombstones;"
                           " DROP INDEX dentries_tombstones;"
                           " UPDATE meta SET v = 6 WHERE k = 'schema';",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(raw);
  }
  db_ = OpenDb(path);
  ASSERT_NE(db_, nullptr);
  auto members = db_->Members();
  ASSERT_EQ(members.size(), 1u);
  EXPECT_EQ(members[0].node, kM1);
  EXPECT_EQ(members[0].confirmed, 0u);
  EXPECT_EQ(Purge().inodes, 0u);
  ASSERT_TRUE(db_->RecordAck(kM1, db_->LastSeq(), 0).ok());
  EXPECT_EQ(Purge().inodes, 1u);
  db_.reset();  // it holds the database's lock
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(raw, "SELECT v FROM meta WHERE k = 'schema'", -1, &st, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 7);
  sqlite3_finalize(st);
  sqlite3_close(raw);
}

// --- Through the FileServer: the grace period and files open here ------------------------------

class FileServerTombstoneTest : public test::FileServerFixture {};

// Grace 0: every tombstone confirmed goes at once. A file unlinked while open here keeps its
// tombstones until it is closed (a commit through the handle would need them to get its name
// back); a grace of an hour keeps tombstones made just now.
TEST_F(FileServerTombstoneTest, GraceAndOpenFiles) {
  auto open = fs_->Create(kRootId, "open", 0644, 0, 0, O_RDWR);
  ASSERT_TRUE(open.ok());
  auto closed = fs_->Create(kRootId, "closed", 0644, 0, 0, O_RDWR);
  ASSERT_TRUE(closed.ok());
  fs_->Release(closed->handle);
  ASSERT_TRUE(fs_->Unlink(kRootId, "open").ok());
  ASSERT_TRUE(fs_->Unlink(kRootId, "closed").ok());

  auto st = fs_->PurgeTombstones(1h);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->inodes + st->dentries, 0u);
  EXPECT_TRUE(HasInodeRecord(*db_, closed->attr.rec.id));

  st = fs_->PurgeTombstones(0ns);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->inodes, 1u);
  EXPECT_EQ(st->dentries, 1u);
  EXPECT_FALSE(HasInodeRecord(*db_, closed->attr.rec.id));
  EXPECT_FALSE(HasEntryRecord(*db_, "closed"));
  EXPECT_TRUE(HasInodeRecord(*db_, open->attr.rec.id));
  EXPECT_TRUE(HasEntryRecord(*db_, "open"));

  fs_->Release(open->handle);
  st = fs_->PurgeTombstones(0ns);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->inodes, 1u);
  EXPECT_EQ(st->dentries, 1u);
  EXPECT_FALSE(HasInodeRecord(*db_, open->attr.rec.id));
  EXPECT_TRUE(fs_->ReadDir(kRootId)->empty());
}

// 10,000 files created and deleted, then one purge pass: no record of them is left.
TEST_F(FileServerTombstoneTest, TenThousandCreatedAndDeletedFilesLeaveNoRecord) {
  constexpr int kFiles = 10'000;
  auto count = [&] { return Records(*db_); };
  const auto db_file = dir_.path() / "ns.db";
  auto size = [&] {
    std::uint64_t total = 0;
    for (const char* suffix : {"", "-wal"}) {
      std::error_code ec;
      auto n = fs::file_size(db_file.string() + suffix, ec);
      if (!ec) total += n;
    }
    return total;
  };
  const std::size_t empty = 1;  // the root directory (its times changed)
  for (int i = 0; i < kFiles; ++i) {
    const std::string name = "file-with-a-longish-name-" + std::to_string(i);
    auto c = fs_->Create(kRootId, name, 0644, 0, 0, O_RDWR);
    ASSERT_TRUE(c.ok());
    fs_->Release(c->handle);
    ASSERT_TRUE(fs_->Unlink(kRootId, name).ok());
  }
  const std::size_t before = count();
  const std::uint64_t bytes_before = size();
  EXPECT_EQ(before, empty + 2 * kFiles);
  auto st = fs_->PurgeTombstones(0ns);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->inodes, static_cast<std::size_t>(kFiles));
  EXPECT_EQ(st->dentries, static_cast<std::size_t>(kFiles));
  EXPECT_EQ(count(), empty);
  std::printf("# figure: 10,000 create+delete: %zu records, %.2f MiB (db+wal) before the purge; "
              "%zu after it (tests/integration/tombstones.sh measures the file itself)\n",
              before, static_cast<double>(bytes_before) / 1048576.0, count());
}

}  // namespace
}  // namespace foreverfs::server
