#include "server/namespace_db.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "base/fd.h"
#include "crypto/crypto.h"
#include "server/namespace_statements.h"

namespace foreverfs::server {
namespace {

using sql::S;
using sql::Stmt;
using sql::StmtCache;
using sql::U;

// Sequence numbers reserved at a time (see the header): one full-sync commit per block.
constexpr std::uint64_t kSeqBlock = 1 << 16;

// The merge's view of the tables, inside Apply's transaction (with mu_ held). Each record
// written takes the next sequence number.
class SqlRecords final : public RecordView {
 public:
  SqlRecords(sqlite3* db, std::uint64_t& seq) : db_(db), seq_(seq) {}

  std::optional<InodeRecord> Inode(InodeId id) override { return AnyInode(db_, id); }

  std::optional<DentryRecord> Entry(InodeId parent, std::string_view name) override {
    static const std::string kSql =
        fmt::format("SELECT {} FROM dentries WHERE parent = ? AND name = ?", sql::kDentryColumns);
    Stmt q(db_, kSql.c_str());
    q.Bind(1, S(parent)).Bind(2, name);
    if (q.Step() != SQLITE_ROW) return std::nullopt;
    return sql::ReadDentry(q);
  }

  std::vector<DentryRecord> NamesOf(InodeId child) override {
    static const std::string kSql =
        fmt::format("SELECT {} FROM dentries WHERE child = ?", sql::kDentryColumns);
    Stmt q(db_, kSql.c_str());
    q.Bind(1, S(child));
    std::vector<DentryRecord> out;
    while (q.Step() == SQLITE_ROW) out.push_back(sql::ReadDentry(q));
    return out;
  }

  std::optional<Version> NewestLiveEntryIn(InodeId dir) override {
    Stmt q(db_,
           "SELECT d.hlc, d.node FROM dentries d JOIN inodes i ON i.id = d.child"
           " WHERE d.parent = ? AND d.deleted = 0 AND i.deleted = 0"
           " ORDER BY d.hlc DESC, d.node DESC LIMIT 1");
    q.Bind(1, S(dir));
    if (q.Step() != SQLITE_ROW) return std::nullopt;
    return Version{U(q.Int(0)), U(q.Int(1))};
  }

  Status Put(const InodeRecord& r) override {
    if (auto s = InTransaction(); !s.ok()) return s;
    static const std::string kSql = fmt::format(
        "INSERT OR REPLACE INTO inodes({}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,"
        "?,?,?,?,?)",
        sql::kInodeColumns);
    Stmt ins(db_, kSql.c_str());
    ins.Bind(1, S(r.id))
        .Bind(2, static_cast<std::int64_t>(r.kind))
        .Bind(3, r.mode)
        .Bind(4, r.uid)
        .Bind(5, r.gid)
        .Bind(6, S(r.size))
        .Bind(7, r.mtime_ns)
        .Bind(8, r.ctime_ns)
        .Bind(9, S(r.version.hlc))
        .Bind(10, S(r.version.node))
        .Bind(11, r.deleted ? 1 : 0)
        .Bind(12, r.symlink_target)
        .BindBlob(13, sql::EncodeManifest(r.manifest))
        .Bind(14, S(++seq_))
        .Bind(15, r.atime_ns)
        .BindBlob(16, sql::EncodeXattrs(r.xattrs))
        .BindBlob(17, sql::EncodeClock(r.content_clock))
        .Bind(18, S(r.rdev));
    return ins.Run();
  }

  Status Put(const DentryRecord& d) override {
    if (auto s = InTransaction(); !s.ok()) return s;
    Stmt ins(db_,
             "INSERT OR REPLACE INTO dentries(parent, name, child, hlc, node, deleted, seq,"
             " rep_hlc, rep_node) VALUES(?,?,?,?,?,?,?,?,?)");
    ins.Bind(1, S(d.parent))
        .Bind(2, d.name)
        .Bind(3, S(d.child))
        .Bind(4, S(d.version.hlc))
        .Bind(5, S(d.version.node))
        .Bind(6, d.deleted ? 1 : 0)
        .Bind(7, S(++seq_))
        .Bind(8, S(d.replaces.hlc))
        .Bind(9, S(d.replaces.node));
    return ins.Run();
  }

