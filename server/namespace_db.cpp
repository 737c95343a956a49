#include "base/mutex.h"
#include "server/namespace_db.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <map>
#include <set>

#include "base/fd.h"
#include "crypto/crypto.h"
#include "net/codec.h"
#include "server/content_clock.h"

namespace foreverfs::server {
namespace {

// 6: sparse manifests ((u64 index, id) per chunk holding data) and the rdev column.
// 7: the members table (who must hold a tombstone before it is purged) and indexes of the
// tombstones. Version 5 and 6 databases are converted when opened.
constexpr int kSchemaVersion = 7;
// Tombstones removed per transaction by PurgeTombstones (the lock is let go between them).
constexpr std::int64_t kPurgeBatch = 1024;
// Sequence numbers reserved at a time (see the header): one full-sync commit per block.
constexpr std::uint64_t kSeqBlock = 1 << 16;

std::int64_t S(std::uint64_t v) { return static_cast<std::int64_t>(v); }
std::uint64_t U(std::int64_t v) { return static_cast<std::uint64_t>(v); }

// Prepared statements are kept per connection and SQL text and reused: preparing one costs
// more than running it (a chmod used to spend most of its 120 us in the SQL parser). A
// statement in use is taken out of the cache, so the same SQL may run nested.
class StmtCache {
 public:
  static sqlite3_stmt* Take(sqlite3* db, const char* sql, int& rc) {
    {
      MutexLock lock(mu_);
      auto it = free_.find(Key{db, sql});
      if (it != free_.end() && !it->second.empty()) {
        sqlite3_stmt* st = it->second.back();
        it->second.pop_back();
        rc = SQLITE_OK;
        return st;
      }
    }
    sqlite3_stmt* st = nullptr;
    rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, nullptr);
    return st;
  }
  static void Give(sqlite3* db, sqlite3_stmt* st) {
    if (!st) return;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    MutexLock lock(mu_);
    auto& list = free_[Key{db, sqlite3_sql(st)}];
    if (list.size() < 4) {
      list.push_back(st);
      return;
    }
    sqlite3_finalize(st);
  }
  // Before the connection closes.
  static void Clear(sqlite3* db) {
    MutexLock lock(mu_);
    for (auto it = free_.begin(); it != free_.end();) {
      if (it->first.first == db) {
        for (auto* st : it->second) sqlite3_finalize(st);
        it = free_.erase(it);
      } else {
        ++it;
      }
    }
  }

 private:
  using Key = std::pair<sqlite3*, std::string>;
  static inline Mutex mu_;  // leaf
  static inline std::map<Key, std::vector<sqlite3_stmt*>> free_;
};

// A prepared statement from the cache, given back (reset) on destruction.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) { stmt_ = StmtCache::Take(db, sql, rc_); }
  ~Stmt() {
    if (rc_ == SQLITE_OK) {
      StmtCache::Give(db_, stmt_);
    } else {
      sqlite3_finalize(stmt_);
    }
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  bool ok() const { return rc_ == SQLITE_OK; }
  Stmt& Bind(int i, std::int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& Bind(int i, std::string_view v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, ByteSpan v) {
    sqlite3_bind_blob64(stmt_, i, v.data(), v.size(), SQLITE_TRANSIENT);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }
  Status Run() {
    int rc = Step();
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
      return Err(rc == SQLITE_FULL ? Code::kNoSpace : Code::kIOError, "metadata database: {}",
                 sqlite3_errmsg(db_));
    }
    return Ok();
  }
  std::int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) {
    auto p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
    return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, col)))
             : std::string();
  }
  ByteSpan Blob(int col) {
    auto p = static_cast<const std::uint8_t*>(sqlite3_column_blob(stmt_, col));
    return {p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, col))};
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

constexpr const char* kInodeColumns =
    "id, kind, mode, uid, gid, size, mtime, ctime, hlc, node, deleted, target, manifest, seq, "
    "atime, xattrs, clock, rdev";

// A manifest in one column: (u64 chunk index, 32-byte id) for every chunk holding data, by
// index (native byte order, as the other blobs of this file).
Bytes EncodeManifest(const model::ChunkMap& m) {
  Bytes out(m.size() * 40);
  std::size_t at = 0;
  for (const auto& e : m) {
    std::memcpy(out.data() + at, &e.index, 8);
    std::memcpy(out.data() + at + 8, e.id.data(), 32);
    at += 40;
  }
  return out;
}

model::ChunkMap DecodeManifest(ByteSpan blob) {
  model::ChunkMap m;
  m.reserve(blob.size() / 40);
  for (std::size_t at = 0; at + 40 <= blob.size(); at += 40) {
    std::uint64_t index;
    crypto::Digest id;
    std::memcpy(&index, blob.data() + at, 8);
    std::memcpy(id.data(), blob.data() + at + 8, 32);
    (void)m.Append(index, id);
  }
  return m;
}

// Extended attributes in one column: u16 name length, name, u32 value length, value; repeated.
Bytes EncodeXattrs(const std::vector<model::Xattr>& xattrs) {
  net::Writer w;
  for (const auto& x : xattrs) {
    w.PutStr16(x.name);
    w.PutBlob32(x.value);
  }
  return std::move(w).Take();
}

std::vector<model::Xattr> DecodeXattrs(ByteSpan blob) {
  std::vector<model::Xattr> out;
  net::Reader r(blob, "xattrs");
  while (r.ok() && r.remaining() > 0) {
    model::Xattr x;
    x.name = r.GetStr16("name", model::kMaxNameSize);
    x.value = r.GetBlob32("value", model::kMaxXattrValue);
    if (r.ok()) out.push_back(std::move(x));
  }
  return out;
}

