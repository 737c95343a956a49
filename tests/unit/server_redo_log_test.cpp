// The namespace's redo log and group commit (NamespaceDb, server/redo_log.h): a local change
// is in the log when Apply returns, commits later in a group, and comes back after a crash
// in between; torn tails are dropped, records that had committed change nothing, and every
// other writer commits the group first.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "crypto/crypto.h"
#include "server/namespace_db.h"
#include "server/redo_log.h"
#include "unit/temp_dir.h"
#include "unit/test_util.h"

namespace foreverfs::server {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::TempDir;

constexpr std::size_t kHuge = 1'000'000;

InodeRecord File(InodeId id, Version v, std::uint32_t mode = 0644) {
  InodeRecord r;
  r.id = id;
  r.kind = InodeKind::kFile;
  r.mode = mode;
  r.size = 10;
  r.mtime_ns = r.ctime_ns = 1234;
  r.version = v;
  return r;
}

DentryRecord Entry(InodeId parent, std::string name, InodeId child, Version v) {
  DentryRecord d{parent, std::move(name), child, v, false};
  d.replaces = v;
  return d;
}

// A file and its name in the root, as a create sends them.
ChangeSet Create(InodeId id, const std::string& name, std::uint64_t hlc) {
  return {{File(id, {hlc, 1})}, {Entry(kRootId, name, id, {hlc, 1})}};
}

Bytes ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const fs::path& p, ByteSpan b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

class RedoLogTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }
  void Open() {
    auto db = NamespaceDb::Open(path_);
    ASSERT_TRUE(db.ok()) << db.status().message();
    db_ = std::move(*db);
    // No commit by age unless a test asks: what is uncommitted stays so.
    db_->SetGroupAgeForTest(std::chrono::hours(1));
  }
  // As kill -9 would leave things: the open group is lost, the log is not.
  void Crash() {
    db_->AbandonForTest();
    db_.reset();
  }
  void Apply(const ChangeSet& cs) {
    auto won = db_->Apply(cs);
    ASSERT_TRUE(won.ok()) << won.status().message();
  }
  std::uint64_t LogSize() { return fs::file_size(log_); }

  TempDir dir_;
  const fs::path path_ = dir_.path() / "ns.db";
  const fs::path log_ = dir_.path() / "ns.db-redo";
  std::unique_ptr<NamespaceDb> db_;
};

TEST_F(RedoLogTest, LocalChangesSurviveACrashBeforeTheirGroupCommits) {
  Apply(Create(5, "a", 100));
  Apply(Create(6, "b", 101));
  InodeRecord changed = File(5, {102, 1}, 0600);
  changed.size = 77;
  Apply({{changed}, {}});
  EXPECT_EQ(db_->UncommittedChanges(), 3u);
  EXPECT_GT(LogSize(), 0u);
  const auto seq = db_->LastSeq();
  Crash();

  Open();
  EXPECT_EQ(db_->UncommittedChanges(), 0u);
  EXPECT_EQ(LogSize(), 0u) << "replayed changes commit and the log empties";
  auto five = db_->GetInode(5);
  ASSERT_TRUE(five.ok()) << five.status().message();
  EXPECT_EQ(*five, changed);
  EXPECT_EQ(db_->GetDentry(kRootId, "b")->child, 6u);
  EXPECT_EQ(db_->ListDir(kRootId)->size(), 2u);
  // Replayed records take numbers after every one handed out before the crash, so peers whose
  // cursor passed the lost ones still receive them.
  auto tail = db_->ChangesSince(seq, kHuge, kHuge);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(tail->inodes.size(), 2u);
  EXPECT_EQ(tail->dentries.size(), 2u);
  EXPECT_EQ(db_->MaxHlc(), 102u);
}

