#pragma once
// FileServer: the filesystem without FUSE or sockets. Namespace operations on inodes and
// directory entries, and the data path: writes to an open file go to a local staging file
// (copy-on-write per 1 MiB chunk); Flush/Fsync cut the dirty chunks, store them in the chunk
// store and commit a new version of the inode; Read serves dirty chunks from staging and the
// rest from the chunk store, pulling a missing chunk from peers through RemoteChunks.
//
// Store/Get/Remove are the path-level API of the original projects, streaming.
// Thread-safe: any thread may call any method.
//
// An open file's working state is an OpenFile (open_file.h), which reaches back into the file
// server only through the FileHost interface (file_host.h) that FileServer implements
// privately: the namespace commit under ns_mu_, chunk store access, the store queue and the
// bound on sequential-write buffers.

#include <sys/statvfs.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>

#include "base/mutex.h"
#include "cas/chunk_store.h"
#include "server/file_host.h"
#include "server/hlc.h"
#include "server/inode_ids.h"
#include "server/namespace_db.h"
#include "server/work_queue.h"

namespace foreverfs::server {

// Where chunks that are not stored locally come from (the replicator). Blocks until the chunk
// arrived verified and stored, or fails within the fetch deadline.
class RemoteChunks {
 public:
  virtual ~RemoteChunks() = default;
  virtual Result<Bytes> Fetch(const cas::ChunkId& id) = 0;
  // Inode `id` at `version` (in our feed through `seq`) is durable here: return once it is on
  // as many members as --sync-copies asks, or why not (kIOError). Blocks.
  virtual Status MakeDurable(InodeId, const model::Version&, std::uint64_t) { return Ok(); }
};

struct Attr {
  InodeRecord rec;
  std::uint32_t nlink = 1;
};

struct SetAttrRequest {
  std::optional<std::uint32_t> mode;
  std::optional<std::uint32_t> uid;
  std::optional<std::uint32_t> gid;
  std::optional<std::uint64_t> size;
  std::optional<std::int64_t> mtime_ns;
  std::optional<std::int64_t> atime_ns;
  // Clear setuid, and setgid where group-executable, after the rest (a truncate by a caller
  // without CAP_FSETID, or a chown, when the kernel leaves it to us: FUSE_HANDLE_KILLPRIV_V2).
  bool kill_suidgid = false;
};

struct DirEntry {
  std::string name;
  InodeId id;
  InodeKind kind;
};

struct Created {
  Attr attr;
  std::uint64_t handle;
};

class OpenFile;

// The bytes around a small read that come at no extra cost: a read of a committed chunk opens
// and decrypts a whole segment (cas::kSegmentSize) and hands back only the part asked for. A read
// given a window fills `buf` with that whole segment, clipped to the file's end, when the read lies
// inside one segment of a committed chunk of the file's current version here (not of an older
// version a handle still reads, not of uncommitted writes): the FUSE layer offers those bytes to
// the kernel's page cache. `n` stays 0 otherwise.
struct ReadWindow {
  static constexpr std::size_t kSize = cas::kSegmentSize;
  MutableByteSpan buf;       // at least kSize bytes
  std::uint64_t offset = 0;  // in the file, a multiple of kSize
  std::size_t n = 0;
};

class FileServer : public FileHost {
 public:
  FileServer(NamespaceDb& ns, cas::ChunkStore& store, cas::ChunkHasher hasher,
             std::filesystem::path staging_dir);
  ~FileServer() override;

  void SetRemote(RemoteChunks* remote) { remote_ = remote; }
  // Called after every local commit (from the committing thread).
  void SetOnLocalChange(std::function<void()> fn) { on_local_change_ = std::move(fn); }
  // Called after a pin changed (SetPin): chunks may need fetching. Set before use.
  void SetOnPinChange(std::function<void()> fn) { on_pin_change_ = std::move(fn); }
  // Called with the records that won after a remote update was applied.
  void SetOnRemoteChange(std::function<void(const ChangeSet&)> fn) {
    on_remote_change_ = std::move(fn);
  }
  std::uint64_t node_id() const override { return ns_.node_id(); }
  // Records from peers whose clock is further ahead of ours are refused (default 10 min).
  void SetMaxClockSkew(std::chrono::nanoseconds skew) {
    max_clock_skew_ns_ = static_cast<std::uint64_t>(skew.count());
  }

