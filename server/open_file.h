#pragma once
// The state of a file while any handle has it open: a working manifest, a size, and a staging
// file (unlinked O_TMPFILE, so a crash leaves nothing behind) holding the chunks written since
// the last commit, encrypted (see StagingFile). A write into part of a committed chunk stages
// only the 4 KiB pages it touches (the chunk becomes Partial: the pages not written are still
// the committed chunk's), and the commit merges them with the old chunk, so a commit only
// re-reads, hashes and stores the chunks that changed, and a random writer's first write into a
// chunk costs a page, not a copy of the megabyte. Writes that fill a chunk in order from its
// start (cp, dd, tar: nearly every write)
// skip staging: they go through the file's WritePipeline (write_pipeline.h), which stores each
// chunk as soon as it is full, so those bytes are written once, while the file is still being
// written.
// It reaches the file server only through FileHost (file_host.h).
// Thread-safe; all handles of one inode share one OpenFile.

#include <atomic>
#include <bitset>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

#include "base/mutex.h"
#include "server/content_clock.h"
#include "server/file_host.h"
#include "server/file_server.h"
#include "server/staging_file.h"
#include "server/write_pipeline.h"

namespace foreverfs::server {

class OpenFile {
 public:
  OpenFile(FileHost& host, const InodeRecord& rec);
  ~OpenFile();

  InodeId id() const { return id_; }
  // The committed version this file reads (as opened, last committed here or adopted from a
  // peer). Never waits for a reader: a leaf lock of its own, not mu_.
  model::Version Version() const;
  // With a `window` (ReadWindow): also the whole segment around a read that lies inside one
  // segment of a committed chunk.
  Result<std::size_t> Read(std::uint64_t offset, MutableByteSpan out, ReadWindow* window = nullptr);
  // Writes at `offset`, or at the end if `append`. Returns bytes written.
  Result<std::size_t> Write(std::uint64_t offset, ByteSpan data, bool append);
  // Sizes above model::kMaxFileSize give kTooBig (EFBIG), as do writes that would make more than
  // model::kMaxDataChunks chunks hold data.
  Status Truncate(std::uint64_t size);
  // Grows the file to `size` (zeros) if it is smaller; never shrinks.
  Status Extend(std::uint64_t size);
  // [offset, offset + length) reads as zeros afterwards; whole chunks become holes (nothing
  // stored). Grows the file to the range's end unless `keep_size` (fallocate PUNCH_HOLE and
  // ZERO_RANGE).
  Status ZeroRange(std::uint64_t offset, std::uint64_t length, bool keep_size);
  // lseek(2) SEEK_DATA / SEEK_HOLE at chunk granularity: kNoPosition (ENXIO) at or past the end.
  Result<std::uint64_t> Seek(std::uint64_t offset, bool data);
  void SetMtime(std::int64_t mtime_ns);
  // Attribute changes to a file with uncommitted writes wait for its commit (tar sets owner,
  // mode and times on every file it writes, before closing it): one namespace commit instead
  // of four. False if the file has no uncommitted writes (the caller commits them itself).
  bool DeferAttrs(const SetAttrRequest& req);
  // True the first time it is called: the first write of a file checks its setuid bits.
  bool TakePrivilegeCheck() { return !privileges_checked_.exchange(true); }
  // After a mode or owner change: the next such write checks again.
  void ResetPrivilegeCheck() { privileges_checked_ = false; }
  // Stores dirty chunks and commits a new version of the inode; no-op if nothing changed.
  // Takes the namespace lock (FileHost::NamespaceMutex) with mu_ (never waiting for one while
  // holding the other): never call it with that lock held.
  Status Commit();
  // A peer committed a new version: adopt it unless we have uncommitted writes. Never waits
  // for mu_ (it runs on the event thread, which a reader holding mu_ may be waiting on for a
  // chunk): if the file is busy, the holder adopts the version at its next operation.
  void OnRemoteUpdate(const InodeRecord& rec);
  // Counts commits of this file (for readers that combine the record with Overlay).
  std::uint64_t Generation() const { return generation_.load(); }
  // Written here and not committed yet.
  bool HasUncommittedWrites() const { return changed_; }
  // Size and mtime as a reader of this file should see them now.
  void Overlay(InodeRecord& rec);
  // The file's attributes as last known here (for a file unlinked while open).
  InodeRecord Snapshot();
  model::ChunkMap Manifest();