  static std::optional<InodeRecord> AnyInode(sqlite3* db, InodeId id) {
    static const std::string kSql =
        fmt::format("SELECT {} FROM inodes WHERE id = ?", sql::kInodeColumns);
    Stmt q(db, kSql.c_str());
    q.Bind(1, S(id));
    if (q.Step() != SQLITE_ROW) return std::nullopt;
    return sql::ReadInode(q);
  }

 private:
  // Every merge runs inside a transaction. SQLite rolls the whole one back on some errors (a
  // full disk, out of memory), also of a read the merge took for "absent": a Put after that
  // would commit on its own, so it fails instead.
  Status InTransaction() const {
    if (sqlite3_get_autocommit(db_) != 0) {
      return Err(Code::kIOError, "the namespace transaction was rolled back by SQLite");
    }
    return Ok();
  }

  sqlite3* const db_;
  std::uint64_t& seq_;
};

}  // namespace

Result<std::unique_ptr<NamespaceDb>> NamespaceDb::Open(const std::filesystem::path& path) {
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = raw ? sqlite3_errmsg(raw) : "out of memory";
    sqlite3_close(raw);
    return Err(Code::kIOError, "cannot open metadata database {}: {}", path.string(), msg);
  }
  std::unique_ptr<NamespaceDb> db(new NamespaceDb(raw));
  sqlite3_rollback_hook(
      raw, [](void* self) { ++static_cast<NamespaceDb*>(self)->rollbacks_; }, db.get());
  Status init;
  {
    MutexLock lock(db->mu_);
    init = db->Init();
    // An in-memory or temporary database (no file name) has nothing to make durable and
    // gets no log: its changes commit one by one. Otherwise the log would land in the
    // working directory as "-redo".
    if (init.ok() && !db->file_.empty()) {
      auto log = RedoLog::Open(db->file_ + "-redo");
      if (log.ok()) {
        db->redo_.emplace(std::move(*log));
        init = db->ReplayLocked();
      } else {
        init = log.status();
      }
    }
    // Nothing to commit on the way out of a failed open: what the log holds stays there.
    if (!init.ok()) db->abandoned_ = true;
  }
  if (auto s = init; !s.ok()) {
    return Err(s.code(), "metadata database {}: {}", path.string(), s.message());
  }
  return db;
}

NamespaceDb::~NamespaceDb() {
  std::thread committer;
  {
    MutexLock lock(mu_);
    stop_ = true;
    if (!abandoned_) {
      if (auto s = CommitGroupLocked(); !s.ok()) {
        spdlog::error("{}: closing with changes not committed (kept in the redo log): {}", file_,
                      s.message());
      }
    }
    committer = std::move(committer_);
  }
  group_cv_.notify_all();
  if (committer.joinable()) committer.join();
  StmtCache::Clear(db_);
  sqlite3_close(db_);
}

void NamespaceDb::EnsureCommitterLocked() {
  if (!stop_ && !committer_.joinable()) committer_ = std::thread([this] { GroupCommitLoop(); });
}

Status NamespaceDb::BeforeFork() {
  Status s;
  std::thread committer;
  {
    MutexLock lock(mu_);
    s = CommitGroupLocked();
    stop_ = true;
    committer = std::move(committer_);
  }
  group_cv_.notify_all();
  if (committer.joinable()) committer.join();
  MutexLock lock(mu_);
  stop_ = false;
  return s;
}

void NamespaceDb::RollBackGroupForTest() {
  MutexLock lock(mu_);
  if (group_open_) (void)Exec("ROLLBACK");
}

void NamespaceDb::AbandonForTest() {
  MutexLock lock(mu_);
  abandoned_ = true;
}

void NamespaceDb::SetGroupAgeForTest(std::chrono::milliseconds age) {
  MutexLock lock(mu_);
  group_age_ = age;
  group_cv_.notify_all();
}

std::size_t NamespaceDb::UncommittedChanges() {
  MutexLock lock(mu_);
  return group_open_ ? group_changes_ : 0;
}

void NamespaceDb::GroupCommitLoop() {
  MutexLock lock(mu_);
  while (!stop_) {
    try {
      GroupCommitStepLocked();
    } catch (const std::exception& e) {
      spdlog::error("{}: group commit: {}; retrying in a second", file_, e.what());
      group_cv_.wait_for(mu_, std::chrono::seconds(1));
    }
  }
}

