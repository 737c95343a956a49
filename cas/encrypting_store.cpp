// Seals chunks with AES-256-GCM before they reach the inner store.
//
// Blob format, version 1:  0x01 || AES-256-GCM(key_id, nonce = 12 zero bytes, aad = id) || tag
// where key_id = HKDF-SHA-256(data_key, salt = empty, info = "foreverfs chunk " || id, 32).
// A fixed nonce is safe because every key encrypts exactly one plaintext: the id is the keyed
// hash of the plaintext, so one id (and thus one key) never seals two different messages. The
// encryption is convergent: every node produces the same blob for the same chunk.

#include <openssl/crypto.h>

#include <string>

#include "cas/chunk_store.h"

namespace foreverfs::cas {
namespace {

constexpr std::uint8_t kBlobVersion = 1;
constexpr std::string_view kInfoPrefix = "foreverfs chunk ";

class EncryptingChunkStore final : public ChunkStore {
 public:
  EncryptingChunkStore(std::unique_ptr<ChunkStore> inner, const crypto::Key256& data_key)
      : inner_(std::move(inner)), data_key_(data_key) {}

  ~EncryptingChunkStore() override { OPENSSL_cleanse(data_key_.data(), data_key_.size()); }

  Status Put(const ChunkId& id, ByteSpan data) override {
    if (data.size() > kMaxChunkSize) {
      return Err(Code::kInvalid, "chunk {} of {} bytes exceeds the maximum of {}", Hex(id),
                 data.size(), kMaxChunkSize);
    }
    if (inner_->Has(id)) return Ok();
    const crypto::Aead aead(ChunkKey(id));
    const Bytes sealed = aead.Seal(kNonce, id, data);
    Bytes blob;
    blob.reserve(1 + sealed.size());
    blob.push_back(kBlobVersion);
    blob.insert(blob.end(), sealed.begin(), sealed.end());
    return inner_->Put(id, blob);
  }

  Result<Bytes> Get(const ChunkId& id) override {
    Result<Bytes> blob = inner_->Get(id);
    if (!blob.ok()) return blob.status();
    if (blob->empty() || (*blob)[0] != kBlobVersion) {
      return Err(Code::kCorruption, "chunk {}: unknown blob format version {}", Hex(id),
                 blob->empty() ? -1 : static_cast<int>((*blob)[0]));
    }
    const crypto::Aead aead(ChunkKey(id));
    Bytes plain;
    const ByteSpan sealed = ByteSpan(*blob).subspan(1);
    if (Status s = aead.Open(kNonce, id, sealed, plain); !s.ok()) {
      return Err(Code::kCorruption, "chunk {} failed authentication: {}", Hex(id), s.message());
    }
    return plain;
  }

  bool Has(const ChunkId& id) override { return inner_->Has(id); }
  Status Remove(const ChunkId& id) override { return inner_->Remove(id); }
  Status ForEach(const std::function<void(const ChunkId&)>& fn) override {
    return inner_->ForEach(fn);
  }

 private:
  static constexpr std::array<std::uint8_t, crypto::Aead::kNonceSize> kNonce{};

  crypto::Key256 ChunkKey(const ChunkId& id) const {
    std::string info(kInfoPrefix);
    info.append(reinterpret_cast<const char*>(id.data()), id.size());
    Bytes k = crypto::Hkdf(data_key_, {}, info, 32);
    crypto::Key256 key{};
    std::copy(k.begin(), k.end(), key.begin());
    OPENSSL_cleanse(k.data(), k.size());
    return key;
  }

  const std::unique_ptr<ChunkStore> inner_;
  crypto::Key256 data_key_;
};

}  // namespace

std::unique_ptr<ChunkStore> MakeEncryptingStore(std::unique_ptr<ChunkStore> inner,
                                                const crypto::Key256& data_key) {
  return std::make_unique<EncryptingChunkStore>(std::move(inner), data_key);
}

}  // namespace foreverfs::cas
