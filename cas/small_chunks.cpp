#include "cas/small_chunks.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <string_view>
#include <system_error>

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

// A log record: magic, length, id, CRC-32 of (length, id, blob), then the blob (small_chunks.h).
constexpr char kMagic[4] = {'F', 'F', 'S', '1'};
constexpr std::size_t kHeader = 4 + 4 + std::tuple_size_v<ChunkId> + 4;
// A log's name: the database's, then this, then its generation (decimal).
constexpr std::string_view kLogInfix = "-log.";

void PutU32(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}

std::uint32_t GetU32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

// CRC-32 (zlib) of the length and id in `header` and of `data`.
std::uint32_t RecordCrc(const std::uint8_t* header, ByteSpan data) {
  uLong crc = crc32(0L, header + 4, 4 + std::tuple_size_v<ChunkId>);
  // zlib takes a uInt length: blobs are at most kMaxSmallBlob bytes. Not called for an empty
  // blob: crc32 with a null buffer returns the initial value, not the CRC so far.
  if (!data.empty()) crc = crc32(crc, data.data(), static_cast<uInt>(data.size()));
  return static_cast<std::uint32_t>(crc);
}

// Reads exactly out.size() bytes unless the file ends first; the count read, or -1 (errno).
ssize_t ReadFull(int fd, std::uint8_t* out, std::size_t n) {
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, out + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    got += static_cast<std::size_t>(r);
  }
  return static_cast<ssize_t>(got);
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
  if (Status s = store->Replay(); !s.ok()) {
    MutexLock lock(store->mu_);
    store->abandoned_ = true;  // the logs stay for the next Open
    return s;
  }
  return store;
}

SmallChunks::~SmallChunks() {
  StopCommitter();
  bool abandoned = false;
  {
    MutexLock lock(mu_);
    abandoned = abandoned_;
  }
  if (!abandoned) {
    if (Status s = Commit(); !s.ok()) {
      spdlog::error("{}: closing with small chunks not committed (kept in its logs): {}",
                    path_.string(), s.message());
    }
    // The log made ahead is empty (the next Open would only delete it).
    MutexLock lock(mu_);
    if (next_log_.valid()) {
      next_log_.reset();
      ::unlink(LogPath(NextLogNumberLocked()).c_str());
    }
  }
  MutexLock lock(db_mu_);
  for (sqlite3_stmt* st : {put_, get_, read_, has_, remove_, list_, size_, replace_}) {
    sqlite3_finalize(st);
  }
  sqlite3_close(db_);
}

std::filesystem::path SmallChunks::LogPath(std::uint64_t generation) const {
  return std::filesystem::path(path_.string() + std::string(kLogInfix) +
                               std::to_string(generation));
}

Status SmallChunks::Replay() {
  namespace fs = std::filesystem;
  const std::string prefix = path_.filename().string() + std::string(kLogInfix);
  std::vector<std::uint64_t> generations;
  std::error_code ec;
  for (fs::directory_iterator it(path_.parent_path(), ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.starts_with(prefix)) continue;
    std::uint64_t g = 0;
    const char* first = name.data() + prefix.size();
    const char* last = name.data() + name.size();
    auto [ptr, err] = std::from_chars(first, last, g);
    // Not ours unless it is exactly the name LogPath gives (no sign, no leading zeros).
    if (err != std::errc() || ptr != last || name != LogPath(g).filename().string()) continue;
    generations.push_back(g);
  }
  if (ec) {
    return ErrnoStatus(ec.value(), fmt::format("listing '{}'", path_.parent_path().string()));
  }
  std::sort(generations.begin(), generations.end());
  MutexLock commit(commit_mu_);
  if (!generations.empty()) {
    Blobs blobs;  // later records of one id replace earlier ones, as later Puts would
    for (std::uint64_t g : generations) {
      if (Status s = ReadLog(LogPath(g), blobs); !s.ok()) return s;
    }
    if (Status s = InsertAll(blobs); !s.ok()) {
      return Err(s.code(), "replaying the logs of '{}': {}", path_.string(), s.message());
    }
    spdlog::info("{}: {} small chunks replayed from {} log(s)", path_.string(), blobs.size(),
                 generations.size());
    for (std::uint64_t g : generations) {
      if (::unlink(LogPath(g).c_str()) != 0 && errno != ENOENT) {
        return ErrnoStatus(errno, fmt::format("removing '{}'", LogPath(g).string()));
      }
    }
  }
  MutexLock lock(mu_);
  // Past the last replayed (all are deleted by now, so wrapping from 2^64-1 to 0 is harmless).
  generation_ = generations.empty() ? 0 : generations.back() + 1;
  return Ok();
}