  // Namespace.
  Result<Attr> Lookup(InodeId parent, std::string_view name);
  Result<Attr> GetAttr(InodeId id);
  // The attributes a reader through `handle` sees: the version it opened, even after a peer
  // replaced it (the kernel asks with the handle before a read that may need the size). For a
  // replaced version it takes that file's lock, which a writer of the same file may hold
  // while it brings in a chunk to change it (reads let it go before they read chunks).
  Result<Attr> GetAttr(InodeId id, std::uint64_t handle);
  Result<Attr> SetAttr(InodeId id, const SetAttrRequest& req);
  Result<Attr> Mkdir(InodeId parent, std::string_view name, std::uint32_t mode, std::uint32_t uid,
                     std::uint32_t gid);
  Result<Attr> Symlink(InodeId parent, std::string_view name, std::string_view target,
                       std::uint32_t uid, std::uint32_t gid);
  Result<std::string> ReadLink(InodeId id);
  // A new name for an existing file or symlink (hard link); kNotPermitted for directories.
  Result<Attr> Link(InodeId id, InodeId new_parent, std::string_view new_name);
  // A regular file, FIFO, socket, or block or character device (`rdev` says which), as the
  // type bits of `mode` say. Whether the caller may make a device is the kernel's check.
  Result<Attr> Mknod(InodeId parent, std::string_view name, std::uint32_t mode, std::uint32_t uid,
                     std::uint32_t gid, std::uint64_t rdev = 0);
  // Extended attributes of the "user." namespace, stored and replicated with the inode.
  // flags: XATTR_CREATE / XATTR_REPLACE.
  Status SetXattr(InodeId id, std::string_view name, ByteSpan value, int flags);
  Result<Bytes> GetXattr(InodeId id, std::string_view name);
  Result<std::vector<std::string>> ListXattr(InodeId id);
  // user.foreverfs.pin: `value` "1" keeps the chunks of `id` (a file, or a directory and all
  // below it) on this node whatever placement says; "0" unpins. Anything else: kInvalid.
  Status SetPin(InodeId id, ByteSpan value);
  // "1" if `id` itself is pinned here, else "0".
  Result<Bytes> GetPin(InodeId id);
  Status RemoveXattr(InodeId id, std::string_view name);
  Status Unlink(InodeId parent, std::string_view name);
  Status Rmdir(InodeId parent, std::string_view name);
  // flags: RENAME_NOREPLACE is honoured; RENAME_EXCHANGE gives kInvalid.
  Status Rename(InodeId parent, std::string_view name, InodeId new_parent,
                std::string_view new_name, unsigned flags);
  Result<std::vector<DirEntry>> ReadDir(InodeId id);
  Result<struct statvfs> StatFs();

  // Data. `flags` are open(2) flags (O_TRUNC, O_APPEND, O_EXCL honoured).
  // An existing file opened with O_TRUNC and `kill_suidgid` clears setuid/setgid (Open).
  Result<Created> Create(InodeId parent, std::string_view name, std::uint32_t mode,
                         std::uint32_t uid, std::uint32_t gid, int flags,
                         bool kill_suidgid = false);
  // An O_TRUNC open with `kill_suidgid` (a caller without CAP_FSETID) clears setuid, and
  // setgid where the file is group-executable, as a write does.
  Result<std::uint64_t> Open(InodeId id, int flags, bool kill_suidgid = false);
  // The version a handle reads (nullopt for an unknown handle).
  std::optional<model::Version> HandleVersion(std::uint64_t handle);
  Result<std::size_t> Read(std::uint64_t handle, std::uint64_t offset, MutableByteSpan out,
                           ReadWindow* window = nullptr);
  // `kill_suidgid` (a caller without CAP_FSETID): the write clears setuid, and setgid where the
  // file is group-executable (checked once per open file, at its first such write).
  Result<std::size_t> Write(std::uint64_t handle, std::uint64_t offset, ByteSpan data,
                            bool kill_suidgid = false);
  // mode 0 (extends; with FALLOC_FL_KEEP_SIZE does nothing), FALLOC_FL_PUNCH_HOLE (with
  // KEEP_SIZE) and FALLOC_FL_ZERO_RANGE: whole chunks in the range become holes. Other modes
  // are kNotSupported; past model::kMaxFileSize, kTooBig.
  // `kill_suidgid` clears setuid, and setgid where group-executable, first (as a write).
  Status Fallocate(std::uint64_t handle, int mode, std::uint64_t offset, std::uint64_t length,
                   bool kill_suidgid = false);
  // lseek(2) SEEK_DATA (`data`) or SEEK_HOLE, at chunk granularity (1 MiB).
  Result<std::uint64_t> Seek(std::uint64_t handle, std::uint64_t offset, bool data);
  // Commits what was written through any handle of the file (close-to-open consistency).
  Status Flush(std::uint64_t handle);
  // Flush, then make it durable against power loss: fsync(2).
  Status Fsync(std::uint64_t handle);
  // Makes every commit so far durable (chunks, then the namespace).
  Status Sync();
  void Release(std::uint64_t handle);

