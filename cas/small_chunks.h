#pragma once
// SmallChunks: the disk store's blobs of at most kMaxSmallBlob bytes, kept as rows of one
// SQLite database (DATA/chunks/small.db) instead of one file each. Internal to cas/: only
// disk_store.cpp uses it.
//
// Why: a file per chunk costs an inode, a directory entry and a rename for every small file
// written (tar -x, git checkout), and that inode allocation was most of the time of a small
// file's close: 311-522 us with a chunk file on this VM's ext4, 95 us with no chunk written at
// all. Git packs its loose objects, and object stores keep small objects inline, likewise.
//
// Puts are written behind. A Put appends the blob to a log file beside the database
// (small.db-log.<generation>, one pwritev of a 44-byte header and the blob) and keeps it in
// memory; a committer thread inserts what the logs hold in one transaction once the oldest is
// kGroupAge old (or kGroupChunks or kGroupBytes are waiting), then deletes those logs. So the
// caller (a file's close) pays one write instead of an SQLite transaction (its B-tree work and
// a WAL frame per page, 37 us of a 16 KiB small file's 133 us close), and the insert runs on
// the other core while the caller goes on. Reads find a blob in memory until it is a row.
//
// Durability is unchanged: a Put that returned survives kill -9 at once (its record is in the
// log, a file the kernel holds; Open replays every log into the database before anything else
// reads it), and a power failure after the store's Sync (a syncfs of the file system, which
// writes the logs with everything else; a group's commit fsyncs the write-ahead log before it
// deletes the logs it emptied). Ids name content, so a log replayed late (its deletion lost
// with the power) brings back the same bytes, or a blob removed since, which is unreferenced
// and goes at the next garbage collection. A record is "FFS1", the blob's
// length (u32, big-endian), the id, a CRC-32 of those and the blob (u32, big-endian), then the
// blob; replay stops at the first record that is short or fails its CRC (a torn tail, never
// made durable), logs how many bytes it dropped, and goes on with the next log.
//
// Remove and ForEach commit what is waiting first: a blob removed while its record is still in a
// log would otherwise come back at the next replay. Usage counts rows (committed puts).
//
// Memory: at most kMaxWaitingBytes of blobs wait (a Put past that commits before it returns).
//
// Thread-safe. Locks (doc/threads.md): commit_mu_ (one commit at a time) before mu_ (the log and
// the waiting blobs) or db_mu_ (the connection); mu_ and db_mu_ are never held together.

#include <sqlite3.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "base/bytes.h"
#include "base/fd.h"
#include "base/mutex.h"
#include "base/status.h"
#include "cas/chunk_store.h"

namespace foreverfs::cas {

class SmallChunks {
 public:
  // Opens (or creates) the database at `path` and replays the logs beside it.
  static Result<std::unique_ptr<SmallChunks>> Open(const std::filesystem::path& path);
  // Commits what waits and deletes the logs (kept if the commit fails: the next Open replays).
  ~SmallChunks();
  SmallChunks(const SmallChunks&) = delete;
  SmallChunks& operator=(const SmallChunks&) = delete;

  // A group commits once its first blob waited this long, or this many blobs or bytes wait.
  static constexpr std::chrono::milliseconds kGroupAge{10};
  static constexpr std::size_t kGroupChunks = 512;
  static constexpr std::size_t kGroupBytes = 4 << 20;
  // Waiting blobs beyond this many bytes make Put commit before it returns.
  static constexpr std::size_t kMaxWaitingBytes = 16 << 20;

  // Stores `data` under `id` (at most kMaxSmallBlob bytes); a row of another size is replaced.
  Status Put(const ChunkId& id, ByteSpan data);
  // kNotFound if absent.
  Result<Bytes> Get(const ChunkId& id);
  // Up to out.size() bytes from `offset`; kNotFound if absent.
  Result<Extent> ReadAt(const ChunkId& id, std::size_t offset, MutableByteSpan out);
  bool Has(const ChunkId& id);
  // True if a row was removed.
  Result<bool> Remove(const ChunkId& id);
  // Every id, in order, a batch at a time; `fn` runs without the lock held (it may call back).
  Status ForEach(const std::function<void(const ChunkId&)>& fn);
  // Rows and their bytes (counted at Open, then kept up to date), after committing what waits.
  ChunkStore::Packed Usage();
  // Inserts every waiting blob into the database and deletes the logs that held them.
  Status Commit();
  // Before fork(2): commits and ends the committer thread (the next Put starts it again).
  Status BeforeFork();

