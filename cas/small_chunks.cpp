#include "cas/small_chunks.h"

#include <fmt/format.h>

#include <cstring>
#include <string_view>

namespace foreverfs::cas {
namespace {

// Freed pages are given back to the file system this many removals at a time (auto_vacuum is
// INCREMENTAL: a removal itself only frees pages for reuse).
constexpr std::uint64_t kVacuumEvery = 1024;
// The write-ahead log is folded into the database (with an fsync of each) every this many
// pages: 16 MiB, about a thousand small files, instead of SQLite's default 4 MiB.
constexpr int kCheckpointPages = 4096;

// Resets a statement (and its bindings) when it goes out of scope.
class Use {
 public:
  explicit Use(sqlite3_stmt* st) : st_(st) {}
  ~Use() {
    sqlite3_reset(st_);
    sqlite3_clear_bindings(st_);
  }
  Use(const Use&) = delete;
  Use& operator=(const Use&) = delete;
  sqlite3_stmt* operator*() const { return st_; }

 private:
  sqlite3_stmt* st_;
};

int BindId(sqlite3_stmt* st, const ChunkId& id) {
  return sqlite3_bind_blob(st, 1, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
}

}  // namespace

Result<std::unique_ptr<SmallChunks>> SmallChunks::Open(const std::filesystem::path& path) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(
      path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    Status s(rc == SQLITE_CANTOPEN ? Code::kIOError : Code::kCorruption,
             fmt::format("opening the small-chunk database '{}': {}", path.string(),
                         db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
    sqlite3_close(db);
    return s;
  }
  std::unique_ptr<SmallChunks> store(new SmallChunks(path, db));
  if (Status s = store->Prepare(); !s.ok()) return s;
  if (Status s = store->Count(); !s.ok()) return s;
  return store;
}

SmallChunks::~SmallChunks() {
  MutexLock lock(mu_);
  for (sqlite3_stmt* st : {put_, get_, read_, has_, remove_, list_, size_, replace_}) {
    sqlite3_finalize(st);
  }
  sqlite3_close(db_);
}

Status SmallChunks::Prepare() {
  MutexLock lock(mu_);
  // Only this process opens it: no shared-memory index and no file locks per statement
  // (fcntl calls were 19 us a put). First, before anything reads the database: a WAL opened
  // before it would keep its index in a -shm file.
  if (int rc = sqlite3_exec(db_, "PRAGMA locking_mode=EXCLUSIVE", nullptr, nullptr, nullptr);
      rc != SQLITE_OK) {
    return Error(rc, "setting up");
  }
  // journal_mode answers with the mode it is in: anything but wal means the durability above
  // does not hold.
  {
    sqlite3_stmt* st = nullptr;
    int rc = sqlite3_prepare_v2(db_, "PRAGMA journal_mode=WAL", -1, &st, nullptr);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    const bool wal =
        rc == SQLITE_ROW &&
        std::string_view(reinterpret_cast<const char*>(sqlite3_column_text(st, 0))) == "wal";
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW) return Error(rc, "setting up");
    if (!wal) return Error(SQLITE_ERROR, "turning on write-ahead logging");
  }
  // auto_vacuum only takes effect before the first table is made.
  const char* setup =
      "PRAGMA auto_vacuum=INCREMENTAL;"
      "PRAGMA synchronous=NORMAL;"
      "CREATE TABLE IF NOT EXISTS chunks(id BLOB PRIMARY KEY, data BLOB NOT NULL);";
  if (int rc = sqlite3_exec(db_, setup, nullptr, nullptr, nullptr); rc != SQLITE_OK) {
    return Error(rc, "setting up");
  }
  sqlite3_wal_autocheckpoint(db_, kCheckpointPages);
  const std::pair<sqlite3_stmt**, const char*> statements[] = {
      {&put_, "INSERT OR IGNORE INTO chunks(id, data) VALUES(?1, ?2)"},
      {&size_, "SELECT length(data) FROM chunks WHERE id = ?1"},
      {&replace_, "UPDATE chunks SET data = ?2 WHERE id = ?1"},
      {&get_, "SELECT data FROM chunks WHERE id = ?1"},
      {&read_, "SELECT substr(data, ?2, ?3), length(data) FROM chunks WHERE id = ?1"},
      {&has_, "SELECT 1 FROM chunks WHERE id = ?1"},
      {&remove_, "DELETE FROM chunks WHERE id = ?1 RETURNING length(data)"},
      {&list_, "SELECT id FROM chunks WHERE id > ?1 ORDER BY id LIMIT 4096"},
  };
  for (auto [st, sql] : statements) {
    if (int rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, st, nullptr);
        rc != SQLITE_OK) {
      return Error(rc, "preparing a statement");
    }
  }
  return Ok();
}

Status SmallChunks::Count() {
  MutexLock lock(mu_);
  sqlite3_stmt* st = nullptr;
  // length() of a blob reads the record's header, not the blob.
  int rc =
      sqlite3_prepare_v2(db_, "SELECT count(*), total(length(data)) FROM chunks", -1, &st, nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    usage_.chunks = static_cast<std::uint64_t>(sqlite3_column_int64(st, 0));
    usage_.bytes = static_cast<std::uint64_t>(sqlite3_column_double(st, 1));
  }
  sqlite3_finalize(st);
  return rc == SQLITE_ROW ? Ok() : Error(rc, "counting the rows");
}

ChunkStore::Packed SmallChunks::Usage() {
  MutexLock lock(mu_);
  return usage_;
}

Status SmallChunks::Error(int rc, std::string_view what, const ChunkId* id) {
  const int primary = rc & 0xff;
  const Code code = primary == SQLITE_FULL                                  ? Code::kNoSpace
                    : primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB ? Code::kCorruption
                                                                            : Code::kIOError;
  return Status(code, fmt::format("small-chunk database '{}': {}{}: {}", path_.string(), what,
                                  id ? fmt::format(" chunk {}", Hex(*id)) : std::string(),
                                  sqlite3_errmsg(db_)));
}

Status SmallChunks::Put(const ChunkId& id, ByteSpan data) {
  if (data.size() > kMaxSmallBlob) {
    return Err(Code::kInvalid, "chunk {} of {} bytes is too large for the small-chunk database",
               Hex(id), data.size());
  }
  // A zero-length blob must not bind as NULL (the column is NOT NULL).
  static const std::uint8_t kNone = 0;
  const auto bind = [&](sqlite3_stmt* st) {
    BindId(st, id);
    sqlite3_bind_blob(st, 2, data.empty() ? &kNone : data.data(), static_cast<int>(data.size()),
                      SQLITE_STATIC);
  };
  MutexLock lock(mu_);
  {
    Use st(put_);
    bind(*st);
    if (int rc = sqlite3_step(*st); rc != SQLITE_DONE) return Error(rc, "storing", &id);
  }
  if (sqlite3_changes(db_) == 1) {
    ++usage_.chunks;
    usage_.bytes += data.size();
    return Ok();
  }
  // Present: a row of another size is written again, as a chunk file of another size is.
  std::size_t old = 0;
  {
    Use st(size_);
    BindId(*st, id);
    const int rc = sqlite3_step(*st);
    if (rc != SQLITE_ROW) return Error(rc, "checking", &id);
    old = static_cast<std::size_t>(sqlite3_column_int64(*st, 0));
  }
  if (old == data.size()) return Ok();
  Use st(replace_);
  bind(*st);
  if (int rc = sqlite3_step(*st); rc != SQLITE_DONE) return Error(rc, "storing", &id);
  usage_.bytes = usage_.bytes - old + data.size();
  return Ok();
}

Result<Bytes> SmallChunks::Get(const ChunkId& id) {
  MutexLock lock(mu_);
  Use st(get_);
  BindId(*st, id);
  const int rc = sqlite3_step(*st);
  if (rc == SQLITE_DONE) return Err(Code::kNotFound, "chunk {} not found", Hex(id));
  if (rc != SQLITE_ROW) return Error(rc, "reading", &id);
  const auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(*st, 0));
  const int n = sqlite3_column_bytes(*st, 0);
  return Bytes(p, p + n);
}

