#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstring>

#include "crypto/crypto.h"
#include "server/namespace_db.h"
#include "server/namespace_statements.h"

namespace foreverfs::server {
namespace {

using sql::S;
using sql::Stmt;
using sql::U;

// 6: sparse manifests ((u64 index, id) per chunk holding data) and the rdev column.
// 7: the members table (who must hold a tombstone before it is purged) and indexes of the
// tombstones. Version 5 and 6 databases are converted when opened.
constexpr int kSchemaVersion = 7;

}  // namespace

Status NamespaceDb::Init() {
  sqlite3_busy_timeout(db_, 5000);
  if (const char* f = sqlite3_db_filename(db_, "main")) file_ = f;
  // One process per data directory (the directory lock): SQLite may hold its file lock for
  // good instead of taking and dropping POSIX locks around every transaction.
  // 1 KiB pages for a new database (before WAL mode is set; an existing database keeps its
  // size): every commit appends each page it touched to the WAL whole, about seven for a
  // create, so 4 KiB pages wrote four times the bytes (creates and unlinks 9% faster).
  if (auto s = Exec("PRAGMA page_size=1024; PRAGMA locking_mode=EXCLUSIVE; "
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;");
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
          // The cluster's member list (server/membership.h), restored at start. Not part of
          // the schema version: a database of any version gets it empty when opened.
          // Inodes pinned on this node (user.foreverfs.pin): not replicated, not part of the
          // schema version, like cluster_members.
          "CREATE TABLE IF NOT EXISTS pins(inode INTEGER PRIMARY KEY);"
          "CREATE TABLE IF NOT EXISTS cluster_members(node INTEGER PRIMARY KEY, addr TEXT,"
          " state INTEGER NOT NULL, incarnation INTEGER NOT NULL, unseen_ms INTEGER NOT NULL,"
          " weight INTEGER NOT NULL DEFAULT 1);"
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
  if (auto s = AddClusterMemberWeights(); !s.ok()) return s;
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
      rows.emplace_back(q.Int(0), sql::EncodeManifest(m));
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

// cluster_members had no weight column before placement weights (--capacity): added, every
// member weighing 1 until it is heard from again. The table is outside the schema version (see
// Init), so its columns are checked instead: a build without the column still opens the
// database and writes its rows (the column's default fills in), so no version bump stops a
// downgrade.
Status NamespaceDb::AddClusterMemberWeights() {
  {
    Stmt q(db_, "SELECT count(*) FROM pragma_table_info('cluster_members') WHERE name = 'weight'");
    if (q.Step() == SQLITE_ROW && q.Int(0) > 0) return Ok();
  }
  spdlog::info("{}: adding placement weights to the member list", file_);
  if (auto s = Exec("ALTER TABLE cluster_members ADD COLUMN weight INTEGER NOT NULL DEFAULT 1");
      !s.ok()) {
    return Err(s.code(), "adding the weight column to {}: {}", file_, s.message());
  }
  return Ok();
}

}  // namespace foreverfs::server
