#pragma once
// cas/: content-addressed chunk stores. A chunk is at most kMaxChunkSize immutable bytes named
// by its ChunkId, the HMAC-SHA-256 of its plaintext under a key derived from the cluster key
// (so ids reveal nothing to someone without the key, yet identical content gets the same id on
// every node and deduplicates).
//
// Every ChunkStore is thread-safe. Stores compose: DiskChunkStore keeps opaque blobs in sharded
// files; EncryptingChunkStore seals them; VerifyingChunkStore checks ids. MakeLocalStore stacks
// them in the one order used by the program. An in-memory store and a fault-injecting wrapper,
// for tests only, are in cas/testing/ (library `cas_testing`, which the program does not link).

#include <functional>
#include <memory>
#include <optional>

#include "base/bytes.h"
#include "base/status.h"
#include "crypto/crypto.h"

namespace foreverfs::cas {

using ChunkId = crypto::Digest;
inline constexpr std::size_t kChunkSize = 1 * kMiB;     // files are cut at fixed 1 MiB offsets
inline constexpr std::size_t kMaxChunkSize = 1 * kMiB;  // no stored chunk is larger
// The all-zero id names a chunk of zeros (a hole); it is never stored.
inline constexpr ChunkId kHoleId{};
// The encrypting store seals a chunk in segments of this many bytes: the least a ranged read
// reads from disk and decrypts.
inline constexpr std::size_t kSegmentSize = 16 * 1024;
// What the wrappers may add to a chunk on disk (framing, a tag per segment).
inline constexpr std::size_t kMaxBlobOverhead = 4096;

// A ranged read: `n` bytes were copied; the whole chunk (or blob) has `total` bytes.
struct Extent {
  std::size_t n = 0;
  std::size_t total = 0;
};

inline std::string Hex(const ChunkId& id) { return crypto::ToHex(id); }

class ChunkStore {
 public:
  virtual ~ChunkStore() = default;
  // Stores `data` under `id`. Storing an id that is present is a no-op returning Ok, except
  // that a blob of another size than the one this Put would write (left cut short by a power
  // failure) is written again. More than the store takes (a chunk: kMaxChunkSize; a blob store
  // under the wrappers: kMaxChunkSize + kMaxBlobOverhead) is kInvalid.
  // Atomic: after a crash of the process the chunk is either absent or complete. Durable
  // against power loss only after Sync (as a local file system is after fsync).
  virtual Status Put(const ChunkId& id, ByteSpan data) = 0;
  // Makes every Put so far durable.
  virtual Status Sync() = 0;
  // The bytes stored under `id`: kNotFound if absent, kCorruption if they fail verification.
  virtual Result<Bytes> Get(const ChunkId& id) = 0;
  // Up to out.size() bytes of the chunk from `offset`, verified as Get is; fewer at its end.
  // The default reads the whole chunk; stores that can read a part cheaply override it.
  virtual Result<Extent> ReadAt(const ChunkId& id, std::size_t offset, MutableByteSpan out);
  // A hint that `id` will be read soon: a store on disk starts reading it into the page cache
  // and returns (the next ReadAt then overlaps its disk read with the work before it). Absent
  // chunks and failures are ignored. The default does nothing.
  virtual void Prefetch(const ChunkId& id) { (void)id; }
  virtual bool Has(const ChunkId& id) = 0;
  // Removes `id`; Ok if it was absent.
  virtual Status Remove(const ChunkId& id) = 0;
  // Calls `fn` once for every stored id, in no particular order.
  virtual Status ForEach(const std::function<void(const ChunkId&)>& fn) = 0;
  // The chunks kept inside one shared file rather than as files of their own (the disk store's
  // small blobs), and their bytes: for usage figures, which count files by walking the store.
  // Kept up to date in memory, so cheap. The default: none.
  struct Packed {
    std::uint64_t chunks = 0;
    std::uint64_t bytes = 0;
  };
  virtual Packed PackedUsage() { return {}; }
  // Before fork(2) (daemonizing): ends the store's own threads, which would not exist in the
  // child, after finishing their work; the store starts them again when it needs them.
  virtual Status BeforeFork() { return Ok(); }
};

// Computes chunk ids: HMAC-SHA-256 keyed with the id key.
class ChunkHasher {
 public:
  explicit ChunkHasher(const crypto::Key256& id_key)
      : key_(std::make_shared<const crypto::HmacSha256Key>(id_key)) {}
  ChunkId IdOf(ByteSpan data) const { return key_->Of(data); }

 private:
  std::shared_ptr<const crypto::HmacSha256Key> key_;  // shared by copies
};

// Blobs up to this size are rows of one database (root/small.db) rather than files.
inline constexpr std::size_t kMaxSmallBlob = 64 * 1024;

// Files under `root`: root/ab/<64 hex digits>, written to a temp file and renamed, except that
// blobs of at most `small_blobs` bytes (default kMaxSmallBlob; 0: none) are rows of
// root/small.db. Sync is one syncfs(2) of the file system holding `root` (the database's
// write-ahead log included).
// Get returns the bytes as stored (verification belongs to the wrappers).
// ReadAt keeps up to `open_files` chunk files open for the next read (default
// DefaultOpenChunkFiles(); 0 keeps none).
Result<std::unique_ptr<ChunkStore>> MakeDiskStore(const std::filesystem::path& root,
                                                  std::optional<std::size_t> open_files = {},
                                                  std::size_t small_blobs = kMaxSmallBlob);
// 1,024, or a sixteenth of the process's descriptor limit if that is less.
std::size_t DefaultOpenChunkFiles();

// Seals every chunk with AES-256-GCM under a per-chunk key HKDF(data_key, id) (convergent:
// the same plaintext gives the same blob on every node), in 16 KiB segments that each carry
// their own tag, so that a small read opens only the segments it covers.
std::unique_ptr<ChunkStore> MakeEncryptingStore(std::unique_ptr<ChunkStore> inner,
                                                const crypto::Key256& data_key);

// Put refuses (kCorruption) data whose id does not match, and (kInvalid) more than
// kMaxChunkSize bytes; Get verifies and returns
// kCorruption, naming the chunk, for bytes that no longer match.
std::unique_ptr<ChunkStore> MakeVerifyingStore(std::unique_ptr<ChunkStore> inner,
                                               ChunkHasher hasher);

// The stack used by the program: Encrypting(Disk(root)). No Verifying layer: the GCM tags
// already authenticate every byte read back (the key and the associated data are the id), and
// every Put comes with an id its caller computed or checked (FileServer::StoreChunk).
Result<std::unique_ptr<ChunkStore>> MakeLocalStore(const std::filesystem::path& root,
                                                   const crypto::ClusterKey& key);
// The key the local store uses to name chunks; peers sharing the cluster key agree on it.
ChunkHasher MakeHasher(const crypto::ClusterKey& key);

}  // namespace foreverfs::cas