void NamespaceDb::GroupCommitStepLocked() {
  NoteRollbackLocked();
  if (replay_needed_ && !abandoned_) {
    // SQLite rolled a group back: the log has it; replay until that works.
    if (auto s = CommitGroupLocked(); !s.ok()) {
      spdlog::warn("{}: replaying the redo log failed, retrying in a second: {}", file_,
                   s.message());
      group_cv_.wait_for(mu_, std::chrono::seconds(1));
    }
    return;
  }
  if (!group_open_ || abandoned_) {
    group_cv_.wait(mu_);
    return;
  }
  const auto due = group_began_ + group_age_;
  if (std::chrono::steady_clock::now() < due) {
    group_cv_.wait_until(mu_, due);
    return;
  }
  if (auto s = CommitGroupLocked(); !s.ok()) {
    spdlog::warn("{}: group commit failed, retrying in a second: {}", file_, s.message());
    group_cv_.wait_for(mu_, std::chrono::seconds(1));
  }
}

Status NamespaceDb::CommitGroupLocked() {
  NoteRollbackLocked();
  if (replay_needed_) {
    if (auto s = ReplayLocked(); !s.ok()) return s;
  }
  if (!group_open_) return Ok();
  if (auto s = Exec("COMMIT"); !s.ok()) {
    NoteRollbackLocked();
    return Err(s.code(), "committing {} changes to {}: {} (they are kept in {})", group_changes_,
               file_, s.message(), redo_ ? redo_->path().string() : std::string("no log"));
  }
  group_open_ = false;
  group_changes_ = 0;
  if (redo_ && !replaying_) ClearLogLocked();
  return Ok();
}

void NamespaceDb::ClearLogLocked() {
  // Records left in the log after their commit would be replayed at the next start in front
  // of newer ones (a purge may have removed what they would bring back): until the log can be
  // emptied, local changes commit one by one and are not logged.
  if (auto s = redo_->Clear(); !s.ok()) {
    if (!log_broken_)
      spdlog::error("{}; committing each change on its own until it can be", s.message());
    log_broken_ = true;
    return;
  }
  log_broken_ = false;
}

void NamespaceDb::NoteRollbackLocked() {
  if (group_open_ && sqlite3_get_autocommit(db_) != 0) {
    spdlog::warn("{}: SQLite rolled back a group of {} changes; replaying them from {}", file_,
                 group_changes_, redo_ ? redo_->path().string() : std::string("no log"));
    group_open_ = false;
    group_changes_ = 0;
    replay_needed_ = true;
  }
}

Status NamespaceDb::ReplayLocked() {
  replay_needed_ = false;
  replaying_ = true;
  auto st = redo_->Replay([this](const ChangeSet& cs)
                              REQUIRES(mu_) { return ApplyGroupedLocked(cs, false, 0).status(); });
  replaying_ = false;
  if (!st.ok()) {
    replay_needed_ = true;
    return st.status();
  }
  if (st->records > 0 || st->dropped_bytes > 0) {
    spdlog::info("{}: replayed {} changes from {}{}", file_, st->records, redo_->path().string(),
                 st->dropped_bytes > 0
                     ? fmt::format(" (dropped a torn last record of {} bytes, never acknowledged)",
                                   st->dropped_bytes)
                     : std::string());
  }
  if (auto s = CommitGroupLocked(); !s.ok()) return s;
  // Also when nothing was open: a torn tail must not stay in front of the next records.
  return redo_->Clear();
}

Status NamespaceDb::BeginLocked() {
  if (auto s = CommitGroupLocked(); !s.ok()) return s;
  return Exec("BEGIN IMMEDIATE");
}

std::uint64_t NamespaceDb::ChangeStamp() {
  MutexLock lock(mu_);
  return static_cast<std::uint64_t>(sqlite3_total_changes64(db_)) + rollbacks_.load();
}

Status NamespaceDb::Exec(const char* sql) {
  // ROLLBACK TO (a savepoint) undoes rows without the rollback hook.
  if (std::strncmp(sql, "ROLLBACK", 8) == 0) ++rollbacks_;
  // A single statement (BEGIN, COMMIT, a PRAGMA: every transaction runs some) comes from
  // the statement cache; scripts of several go through sqlite3_exec.
  if (std::strchr(sql, ';') == nullptr) {
    Stmt st(db_, sql);
    if (!st.ok()) return Err(Code::kIOError, "{}", sqlite3_errmsg(db_));
    return st.Run();
  }
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return Err(Code::kIOError, "{}", msg);
  }
  return Ok();
}

