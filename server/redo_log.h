#pragma once
// The namespace's redo log (meta.db-redo beside the database): local change sets appended one
// write(2) each before the change is acknowledged, while the SQLite transaction that holds
// them stays open and commits in groups (NamespaceDb, doc/namespace.md "Redo log"). A write
// reaching the kernel survives kill -9 of the daemon as a WAL append does; a power failure
// keeps what reached the disk (fsync(2) commits and syncs, as before).
//
// A record: "FFR1", the frame's length (u32, big-endian), the first 8 bytes of the frame's
// SHA-256, and the frame: a net::Changes (the feed's codec) holding the change set. Reading
// stops at the first record that is short or fails its checksum: a torn tail, never
// acknowledged. A whole record that does not decode is an error (it was acknowledged).
//
// Not thread-safe: NamespaceDb calls it with its mutex held.

#include <cstdint>
#include <filesystem>
#include <functional>

#include "base/fd.h"
#include "base/status.h"
#include "server/namespace_merge.h"

namespace foreverfs::server {

class RedoLog {
 public:
  // Opens or creates the log at `path`; its records stay for Replay.
  static Result<RedoLog> Open(const std::filesystem::path& path);

  // About the bytes a change set takes in the log (its record), to choose between logging it and
  // committing it at once.
  static std::size_t RecordSize(const ChangeSet& changes);

  // Appends one record with a single write; on failure the log is as before (or the error
  // says it could not be put back).
  Status Append(const ChangeSet& changes);

  struct ReplayStats {
    std::size_t records = 0;
    std::uint64_t dropped_bytes = 0;  // a torn tail after the last whole record
  };
  // Calls `fn` with each whole record's change set, in order; stops at the first error `fn`
  // returns. Reads one record at a time.
  Result<ReplayStats> Replay(const std::function<Status(const ChangeSet&)>& fn);

  // Empties the log (after the records it held were committed).
  Status Clear();
  // Takes back the records after `size` (a size() from before they were appended).
  Status TruncateTo(std::uint64_t size);

  std::uint64_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  RedoLog(std::filesystem::path path, UniqueFd fd, std::uint64_t size)
      : path_(std::move(path)), fd_(std::move(fd)), size_(size) {}
  std::filesystem::path path_;
  UniqueFd fd_;
  std::uint64_t size_ = 0;  // where the next record goes
};

}  // namespace foreverfs::server
