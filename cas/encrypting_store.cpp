// Seals chunks with AES-256-GCM before they reach the inner store.
//
// Blob format, version 2:  0x02 || seg_0 || seg_1 || ... where the plaintext is cut into
// segments of kSeg (16 KiB) bytes, the last one shorter (an empty chunk is one empty segment),
// and seg_i = AES-256-GCM(key_id, nonce_i, aad_i, plaintext segment i) || 16-byte tag, with
//   key_id  = HKDF-SHA-256(data_key, salt = empty, info = "foreverfs chunk " || id, 32)
//   nonce_i = 8 zero bytes || u32be(i)
//   aad_i   = id || u32be(plaintext length) || u32be(i)
// Every key seals exactly one plaintext (the id is the keyed hash of the plaintext, so one id
// and thus one key never seals two different messages), and within it every segment has its
// own nonce. The encryption is convergent: every node produces the same blob for the same
// chunk. The length and the index in the associated data mean that a blob cut short, grown,
// or with segments swapped fails its tags; together with the id as key and associated data,
// a segment that opens is exactly the bytes that were sealed under this id.
// Segments let a 4 KiB read open 16 KiB instead of the whole chunk.

#include <openssl/crypto.h>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <string>

#include "base/mutex.h"
#include "cas/chunk_store.h"

namespace foreverfs::cas {
namespace {

constexpr std::uint8_t kBlobVersion = 2;
constexpr std::string_view kInfoPrefix = "foreverfs chunk ";
constexpr std::size_t kSeg = kSegmentSize;
constexpr std::size_t kTag = crypto::Aead::kTagSize;
constexpr std::size_t kSealedSeg = kSeg + kTag;

std::size_t Segments(std::size_t plain_len) {
  return plain_len == 0 ? 1 : (plain_len + kSeg - 1) / kSeg;
}
std::size_t BlobSize(std::size_t plain_len) { return 1 + plain_len + Segments(plain_len) * kTag; }

void PutU32(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}

// Nonce and associated data of one segment.
struct SegmentParams {
  std::array<std::uint8_t, crypto::Aead::kNonceSize> nonce{};
  std::array<std::uint8_t, 32 + 8> aad{};
  SegmentParams(const ChunkId& id, std::size_t plain_len, std::size_t index) {
    PutU32(nonce.data() + 8, static_cast<std::uint32_t>(index));
    std::copy(id.begin(), id.end(), aad.begin());
    PutU32(aad.data() + 32, static_cast<std::uint32_t>(plain_len));
    PutU32(aad.data() + 36, static_cast<std::uint32_t>(index));
  }
};

// The plaintext length of a blob of `blob_size` bytes, if a blob can have that size.
std::optional<std::size_t> PlainLength(std::size_t blob_size) {
  if (blob_size < 1 + kTag) return std::nullopt;
  const std::size_t body = blob_size - 1;
  const std::size_t segs = (body + kSealedSeg - 1) / kSealedSeg;
  const std::size_t plain = body - segs * kTag;
  if (plain > kMaxChunkSize || BlobSize(plain) != blob_size) return std::nullopt;
  return plain;
}

class EncryptingChunkStore final : public ChunkStore {
 public:
  EncryptingChunkStore(std::unique_ptr<ChunkStore> inner, const crypto::Key256& data_key)
      : inner_(std::move(inner)), chunk_keys_(data_key, {}) {}

  ~EncryptingChunkStore() override {
    OPENSSL_cleanse(keys_.data(), sizeof(KeySlot) * keys_.size());
  }

  Status Put(const ChunkId& id, ByteSpan data) override {
    if (data.size() > kMaxChunkSize) {
      return Err(Code::kInvalid, "chunk {} of {} bytes exceeds the maximum of {}", Hex(id),
                 data.size(), kMaxChunkSize);
    }
    // Already stored whole: nothing to seal. A blob of the wrong size (cut short by a power
    // failure) is sealed and written again. Small blobs skip the question: sealing one costs
    // less than asking (a failed path lookup and a database query, a sixth of a small file's
    // close in `tar -x`), and the inner store's Put keeps what it holds whole (the contract).
    if (BlobSize(data.size()) > kMaxSmallBlob) {
      if (auto e = inner_->ReadAt(id, 0, MutableByteSpan());
          e.ok() && e->total == BlobSize(data.size()))
        return Ok();
    }
    const crypto::Aead aead(ChunkKey(id));
    // One buffer per thread, kept: a fresh megabyte for every chunk costs a page fault per
    // page, which on these machines is as much as sealing it.
    thread_local std::unique_ptr<std::uint8_t[]> scratch;
    if (!scratch) scratch = std::make_unique_for_overwrite<std::uint8_t[]>(BlobSize(kMaxChunkSize));
    const MutableByteSpan blob(scratch.get(), BlobSize(data.size()));
    blob[0] = kBlobVersion;
    std::uint8_t* out = blob.data() + 1;
    for (std::size_t i = 0, n = Segments(data.size()); i < n; ++i) {
      const std::size_t start = i * kSeg;
      const std::size_t len = std::min(kSeg, data.size() - start);
      const SegmentParams p(id, data.size(), i);
      aead.SealTo(p.nonce, p.aad, data.subspan(start, len), out, out + len);
      out += len + kTag;
    }
    return inner_->Put(id, blob);
  }

