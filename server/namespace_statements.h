#pragma once
// SQLite statements of the namespace database (namespace_db.cpp, namespace_schema.cpp,
// namespace_feed.cpp), and the columns records are kept in. Internal to server/: only the
// NamespaceDb files include it.

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/bytes.h"
#include "base/mutex.h"
#include "base/status.h"
#include "model/records.h"

namespace foreverfs::server::sql {

// SQLite keeps signed 64-bit integers; ids, sequence numbers and clocks are unsigned.
inline std::int64_t S(std::uint64_t v) { return static_cast<std::int64_t>(v); }
inline std::uint64_t U(std::int64_t v) { return static_cast<std::uint64_t>(v); }

// Prepared statements are kept per connection and SQL text and reused: preparing one costs
// more than running it (a chmod used to spend most of its 120 us in the SQL parser). A
// statement in use is taken out of the cache, so the same SQL may run nested.
class StmtCache {
 public:
  static sqlite3_stmt* Take(sqlite3* db, const char* sql, int& rc) {
    {
      MutexLock lock(mu_);
      auto it = free_.find(KeyView{db, sql});
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
    const KeyView key{db, sqlite3_sql(st)};
    auto it = free_.find(key);
    if (it == free_.end()) it = free_.emplace(Key{db, std::string(key.sql)}, 0).first;
    auto& list = it->second;
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
      if (it->first.db == db) {
        for (auto* st : it->second) sqlite3_finalize(st);
        it = free_.erase(it);
      } else {
        ++it;
      }
    }
  }

 private:
  // Looked up by a view of the SQL text: no string is built for a lookup (a create runs
  // about twenty statements).
  struct Key {
    sqlite3* db;
    std::string sql;
  };
  struct KeyView {
    sqlite3* db;
    std::string_view sql;
  };
  struct KeyHash {
    using is_transparent = void;
    std::size_t operator()(const KeyView& k) const {
      return std::hash<std::string_view>{}(k.sql) ^ std::hash<const void*>{}(k.db);
    }
    std::size_t operator()(const Key& k) const { return (*this)(KeyView{k.db, k.sql}); }
  };
  struct KeyEq {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      return a.db == b.db && std::string_view(a.sql) == std::string_view(b.sql);
    }
  };
  static inline Mutex mu_;  // leaf (doc/threads.md: the statement cache's mutex)
  static inline std::unordered_map<Key, std::vector<sqlite3_stmt*>, KeyHash, KeyEq> free_;
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

// The columns of the inodes table, in the order ReadInode expects.
inline constexpr const char* kInodeColumns =
    "id, kind, mode, uid, gid, size, mtime, ctime, hlc, node, deleted, target, manifest, seq, "
    "atime, xattrs, clock, rdev";
// The columns of the dentries table, in the order ReadDentry expects.
inline constexpr const char* kDentryColumns =
    "parent, name, child, hlc, node, deleted, rep_hlc, rep_node";

// A manifest in one column: (u64 chunk index, 32-byte id) for every chunk holding data, by
// index (native byte order, as the other blobs of this file).
Bytes EncodeManifest(const model::ChunkMap& m);
model::ChunkMap DecodeManifest(ByteSpan blob);
// Extended attributes in one column: u16 name length, name, u32 value length, value; repeated.
Bytes EncodeXattrs(const std::vector<model::Xattr>& xattrs);
std::vector<model::Xattr> DecodeXattrs(ByteSpan blob);
// A content clock in one column: (u64 node, u64 hlc) per entry.
Bytes EncodeClock(const std::vector<model::ClockEntry>& clock);
// A row of kInodeColumns / kDentryColumns (from column 0).
model::InodeRecord ReadInode(Stmt& s);
model::DentryRecord ReadDentry(Stmt& s);

}  // namespace foreverfs::server::sql