Status NamespaceDb::Sync() {
  {
    MutexLock lock(mu_);
    if (auto s = CommitGroupLocked(); !s.ok()) return s;
  }
  // The WAL holds every commit since the last checkpoint; the database file the rest.
  for (const std::string& path : {file_ + "-wal", file_}) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
      if (errno == ENOENT) continue;
      return ErrnoStatus(errno, fmt::format("opening {} to sync it", path));
    }
    if (::fsync(fd.get()) != 0) return ErrnoStatus(errno, fmt::format("syncing {}", path));
  }
  return Ok();
}

std::uint64_t NamespaceDb::MaxHlc() {
  MutexLock lock(mu_);
  Stmt m(db_,
         "SELECT max(coalesce((SELECT max(hlc) FROM inodes), 0),"
         " coalesce((SELECT max(hlc) FROM dentries), 0))");
  return m.Step() == SQLITE_ROW ? U(m.Int(0)) : 0;
}

Result<InodeRecord> NamespaceDb::GetInode(InodeId id) {
  MutexLock lock(mu_);
  static const std::string kSql =
      fmt::format("SELECT {} FROM inodes WHERE id = ? AND deleted = 0", sql::kInodeColumns);
  Stmt q(db_, kSql.c_str());
  q.Bind(1, S(id));
  if (q.Step() != SQLITE_ROW) return Err(Code::kNotFound, "inode {:016x} not found", id);
  return sql::ReadInode(q);
}

Result<InodeRecord> NamespaceDb::GetInodeOrTombstone(InodeId id) {
  MutexLock lock(mu_);
  auto r = SqlRecords::AnyInode(db_, id);
  if (!r) return Err(Code::kNotFound, "inode {:016x} not found", id);
  return std::move(*r);
}

Result<DentryRecord> NamespaceDb::GetDentry(InodeId parent, std::string_view name) {
  MutexLock lock(mu_);
  Stmt q(db_,
         "SELECT d.parent, d.name, d.child, d.hlc, d.node, d.deleted, d.rep_hlc, d.rep_node FROM "
         "dentries d"
         " JOIN inodes i ON i.id = d.child"
         " WHERE d.parent = ? AND d.name = ? AND d.deleted = 0 AND i.deleted = 0");
  q.Bind(1, S(parent)).Bind(2, name);
  if (q.Step() != SQLITE_ROW) return Err(Code::kNotFound, "'{}' not found", name);
  return sql::ReadDentry(q);
}

Result<std::vector<DentryRecord>> NamespaceDb::ListDir(InodeId parent) {
  MutexLock lock(mu_);
  Stmt q(db_,
         "SELECT d.parent, d.name, d.child, d.hlc, d.node, d.deleted, d.rep_hlc, d.rep_node FROM "
         "dentries d"
         " JOIN inodes i ON i.id = d.child"
         " WHERE d.parent = ? AND d.deleted = 0 AND i.deleted = 0 ORDER BY d.name");
  q.Bind(1, S(parent));
  std::vector<DentryRecord> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) out.push_back(sql::ReadDentry(q));
  if (rc != SQLITE_DONE) return Err(Code::kIOError, "listing directory: {}", sqlite3_errmsg(db_));
  return out;
}

Result<std::vector<NamespaceDb::DirRow>> NamespaceDb::ListDirKinds(InodeId parent) {
  MutexLock lock(mu_);
  Stmt q(db_,
         "SELECT d.name, d.child, i.kind FROM dentries d JOIN inodes i ON i.id = d.child"
         " WHERE d.parent = ? AND d.deleted = 0 AND i.deleted = 0 ORDER BY d.name");
  q.Bind(1, S(parent));
  std::vector<DirRow> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    out.push_back({q.Text(0), U(q.Int(1)), static_cast<InodeKind>(q.Int(2))});
  }
  if (rc != SQLITE_DONE) return Err(Code::kIOError, "listing directory: {}", sqlite3_errmsg(db_));
  return out;
}

Result<std::vector<DentryRecord>> NamespaceDb::LinksTo(InodeId child) {
  MutexLock lock(mu_);
  static const std::string kSql = fmt::format(
      "SELECT {} FROM dentries WHERE child = ? AND deleted = 0"
      " ORDER BY hlc DESC, node DESC",
      sql::kDentryColumns);
  Stmt q(db_, kSql.c_str());
  q.Bind(1, S(child));
  std::vector<DentryRecord> out;
  while (q.Step() == SQLITE_ROW) out.push_back(sql::ReadDentry(q));
  return out;
}