  Result<Bytes> Get(const ChunkId& id) override {
    Result<Bytes> blob = inner_->Get(id);
    if (!blob.ok()) return blob.status();
    auto plain_len = CheckBlob(id, *blob, blob->size());
    if (!plain_len.ok()) return plain_len.status();
    Bytes plain(*plain_len);
    if (Status s = OpenSegments(id, *plain_len, 0, ByteSpan(*blob).subspan(1), plain.data());
        !s.ok()) {
      return s;
    }
    return plain;
  }

  Result<Extent> ReadAt(const ChunkId& id, std::size_t offset, MutableByteSpan out) override {
    if (out.empty()) return Extent{};
    const std::size_t first = offset / kSeg;
    const std::size_t last = (offset + out.size() - 1) / kSeg;
    // Whole segments first..last; from the start of the blob when that is where they begin,
    // so that the version byte is checked too.
    const std::size_t head = first == 0 ? 1 : 0;
    // Buffers kept per thread (a malloc and free of 16 KiB twice per 4 KiB read showed), not
    // zeroed first: every byte used is read or decrypted into.
    const std::size_t raw_size = head + (last - first + 1) * kSealedSeg;
    std::unique_ptr<std::uint8_t[]> raw_big, plain_big;
    const MutableByteSpan raw(ThreadBuffer(0, raw_size, raw_big), raw_size);
    auto got = inner_->ReadAt(id, head ? 0 : 1 + first * kSealedSeg, raw);
    if (!got.ok()) return got.status();
    auto plain_len = CheckBlob(id, ByteSpan(raw).first(head ? got->n : 0), got->total);
    if (!plain_len.ok()) return plain_len.status();
    if (offset >= *plain_len) return Extent{0, *plain_len};
    const std::size_t expect =
        std::min(raw.size() - head, BlobSize(*plain_len) - 1 - first * kSealedSeg);
    if (got->n - head != expect) {
      return Err(Code::kCorruption, "chunk {}: read {} of {} bytes of its blob", Hex(id),
                 got->n - head, expect);
    }
    // Not in place: each segment's plaintext would partly overlap its ciphertext, which
    // OpenSSL refuses.
    const std::size_t plain_size = std::min(*plain_len, (last + 1) * kSeg) - first * kSeg;
    std::uint8_t* plain = ThreadBuffer(1, plain_size, plain_big);
    if (Status s = OpenSegments(id, *plain_len, first, ByteSpan(raw).subspan(head, expect), plain);
        !s.ok()) {
      return s;
    }
    Extent e{std::min(out.size(), *plain_len - offset), *plain_len};
    // The plaintext is not wiped: it is file data, which the reply hands to the kernel's page
    // cache anyway (keys are wiped; see the destructor).
    std::copy_n(plain + (offset - first * kSeg), e.n, out.begin());
    return e;
  }

  Status Sync() override { return inner_->Sync(); }
  void Prefetch(const ChunkId& id) override { inner_->Prefetch(id); }
  bool Has(const ChunkId& id) override { return inner_->Has(id); }
  Status Remove(const ChunkId& id) override { return inner_->Remove(id); }
  Packed PackedUsage() override { return inner_->PackedUsage(); }
  Status BeforeFork() override { return inner_->BeforeFork(); }
  Status ForEach(const std::function<void(const ChunkId&)>& fn) override {
    return inner_->ForEach(fn);
  }

 private:
  // Checks the version byte (if `head` holds the blob's first byte) and that a blob can have
  // `blob_size` bytes; returns the plaintext length.
  static Result<std::size_t> CheckBlob(const ChunkId& id, ByteSpan head, std::size_t blob_size) {
    if (blob_size == 0 || (!head.empty() && head[0] != kBlobVersion)) {
      return Err(Code::kCorruption, "chunk {}: unknown blob format version {}", Hex(id),
                 blob_size == 0 || head.empty() ? -1 : static_cast<int>(head[0]));
    }
    auto plain_len = PlainLength(blob_size);
    if (!plain_len) {
      return Err(Code::kCorruption, "chunk {}: a blob of {} bytes cannot be a sealed chunk",
                 Hex(id), blob_size);
    }
    return *plain_len;
  }