Result<Extent> SmallChunks::ReadAt(const ChunkId& id, std::size_t offset, MutableByteSpan out) {
  MutexLock lock(mu_);
  if (out.empty()) {
    // Only the size (a put's "already stored?"): length() reads the row's header, not the
    // blob, where substr() would read every overflow page of it even for zero bytes.
    Use st(size_);
    BindId(*st, id);
    const int rc = sqlite3_step(*st);
    if (rc == SQLITE_DONE) return Err(Code::kNotFound, "chunk {} not found", Hex(id));
    if (rc != SQLITE_ROW) return Error(rc, "reading", &id);
    return Extent{0, static_cast<std::size_t>(sqlite3_column_int64(*st, 0))};
  }
  Use st(read_);
  BindId(*st, id);
  // substr counts from 1; past the end it gives an empty blob.
  const std::size_t from = std::min<std::size_t>(offset, kMaxSmallBlob + 1);
  const std::size_t want = std::min<std::size_t>(out.size(), kMaxSmallBlob + 1);
  sqlite3_bind_int64(*st, 2, static_cast<sqlite3_int64>(from) + 1);
  sqlite3_bind_int64(*st, 3, static_cast<sqlite3_int64>(want));
  const int rc = sqlite3_step(*st);
  if (rc == SQLITE_DONE) return Err(Code::kNotFound, "chunk {} not found", Hex(id));
  if (rc != SQLITE_ROW) return Error(rc, "reading", &id);
  Extent e;
  e.total = static_cast<std::size_t>(sqlite3_column_int64(*st, 1));
  const void* p = sqlite3_column_blob(*st, 0);
  e.n = std::min<std::size_t>(static_cast<std::size_t>(sqlite3_column_bytes(*st, 0)), out.size());
  if (e.n > 0) std::memcpy(out.data(), p, e.n);
  return e;
}