 private:
  static constexpr std::uint64_t kNone = UINT64_MAX;
  void SetVersion(const model::Version& v);
  // Adopts the version OnRemoteUpdate left, if any.
  void AdoptRemote() REQUIRES(mu_);
  Status EnsureStaging() REQUIRES(mu_);
  // Stores every dirty chunk (and the pipeline's buffer) and puts its id in the manifest.
  // With `background`, staged chunks are hashed, sealed and stored on the store queue (see
  // StoreStaged), else all on this thread.
  Status StoreDirty(bool background = true) REQUIRES(mu_);
  // Stores the chunks whose bytes are in staging (StoreDirty's second half); a chunk the store
  // refuses stays dirty in staging, and the first such error is returned.
  Status StoreStaged(bool background) REQUIRES(mu_);
  static constexpr std::size_t kStagedInFlight = 2;  // chunks on the store queue at once
  static constexpr std::size_t kMergeAhead = 8;      // old chunks read ahead of their merge
  // Punches chunk `index`'s slot once the chunk is stored (its dirty pages are never written).
  void FreeStaged(std::uint64_t index) REQUIRES(mu_);
  // Where chunk `i` lives in staging (a slot is given on first use and never reused while the
  // staging file lives, so a new slot reads as zeros). Slots, not file offsets: a file may be
  // larger (16 TiB) than the filesystem under --data lets the staging file be.
  std::uint64_t Slot(std::uint64_t i) REQUIRES(mu_);
  // The write pipeline's buffer (see the top): appends `data` at `in` of chunk `i` if it
  // continues the buffer or may start one there; false if the write must go through staging.
  Result<bool> TryBuffer(std::uint64_t i, std::size_t in, ByteSpan data, std::uint64_t old_size)
      REQUIRES(mu_);
  // Hands the buffered chunk (padded with zeros to its length in the file) to the pipeline's
  // store queue, then reaps down to WritePipeline::kMaxInFlight.
  Status StoreBuffer(bool background = true) REQUIRES(mu_);
  // Takes in the chunks stored in the background, waiting until at most `keep` are left. A
  // chunk the store refused goes to staging: the commit tries again and reports the error.
  Status Reap(std::size_t keep) REQUIRES(mu_);
  // Chunk `i` holds data (stored, staged, buffered or being stored): not a hole.
  bool HasData(std::uint64_t i) const REQUIRES(mu_);
  // kTooBig if writing chunk `i` would make more chunks hold data than a file may.
  Status CheckDataChunk(std::uint64_t i) const REQUIRES(mu_);
  // Moves the buffered bytes into staging, for a write or truncate the buffer cannot take.
  Status SpillBuffer() REQUIRES(mu_);
  // A write within chunk `i` through staging (copy-on-write of the old chunk if needed).
  Status StageWrite(std::uint64_t i, std::uint64_t offset, ByteSpan data, std::uint64_t old_size)
      REQUIRES(mu_);
  // Copies chunk `index`'s committed bytes into its staging slot (zeros past the chunk's end).
  Status Materialize(std::uint64_t index) REQUIRES(mu_);

