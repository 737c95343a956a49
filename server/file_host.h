#pragma once
// FileHost: what an OpenFile (and its WritePipeline) needs from the file server that owns it,
// and nothing more: the namespace commit under the namespace lock, the chunk store as this node
// writes and reads it (every Put through the GC window, reads falling back to peers), the store
// queue and the bound on sequential-write buffers, the clocks and the staging directory.
// FileServer implements it (privately: these are not part of its API); an OpenFile keeps a
// FileHost&, which outlives it.
//
// Threading: every method may be called from any thread. Lock order (doc/threads.md):
// NamespaceMutex() comes before OpenFile::mu_, and is taken with it only through
// std::scoped_lock (OpenFile::Commit); none of the other methods takes a lock that a caller
// could hold (they take only leaves, and LoadChunk may wait on the network).

#include <cstdint>
#include <filesystem>
#include <functional>

#include "base/bytes.h"
#include "base/mutex.h"
#include "base/status.h"
#include "cas/chunk_store.h"
#include "server/hlc.h"
#include "server/namespace_db.h"

namespace foreverfs::server {

class FileHost {
 public:
  virtual ~FileHost() = default;

  // --- namespace
  // Serializes check-then-commit namespace operations (FileServer::ns_mu_).
  virtual Mutex& NamespaceMutex() = 0;
  // The inode's current record, or its tombstone.
  virtual Result<InodeRecord> InodeOrTombstone(InodeId id) = 0;
  // Commits a local change and tells the replicator. Call with NamespaceMutex() held.
  virtual Result<ChangeSet> CommitLocal(const ChangeSet& cs) = 0;
  virtual std::uint64_t node_id() const = 0;
  // Versions for local commits.
  virtual Hlc& clock() = 0;
  // Wall-clock nanoseconds, for mtime and ctime.
  virtual std::int64_t NowNs() const = 0;

  // --- chunks
  // The id of a chunk with these bytes (keyed HMAC, see cas::ChunkHasher).
  virtual cas::ChunkId ChunkIdOf(ByteSpan data) = 0;
  // Stores a chunk made here; every one goes through here (FileServer::BeginGcWindow).
  virtual Status PutChunk(const cas::ChunkId& id, ByteSpan data) = 0;
  // A chunk's bytes, local or pulled from a peer. May wait on the network.
  virtual Result<Bytes> LoadChunk(const cas::ChunkId& id) = 0;
  // Part of a chunk (zeros past its end); may wait on the network.
  virtual Status ReadChunk(const cas::ChunkId& id, std::size_t offset, MutableByteSpan out) = 0;
  // The chunk's first `len` bytes (zeros past its end), handed to `sink` in order in pieces
  // of at most kCopyPiece bytes, each with its offset: a local chunk is read a segment at a
  // time (no megabyte buffer per copy, and none of the sink's buffers is large enough for
  // glibc to give its pages back at free and fault them in again), any other is loaded whole
  // (LoadChunk) and handed on from where the local read stopped. Stops at the first error,
  // the sink's included.
  static constexpr std::size_t kCopyPiece = cas::kSegmentSize;
  virtual Status CopyChunk(const cas::ChunkId& id, std::uint64_t len,
                           const std::function<Status(std::uint64_t, ByteSpan)>& sink) = 0;
  // A hint that the local chunk `id` is read next (cas::ChunkStore::Prefetch); never waits on
  // the network. The default does nothing.
  virtual void PrefetchChunk(const cas::ChunkId& id) { (void)id; }
  // The chunk is in the local store (readable without a peer, unless damaged); never waits on
  // the network.
  virtual bool HasChunkLocally(const cas::ChunkId& id) = 0;

  // --- writing
  // Where staging files are made.
  virtual const std::filesystem::path& StagingDir() const = 0;
  // Runs `job` on the chunk store queue (2 threads shared by every file), which finishes its
  // jobs before the host goes.
  virtual void PostStore(std::function<void()> job) = 0;
  // One of the few sequential-write buffers (1 MiB each, plus the chunks in flight) the host
  // allows at once; false if none is free. Each one taken is given back once.
  virtual bool TakeSeqBuffer() = 0;
  virtual void ReturnSeqBuffer() = 0;
};

}  // namespace foreverfs::server