  // Tests only: the destructor then neither commits nor deletes the logs, as after kill -9.
  void AbandonForTest();
  // Tests only: blobs waiting in memory (and in the logs), and their bytes.
  std::pair<std::size_t, std::size_t> WaitingForTest();

 private:
  using Blobs = std::map<ChunkId, Bytes>;

  SmallChunks(std::filesystem::path path, sqlite3* db) : path_(std::move(path)), db_(db) {}
  Status Prepare();
  // Counts the rows: once, at Open.
  Status Count();
  // Inserts the records of every log left by an earlier run, then deletes those logs.
  Status Replay();
  // Reads one log's whole records into `out`.
  Status ReadLog(const std::filesystem::path& log, Blobs& out);
  Status Error(int rc, std::string_view what, const ChunkId* id = nullptr) REQUIRES(db_mu_);
  // One row, as Put promises: new, or replacing a row of another size.
  Status InsertLocked(const ChunkId& id, ByteSpan data) REQUIRES(db_mu_);
  // Every blob of `blobs` in one transaction.
  Status InsertAll(const Blobs& blobs) EXCLUDES(mu_, db_mu_);
  std::filesystem::path LogPath(std::uint64_t generation) const;
  // The blob waiting under `id`, if any.
  const Bytes* FindWaitingLocked(const ChunkId& id) const REQUIRES(mu_);
  void EnsureCommitterLocked() REQUIRES(mu_);
  // Creates the log the next Put will need once the current one closes, so that a Put seldom
  // pays for a file's creation (an ext4 create was as costly as a small file's whole log
  // write): the committer calls it before each commit. The first Put after Open still creates
  // one, as does a Put after a commit made on another thread (Remove, ForEach, Usage, a Put
  // that found too much waiting) before the committer's next turn.
  void MakeNextLog() EXCLUDES(commit_mu_, mu_);
  // The number the next log will have: the current one's plus one, or the current one's if
  // no log is open (Put then opens it).
  std::uint64_t NextLogNumberLocked() const REQUIRES(mu_);
  void CommitLoop() EXCLUDES(mu_);
  // Ends the committer thread (stop_ stays set until the caller clears it).
  void StopCommitter() EXCLUDES(mu_);

  const std::filesystem::path path_;

  Mutex commit_mu_ ACQUIRED_BEFORE(mu_, db_mu_);

  Mutex mu_;
  UniqueFd log_ GUARDED_BY(mu_);                  // the log Puts append to (opened by the first)
  std::uint64_t generation_ GUARDED_BY(mu_) = 0;  // its number
  std::uint64_t log_size_ GUARDED_BY(mu_) = 0;
  // The empty log NextLogNumberLocked() names, made ahead by the committer (MakeNextLog).
  UniqueFd next_log_ GUARDED_BY(mu_);
  std::vector<std::uint64_t> closed_logs_ GUARDED_BY(mu_);  // full, not yet committed
  Blobs waiting_ GUARDED_BY(mu_);                           // in the open log
  std::size_t waiting_bytes_ GUARDED_BY(mu_) = 0;
  std::chrono::steady_clock::time_point first_waiting_ GUARDED_BY(mu_);
  // Taken by the commit under way (or left by one that failed, for the next).
  std::shared_ptr<Blobs> committing_ GUARDED_BY(mu_);
  std::size_t committing_bytes_ GUARDED_BY(mu_) = 0;
  // Logs committed but not deleted (an unlink failed): deleted by the next commit first.
  std::vector<std::uint64_t> stale_logs_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  bool abandoned_ GUARDED_BY(mu_) = false;
  std::condition_variable_any cv_;         // a blob waits, or stop_
  std::thread committer_ GUARDED_BY(mu_);  // commits groups (started by the first Put)

  Mutex db_mu_;
  sqlite3* db_ GUARDED_BY(db_mu_);
  sqlite3_stmt* put_ GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* get_ GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* read_ GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* has_ GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* remove_ GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* list_ GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* size_ GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* replace_ GUARDED_BY(db_mu_) = nullptr;
  ChunkStore::Packed usage_ GUARDED_BY(db_mu_);
  std::uint64_t removed_ GUARDED_BY(db_mu_) = 0;  // rows removed since the last vacuum step
};

}  // namespace foreverfs::cas