  // Page staging. A chunk in partial_ is dirty, but staging holds only its `staged` pages; every
  // other page is the committed chunk's: the first `base_len` bytes of `base`, zeros past them.
  // Pages, not bytes: a write that covers part of a page not staged yet first copies that page
  // in (FillPage), so a staged page is always whole. Once every page is staged the chunk is
  // an ordinary dirty chunk.
  static constexpr std::uint64_t kPage = StagingFile::kPage;
  static constexpr std::size_t kChunkPages = cas::kChunkSize / kPage;
  struct Partial {
    cas::ChunkId base;
    std::uint64_t base_len = 0;  // at most kCS; never more than the file holds of the chunk
    std::bitset<kChunkPages> staged;
  };
  // Calls f(staged, from, to) for each run of pages of one kind that [from, to) (bytes within
  // the chunk) crosses, clipped to [from, to), in order; stops at the first error f returns.
  template <typename F>
  Status ForEachRun(const Partial& p, std::uint64_t from, std::uint64_t to, F&& f) REQUIRES(mu_);
  // A write of `data` at `in` within partial chunk `i`.
  Status StagePartial(std::uint64_t i, std::uint64_t in, ByteSpan data) REQUIRES(mu_);
  // Copies page `page` of partial chunk `i`'s base into staging and marks it staged.
  Status FillPage(std::uint64_t i, Partial& p, std::uint64_t page) REQUIRES(mu_);
  // The whole of partial chunk `i` into `out` (its length in the file): the base, then the
  // staged pages over it.
  Status MergePartial(std::uint64_t i, const Partial& p, MutableByteSpan out) REQUIRES(mu_);
  // Drops chunks [first, last) from dirty_ and partial_.
  void ForgetDirty(std::uint64_t first, std::uint64_t last) REQUIRES(mu_);
  // Forgets chunks past `size` (the file shrank).
  void ForgetPast(std::uint64_t size) REQUIRES(mu_);
  std::uint64_t ChunkLen(std::uint64_t index) const REQUIRES(mu_);

  FileHost& host_;
  const InodeId id_;
  Mutex& ns_mu_;  // host_.NamespaceMutex()
  // Guards the file's working state below. A reader holds it while it waits for a chunk from
  // a peer (doc/threads.md): nothing the event thread or stat needs waits on it.
  Mutex mu_ ACQUIRED_AFTER(ns_mu_);
  model::ChunkMap manifest_ GUARDED_BY(mu_);
  ContentClock base_clock_ GUARDED_BY(mu_);         // lineage of the committed content started from
  InodeRecord record_ GUARDED_BY(mu_);              // attributes as opened or last committed
  mutable Mutex version_mu_;                        // leaf: taken alone, or inside mu_
  model::Version version_ GUARDED_BY(version_mu_);  // record_.version (see Version())
  // Sets, not one flag per chunk: a 16 TiB sparse file costs nothing per chunk.
  std::set<std::uint64_t> dirty_ GUARDED_BY(mu_);    // chunks whose current bytes are in staging
  std::set<std::uint64_t> written_ GUARDED_BY(mu_);  // chunks staging holds bytes for (maybe stale)
  std::map<std::uint64_t, Partial> partial_ GUARDED_BY(mu_);  // dirty chunks staged in part
  std::uint64_t size_ GUARDED_BY(mu_);
  std::int64_t mtime_ns_ GUARDED_BY(mu_);
  SetAttrRequest deferred_ GUARDED_BY(mu_);  // mode, owner and atime for the next commit
  // Size, mtime or chunks differ from the committed version. Atomic so that the event thread
  // and stat can ask without waiting for a reader holding mu_ (written under mu_).
  std::atomic<bool> changed_{false};
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<bool> privileges_checked_{false};
  std::optional<StagingFile> staging_ GUARDED_BY(mu_);
  std::map<std::uint64_t, std::uint64_t> slots_ GUARDED_BY(mu_);  // chunk index -> staging offset
  std::uint64_t next_slot_ GUARDED_BY(mu_) = 0;
  WritePipeline pipeline_ GUARDED_BY(mu_);  // the sequential-write buffer and chunks in flight
  // Taken alone or inside mu_, never the other way round.
  Mutex remote_mu_ ACQUIRED_AFTER(mu_);
  std::optional<InodeRecord> remote_ GUARDED_BY(remote_mu_);  // a peer's version not adopted yet
};

}  // namespace foreverfs::server