TEST_F(RedoLogTest, ATornLastRecordIsDroppedAndLaterRecordsAreNotHiddenBehindIt) {
  Apply(Create(5, "a", 100));
  Apply(Create(6, "b", 101));
  Crash();
  // The second record cut short (a power failure in the middle of its write) and, in a second
  // round, a whole-length record whose checksum fails.
  Bytes log = ReadAll(log_);
  ASSERT_GT(log.size(), 40u);
  log.resize(log.size() - 5);
  WriteAll(log_, log);
  Open();
  EXPECT_TRUE(db_->GetInode(5).ok());
  EXPECT_FALSE(db_->GetInode(6).ok()) << "the torn record was never acknowledged";
  EXPECT_EQ(LogSize(), 0u) << "the torn tail is gone, not left in front of the next records";
  Apply(Create(7, "c", 102));
  Crash();
  Open();
  EXPECT_TRUE(db_->GetInode(7).ok()) << "a record after a torn one must not be lost";

  Apply(Create(8, "d", 103));
  Crash();
  log = ReadAll(log_);
  log.back() ^= 0x01;
  WriteAll(log_, log);
  Open();
  EXPECT_FALSE(db_->GetInode(8).ok());
  EXPECT_TRUE(db_->GetInode(7).ok());
  // Bytes that are not a record at all (no magic) end the log too.
  Apply(Create(9, "e", 104));
  Crash();
  log = ReadAll(log_);
  log.insert(log.end(), {'x', 'y'});
  WriteAll(log_, log);
  Open();
  EXPECT_TRUE(db_->GetInode(9).ok());
  EXPECT_EQ(LogSize(), 0u);
}

// A crash between a group's commit and the log's truncation replays records that had
// committed: older versions lose to what is stored, equal ones change nothing, and no conflict
// copy appears.
TEST_F(RedoLogTest, ReplayingChangesThatHadCommittedChangesNothing) {
  Apply(Create(5, "a", 100));
  InodeRecord v2 = File(5, {101, 1}, 0600);
  Apply({{v2}, {}});
  const Bytes stale = ReadAll(log_);
  ASSERT_TRUE(db_->Sync().ok());
  EXPECT_EQ(LogSize(), 0u);
  InodeRecord v3 = File(5, {102, 1}, 0640);
  Apply({{v3}, {}});
  ASSERT_TRUE(db_->Sync().ok());
  const auto listing = *db_->ListDir(kRootId);
  db_.reset();
  WriteAll(log_, stale);

  Open();
  EXPECT_EQ(*db_->GetInode(5), v3);
  const auto after = *db_->ListDir(kRootId);
  ASSERT_EQ(after.size(), listing.size());
  EXPECT_EQ(after[0].name, "a");
  // The same log replayed onto the state it produced (a crash right after the commit).
  Apply(Create(6, "b", 103));
  const Bytes fresh = ReadAll(log_);
  ASSERT_TRUE(db_->Sync().ok());
  db_.reset();
  WriteAll(log_, fresh);
  Open();
  EXPECT_EQ(db_->ListDir(kRootId)->size(), 2u);
  EXPECT_EQ(db_->GetInode(6)->version, (Version{103, 1}));
}

