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
// Durability is the store's: a put is atomic (one SQLite transaction) and durable after the
// store's Sync (a syncfs of the file system, which writes the database's write-ahead log with
// everything else; synchronous=NORMAL keeps the database itself from corruption by a power
// failure at any moment, and fsyncs only at checkpoints).
//
// Thread-safe: one connection, one mutex (each call is one short statement).

#include <sqlite3.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <vector>

#include "base/bytes.h"
#include "base/mutex.h"
#include "base/status.h"
#include "cas/chunk_store.h"

namespace foreverfs::cas {

class SmallChunks {
 public:
  static Result<std::unique_ptr<SmallChunks>> Open(const std::filesystem::path& path);
  ~SmallChunks();
  SmallChunks(const SmallChunks&) = delete;
  SmallChunks& operator=(const SmallChunks&) = delete;

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
  // Rows and their bytes (counted at Open, then kept up to date).
  ChunkStore::Packed Usage();

 private:
  SmallChunks(std::filesystem::path path, sqlite3* db) : path_(std::move(path)), db_(db) {}
  Status Prepare();
  // Counts the rows: once, at Open.
  Status Count();
  Status Error(int rc, std::string_view what, const ChunkId* id = nullptr) REQUIRES(mu_);

  const std::filesystem::path path_;
  Mutex mu_;
  sqlite3* db_ GUARDED_BY(mu_);
  sqlite3_stmt* put_ GUARDED_BY(mu_) = nullptr;
  sqlite3_stmt* get_ GUARDED_BY(mu_) = nullptr;
  sqlite3_stmt* read_ GUARDED_BY(mu_) = nullptr;
  sqlite3_stmt* has_ GUARDED_BY(mu_) = nullptr;
  sqlite3_stmt* remove_ GUARDED_BY(mu_) = nullptr;
  sqlite3_stmt* list_ GUARDED_BY(mu_) = nullptr;
  sqlite3_stmt* size_ GUARDED_BY(mu_) = nullptr;
  sqlite3_stmt* replace_ GUARDED_BY(mu_) = nullptr;
  ChunkStore::Packed usage_ GUARDED_BY(mu_);
  std::uint64_t removed_ GUARDED_BY(mu_) = 0;  // rows removed since the last vacuum step
};

}  // namespace foreverfs::cas