InodeRecord ReadInode(Stmt& s) {
  InodeRecord r;
  r.id = U(s.Int(0));
  r.kind = static_cast<InodeKind>(s.Int(1));
  r.mode = static_cast<std::uint32_t>(s.Int(2));
  r.uid = static_cast<std::uint32_t>(s.Int(3));
  r.gid = static_cast<std::uint32_t>(s.Int(4));
  r.size = U(s.Int(5));
  r.mtime_ns = s.Int(6);
  r.ctime_ns = s.Int(7);
  r.version = {U(s.Int(8)), U(s.Int(9))};
  r.deleted = s.Int(10) != 0;
  r.symlink_target = s.Text(11);
  r.manifest = DecodeManifest(s.Blob(12));
  r.atime_ns = s.Int(14);
  r.xattrs = DecodeXattrs(s.Blob(15));
  ByteSpan clock = s.Blob(16);
  for (std::size_t i = 0; i + 16 <= clock.size(); i += 16) {
    model::ClockEntry e;
    std::memcpy(&e.node, clock.data() + i, 8);
    std::memcpy(&e.hlc, clock.data() + i + 8, 8);
    r.content_clock.push_back(e);
  }
  r.rdev = U(s.Int(17));
  return r;
}

DentryRecord ReadDentry(Stmt& s) {
  DentryRecord d;
  d.parent = U(s.Int(0));
  d.name = s.Text(1);
  d.child = U(s.Int(2));
  d.version = {U(s.Int(3)), U(s.Int(4))};
  d.deleted = s.Int(5) != 0;
  d.replaces = {U(s.Int(6)), U(s.Int(7))};
  return d;
}

}  // namespace

Result<std::unique_ptr<NamespaceDb>> NamespaceDb::Open(const std::filesystem::path& path) {
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = raw ? sqlite3_errmsg(raw) : "out of memory";
    sqlite3_close(raw);
    return Err(Code::kIOError, "cannot open metadata database {}: {}", path.string(), msg);
  }
  std::unique_ptr<NamespaceDb> db(new NamespaceDb(raw));
  Status init;
  {
    MutexLock lock(db->mu_);
    init = db->Init();
  }
  if (auto s = init; !s.ok()) {
    return Err(s.code(), "metadata database {}: {}", path.string(), s.message());
  }
  return db;
}

NamespaceDb::~NamespaceDb() {
  StmtCache::Clear(db_);
  sqlite3_close(db_);
}