  // Path API: "/a/b/c". Store creates or replaces the file with what `read` yields until it
  // returns 0; Get streams the file to `write`.
  Status Store(std::string_view path,
               const std::function<Result<std::size_t>(MutableByteSpan)>& read);
  Status Get(std::string_view path, const std::function<Status(ByteSpan)>& write);
  Status Remove(std::string_view path);
  Result<Attr> Resolve(std::string_view path);

  // Replication.
  Result<ChangeSet> ApplyRemote(const net::Changes& changes, std::uint64_t peer);
  // Removes the tombstones every member holds (NamespaceDb::PurgeTombstones) whose version is
  // older than `grace`, except those of files open here: a write through a handle opened
  // before the delete still commits, and gets its name back from the entry's tombstone.
  Result<NamespaceDb::PurgeStats> PurgeTombstones(std::chrono::nanoseconds grace);
  // Reads a chunk from the local store (verified); kNotFound if absent.
  Result<Bytes> LocalChunk(const cas::ChunkId& id);
  // Verifies `data` against `id` and stores it.
  Status StoreChunk(const cas::ChunkId& id, ByteSpan data);
  bool HasChunk(const cas::ChunkId& id) { return store_.Has(id); }
  // The chunk's bytes, local or pulled from a peer (self-healing a corrupt local copy).
  Result<Bytes> LoadChunk(const cas::ChunkId& id) override;
  // Part of a chunk into `out` (zeros past its end): read in place when the chunk is here and
  // sound, else through LoadChunk.
  Status ReadChunk(const cas::ChunkId& id, std::size_t offset, MutableByteSpan out) override;
  Status CopyChunk(const cas::ChunkId& id, std::uint64_t len,
                   const std::function<Status(std::uint64_t, ByteSpan)>& sink) override;
  void PrefetchChunk(const cas::ChunkId& id) override { store_.Prefetch(id); }
  bool HasChunkLocally(const cas::ChunkId& id) override { return store_.Has(id); }
  NamespaceDb& ns() { return ns_; }
  cas::ChunkStore& store() { return store_; }
  // When each chunk was last read here (ReadChunk, LoadChunk), as a counter that only grows;
  // chunks not read since start are absent. ChunkTrim keeps the most recently read copies
  // that placement does not rank here. PruneReads drops the entries `keep` refuses.
  std::map<cas::ChunkId, std::uint64_t> Reads();
  std::uint64_t LastRead(const cas::ChunkId& id);
  void PruneReads(const std::function<bool(const cas::ChunkId&)>& keep);
  // Calls `fn` with the working manifest of every file open here, through any handle (they may
  // reference chunks no committed version does: a file unlinked while open, or the version a
  // handle opened before a peer replaced it).
  void ForEachOpenManifest(const std::function<void(const model::ChunkMap&)>& fn);
  Hlc& clock() override { return hlc_; }

  // Garbage collection against deduplication: a commit may reuse a chunk a GC pass has found
  // unreferenced (its Put of an existing id writes nothing). Between BeginGcWindow and
  // EndGcWindow every id stored, or found already stored, is remembered, and
  // RemoveIfUntouched removes a chunk only if no Put of it came in the window (false if one
  // did). One window at a time (ChunkMaintenance holds its own lock).
  void BeginGcWindow();
  Result<bool> RemoveIfUntouched(const cas::ChunkId& id);
  bool TouchedInGcWindow(const cas::ChunkId& id);
  void EndGcWindow();

 private:
  // FileHost, for OpenFile (file_host.h says what each is for).
  Mutex& NamespaceMutex() override RETURN_CAPABILITY(ns_mu_) { return ns_mu_; }
  Result<InodeRecord> InodeOrTombstone(InodeId id) override { return ns_.GetInodeOrTombstone(id); }
  // Every local change commits through here (and tells the replicator). Call with ns_mu_ held.
  Result<ChangeSet> CommitLocal(const ChangeSet& cs) override;
  std::int64_t NowNs() const override;
  cas::ChunkId ChunkIdOf(ByteSpan data) override { return hasher_.IdOf(data); }
  // Every chunk stored by this node goes through here (see BeginGcWindow).
  Status PutChunk(const cas::ChunkId& id, ByteSpan data) override;
  const std::filesystem::path& StagingDir() const override { return staging_dir_; }
  void PostStore(std::function<void()> job) override { store_queue_.Post(std::move(job)); }
  bool TakeSeqBuffer() override;
  void ReturnSeqBuffer() override { seq_buffers_.fetch_sub(1); }