Status SmallChunks::ReadLog(const std::filesystem::path& log, Blobs& out) {
  UniqueFd fd(::open(log.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(errno, fmt::format("opening '{}'", log.string()));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoStatus(errno, fmt::format("checking '{}'", log.string()));
  }
  const auto total = static_cast<std::uint64_t>(st.st_size);
  std::uint64_t at = 0;
  std::uint8_t header[kHeader];
  Bytes blob;
  for (;;) {
    const ssize_t h = ReadFull(fd.get(), header, kHeader);
    if (h < 0) return ErrnoStatus(errno, fmt::format("reading '{}'", log.string()));
    if (h == 0) return Ok();
    if (static_cast<std::size_t>(h) < kHeader || std::memcmp(header, kMagic, 4) != 0) break;
    const std::uint32_t len = GetU32(header + 4);
    if (len > kMaxSmallBlob) break;
    blob.resize(len);
    const ssize_t b = ReadFull(fd.get(), blob.data(), len);
    if (b < 0) return ErrnoStatus(errno, fmt::format("reading '{}'", log.string()));
    if (static_cast<std::size_t>(b) < len || RecordCrc(header, blob) != GetU32(header + 40)) break;
    ChunkId id{};
    std::memcpy(id.data(), header + 8, id.size());
    out.insert_or_assign(id, blob);
    at += kHeader + len;
  }
  // A torn tail: never acknowledged as durable (a Put returned after its write, and a record
  // the kernel took is read back whole unless the machine lost power before a Sync).
  spdlog::warn("{}: dropped {} bytes after its last whole record (a write cut short)", log.string(),
               total - at);
  return Ok();
}

Status SmallChunks::Prepare() {
  MutexLock lock(db_mu_);
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
  // auto_vacuum only takes effect before the first table is made. synchronous=NORMAL for
  // removals; a group's commit runs with FULL (InsertAll).
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
  MutexLock lock(db_mu_);
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
  if (Status s = Commit(); !s.ok()) {
    spdlog::warn("{}: counting: {}", path_.string(), s.message());
  }
  MutexLock lock(db_mu_);
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

Status SmallChunks::InsertLocked(const ChunkId& id, ByteSpan data) {
  // A zero-length blob must not bind as NULL (the column is NOT NULL).
  static const std::uint8_t kNone = 0;
  const auto bind = [&](sqlite3_stmt* st) {
    BindId(st, id);
    sqlite3_bind_blob(st, 2, data.empty() ? &kNone : data.data(), static_cast<int>(data.size()),
                      SQLITE_STATIC);
  };
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

Status SmallChunks::InsertAll(const Blobs& blobs) {
  if (blobs.empty()) return Ok();
  MutexLock lock(db_mu_);
  // synchronous=FULL for this commit: it fsyncs the write-ahead log before the logs it emptied
  // are deleted, so that a power failure after a Sync never finds a blob in neither (the commit
  // overwrites WAL blocks that the file system may write after the deletion). One fsync per
  // group, on the committer thread; removals (autocommit) stay NORMAL.
  if (int rc = sqlite3_exec(db_, "PRAGMA synchronous=FULL; BEGIN", nullptr, nullptr, nullptr);
      rc != SQLITE_OK) {
    sqlite3_exec(db_, "PRAGMA synchronous=NORMAL", nullptr, nullptr, nullptr);
    return Error(rc, "beginning a commit");
  }
  const ChunkStore::Packed before = usage_;
  Status s;
  for (const auto& [id, blob] : blobs) {
    if (s = InsertLocked(id, blob); !s.ok()) break;
  }
  if (s.ok()) {
    if (int rc = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr); rc != SQLITE_OK) {
      s = Error(rc, fmt::format("committing {} chunks", blobs.size()));
    }
  }
  if (!s.ok()) {
    // Every blob stays waiting (and in its log) for the next commit.
    if (!sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    usage_ = before;
  }
  sqlite3_exec(db_, "PRAGMA synchronous=NORMAL", nullptr, nullptr, nullptr);
  return s;
}

Status SmallChunks::Put(const ChunkId& id, ByteSpan data) {
  if (data.size() > kMaxSmallBlob) {
    return Err(Code::kInvalid, "chunk {} of {} bytes is too large for the small-chunk database",
               Hex(id), data.size());
  }
  bool commit_now = false;
  // Allocated before the record is written: once it is, nothing may throw before the blob
  // waits (a reader would find no blob, or a wrong one, for an acknowledged Put).
  Bytes copy(data.begin(), data.end());
  {
    MutexLock lock(mu_);
    if (const Bytes* w = FindWaitingLocked(id); w && w->size() == data.size()) return Ok();
    auto [it, inserted] = waiting_.try_emplace(id);
    // Taken back if the record cannot be written.
    const auto undo = [&, it = it, inserted = inserted]() REQUIRES(mu_) {
      if (inserted) waiting_.erase(it);
    };
    if (!log_.valid() && next_log_.valid()) {
      log_ = std::move(next_log_);  // made ahead as number generation_ (NextLogNumberLocked)
      log_size_ = 0;
    }
    if (!log_.valid()) {
      const auto path = LogPath(generation_);
      log_.reset(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
      if (!log_.valid()) {
        const int err = errno;
        undo();
        return ErrnoStatus(err, fmt::format("creating '{}'", path.string()));
      }
      log_size_ = 0;
    }
    std::uint8_t header[kHeader];
    std::memcpy(header, kMagic, 4);
    PutU32(header + 4, static_cast<std::uint32_t>(data.size()));
    std::memcpy(header + 8, id.data(), id.size());
    PutU32(header + 40, RecordCrc(header, data));
    iovec iov[2] = {{header, kHeader}, {const_cast<std::uint8_t*>(data.data()), data.size()}};
    const std::size_t want = kHeader + data.size();
    const ssize_t n =
        ::pwritev(log_.get(), iov, data.empty() ? 1 : 2, static_cast<off_t>(log_size_));
    if (n < 0 || static_cast<std::size_t>(n) != want) {
      const int err = n < 0 ? errno : ENOSPC;  // a short write: the disk filled
      const auto path = LogPath(generation_);
      if (::ftruncate(log_.get(), static_cast<off_t>(log_size_)) != 0) {
        // The partial record stays: it ends this log (replay stops there), and the next Put
        // starts another.
        log_.reset();
        closed_logs_.push_back(generation_++);
      }
      undo();
      return ErrnoStatus(err, fmt::format("writing chunk {} to '{}'", Hex(id), path.string()));
    }
    log_size_ += want;
    if (inserted && waiting_.size() == 1) first_waiting_ = std::chrono::steady_clock::now();
    waiting_bytes_ = waiting_bytes_ - it->second.size() + copy.size();
    it->second.swap(copy);
    EnsureCommitterLocked();
    // The committer sleeps until a group begins (its age counts from here) or fills up.
    if (waiting_.size() == 1 || waiting_.size() >= kGroupChunks || waiting_bytes_ >= kGroupBytes) {
      cv_.notify_all();
    }
    commit_now = waiting_bytes_ + committing_bytes_ >= kMaxWaitingBytes;
  }
  // The committer is behind (or failing): this Put waits for a commit, so memory stays bounded
  // and a disk that filled up reaches the writer as an error.
  if (commit_now) return Commit();
  return Ok();
}

const Bytes* SmallChunks::FindWaitingLocked(const ChunkId& id) const {
  if (auto it = waiting_.find(id); it != waiting_.end()) return &it->second;
  if (committing_) {
    if (auto it = committing_->find(id); it != committing_->end()) return &it->second;
  }
  return nullptr;
}

Status SmallChunks::Commit() {
  MutexLock commit(commit_mu_);
  std::shared_ptr<Blobs> batch;
  std::vector<std::uint64_t> logs;
  {
    MutexLock lock(mu_);
    if (waiting_.empty() && !committing_ && stale_logs_.empty()) return Ok();
    // What a failed commit left goes again, with what waited since (the newer of one id wins:
    // merge leaves a key already present in the source). Nodes move: nothing allocates once
    // the first blob has left waiting_, so no exception can drop blobs whose log then goes.
    auto merged = std::make_shared<Blobs>();
    merged->merge(waiting_);
    if (committing_) merged->merge(*committing_);
    std::size_t bytes = 0;
    for (const auto& [id, blob] : *merged) bytes += blob.size();
    waiting_.clear();
    waiting_bytes_ = 0;
    committing_bytes_ = bytes;
    batch = merged;
    committing_ = std::move(merged);
    // Later Puts go to a new log; this one goes once its blobs are rows.
    if (log_.valid()) {
      log_.reset();
      closed_logs_.push_back(generation_++);
    }
    logs = closed_logs_;
  }
  if (Status s = InsertAll(*batch); !s.ok()) return s;
  std::vector<std::uint64_t> stale;
  {
    MutexLock lock(mu_);
    committing_.reset();
    committing_bytes_ = 0;
    closed_logs_.erase(closed_logs_.begin(),
                       closed_logs_.begin() + static_cast<std::ptrdiff_t>(logs.size()));
    stale.swap(stale_logs_);
  }
  logs.insert(logs.end(), stale.begin(), stale.end());
  // Every blob of these logs is a row now. A log that cannot be deleted is tried again at the
  // next commit, and until then this commit fails (Remove then removes nothing): its records
  // would bring a blob removed since back at the next Open.
  std::vector<std::uint64_t> left;
  int err = 0;
  for (std::uint64_t g : logs) {
    if (::unlink(LogPath(g).c_str()) != 0 && errno != ENOENT) {
      err = errno;
      left.push_back(g);
    }
  }
  if (left.empty()) return Ok();
  {
    MutexLock lock(mu_);
    stale_logs_.insert(stale_logs_.end(), left.begin(), left.end());
  }
  return ErrnoStatus(
      err, fmt::format("removing '{}' (its chunks are rows)", LogPath(left.front()).string()));
}

void SmallChunks::EnsureCommitterLocked() {
  if (!stop_ && !committer_.joinable()) committer_ = std::thread([this] { CommitLoop(); });
}

std::uint64_t SmallChunks::NextLogNumberLocked() const {
  return log_.valid() ? generation_ + 1 : generation_;
}

void SmallChunks::MakeNextLog() {
  // No commit closes and deletes a log meanwhile: the number checked below then changes only
  // if a Put opened that log itself.
  MutexLock commit(commit_mu_);
  std::uint64_t number = 0;
  {
    MutexLock lock(mu_);
    if (next_log_.valid()) return;
    number = NextLogNumberLocked();
  }
  // Outside mu_, so Puts go on meanwhile; O_EXCL, so that if one of them opened this
  // number first (its log failed and closed, or none was open), its records are not truncated.
  const auto path = LogPath(number);
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return;  // the Put that needs it opens it, as without this
  MutexLock lock(mu_);
  // Otherwise a Put opened this number meanwhile (only a Put moves it while commit_mu_ is
  // held): the file is that Put's log and stays.
  if (!next_log_.valid() && NextLogNumberLocked() == number) next_log_ = std::move(fd);
}

void SmallChunks::CommitLoop() {
  for (;;) {
    {
      MutexLock lock(mu_);
      for (;;) {
        if (stop_) return;
        if (committing_ || !stale_logs_.empty()) break;  // a failed commit, tried again
        if (!waiting_.empty()) {
          const auto due = first_waiting_ + kGroupAge;
          if (waiting_.size() >= kGroupChunks || waiting_bytes_ >= kGroupBytes ||
              std::chrono::steady_clock::now() >= due) {
            break;
          }
          cv_.wait_until(mu_, due);
        } else {
          cv_.wait(mu_);
        }
      }
    }
    try {
      MakeNextLog();  // before this commit closes the log
      if (Status s = Commit(); !s.ok()) {
        spdlog::error("{}: committing small chunks: {}; retrying in a second", path_.string(),
                      s.message());
        MutexLock lock(mu_);
        if (!stop_) cv_.wait_for(mu_, std::chrono::seconds(1));
      }
    } catch (const std::exception& e) {
      spdlog::error("{}: committing small chunks: {}; retrying in a second", path_.string(),
                    e.what());
      MutexLock lock(mu_);
      if (!stop_) cv_.wait_for(mu_, std::chrono::seconds(1));
    }
  }
}

void SmallChunks::StopCommitter() {
  std::thread committer;
  {
    MutexLock lock(mu_);
    stop_ = true;
    committer = std::move(committer_);
  }
  cv_.notify_all();
  if (committer.joinable()) committer.join();
}

Status SmallChunks::BeforeFork() {
  StopCommitter();
  Status s = Commit();
  MutexLock lock(mu_);
  stop_ = false;
  return s;
}

void SmallChunks::AbandonForTest() {
  StopCommitter();
  MutexLock lock(mu_);
  abandoned_ = true;
}

std::pair<std::size_t, std::size_t> SmallChunks::WaitingForTest() {
  MutexLock lock(mu_);
  std::pair<std::size_t, std::size_t> out{waiting_.size(), waiting_bytes_};
  if (committing_) out.first += committing_->size();
  out.second += committing_bytes_;
  return out;
}

Result<Bytes> SmallChunks::Get(const ChunkId& id) {
  {
    MutexLock lock(mu_);
    if (const Bytes* w = FindWaitingLocked(id)) return *w;
  }
  MutexLock lock(db_mu_);
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
  {
    MutexLock lock(mu_);
    if (const Bytes* w = FindWaitingLocked(id)) {
      Extent e{0, w->size()};
      if (offset < w->size()) {
        e.n = std::min(out.size(), w->size() - offset);
        if (e.n > 0) std::memcpy(out.data(), w->data() + offset, e.n);
      }
      return e;
    }
  }
  MutexLock lock(db_mu_);
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
  {
    MutexLock lock(mu_);
    if (FindWaitingLocked(id)) return true;
  }
  MutexLock lock(db_mu_);
  Use st(has_);
  BindId(*st, id);
  return sqlite3_step(*st) == SQLITE_ROW;
}

Result<bool> SmallChunks::Remove(const ChunkId& id) {
  // A blob still in a log would come back at the next replay: commit first.
  if (Status s = Commit(); !s.ok()) return s;
  MutexLock lock(db_mu_);
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
  if (Status s = Commit(); !s.ok()) return s;
  static const std::uint8_t kNone = 0;
  Bytes after;  // the last key listed; the empty blob sorts before every other
  for (;;) {
    std::vector<ChunkId> batch;
    bool more = false;
    {
      MutexLock lock(db_mu_);
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