  // Scratch buffer `which` (0 or 1) of this thread, at least `size` bytes. Reads of up to
  // four segments keep theirs per thread (64 KiB each, so 64 threads hold 8 MiB at most);
  // a larger read gets one of its own in `big`.
  static std::uint8_t* ThreadBuffer(int which, std::size_t size,
                                    std::unique_ptr<std::uint8_t[]>& big) {
    constexpr std::size_t kKept = 1 + 4 * kSealedSeg;
    if (size > kKept) {
      big = std::make_unique_for_overwrite<std::uint8_t[]>(size);
      return big.get();
    }
    thread_local std::unique_ptr<std::uint8_t[]> kept[2];
    if (!kept[which]) kept[which] = std::make_unique_for_overwrite<std::uint8_t[]>(kKept);
    return kept[which].get();
  }

  // Opens consecutive sealed segments from index `first` in `sealed` into `out`.
  Status OpenSegments(const ChunkId& id, std::size_t plain_len, std::size_t first, ByteSpan sealed,
                      std::uint8_t* out) const {
    // One per thread, given each chunk's key in turn.
    thread_local crypto::Aead aead{crypto::Key256{}};
    aead.Rekey(ChunkKey(id));
    std::size_t pos = 0;
    for (std::size_t i = first; pos < sealed.size(); ++i) {
      const std::size_t len = std::min(kSeg, plain_len - i * kSeg);
      if (sealed.size() - pos < len + kTag) {
        return Err(Code::kCorruption, "chunk {}: segment {} is cut short", Hex(id), i);
      }
      const SegmentParams p(id, plain_len, i);
      if (Status s =
              aead.OpenTo(p.nonce, p.aad, sealed.subspan(pos, len), sealed.data() + pos + len, out);
          !s.ok()) {
        return Err(Code::kCorruption, "chunk {} failed authentication in segment {}: {}", Hex(id),
                   i, s.message());
      }
      pos += len + kTag;
      out += len;
    }
    return Ok();
  }

  // The chunk's key, from a small cache: HKDF through OpenSSL's EVP_KDF interface cost as
  // much as opening a 16 KiB segment (19% of the daemon's time in 4 KiB random reads); since
  // crypto::HkdfSha256 it is one HMAC (two SHA-256 compressions and two context copies), and a
  // working set of chunks is read again and again. Direct-mapped by the id's first bytes (ids
  // are keyed hashes: uniform), so it never grows; a collision only costs a derivation.
  crypto::Key256 ChunkKey(const ChunkId& id) const {
    const std::size_t slot = (std::size_t{id[0]} << 8 | id[1]) % kKeySlots;
    {
      MutexLock lock(keys_mu_);
      if (keys_[slot].used && keys_[slot].id == id) return keys_[slot].key;
    }
    crypto::Key256 key = DeriveChunkKey(id);
    MutexLock lock(keys_mu_);
    keys_[slot] = KeySlot{id, key, true};
    return key;
  }

  // HKDF-SHA-256 of the data key, empty salt, info "foreverfs chunk " || id.
  crypto::Key256 DeriveChunkKey(const ChunkId& id) const {
    std::array<std::uint8_t, kInfoPrefix.size() + std::tuple_size_v<ChunkId>> info;
    std::copy(kInfoPrefix.begin(), kInfoPrefix.end(), info.begin());
    std::copy(id.begin(), id.end(), info.begin() + kInfoPrefix.size());
    return chunk_keys_.Of(info);
  }

  const std::unique_ptr<ChunkStore> inner_;
  const crypto::HkdfSha256 chunk_keys_;           // from the data key
  static constexpr std::size_t kKeySlots = 1024;  // 64 KiB
  struct KeySlot {
    ChunkId id{};
    crypto::Key256 key{};
    bool used = false;
  };
  mutable Mutex keys_mu_;  // leaf
  mutable std::array<KeySlot, kKeySlots> keys_ GUARDED_BY(keys_mu_){};
};

}  // namespace

std::unique_ptr<ChunkStore> MakeEncryptingStore(std::unique_ptr<ChunkStore> inner,
                                                const crypto::Key256& data_key) {
  return std::make_unique<EncryptingChunkStore>(std::move(inner), data_key);
}

}  // namespace foreverfs::cas