std::size_t NamespaceDb::CountLinks(InodeId child) {
  MutexLock lock(mu_);
  Stmt q(db_, "SELECT count(*) FROM dentries WHERE child = ? AND deleted = 0");
  q.Bind(1, S(child));
  return q.Step() == SQLITE_ROW ? static_cast<std::size_t>(q.Int(0)) : 0;
}

bool NamespaceDb::HasLiveEntries(InodeId parent) {
  MutexLock lock(mu_);
  Stmt q(db_,
         "SELECT 1 FROM dentries d JOIN inodes i ON i.id = d.child"
         " WHERE d.parent = ? AND d.deleted = 0 AND i.deleted = 0 LIMIT 1");
  q.Bind(1, S(parent));
  return q.Step() == SQLITE_ROW;
}

bool NamespaceDb::AnyInodeIn(InodeId lo, InodeId hi) {
  MutexLock lock(mu_);
  Stmt q(db_, "SELECT 1 FROM inodes WHERE id BETWEEN ? AND ? LIMIT 1");
  q.Bind(1, S(lo));
  q.Bind(2, S(hi));
  const int rc = q.Step();
  return rc != SQLITE_DONE;
}

Result<std::uint64_t> NamespaceDb::TakeFreshNodeId() {
  MutexLock lock(mu_);
  const std::uint64_t old = node_id_;
  std::uint64_t fresh = 0;
  do fresh = crypto::RandomU64();
  while (fresh == 0 || fresh == old);
  if (auto s = CommitGroupLocked(); !s.ok()) return s;
  if (auto s = Exec("PRAGMA synchronous=FULL"); !s.ok()) return s;
  Status s =
      Stmt(db_, "INSERT OR REPLACE INTO meta(k, v) VALUES('node_id', ?)").Bind(1, S(fresh)).Run();
  (void)Exec("PRAGMA synchronous=NORMAL");
  if (!s.ok()) return s;
  node_id_ = fresh;
  return old;
}

std::optional<std::int64_t> NamespaceDb::GetMeta(std::string_view key) {
  MutexLock lock(mu_);
  Stmt q(db_, "SELECT v FROM meta WHERE k = ?");
  q.Bind(1, key);
  if (q.Step() == SQLITE_ROW) return q.Int(0);
  return std::nullopt;
}

Status NamespaceDb::SetMeta(std::string_view key, std::int64_t value) {
  MutexLock lock(mu_);
  if (auto s = CommitGroupLocked(); !s.ok()) return s;
  return Stmt(db_, "INSERT OR REPLACE INTO meta(k, v) VALUES(?, ?)")
      .Bind(1, key)
      .Bind(2, value)
      .Run();
}

Status NamespaceDb::ReserveSeqs(std::uint64_t need) {
  const std::uint64_t reserved = seq_ + std::max(kSeqBlock, 2 * need);
  if (auto s = CommitGroupLocked(); !s.ok()) return s;
  if (auto s = Exec("PRAGMA synchronous=FULL"); !s.ok()) return s;
  Status s = Stmt(db_, "INSERT OR REPLACE INTO meta(k, v) VALUES('seq_reserved', ?)")
                 .Bind(1, S(reserved))
                 .Run();
  (void)Exec("PRAGMA synchronous=NORMAL");
  if (!s.ok()) return s;
  seq_reserved_ = reserved;
  return Ok();
}

Status NamespaceDb::ReserveFor(const ChangeSet& changes) {
  // Each record takes a number, and may bring a few derived ones (conflict copies, names
  // restored, directories put back in the tree).
  const std::uint64_t need = 4 * (changes.inodes.size() + changes.dentries.size()) + 64;
  if (seq_ + need <= seq_reserved_) return Ok();
  return ReserveSeqs(need);
}

Result<ChangeSet> NamespaceDb::Apply(const ChangeSet& changes, std::optional<std::uint64_t> peer,
                                     std::uint64_t up_to) {
  MutexLock lock(mu_);
  if (log_broken_ && !group_open_) ClearLogLocked();
  if (!peer && redo_ && !log_broken_ && RedoLog::RecordSize(changes) <= kMaxLoggedChange) {
    return ApplyGroupedLocked(changes, true, 0);
  }
  // A peer's batch commits with its cursor; a large local change set commits alone rather than
  // being written twice (log and WAL).
  if (auto s = CommitGroupLocked(); !s.ok()) return s;
  if (auto s = ReserveFor(changes); !s.ok()) return s;
  return ApplyLocked(changes, peer, up_to, 0);
}