Status NamespaceDb::Exec(const char* sql) {
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

Status NamespaceDb::Init() {
  sqlite3_busy_timeout(db_, 5000);
  if (const char* f = sqlite3_db_filename(db_, "main")) file_ = f;
  // One process per data directory (the directory lock): SQLite may hold its file lock for
  // good instead of taking and dropping POSIX locks around every transaction.
  if (auto s = Exec(
          "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;");
      !s.ok())
    return s;
  if (auto s = Exec(
          "CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
          "CREATE TABLE IF NOT EXISTS inodes(id INTEGER PRIMARY KEY, kind INTEGER, mode INTEGER,"
          " uid INTEGER, gid INTEGER, size INTEGER, mtime INTEGER, ctime INTEGER, hlc INTEGER,"
          " node INTEGER, deleted INTEGER, target TEXT, manifest BLOB, seq INTEGER, atime INTEGER,"
          " xattrs BLOB, clock BLOB, rdev INTEGER NOT NULL DEFAULT 0);"
          "CREATE TABLE IF NOT EXISTS dentries(parent INTEGER, name TEXT, child INTEGER,"
          " hlc INTEGER, node INTEGER, deleted INTEGER, seq INTEGER, rep_hlc INTEGER,"
          " rep_node INTEGER, PRIMARY KEY(parent, name))"
          " WITHOUT ROWID;"
          "CREATE INDEX IF NOT EXISTS inodes_seq ON inodes(seq);"
          "CREATE INDEX IF NOT EXISTS dentries_seq ON dentries(seq);"
          "CREATE INDEX IF NOT EXISTS dentries_child ON dentries(child);"
          "CREATE TABLE IF NOT EXISTS cursors(peer INTEGER PRIMARY KEY, seq INTEGER);"
          // A member's last FeedAck (pending, pending_own) and what it confirmed before that
          // (see RecordAck).
          "CREATE TABLE IF NOT EXISTS members(node INTEGER PRIMARY KEY,"
          " confirmed INTEGER NOT NULL DEFAULT 0, pending INTEGER NOT NULL DEFAULT 0,"
          " pending_own INTEGER NOT NULL DEFAULT 0);"
          "CREATE INDEX IF NOT EXISTS inodes_tombstones ON inodes(seq) WHERE deleted = 1;"
          "CREATE INDEX IF NOT EXISTS dentries_tombstones ON dentries(seq) WHERE deleted = 1;");
      !s.ok()) {
    return s;
  }
  std::int64_t version = kSchemaVersion;
  {
    Stmt q(db_, "SELECT v FROM meta WHERE k = 'schema'");
    if (q.Step() == SQLITE_ROW) version = q.Int(0);
  }
  {
    if (version == 5) {
      if (auto s = UpgradeFrom5(); !s.ok()) return s;
      version = 6;
    }
    if (version == 6) {
      if (auto s = UpgradeFrom6(); !s.ok()) return s;
    } else if (version != kSchemaVersion) {
      return Err(Code::kInvalid, "schema version {} is not the {} this build reads", version,
                 kSchemaVersion);
    }
  }
  Stmt q(db_, "SELECT v FROM meta WHERE k = 'node_id'");
  if (q.Step() == SQLITE_ROW) {
    node_id_ = U(q.Int(0));
  } else {
    do node_id_ = crypto::RandomU64();
    while (node_id_ == 0);
    if (auto s = Exec("BEGIN"); !s.ok()) return s;
    if (auto s =
            Stmt(db_, "INSERT INTO meta(k, v) VALUES('schema', ?)").Bind(1, kSchemaVersion).Run();
        !s.ok())
      return s;
    if (auto s =
            Stmt(db_, "INSERT INTO meta(k, v) VALUES('node_id', ?)").Bind(1, S(node_id_)).Run();
        !s.ok())
      return s;
    // The root is the same on every node: version (0, 0), never sent unless changed.
    auto s =
        Stmt(db_,
             "INSERT OR IGNORE INTO inodes(id, kind, mode, uid, gid, size, mtime, ctime, hlc,"
             " node, deleted, target, manifest, seq, atime, xattrs, clock, rdev) VALUES(1, 2, 493,"
             " ?, ?, 0, 0, 0, 0, 0, 0, '', x'', 0, 0, x'', x'', 0)")
            .Bind(1, static_cast<std::int64_t>(getuid()))
            .Bind(2, static_cast<std::int64_t>(getgid()))
            .Run();
    if (!s.ok()) return s;
    if (auto c = Exec("COMMIT"); !c.ok()) return c;
  }
  Stmt m(db_,
         "SELECT max(coalesce((SELECT max(seq) FROM inodes), 0),"
         " coalesce((SELECT max(seq) FROM dentries), 0))");
  if (m.Step() == SQLITE_ROW) seq_ = U(m.Int(0));
  Stmt r(db_, "SELECT v FROM meta WHERE k = 'seq_reserved'");
  if (r.Step() == SQLITE_ROW) seq_reserved_ = U(r.Int(0));
  // Numbers up to the reservation may have been handed out by commits a power failure lost.
  seq_ = std::max(seq_, seq_reserved_);
  return Ok();
}

// Version 5 kept a dense list of 32-byte ids (the all-zero id a hole) and no rdev.
Status NamespaceDb::UpgradeFrom5() {
  spdlog::info("{}: converting the namespace from schema 5 to {}", file_, kSchemaVersion);
  if (auto s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  auto fail = [&](Status s) REQUIRES(mu_) {
    (void)Exec("ROLLBACK");
    return Err(s.code(), "converting {} to schema {}: {}", file_, kSchemaVersion, s.message());
  };
  if (auto s = Exec("ALTER TABLE inodes ADD COLUMN rdev INTEGER NOT NULL DEFAULT 0"); !s.ok())
    return fail(s);
  std::vector<std::pair<std::int64_t, Bytes>> rows;
  {
    Stmt q(db_, "SELECT id, manifest FROM inodes WHERE length(manifest) > 0");
    while (q.Step() == SQLITE_ROW) {
      ByteSpan dense = q.Blob(1);
      model::ChunkMap m;
      for (std::size_t i = 0; i * 32 + 32 <= dense.size(); ++i) {
        crypto::Digest id;
        std::memcpy(id.data(), dense.data() + i * 32, 32);
        m.Set(i, id);
      }
      rows.emplace_back(q.Int(0), EncodeManifest(m));
    }
  }
  for (const auto& [id, blob] : rows) {
    if (auto s = Stmt(db_, "UPDATE inodes SET manifest = ? WHERE id = ?")
                     .BindBlob(1, blob)
                     .Bind(2, id)
                     .Run();
        !s.ok())
      return fail(s);
  }
  if (auto s = Stmt(db_, "UPDATE meta SET v = 6 WHERE k = 'schema'").Run(); !s.ok()) return fail(s);
  if (auto s = Exec("COMMIT"); !s.ok()) return fail(s);
  return Ok();
}

// Version 6 had no members: every node whose feed this one pulled (it has a cursor for it)
// becomes one, with nothing confirmed, so that no tombstone is purged before those nodes say
// they hold it. (Nodes that pulled our feed but whose feed we never pulled are not known; they
// become members when they next link.)
Status NamespaceDb::UpgradeFrom6() {
  spdlog::info("{}: converting the namespace from schema 6 to {}", file_, kSchemaVersion);
  if (auto s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  auto fail = [&](Status s) REQUIRES(mu_) {
    (void)Exec("ROLLBACK");
    return Err(s.code(), "converting {} to schema {}: {}", file_, kSchemaVersion, s.message());
  };
  if (auto s = Exec("INSERT OR IGNORE INTO members(node) SELECT peer FROM cursors"); !s.ok())
    return fail(s);
  if (auto s = Stmt(db_, "UPDATE meta SET v = ? WHERE k = 'schema'").Bind(1, kSchemaVersion).Run();
      !s.ok())
    return fail(s);
  if (auto s = Exec("COMMIT"); !s.ok()) return fail(s);
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
  Stmt q(db_,
         fmt::format("SELECT {} FROM inodes WHERE id = ? AND deleted = 0", kInodeColumns).c_str());
  q.Bind(1, S(id));
  if (q.Step() != SQLITE_ROW) return Err(Code::kNotFound, "inode {:016x} not found", id);
  return ReadInode(q);
}

Result<InodeRecord> NamespaceDb::GetInodeOrTombstone(InodeId id) {
  MutexLock lock(mu_);
  auto r = AnyInode(id);
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
  return ReadDentry(q);
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
  while ((rc = q.Step()) == SQLITE_ROW) out.push_back(ReadDentry(q));
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
  return LiveNames(child);
}

std::vector<DentryRecord> NamespaceDb::LiveNames(InodeId child) {
  Stmt q(db_,
         "SELECT parent, name, child, hlc, node, deleted, rep_hlc, rep_node FROM dentries"
         " WHERE child = ? AND deleted = 0 ORDER BY hlc DESC, node DESC");
  q.Bind(1, S(child));
  std::vector<DentryRecord> out;
  while (q.Step() == SQLITE_ROW) out.push_back(ReadDentry(q));
  return out;
}

bool NamespaceDb::HasLiveEntries(InodeId parent) {
  MutexLock lock(mu_);
  Stmt q(db_,
         "SELECT 1 FROM dentries d JOIN inodes i ON i.id = d.child"
         " WHERE d.parent = ? AND d.deleted = 0 AND i.deleted = 0 LIMIT 1");
  q.Bind(1, S(parent));
  return q.Step() == SQLITE_ROW;
}

namespace {

// Whether `loser`, replaced by `winner` under last-writer-wins, holds content written
// concurrently with the winner's (neither saw the other's write): then it is kept as a copy.
// (A delete carries the clock of what it deleted: it drops only content it had seen.)
bool ConcurrentContent(const InodeRecord& loser, const InodeRecord& winner) {
  if (loser.deleted || loser.kind != InodeKind::kFile || loser.content_clock.empty()) return false;
  return !Dominates(winner.content_clock, loser.content_clock);
}

// `live` won over the tombstone `deleted` and holds content the deleting node had not seen.
bool Resurrects(const InodeRecord& live, const InodeRecord& deleted) {
  return !live.deleted && deleted.deleted && live.kind == InodeKind::kFile &&
         !live.content_clock.empty() && !Dominates(deleted.content_clock, live.content_clock);
}

// "NAME.conflict-<node>-<UTC time>-<tag>": the node and time of the losing write, and a tag
// from the losing record so that two losers never share a name.
std::string ConflictName(std::string_view name, const model::ClockEntry& v, std::uint64_t tag) {
  std::time_t t = static_cast<std::time_t>(v.hlc / 1000000000ull);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char when[32];
  std::strftime(when, sizeof when, "%Y%m%d-%H%M%S", &tm);
  std::string suffix = fmt::format(".conflict-{:016x}-{}-{:04x}", v.node, when, tag & 0xffff);
  std::string base(name.substr(0, std::min(name.size(), model::kMaxNameSize - suffix.size())));
  return base + suffix;
}

}  // namespace

std::optional<InodeRecord> NamespaceDb::AnyInode(InodeId id) {
  Stmt q(db_, fmt::format("SELECT {} FROM inodes WHERE id = ?", kInodeColumns).c_str());
  q.Bind(1, S(id));
  if (q.Step() != SQLITE_ROW) return std::nullopt;
  return ReadInode(q);
}

Status NamespaceDb::PutInode(const InodeRecord& r, std::uint64_t& seq, ChangeSet& won) {
  auto cur = AnyInode(r.id);
  if (cur && cur->version >= r.version) {
    if (cur->version == r.version) return Ok();
    if (ConcurrentContent(r, *cur)) return KeepConflictCopy(r, seq, won);
    if (Resurrects(*cur, r)) return RestoreName(*cur, seq, won);
    return Ok();
  }
  const Bytes manifest = EncodeManifest(r.manifest);
  Bytes clock(r.content_clock.size() * 16);
  for (std::size_t i = 0; i < r.content_clock.size(); ++i) {
    std::memcpy(clock.data() + 16 * i, &r.content_clock[i].node, 8);
    std::memcpy(clock.data() + 16 * i + 8, &r.content_clock[i].hlc, 8);
  }
  Stmt ins(db_,
           fmt::format("INSERT OR REPLACE INTO inodes({}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
                       "?,?)",
                       kInodeColumns)
               .c_str());
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
      .BindBlob(13, manifest)
      .Bind(14, S(++seq))
      .Bind(15, r.atime_ns)
      .BindBlob(16, EncodeXattrs(r.xattrs))
      .BindBlob(17, clock)
      .Bind(18, S(r.rdev));
  if (auto s = ins.Run(); !s.ok()) return s;
  won.inodes.push_back(r);
  if (cur && ConcurrentContent(*cur, r)) {
    if (auto s = KeepConflictCopy(*cur, seq, won); !s.ok()) return s;
  }
  if (cur && Resurrects(r, *cur)) return RestoreName(r, seq, won);
  return Ok();
}

// A file written after its deletion (in version order) by a node that had not seen the
// deletion: the write wins, and the file must not be left without a name. It gets back its
// newest name (or a conflict name if that is taken) with the write's version, which beats the
// name's tombstone; every node that sees the pair derives the same entry, and it replicates.
Status NamespaceDb::RestoreName(const InodeRecord& rec, std::uint64_t& seq, ChangeSet& won) {
  Stmt q(db_,
         "SELECT parent, name, deleted FROM dentries WHERE child = ?"
         " ORDER BY deleted, hlc DESC, node DESC LIMIT 1");
  q.Bind(1, S(rec.id));
  if (q.Step() != SQLITE_ROW) return Ok();  // its name has not arrived yet: it will be live
  if (q.Int(2) == 0) return Ok();           // it still has a live name
  InodeId parent = U(q.Int(0));
  std::string name = q.Text(1);
  auto dir = AnyInode(parent);
  if (!dir || dir->deleted) parent = 1;
  Stmt taken(db_, "SELECT child FROM dentries WHERE parent = ? AND name = ? AND deleted = 0");
  taken.Bind(1, S(parent)).Bind(2, name);
  if (taken.Step() == SQLITE_ROW && U(taken.Int(0)) != rec.id) {
    name = ConflictName(name, Latest(rec.content_clock), rec.id ^ rec.version.hlc);
  }
  DentryRecord restored{parent, name, rec.id, rec.version, false};
  restored.replaces = rec.version;
  return PutDentry(restored, seq, won);
}

Status NamespaceDb::PutDentry(const DentryRecord& d, std::uint64_t& seq, ChangeSet& won) {
  Stmt cur(db_,
           "SELECT hlc, node, child, deleted, rep_hlc, rep_node FROM dentries"
           " WHERE parent = ? AND name = ?");
  cur.Bind(1, S(d.parent)).Bind(2, d.name);
  std::optional<DentryRecord> old;
  if (cur.Step() == SQLITE_ROW) {
    old = DentryRecord{d.parent,        d.name,
                       U(cur.Int(2)),   {U(cur.Int(0)), U(cur.Int(1))},
                       cur.Int(3) != 0, {U(cur.Int(4)), U(cur.Int(5))}};
  }
  // Two live entries for one name pointing at different files, the newer made without seeing
  // the older (both nodes created the name): the older one keeps its file under a conflict name.
  auto clash = [](const DentryRecord& loser, const DentryRecord& winner) {
    return !loser.deleted && !winner.deleted && loser.child != winner.child &&
           winner.replaces < loser.version;
  };
  if (old && old->version >= d.version) {
    return old->version != d.version && clash(d, *old) ? KeepDisplaced(d, seq, won) : Ok();
  }
  Stmt ins(db_,
           "INSERT OR REPLACE INTO dentries(parent, name, child, hlc, node, deleted, seq, rep_hlc,"
           " rep_node) VALUES(?,?,?,?,?,?,?,?,?)");
  ins.Bind(1, S(d.parent))
      .Bind(2, d.name)
      .Bind(3, S(d.child))
      .Bind(4, S(d.version.hlc))
      .Bind(5, S(d.version.node))
      .Bind(6, d.deleted ? 1 : 0)
      .Bind(7, S(++seq))
      .Bind(8, S(d.replaces.hlc))
      .Bind(9, S(d.replaces.node));
  if (auto s = ins.Run(); !s.ok()) return s;
  won.dentries.push_back(d);
  if (old && clash(*old, d)) return KeepDisplaced(*old, seq, won);
  return Ok();
}

// The revived directory's version comes from the records that caused it (the newer of its
// tombstone and its newest live entry, plus one), so every node derives the same one.
Status NamespaceDb::ReviveDir(InodeId id, std::uint64_t& seq, ChangeSet& won) {
  auto rec = AnyInode(id);
  if (!rec || !rec->deleted || rec->kind != InodeKind::kDir) return Ok();
  Stmt q(db_,
         "SELECT d.hlc, d.node FROM dentries d JOIN inodes i ON i.id = d.child"
         " WHERE d.parent = ? AND d.deleted = 0 AND i.deleted = 0 ORDER BY d.hlc DESC, d.node DESC"
         " LIMIT 1");
  q.Bind(1, S(id));
  if (q.Step() != SQLITE_ROW) return Ok();  // empty: it stays deleted
  const Version newest = std::max(rec->version, Version{U(q.Int(0)), U(q.Int(1))});
  InodeRecord revived = *rec;
  revived.deleted = false;
  revived.version = {newest.hlc + 1, newest.node};
  spdlog::info("directory {:016x} was deleted while entries were added to it elsewhere; keeping it",
               id);
  if (auto s = PutInode(revived, seq, won); !s.ok()) return s;
  Stmt n(db_,
         "SELECT parent, name, deleted FROM dentries WHERE child = ?"
         " ORDER BY deleted, hlc DESC, node DESC LIMIT 1");
  n.Bind(1, S(id));
  if (n.Step() != SQLITE_ROW || n.Int(2) == 0) return Ok();
  InodeId parent = U(n.Int(0));
  std::string name = n.Text(1);
  Stmt taken(db_, "SELECT child FROM dentries WHERE parent = ? AND name = ? AND deleted = 0");
  taken.Bind(1, S(parent)).Bind(2, name);
  if (taken.Step() == SQLITE_ROW && U(taken.Int(0)) != id) {
    name = ConflictName(name, {revived.version.node, revived.version.hlc}, id);
  }
  DentryRecord entry{parent, name, id, revived.version, false};
  entry.replaces = revived.version;
  if (auto s = PutDentry(entry, seq, won); !s.ok()) return s;
  return ReviveDir(parent, seq, won);  // its own directory may be gone too
}

// Follows each directory's newest live name upwards from `from`: true if it reaches the root
// without passing `avoid`, false at a directory with no name, a loop, or `avoid`.
bool NamespaceDb::ReachesRoot(InodeId from, InodeId avoid) {
  std::set<InodeId> seen;
  for (InodeId at = from; at != kRootId;) {
    if (at == avoid || !seen.insert(at).second || seen.size() > kMaxTreeDepth) return false;
    auto names = LiveNames(at);
    if (names.empty()) return false;
    at = names.front().parent;
  }
  return true;
}

// Every record derived here takes its version and name from the records that caused it, so
// nodes that see the same records derive the same repair.
Status NamespaceDb::KeepInTree(InodeId id, std::uint64_t& seq, ChangeSet& won) {
  auto rec = AnyInode(id);
  if (id == kRootId || !rec || rec->deleted || rec->kind != InodeKind::kDir) return Ok();
  // One name: the newest move wins, the other names go.
  auto names = LiveNames(id);
  for (std::size_t i = 1; i < names.size(); ++i) {
    DentryRecord gone = names[i];
    gone.deleted = true;
    gone.version = gone.replaces = names.front().version;
    spdlog::info("directory {:016x} was moved on two nodes at once; keeping the newer name '{}'",
                 id, names.front().name);
    if (auto s = PutDentry(gone, seq, won); !s.ok()) return s;
  }
  // Not inside itself: walk up; a directory seen twice closes a cycle.
  for (int round = 0; round < 64; ++round) {
    std::vector<DentryRecord> path;  // path[i] names the directory path[i-1] sits in
    std::map<InodeId, std::size_t> index;
    std::optional<std::size_t> cycle;
    for (InodeId at = id; at != kRootId && path.size() < kMaxTreeDepth;) {
      if (auto it = index.find(at); it != index.end()) {
        cycle = it->second;
        break;
      }
      auto up = LiveNames(at);
      if (up.empty()) break;  // no name at all: not a cycle
      index[at] = path.size();
      path.push_back(up.front());
      at = up.front().parent;
    }
    if (!cycle) return Ok();
    // Undo the newest move in the cycle: its directory goes back where it was before (the
    // newest name it lost), or to the root if that place is inside the cycle too.
    const DentryRecord newest = *std::max_element(
        path.begin() + static_cast<std::ptrdiff_t>(*cycle), path.end(),
        [](const DentryRecord& a, const DentryRecord& b) { return a.version < b.version; });
    const Version v{newest.version.hlc + 1, newest.version.node};
    DentryRecord cut = newest;
    cut.deleted = true;
    cut.version = cut.replaces = v;
    if (auto s = PutDentry(cut, seq, won); !s.ok()) return s;
    InodeId parent = kRootId;
    std::string name = newest.name;
    Stmt prev(db_,
              "SELECT parent, name FROM dentries WHERE child = ? AND deleted = 1"
              " AND NOT (parent = ? AND name = ?) ORDER BY hlc DESC, node DESC LIMIT 1");
    prev.Bind(1, S(newest.child)).Bind(2, S(newest.parent)).Bind(3, newest.name);
    if (prev.Step() == SQLITE_ROW && ReachesRoot(U(prev.Int(0)), newest.child)) {
      parent = U(prev.Int(0));
      name = prev.Text(1);
    }
    Stmt taken(db_, "SELECT child FROM dentries WHERE parent = ? AND name = ? AND deleted = 0");
    taken.Bind(1, S(parent)).Bind(2, name);
    if (taken.Step() == SQLITE_ROW && U(taken.Int(0)) != newest.child) {
      name = ConflictName(name, {v.node, v.hlc}, newest.child);
    }
    spdlog::warn(
        "directories were moved into each other on two nodes; '{}' ({:016x}) goes back to "
        "'{}' in directory {:016x}",
        newest.name, newest.child, name, parent);
    DentryRecord back{parent, name, newest.child, v, false};
    back.replaces = v;
    if (auto s = PutDentry(back, seq, won); !s.ok()) return s;
    if (auto s = ReviveDir(parent, seq, won); !s.ok()) return s;
  }
  return Err(Code::kIOError, "directory {:016x}: could not put it back in the tree", id);
}

Status NamespaceDb::KeepDisplaced(const DentryRecord& loser, std::uint64_t& seq, ChangeSet& won) {
  // A file that still has a name elsewhere (or got its conflict name already) is not lost.
  Stmt named(db_, "SELECT 1 FROM dentries WHERE child = ? AND deleted = 0 LIMIT 1");
  named.Bind(1, S(loser.child));
  if (named.Step() == SQLITE_ROW) return Ok();
  std::string name = ConflictName(loser.name, {loser.version.node, loser.version.hlc},
                                  loser.child ^ loser.version.hlc);
  DentryRecord kept{loser.parent, name, loser.child, loser.version, false};
  kept.replaces = loser.version;
  return PutDentry(kept, seq, won);
}

// Keeps `loser` as a new file beside the one it lost to. Every node that sees the same two
// versions derives the same records (id, name and versions come from the loser), so the copy
// converges like any other record, whichever node noticed the conflict first.
Status NamespaceDb::KeepConflictCopy(const InodeRecord& loser, std::uint64_t& seq, ChangeSet& won) {
  Bytes seed;
  for (int i = 0; i < 8; ++i) seed.push_back(static_cast<std::uint8_t>(loser.id >> (8 * i)));
  for (const auto& e : loser.content_clock) {
    for (int i = 0; i < 8; ++i) seed.push_back(static_cast<std::uint8_t>(e.node >> (8 * i)));
    for (int i = 0; i < 8; ++i) seed.push_back(static_cast<std::uint8_t>(e.hlc >> (8 * i)));
  }
  auto digest = crypto::Sha256::Of(seed);
  InodeId copy_id = 0;
  for (int i = 0; i < 8; ++i)
    copy_id |= static_cast<std::uint64_t>(digest[static_cast<std::size_t>(i)]) << (8 * i);
  if (copy_id <= 1) copy_id += 2;
  // Where the file was: its newest name, live or not.
  InodeId parent = 1;
  std::string name = fmt::format("{:016x}", loser.id);
  {
    Stmt q(db_,
           "SELECT parent, name FROM dentries WHERE child = ? ORDER BY deleted, hlc DESC, node DESC"
           " LIMIT 1");
    q.Bind(1, S(loser.id));
    if (q.Step() == SQLITE_ROW) {
      parent = U(q.Int(0));
      name = q.Text(1);
    }
  }
  auto dir = AnyInode(parent);
  if (!dir || dir->deleted) parent = 1;
  InodeRecord copy = loser;
  copy.id = copy_id;
  if (auto s = PutInode(copy, seq, won); !s.ok()) return s;
  // The copy is placed once: if it has a name already (or had one the user removed), it keeps
  // that, however often the conflict is seen again.
  Stmt named(db_, "SELECT 1 FROM dentries WHERE child = ? LIMIT 1");
  named.Bind(1, S(copy_id));
  if (named.Step() == SQLITE_ROW) return Ok();
  DentryRecord entry{parent, ConflictName(name, Latest(loser.content_clock), copy_id), copy_id,
                     loser.version, false};
  entry.replaces = loser.version;
  return PutDentry(entry, seq, won);
}

Result<std::uint64_t> NamespaceDb::TakeFreshNodeId() {
  MutexLock lock(mu_);
  const std::uint64_t old = node_id_;
  std::uint64_t fresh = 0;
  do fresh = crypto::RandomU64();
  while (fresh == 0 || fresh == old);
  if (auto s = Exec("PRAGMA synchronous=FULL"); !s.ok()) return s;
  Status s =
      Stmt(db_, "INSERT OR REPLACE INTO meta(k, v) VALUES('node_id', ?)").Bind(1, S(fresh)).Run();
  (void)Exec("PRAGMA synchronous=NORMAL");
  if (!s.ok()) return s;
  node_id_ = fresh;
  return old;
}

namespace {
std::string AckCapKey(std::uint64_t peer) { return fmt::format("ack_cap_{:016x}", peer); }
}  // namespace

std::uint64_t NamespaceDb::AckCap(std::uint64_t peer) {
  auto v = GetMeta(AckCapKey(peer));
  return v ? U(*v) : UINT64_MAX;
}

Status NamespaceDb::CapAcks(std::uint64_t peer, std::uint64_t cursor) {
  if (cursor >= AckCap(peer)) return Ok();
  spdlog::warn("peer {:016x}: a record after its change {} was refused here; this node will not "
               "confirm its later changes, so their deletions are kept (not purged)",
               peer, cursor);
  return SetMeta(AckCapKey(peer), S(cursor));
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
  return Stmt(db_, "INSERT OR REPLACE INTO meta(k, v) VALUES(?, ?)")
      .Bind(1, key)
      .Bind(2, value)
      .Run();
}

Status NamespaceDb::ReserveSeqs(std::uint64_t need) {
  const std::uint64_t reserved = seq_ + std::max(kSeqBlock, 2 * need);
  if (auto s = Exec("PRAGMA synchronous=FULL"); !s.ok()) return s;
  Status s = Stmt(db_, "INSERT OR REPLACE INTO meta(k, v) VALUES('seq_reserved', ?)")
                 .Bind(1, S(reserved))
                 .Run();
  (void)Exec("PRAGMA synchronous=NORMAL");
  if (!s.ok()) return s;
  seq_reserved_ = reserved;
  return Ok();
}

Result<ChangeSet> NamespaceDb::Apply(const ChangeSet& changes, std::optional<std::uint64_t> peer,
                                     std::uint64_t up_to) {
  MutexLock lock(mu_);
  // Each record takes a number, and may bring a few derived ones (conflict copies, names
  // restored, directories put back in the tree).
  const std::uint64_t need = 4 * (changes.inodes.size() + changes.dentries.size()) + 64;
  if (seq_ + need > seq_reserved_) {
    if (auto s = ReserveSeqs(need); !s.ok()) return s;
  }
  return ApplyLocked(changes, peer, up_to, 0);
}

Result<ChangeSet> NamespaceDb::ApplyLocked(const ChangeSet& changes,
                                           std::optional<std::uint64_t> peer, std::uint64_t up_to,
                                           int attempt) {
  if (auto s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  ChangeSet won;
  std::uint64_t seq = seq_;
  auto fail = [&](Status s) REQUIRES(mu_) -> Result<ChangeSet> {
    (void)Exec("ROLLBACK");
    return s;
  };
  for (const auto& r : changes.inodes) {
    if (auto s = PutInode(r, seq, won); !s.ok()) return fail(s);
  }
  for (const auto& d : changes.dentries) {
    if (auto s = PutDentry(d, seq, won); !s.ok()) return fail(s);
  }
  // A directory deleted on one node while another put something in it comes back, so the
  // new entry stays reachable. Checked after the whole batch: a recursive delete sends the
  // children's tombstones in the same batch as the directory's.
  std::set<InodeId> dirs;
  for (const auto& r : won.inodes) {
    if (r.deleted && r.kind == InodeKind::kDir) dirs.insert(r.id);
  }
  for (const auto& d : won.dentries) {
    if (!d.deleted) dirs.insert(d.parent);
  }
  for (InodeId dir : dirs) {
    if (auto s = ReviveDir(dir, seq, won); !s.ok()) return fail(s);
  }
  // A directory moved on two nodes at once may now have two names, or two directories moved
  // into each other may form a cycle cut off from the root: put each back in one tree.
  std::set<InodeId> moved;
  for (const auto& d : won.dentries) {
    if (!d.deleted) moved.insert(d.child);
  }
  for (const auto& r : won.inodes) {
    if (!r.deleted && r.kind == InodeKind::kDir) moved.insert(r.id);
  }
  for (InodeId dir : moved) {
    if (auto s = KeepInTree(dir, seq, won); !s.ok()) return fail(s);
  }
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

Result<net::Changes> NamespaceDb::ChangesSince(std::uint64_t since, std::size_t max_records,
                                               std::size_t max_bytes) {
  MutexLock lock(mu_);
  struct Item {
    std::uint64_t seq;
    std::optional<InodeRecord> inode;
    std::optional<DentryRecord> dentry;
  };
  std::vector<Item> items;
  // Inodes are read until they alone exceed the byte budget (large manifests); records after
  // the last inode read cannot be sent before it, so the batch stops there.
  std::uint64_t cut = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  {
    Stmt q(db_,
           fmt::format("SELECT {} FROM inodes WHERE seq > ? ORDER BY seq LIMIT ?", kInodeColumns)
               .c_str());
    q.Bind(1, S(since)).Bind(2, static_cast<std::int64_t>(max_records));
    std::size_t bytes = 0;
    while (q.Step() == SQLITE_ROW) {
      items.push_back({U(q.Int(13)), ReadInode(q), std::nullopt});
      bytes += net::EncodedSize(*items.back().inode);
      if (bytes > max_bytes) {
        cut = items.back().seq;
        break;
      }
    }
  }
  {
    Stmt q(db_,
           "SELECT parent, name, child, hlc, node, deleted, rep_hlc, rep_node, seq FROM dentries"
           " WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?");
    q.Bind(1, S(since)).Bind(2, S(cut)).Bind(3, static_cast<std::int64_t>(max_records));
    while (q.Step() == SQLITE_ROW) items.push_back({U(q.Int(8)), std::nullopt, ReadDentry(q)});
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.seq < b.seq; });
  net::Changes out;
  out.up_to = items.empty() ? std::max(since, seq_) : since;
  std::size_t bytes = 0, count = 0;
  for (auto& it : items) {
    if (count >= max_records) break;
    const std::size_t size = it.inode ? net::EncodedSize(*it.inode) : net::EncodedSize(*it.dentry);
    if (count > 0 && bytes + size > max_bytes) break;
    bytes += size;
    if (it.inode) {
      out.inodes.push_back(std::move(*it.inode));
    } else {
      out.dentries.push_back(std::move(*it.dentry));
    }
    out.up_to = it.seq;
    ++count;
  }
  return out;
}

std::uint64_t NamespaceDb::LastSeq() {
  MutexLock lock(mu_);
  return seq_;
}

Status NamespaceDb::AddMember(std::uint64_t node) {
  MutexLock lock(mu_);
  if (node == node_id_) return Ok();
  return Stmt(db_, "INSERT OR IGNORE INTO members(node) VALUES(?)").Bind(1, S(node)).Run();
}

Status NamespaceDb::RecordAck(std::uint64_t node, std::uint64_t applied, std::uint64_t own_seq) {
  MutexLock lock(mu_);
  if (node == node_id_) return Ok();
  if (applied > seq_) {
    // Past the end of our feed: not something this database handed out. Confirms nothing.
    spdlog::warn("node {:016x} says it applied our changes up to {}, past our last one ({}); "
                 "ignored",
                 node, applied, seq_);
    applied = 0;
  }
  std::uint64_t cursor = 0;
  {
    Stmt c(db_, "SELECT seq FROM cursors WHERE peer = ?");
    c.Bind(1, S(node));
    if (c.Step() == SQLITE_ROW) cursor = U(c.Int(0));
  }
  // The previous ack counts once we have what the member had written when it sent it.
  std::uint64_t confirmed = 0;
  {
    Stmt m(db_, "SELECT confirmed, pending, pending_own FROM members WHERE node = ?");
    m.Bind(1, S(node));
    if (m.Step() == SQLITE_ROW) confirmed = U(m.Int(2)) <= cursor ? U(m.Int(1)) : U(m.Int(0));
  }
  if (own_seq <= cursor) confirmed = applied;
  // A member that reports less than before lost commits (a power cut, a restored copy): what it
  // confirmed earlier no longer holds.
  confirmed = std::min(confirmed, applied);
  return Stmt(db_,
              "INSERT OR REPLACE INTO members(node, confirmed, pending, pending_own)"
              " VALUES(?, ?, ?, ?)")
      .Bind(1, S(node))
      .Bind(2, S(confirmed))
      .Bind(3, S(applied))
      .Bind(4, S(own_seq))
      .Run();
}

namespace {
constexpr const char* kMembersSql =
    "SELECT m.node, CASE WHEN m.pending_own <= coalesce(c.seq, 0) THEN m.pending"
    " ELSE m.confirmed END FROM members m LEFT JOIN cursors c ON c.peer = m.node";
}  // namespace

std::vector<NamespaceDb::Member> NamespaceDb::Members() {
  MutexLock lock(mu_);
  std::vector<Member> out;
  Stmt q(db_, fmt::format("{} ORDER BY m.node", kMembersSql).c_str());
  while (q.Step() == SQLITE_ROW) out.push_back({U(q.Int(0)), U(q.Int(1))});
  return out;
}

Result<NamespaceDb::PurgeStats> NamespaceDb::PurgeTombstones(std::uint64_t before_hlc,
                                                             const std::set<InodeId>& keep) {
  PurgeStats st;
  {
    MutexLock lock(mu_);
    st.horizon = seq_;
    Stmt q(db_, kMembersSql);
    while (q.Step() == SQLITE_ROW) {
      const Member m{U(q.Int(0)), U(q.Int(1))};
      if (!st.slowest || m.confirmed < st.slowest->confirmed) st.slowest = m;
    }
    if (st.slowest) st.horizon = std::min(st.horizon, st.slowest->confirmed);
    for (const char* table : {"inodes", "dentries"}) {
      Stmt w(db_, fmt::format("SELECT count(*) FROM {} WHERE deleted = 1 AND seq > ? AND hlc < ?",
                              table)
                      .c_str());
      w.Bind(1, S(st.horizon)).Bind(2, S(before_hlc));
      if (w.Step() == SQLITE_ROW) st.waiting += static_cast<std::size_t>(w.Int(0));
    }
  }
  // Page through the candidates by sequence number, one transaction per page.
  auto purge = [&](bool inodes) -> Status {
    std::int64_t after = 0;
    for (;;) {
      MutexLock lock(mu_);
      if (auto s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
      auto fail = [&](Status s) REQUIRES(mu_) {
        (void)Exec("ROLLBACK");
        return s;
      };
      struct Row {
        InodeId id_or_parent;
        std::string name;
      };
      std::vector<Row> rows;
      std::int64_t n = 0;
      {
        Stmt q(db_, inodes ? "SELECT id, '', id, seq FROM inodes WHERE deleted = 1 AND seq > ?"
                             " AND seq <= ? AND hlc < ? ORDER BY seq LIMIT ?"
                           : "SELECT parent, name, child, seq FROM dentries WHERE deleted = 1"
                             " AND seq > ? AND seq <= ? AND hlc < ? ORDER BY seq LIMIT ?");
        q.Bind(1, after).Bind(2, S(st.horizon)).Bind(3, S(before_hlc)).Bind(4, kPurgeBatch);
        int rc;
        while ((rc = q.Step()) == SQLITE_ROW) {
          ++n;
          after = q.Int(3);
          if (!keep.contains(U(q.Int(2)))) rows.push_back({U(q.Int(0)), q.Text(1)});
        }
        if (rc != SQLITE_DONE) {
          return fail(Err(Code::kIOError, "reading tombstones: {}", sqlite3_errmsg(db_)));
        }
      }
      for (const auto& r : rows) {
        Status s = inodes ? Stmt(db_, "DELETE FROM inodes WHERE id = ?").Bind(1, S(r.id_or_parent)).Run()
                          : Stmt(db_, "DELETE FROM dentries WHERE parent = ? AND name = ?")
                                .Bind(1, S(r.id_or_parent))
                                .Bind(2, r.name)
                                .Run();
        if (!s.ok()) return fail(s);
      }
      if (auto s = Exec("COMMIT"); !s.ok()) return fail(s);
      (inodes ? st.inodes : st.dentries) += rows.size();
      if (n < kPurgeBatch) return Ok();
    }
  };
  if (auto s = purge(true); !s.ok()) return s;
  if (auto s = purge(false); !s.ok()) return s;
  return st;
}

void NamespaceDb::SetApplyFaultForTest(ApplyFault fault) {
  MutexLock lock(mu_);
  apply_fault_ = std::move(fault);
}

std::uint64_t NamespaceDb::Cursor(std::uint64_t peer) {
  MutexLock lock(mu_);
  Stmt q(db_, "SELECT seq FROM cursors WHERE peer = ?");
  q.Bind(1, S(peer));
  return q.Step() == SQLITE_ROW ? U(q.Int(0)) : 0;
}

Status NamespaceDb::ForEachLiveManifest(const std::function<void(const InodeRecord&)>& fn) {
  std::vector<InodeRecord> batch;
  std::int64_t after = std::numeric_limits<std::int64_t>::min();
  // In batches, so the lock is not held while `fn` runs.
  for (;;) {
    batch.clear();
    {
      MutexLock lock(mu_);
      Stmt q(db_, fmt::format("SELECT {} FROM inodes WHERE id > ? AND deleted = 0 AND kind = 1"
                              " ORDER BY id LIMIT 256",
                              kInodeColumns)
                      .c_str());
      q.Bind(1, after);
      while (q.Step() == SQLITE_ROW) batch.push_back(ReadInode(q));
    }
    if (batch.empty()) return Ok();
    after = S(batch.back().id);
    for (const auto& r : batch) fn(r);
  }
}

}  // namespace foreverfs::server