TEST_F(RedoLogTest, AGroupCommitsAfterItsAgeOrItsCount) {
  for (std::size_t i = 0; i + 1 < NamespaceDb::kGroupChanges; ++i) {
    Apply(Create(100 + i, "f" + std::to_string(i), 1000 + i));
  }
  EXPECT_EQ(db_->UncommittedChanges(), NamespaceDb::kGroupChanges - 1);
  Apply(Create(99, "last", 5000));
  EXPECT_EQ(db_->UncommittedChanges(), 0u) << "the group's last change commits it";
  EXPECT_EQ(LogSize(), 0u);

  db_->SetGroupAgeForTest(NamespaceDb::kGroupAge);
  Apply(Create(98, "late", 5001));
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (db_->UncommittedChanges() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(db_->UncommittedChanges(), 0u) << "the age bound commits a group nobody adds to";
  EXPECT_EQ(LogSize(), 0u);
  Crash();
  Open();
  EXPECT_TRUE(db_->GetInode(98).ok());
  EXPECT_EQ(db_->ListDir(kRootId)->size(), NamespaceDb::kGroupChanges + 1);
}

// The daemon forks after the database is open (fuse_daemonize): a thread does not survive a
// fork, so BeforeFork commits and ends the one that commits groups by age, and the child's
// first change starts it again.
TEST_F(RedoLogTest, GroupsCommitByAgeInAForkedChild) {
  db_->SetGroupAgeForTest(NamespaceDb::kGroupAge);
  Apply(Create(5, "a", 100));  // the thread is running now
  ASSERT_TRUE(db_->BeforeFork().ok());
  EXPECT_EQ(db_->UncommittedChanges(), 0u);
  EXPECT_EQ(LogSize(), 0u);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    bool ok = db_->Apply(Create(6, "b", 101)).ok();
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (db_->UncommittedChanges() > 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(1ms);
    }
    ok = ok && db_->UncommittedChanges() == 0 && LogSize() == 0;
    ::_exit(ok ? 0 : 1);  // no destructors: a wrong thread handle would hang a join
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "the child's group was not committed by age";
  // This process's connection no longer matches the files the child wrote: closed without a
  // commit, and not reopened.
  db_->AbandonForTest();
  db_.reset();
}

// Everything that writes outside a local Apply commits the group first, so that it never
// becomes part of a transaction the log does not describe (and a crash keeps both).
TEST_F(RedoLogTest, OtherWritersCommitTheGroupFirst) {
  struct Writer {
    const char* what;
    std::function<Status(NamespaceDb&)> run;
  };
  const std::vector<Writer> writers = {
      {"SetMeta", [](NamespaceDb& db) { return db.SetMeta("k", 7); }},
      {"a peer's batch", [](NamespaceDb& db) { return db.Apply(ChangeSet{}, 42, 9).status(); }},
      {"AddMember", [](NamespaceDb& db) { return db.AddMember(43); }},
      {"RecordAck", [](NamespaceDb& db) { return db.RecordAck(43, 1, 0); }},
      {"SetPin", [](NamespaceDb& db) { return db.SetPin(5, true); }},
      {"SaveClusterMembers",
       [](NamespaceDb& db) {
         return db.SaveClusterMembers({{44, "h:1"}});
       }},
      {"PurgeTombstones", [](NamespaceDb& db) { return db.PurgeTombstones(0, {}).status(); }},
      {"ForgetMember", [](NamespaceDb& db) { return db.ForgetMember(43); }},
      {"Sync", [](NamespaceDb& db) { return db.Sync(); }},
  };
  std::uint64_t hlc = 100;
  for (const Writer& w : writers) {
    SCOPED_TRACE(w.what);
    const InodeId id = hlc;
    Apply(Create(id, "n" + std::to_string(id), hlc++));
    ASSERT_EQ(db_->UncommittedChanges(), 1u);
    ASSERT_TRUE(w.run(*db_).ok());
    EXPECT_EQ(db_->UncommittedChanges(), 0u);
    EXPECT_EQ(LogSize(), 0u);
  }
  Crash();
  Open();
  EXPECT_EQ(db_->ListDir(kRootId)->size(), writers.size());
  EXPECT_EQ(db_->GetMeta("k"), 7);
  EXPECT_EQ(db_->Cursor(42), 9u);
  EXPECT_TRUE(db_->PinnedHere(5));
  ASSERT_EQ(db_->LoadClusterMembers().size(), 1u);
}

// ChangeStamp (what FileServer's attribute cache trusts) moves on every change, and on a rollback,
// which takes rows back without writing one: a record read inside the group that SQLite then
// rolled back is never served again under the same stamp. Reads leave it where it is.
TEST_F(RedoLogTest, TheChangeStampMovesOnWritesAndRollbacksAndNotOnReads) {
  const std::uint64_t start = db_->ChangeStamp();
  EXPECT_TRUE(db_->GetInode(kRootId).ok());
  (void)db_->CountLinks(kRootId);
  EXPECT_EQ(db_->ChangeStamp(), start);
  Apply(Create(5, "a", 100));
  const std::uint64_t written = db_->ChangeStamp();
  EXPECT_GT(written, start);
  db_->RollBackGroupForTest();
  EXPECT_NE(db_->ChangeStamp(), written) << "a rollback left the stamp as it was";
}

// SQLite may roll the whole open group back (a full disk, out of memory): its changes are then
// only in the log. Garbage collection refuses to scan that state (it would delete chunks the
// lost changes name), and the next change, or the group-commit thread, replays the log first.
TEST_F(RedoLogTest, AGroupSqliteRolledBackIsReplayedBeforeAnythingElse) {
  Apply(Create(5, "a", 100));
  Apply(Create(6, "b", 101));
  db_->RollBackGroupForTest();
  // Garbage collection never scans a state missing acknowledged changes: it is refused until
  // the replay, which the group-commit thread may already have done (its first wake-up can
  // come after the rollback), so a scan that runs must see both files.
  std::vector<InodeId> seen;
  const auto scan = [&] {
    seen.clear();
    return db_->ForEachLiveManifest([&](const InodeRecord& r) { seen.push_back(r.id); });
  };
  if (scan().ok()) {
    EXPECT_EQ(seen, (std::vector<InodeId>{5, 6}));
  }
  Apply(Create(7, "c", 102));
  for (InodeId id : {5, 6, 7}) EXPECT_TRUE(db_->GetInode(id).ok()) << id;
  EXPECT_TRUE(scan().ok());
  EXPECT_EQ(db_->ListDir(kRootId)->size(), 3u);
  Crash();
  Open();
  EXPECT_EQ(db_->ListDir(kRootId)->size(), 3u);

  // With nobody applying anything, the thread replays it.
  db_->SetGroupAgeForTest(NamespaceDb::kGroupAge);
  Apply(Create(8, "d", 103));
  db_->RollBackGroupForTest();
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!db_->GetInode(8).ok() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_TRUE(db_->GetInode(8).ok());
  EXPECT_EQ(db_->ListDir(kRootId)->size(), 4u);
}

// RecordSize is what a change set adds to the log (an empty one included), so the size bound
// holds exactly: a record of kMaxLoggedChange bytes is logged, one byte more commits alone.
TEST_F(RedoLogTest, RecordSizeIsWhatTheLogGrowsByAndTheBoundIsExact) {
  ChangeSet empty;
  std::uint64_t before = LogSize();
  Apply(empty);
  EXPECT_EQ(LogSize() - before, RedoLog::RecordSize(empty));
  const auto with_size = [](std::size_t target) {
    InodeRecord r = File(9, {200, 1});
    ChangeSet cs{{r}, {}};
    std::uint64_t i = 0;
    // Manifest entries (40 bytes each) for the bulk, then one xattr (2 + name + 4 bytes) whose
    // name, 206 to 245 bytes, makes up the rest.
    while (RedoLog::RecordSize(cs) + 40 + 211 < target) {
      crypto::Digest id{};
      id[0] = static_cast<std::uint8_t>(i);
      id[1] = static_cast<std::uint8_t>(i >> 8);
      cs.inodes[0].manifest.Set(i++, id);
    }
    cs.inodes[0].size = i << 20;
    const std::size_t rest = target - RedoLog::RecordSize(cs);
    cs.inodes[0].xattrs.push_back({"user." + std::string(rest - 6 - 5, 'x'), {}});
    return cs;
  };
  for (std::size_t target : {NamespaceDb::kMaxLoggedChange, NamespaceDb::kMaxLoggedChange + 1}) {
    SCOPED_TRACE(target);
    ASSERT_TRUE(db_->Sync().ok());
    ChangeSet cs = with_size(target);
    ASSERT_EQ(RedoLog::RecordSize(cs), target);
    Apply(cs);
    const bool logged = target <= NamespaceDb::kMaxLoggedChange;
    EXPECT_EQ(db_->UncommittedChanges(), logged ? 1u : 0u);
    EXPECT_EQ(LogSize(), logged ? target : 0u);
  }
  Crash();
  Open();
  EXPECT_EQ(db_->GetInode(9)->xattrs.size(), 1u);
}

// A change set whose record would be large (a big manifest) commits alone, not written twice.
TEST_F(RedoLogTest, ALargeChangeSetCommitsAlone) {
  Apply(Create(5, "small", 100));
  InodeRecord big = File(6, {101, 1});
  for (std::uint64_t i = 0; i < 3000; ++i) {  // ~120 KB encoded, past kMaxLoggedChange
    crypto::Digest id{};
    id[0] = static_cast<std::uint8_t>(i);
    id[1] = static_cast<std::uint8_t>(i >> 8);
    big.manifest.Set(i, id);
  }
  big.size = 3000ull << 20;
  Apply({{big}, {Entry(kRootId, "big", 6, {101, 1})}});
  EXPECT_EQ(db_->UncommittedChanges(), 0u);
  EXPECT_EQ(LogSize(), 0u);
  Crash();
  Open();
  EXPECT_EQ(db_->GetInode(6)->manifest, big.manifest);
  EXPECT_TRUE(db_->GetInode(5).ok());
}

// A whole record (its checksum holds) that does not decode was acknowledged once: the database
// does not open without it, and the error names the log.
TEST_F(RedoLogTest, AWholeRecordThatDoesNotDecodeStopsTheOpen) {
  Crash();
  Bytes frame = {3, 0, 0, 0, 99, 0, 0};  // length 3, an unknown type
  Bytes rec = {'F', 'F', 'R', '1', 0, 0, 0, static_cast<std::uint8_t>(frame.size())};
  const crypto::Digest sum = crypto::Sha256::Of(frame);
  rec.insert(rec.end(), sum.begin(), sum.begin() + 8);
  rec.insert(rec.end(), frame.begin(), frame.end());
  WriteAll(log_, rec);
  auto db = NamespaceDb::Open(path_);
  ASSERT_FALSE(db.ok());
  EXPECT_NE(db.status().message().find("ns.db-redo"), std::string::npos) << db.status().message();
  EXPECT_EQ(ReadAll(log_), rec) << "the log is kept for whoever looks into it";
}

// A full disk during an append (here RLIMIT_FSIZE, which fails a write past the limit as a
// full disk does, after a short write): the append fails naming the log, a partial record is
// taken back, so the log holds exactly the records before it, and the next append after space
// is back follows them (not hidden behind a torn record). The limit falls at the record's
// first byte, its second, and its last.
TEST(RedoLogFullDiskTest, AFailedAppendLeavesTheLogAsBeforeAndTheNextOneFollows) {
  const ChangeSet first = Create(5, "a", 100), second = Create(6, "b", 101);
  const std::uint64_t one = RedoLog::RecordSize(first), two = RedoLog::RecordSize(second);
  for (std::uint64_t limit : {one, one + 1, one + two - 1}) {
    SCOPED_TRACE(limit);
    TempDir dir;
    const fs::path path = dir.path() / "log";
    auto log = RedoLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status().message();
    ASSERT_TRUE(log->Append(first).ok());
    ASSERT_EQ(fs::file_size(path), one);

    // The write then fails with EFBIG.
    const Status s = test::WithFileSizeLimit(limit, [&] { return log->Append(second); });

    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find(path.string()), std::string::npos) << s.message();
    EXPECT_EQ(fs::file_size(path), one) << "a partial record was left";
    EXPECT_EQ(log->size(), one);
    ASSERT_TRUE(log->Append(second).ok());
    std::vector<InodeId> replayed;
    auto st = log->Replay([&](const ChangeSet& cs) {
      for (const auto& r : cs.inodes) replayed.push_back(r.id);
      return Ok();
    });
    ASSERT_TRUE(st.ok()) << st.status().message();
    EXPECT_EQ(replayed, (std::vector<InodeId>{5, 6}));
    EXPECT_EQ(st->dropped_bytes, 0u);
  }
}

// An in-memory database has nothing to make durable: it writes no log, neither beside a file
// it does not have nor as "-redo" in the working directory, and its changes commit at once.
TEST(RedoLogMemoryTest, AnInMemoryDatabaseWritesNoLog) {
  TempDir cwd;
  const fs::path before = fs::current_path();
  fs::current_path(cwd.path());
  {
    auto db = NamespaceDb::Open(":memory:");
    ASSERT_TRUE(db.ok()) << db.status().message();
    auto won = (*db)->Apply(Create(5, "a", 100));
    ASSERT_TRUE(won.ok()) << won.status().message();
    EXPECT_EQ((*db)->UncommittedChanges(), 0u);
    EXPECT_EQ((*db)->GetDentry(kRootId, "a")->child, 5u);
  }
  fs::current_path(before);
  EXPECT_TRUE(fs::is_empty(cwd.path())) << "a file appeared in the working directory";
}

}  // namespace
}  // namespace foreverfs::server