Result<ChangeSet> NamespaceDb::ApplyGroupedLocked(const ChangeSet& changes, bool log, int attempt) {
  NoteRollbackLocked();  // a statement since the last change may have ended the group
  if (replay_needed_ && !replaying_) {
    if (auto s = ReplayLocked(); !s.ok()) return s;
  }
  if (auto s = ReserveFor(changes); !s.ok()) return s;
  EnsureCommitterLocked();
  if (!group_open_) {
    if (auto s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
    group_open_ = true;
    group_changes_ = 0;
    group_began_ = std::chrono::steady_clock::now();
    group_cv_.notify_one();
  }
  if (auto s = Exec("SAVEPOINT change"); !s.ok()) {
    NoteRollbackLocked();
    return s;
  }
  // Until released, the change is undone however this function is left (an error, or an
  // exception from the merge or the log's encoding).
  struct Undo {
    NamespaceDb* db;
    bool armed = true;
    void Now() {
      if (!armed) return;
      armed = false;
      db->mu_.AssertHeld();
      if (db->Exec("ROLLBACK TO change").ok()) (void)db->Exec("RELEASE change");
      db->NoteRollbackLocked();
    }
    ~Undo() { Now(); }
  } undo{this};
  ChangeSet won;
  std::uint64_t seq = seq_;
  SqlRecords view(db_, seq);
  if (auto s = Merge(view, changes, won); !s.ok()) return s;
  if (seq > seq_reserved_) {
    // More derived records than foreseen: as in ApplyLocked.
    undo.Now();
    if (attempt > 0) return Err(Code::kIOError, "sequence reservation did not hold");
    if (auto s = ReserveSeqs(seq - seq_); !s.ok()) return s;
    return ApplyGroupedLocked(changes, log, attempt + 1);
  }
  const std::uint64_t log_size = redo_->size();
  if (log) {
    if (auto s = redo_->Append(changes); !s.ok()) return s;
  }
  if (auto s = Exec("RELEASE change"); !s.ok()) {
    // The caller hears of the failure, so the change must not come back at replay.
    if (auto t = redo_->TruncateTo(log_size); !t.ok()) {
      spdlog::error("{}", t.message());
      log_broken_ = true;
    }
    return s;
  }
  undo.armed = false;
  seq_ = seq;
  ++group_changes_;
  if (group_changes_ >= kGroupChanges && !replaying_) {
    // The change is logged, so it stands even if this commit fails (the next one retries).
    if (auto s = CommitGroupLocked(); !s.ok()) spdlog::warn("{}", s.message());
  }
  return won;
}

Result<ChangeSet> NamespaceDb::ApplyLocked(const ChangeSet& changes,
                                           std::optional<std::uint64_t> peer, std::uint64_t up_to,
                                           int attempt) {
  if (auto s = BeginLocked(); !s.ok()) return s;
  ChangeSet won;
  std::uint64_t seq = seq_;
  auto fail = [&](Status s) REQUIRES(mu_) -> Result<ChangeSet> {
    (void)Exec("ROLLBACK");
    return s;
  };
  SqlRecords view(db_, seq);
  if (auto s = Merge(view, changes, won); !s.ok()) return fail(s);
  if (peer && apply_fault_) {
    if (auto s = apply_fault_(changes, *peer, up_to); !s.ok()) return fail(s);
  }
  if (peer) {
    Stmt c(db_, "INSERT OR REPLACE INTO cursors(peer, seq) VALUES(?, ?)");
    c.Bind(1, S(*peer)).Bind(2, S(up_to));
    if (auto s = c.Run(); !s.ok()) return fail(s);
  }
  if (seq > seq_reserved_) {
    // More derived records than foreseen: reserve for this many and do the batch again (it
    // depends only on what is stored, so it comes out the same).
    (void)Exec("ROLLBACK");
    if (attempt > 0) return Err(Code::kIOError, "sequence reservation did not hold");
    if (auto s = ReserveSeqs(seq - seq_); !s.ok()) return s;
    return ApplyLocked(changes, peer, up_to, attempt + 1);
  }
  if (auto s = Exec("COMMIT"); !s.ok()) return fail(s);
  seq_ = seq;
  return won;
}

void NamespaceDb::SetApplyFaultForTest(ApplyFault fault) {
  MutexLock lock(mu_);
  apply_fault_ = std::move(fault);
}

}  // namespace foreverfs::server
