#pragma once
// cas/: content-addressed chunk stores. A chunk is at most kMaxChunkSize immutable bytes named
// by its ChunkId, the HMAC-SHA-256 of its plaintext under a key derived from the cluster key
// (so ids reveal nothing to someone without the key, yet identical content gets the same id on
// every node and deduplicates).
//
// Every ChunkStore is thread-safe. Stores compose: DiskChunkStore keeps opaque blobs in sharded
// files; EncryptingChunkStore seals them; VerifyingChunkStore checks ids. MakeLocalStore stacks
// them in the one order used by the program.

#include <functional>
#include <memory>

#include "base/bytes.h"
#include "base/status.h"
#include "crypto/crypto.h"

namespace foreverfs::cas {

using ChunkId = crypto::Digest;
inline constexpr std::size_t kChunkSize = 1 * kMiB;     // files are cut at fixed 1 MiB offsets
inline constexpr std::size_t kMaxChunkSize = 1 * kMiB;  // no stored chunk is larger
// The all-zero id names a chunk of zeros (a hole); it is never stored.
inline constexpr ChunkId kHoleId{};

inline std::string Hex(const ChunkId& id) { return crypto::ToHex(id); }

class ChunkStore {
 public:
  virtual ~ChunkStore() = default;
  // Stores `data` under `id`. Storing an id that is present is a no-op returning Ok.
  // Atomic: after a crash the chunk is either absent or complete.
  virtual Status Put(const ChunkId& id, ByteSpan data) = 0;
  // The bytes stored under `id`: kNotFound if absent, kCorruption if they fail verification.
  virtual Result<Bytes> Get(const ChunkId& id) = 0;
  virtual bool Has(const ChunkId& id) = 0;
  // Removes `id`; Ok if it was absent.
  virtual Status Remove(const ChunkId& id) = 0;
  // Calls `fn` once for every stored id, in no particular order.
  virtual Status ForEach(const std::function<void(const ChunkId&)>& fn) = 0;
};

// Computes chunk ids: HMAC-SHA-256 keyed with the id key.
class ChunkHasher {
 public:
  explicit ChunkHasher(const crypto::Key256& id_key) : key_(id_key) {}
  ChunkId IdOf(ByteSpan data) const;

 private:
  crypto::Key256 key_;
};

// In memory, for tests.
std::unique_ptr<ChunkStore> MakeMemoryStore();

// Files under `root`: root/ab/cd/<64 hex digits>, written to a temp file, fsynced, renamed.
// Get returns the bytes as stored (verification belongs to the wrappers).
Result<std::unique_ptr<ChunkStore>> MakeDiskStore(const std::filesystem::path& root);

// Seals every chunk with AES-256-GCM under a per-chunk key HKDF(data_key, id) (convergent:
// the same plaintext gives the same blob on every node). Blob: version byte 1, ciphertext, tag.
std::unique_ptr<ChunkStore> MakeEncryptingStore(std::unique_ptr<ChunkStore> inner,
                                                const crypto::Key256& data_key);

// Put refuses (kCorruption) data whose id does not match; Get verifies and returns
// kCorruption, naming the chunk, for bytes that no longer match.
std::unique_ptr<ChunkStore> MakeVerifyingStore(std::unique_ptr<ChunkStore> inner,
                                               ChunkHasher hasher);

// The stack used by the program: Verifying(Encrypting(Disk(root))).
Result<std::unique_ptr<ChunkStore>> MakeLocalStore(const std::filesystem::path& root,
                                                   const crypto::ClusterKey& key);
// The key the local store uses to name chunks; peers sharing the cluster key agree on it.
ChunkHasher MakeHasher(const crypto::ClusterKey& key);

}  // namespace foreverfs::cas