bool SmallChunks::Has(const ChunkId& id) {
  MutexLock lock(mu_);
  Use st(has_);
  BindId(*st, id);
  return sqlite3_step(*st) == SQLITE_ROW;
}

Result<bool> SmallChunks::Remove(const ChunkId& id) {
  MutexLock lock(mu_);
  {
    Use st(remove_);
    BindId(*st, id);
    int rc = sqlite3_step(*st);
    if (rc == SQLITE_DONE) return false;  // absent
    if (rc != SQLITE_ROW) return Error(rc, "removing", &id);
    const auto old = static_cast<std::uint64_t>(sqlite3_column_int64(*st, 0));
    if (rc = sqlite3_step(*st); rc != SQLITE_DONE) return Error(rc, "removing", &id);
    usage_.chunks -= 1;
    usage_.bytes -= old;
  }
  if (++removed_ >= kVacuumEvery) {
    removed_ = 0;
    // Best effort: the pages stay free for reuse if this fails.
    sqlite3_exec(db_, "PRAGMA incremental_vacuum", nullptr, nullptr, nullptr);
  }
  return true;
}

Status SmallChunks::ForEach(const std::function<void(const ChunkId&)>& fn) {
  static const std::uint8_t kNone = 0;
  Bytes after;  // the last key listed; the empty blob sorts before every other
  for (;;) {
    std::vector<ChunkId> batch;
    bool more = false;
    {
      MutexLock lock(mu_);
      Use st(list_);
      // Copied (TRANSIENT): `after` changes while the statement runs.
      sqlite3_bind_blob(*st, 1, after.empty() ? &kNone : after.data(),
                        static_cast<int>(after.size()), SQLITE_TRANSIENT);
      int rc;
      while ((rc = sqlite3_step(*st)) == SQLITE_ROW) {
        const auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(*st, 0));
        const int n = sqlite3_column_bytes(*st, 0);
        after.assign(p, p + n);
        more = true;
        ChunkId id{};
        if (n != static_cast<int>(id.size())) continue;  // not an id: skipped, as foreign files
        std::memcpy(id.data(), p, id.size());
        batch.push_back(id);
      }
      if (rc != SQLITE_DONE) return Error(rc, "listing");
    }
    if (!more) return Ok();
    for (const ChunkId& id : batch) fn(id);
  }
}

}  // namespace foreverfs::cas