  // The attributes of `rec` as a reader sees them (what an open file holds uncommitted laid
  // over it); `links` if the caller knows them (a new file's one), else counted.
  Result<Attr> MakeAttr(InodeRecord rec, std::optional<std::uint32_t> links = std::nullopt);
  // The stored record and link count of `id` (no open file's overlay), from attr_cache_ when
  // the namespace has not changed since it was read.
  Result<Attr> StoredAttr(InodeId id);
  // `rec` with the link count stat shows (1 for a directory, else its live names, at least 1),
  // and the names counted (0: an open file's last name gone, or the count failed).
  std::pair<Attr, std::size_t> WithLinkCount(InodeRecord rec);
  Result<InodeRecord> LiveDir(InodeId id);
  // A fresh inode created in `parent` (group and setgid inherited from a setgid directory).
  InodeRecord NewInode(InodeKind kind, std::uint32_t mode, std::uint32_t uid, std::uint32_t gid,
                       const InodeRecord& parent);
  // Checks that the name is free in `dir` (the parent's live record) and commits `rec` under
  // it. Call with ns_mu_ held.
  Status AddEntry(InodeRecord dir, std::string_view name, const InodeRecord& rec);
  // Open, for a record the caller just read or made.
  Result<std::uint64_t> OpenRecord(const InodeRecord& rec, int flags, bool kill_suidgid);
  Status UpdateInode(InodeId id, const std::function<Status(InodeRecord&)>& change);
  std::shared_ptr<OpenFile> OpenFileFor(const InodeRecord& rec);
  std::shared_ptr<OpenFile> HandleFile(std::uint64_t handle);
  // The open state of inode `id`, if any handle has it open.
  std::shared_ptr<OpenFile> OpenFileOf(InodeId id);
  Result<std::pair<InodeId, std::string>> ResolveParent(std::string_view path);
  // A write or truncate by a caller without CAP_FSETID (not root) clears setuid, and setgid
  // where it means "set group id" (group-executable), as the kernel does on a local disk.
  Status ClearSetIds(InodeId id);

  NamespaceDb& ns_;
  cas::ChunkStore& store_;
  cas::ChunkHasher hasher_;
  std::filesystem::path staging_dir_;
  Hlc hlc_;
  InodeIds inode_ids_;
  RemoteChunks* remote_ = nullptr;
  std::atomic<std::uint64_t> max_clock_skew_ns_{600'000'000'000};
  Mutex gc_mu_;  // guards the two below; taken alone (store calls inside are leaves)
  bool gc_window_ GUARDED_BY(gc_mu_) = false;
  std::set<cas::ChunkId> gc_touched_ GUARDED_BY(gc_mu_);
  void NoteRead(const cas::ChunkId& id);
  // The last StoredAttr read and the namespace's ChangeStamp before it: tar's utimes, chown
  // and chmod of one file (four GetAttr, each a record read and a link count) read it once.
  Mutex attr_cache_mu_;  // leaf
  std::optional<Attr> attr_cache_ GUARDED_BY(attr_cache_mu_);
  std::uint64_t attr_cache_stamp_ GUARDED_BY(attr_cache_mu_) = 0;
  Mutex reads_mu_;  // leaf
  std::map<cas::ChunkId, std::uint64_t> reads_ GUARDED_BY(reads_mu_);
  std::uint64_t read_clock_ GUARDED_BY(reads_mu_) = 0;
  std::function<void()> on_local_change_;
  std::function<void()> on_pin_change_;
  std::function<void(const ChangeSet&)> on_remote_change_;

  // Serializes check-then-commit namespace operations. Lock order: before OpenFile::mu_ (which
  // takes it only as FileHost::NamespaceMutex, with std::scoped_lock in OpenFile::Commit).
  Mutex ns_mu_ ACQUIRED_BEFORE(files_mu_);
  Mutex files_mu_;  // guards the two maps below; taken last
  std::map<std::uint64_t, std::shared_ptr<OpenFile>> handles_ GUARDED_BY(files_mu_);
  std::map<InodeId, std::weak_ptr<OpenFile>> open_files_ GUARDED_BY(files_mu_);
  std::atomic<std::uint64_t> next_handle_{1};
  // Files holding sequential-write buffers (up to 1 + WritePipeline::kMaxInFlight MiB each),
  // and the most there may be (TakeSeqBuffer).
  static constexpr int kMaxSeqBuffers = 8;
  std::atomic<int> seq_buffers_{0};
  // Hashes and stores the full chunks of sequential writes (PostStore) while the writer goes on.
  // Last member: it finishes its jobs before the rest goes away.
  WorkQueue store_queue_{2};
};

}  // namespace foreverfs::server
