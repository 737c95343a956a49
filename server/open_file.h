#pragma once
// The state of a file while any handle has it open: a working manifest, a size, and a staging
// file (unlinked O_TMPFILE, so a crash leaves nothing behind) holding the chunks written since
// the last commit, encrypted (see StagingFile). A chunk is copied into staging before a partial
// write touches it (copy-on-write), so a commit only re-reads, hashes and stores the chunks that
// changed. Writes that fill a chunk in order from its start (cp, dd, tar: nearly every write)
// skip staging: they gather in a buffer of one chunk, which is stored in the chunk store as
// soon as it is full, so those bytes are written once, while the file is still being written.
// Thread-safe; all handles of one inode share one OpenFile.

#include <atomic>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "server/content_clock.h"
#include "server/file_server.h"
#include "server/staging_file.h"

namespace foreverfs::server {

class OpenFile {
 public:
  OpenFile(FileServer& fs, const InodeRecord& rec);
  ~OpenFile();

  InodeId id() const { return id_; }
  Result<std::size_t> Read(std::uint64_t offset, MutableByteSpan out);
  // Writes at `offset`, or at the end if `append`. Returns bytes written.
  Result<std::size_t> Write(std::uint64_t offset, ByteSpan data, bool append);
  Status Truncate(std::uint64_t size);
  // Grows the file to `size` (zeros) if it is smaller; never shrinks.
  Status Extend(std::uint64_t size);
  void SetMtime(std::int64_t mtime_ns);
  // Attribute changes to a file with uncommitted writes wait for its commit (tar sets owner,
  // mode and times on every file it writes, before closing it): one namespace commit instead
  // of four. False if the file has no uncommitted writes (the caller commits them itself).
  bool DeferAttrs(const SetAttrRequest& req);
  // True the first time it is called: the first write of a file checks its setuid bits.
  bool TakePrivilegeCheck() { return !privileges_checked_.exchange(true); }
  // Stores dirty chunks and commits a new version of the inode; no-op if nothing changed.
  Status Commit();
  // A peer committed a new version: adopt it unless we have uncommitted writes. Never waits
  // for mu_ (it runs on the event thread, which a reader holding mu_ may be waiting on for a
  // chunk): if the file is busy, the holder adopts the version at its next operation.
  void OnRemoteUpdate(const InodeRecord& rec);
  // Written here and not committed yet.
  bool HasUncommittedWrites() const { return changed_; }
  // Size and mtime as a reader of this file should see them now.
  void Overlay(InodeRecord& rec);
  // The file's attributes as last known here (for a file unlinked while open).
  InodeRecord Snapshot();
  std::vector<cas::ChunkId> Manifest();

 private:
  // Requires mu_: adopts the version OnRemoteUpdate left, if any.
  void AdoptRemote();
  Status EnsureStaging();
  // The sequential buffer (see the top): appends `data` at `in` of chunk `i` if it continues
  // the buffer or may start one there; false if the write must go through staging.
  Result<bool> TryBuffer(std::size_t i, std::size_t in, ByteSpan data, std::uint64_t old_size);
  // Hands the buffered chunk (padded with zeros to its length in the file) to the store queue.
  Status StoreBuffer(bool background = true);
  // Takes in the chunks stored in the background, waiting until at most `keep` are left. A
  // chunk the store refused goes to staging: the commit tries again and reports the error.
  Status Reap(std::size_t keep);
  // A chunk in [offset, end) is being stored in the background.
  bool InFlightAt(std::uint64_t offset, std::uint64_t end) const;
  // Moves the buffered bytes into staging, for a write or truncate the buffer cannot take.
  Status SpillBuffer();
  void DropBuffer();
  // A write within chunk `i` through staging (copy-on-write of the old chunk if needed).
  Status StageWrite(std::size_t i, std::uint64_t offset, ByteSpan data, std::uint64_t old_size);
  Status Materialize(std::size_t index);
  // The committed bytes of chunk `index` (may be shorter than the chunk's span: zeros follow).
  Result<const Bytes*> CommittedChunk(std::size_t index);
  void Resize(std::uint64_t size);
  std::uint64_t ChunkLen(std::size_t index) const;

  FileServer& fs_;
  const InodeId id_;
  std::mutex mu_;
  std::vector<cas::ChunkId> manifest_;
  ContentClock base_clock_;    // lineage of the committed content this file started from
  InodeRecord record_;         // attributes as opened or last committed
  std::vector<bool> dirty_;    // chunk's current bytes are in staging
  std::vector<bool> written_;  // staging holds bytes for this chunk (maybe stale)
  std::uint64_t size_;
  std::int64_t mtime_ns_;
  SetAttrRequest deferred_;  // mode, owner and atime for the next commit (see DeferAttrs)
  // Atomic so that the event thread can ask without waiting for a reader holding mu_.
  std::atomic<bool> changed_{false};
  std::atomic<bool> privileges_checked_{
      false};  // size, mtime or chunks differ from the committed version
  std::optional<StagingFile> staging_;
  std::size_t buf_index_ = SIZE_MAX;  // chunk gathered in buf_, SIZE_MAX if none
  Bytes buf_;
  bool buf_slot_ = false;
  struct InFlight {
    std::size_t index;
    std::shared_ptr<Bytes> data;  // read-only once queued
    std::future<Result<cas::ChunkId>> id;
  };
  std::deque<InFlight> inflight_;  // oldest first
  Bytes spare_;  // a used buffer, for the next chunk  // counted in FileServer::seq_buffers_ (buf_
                 // may hold memory)
  std::size_t cached_index_ = SIZE_MAX;
  cas::ChunkId cached_id_{};
  Bytes cached_;
  // Taken alone or inside mu_, never the other way round.
  std::mutex remote_mu_;
  std::optional<InodeRecord> remote_;  // a remote version not adopted yet, guarded by remote_mu_
};

}  // namespace foreverfs::server
