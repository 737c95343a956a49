#pragma once
// crypto/: hashing, authenticated encryption, key derivation and cluster key files, all through
// OpenSSL 3 EVP. Every function is thread-safe; objects are not shared between threads, except
// HmacSha256Key, whose Of() is safe from any number of threads.

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "base/bytes.h"
#include "base/status.h"

// OpenSSL's context types (openssl/types.h), declared here at global scope so that every
// translation unit names the same types.
struct evp_md_ctx_st;
struct evp_cipher_ctx_st;

namespace foreverfs::crypto {

using Digest = std::array<std::uint8_t, 32>;
using Key256 = std::array<std::uint8_t, 32>;

std::string ToHex(ByteSpan bytes);
// Parses exactly 64 hex digits (either case); nullopt otherwise.
std::optional<Digest> DigestFromHex(std::string_view hex);

// Fills `out` from the OpenSSL CSPRNG; aborts if the generator fails.
void RandomBytes(MutableByteSpan out);
std::uint64_t RandomU64();

// Streaming SHA-256.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(ByteSpan data);
  Digest Finish();
  static Digest Of(ByteSpan data);

 private:
  struct Impl;
  Impl* impl_;  // owned; EVP_MD_CTX
};

// HMAC-SHA-256 (RFC 2104) in one call.
Digest HmacSha256(ByteSpan key, ByteSpan data);

// HMAC-SHA-256 under one fixed key, many messages: the key's inner and outer pads are hashed
// once here, so a message costs its own hashing and two context copies (EVP_Q_mac fetched the
// algorithm and keyed a context on every call). Of() is safe from any number of threads.
class HmacSha256Key {
 public:
  explicit HmacSha256Key(ByteSpan key);
  ~HmacSha256Key();
  HmacSha256Key(const HmacSha256Key&) = delete;
  HmacSha256Key& operator=(const HmacSha256Key&) = delete;
  Digest Of(ByteSpan data) const;

 private:
  ::evp_md_ctx_st* inner_;  // owned: SHA-256 after (key ^ ipad)
  ::evp_md_ctx_st* outer_;  // owned: SHA-256 after (key ^ opad)
};

// HKDF-SHA-256 (RFC 5869): extract with `salt`, expand with `info` to `length` bytes.
Bytes Hkdf(ByteSpan ikm, ByteSpan salt, std::string_view info, std::size_t length);
// A 256-bit subkey of `master` for one purpose (HKDF, empty salt, info = purpose).
Key256 DeriveKey(const Key256& master, std::string_view purpose);

// HKDF-SHA-256 with one input key and salt, many infos: the extract step and the HMAC pads of
// its output are computed once, so a 32-byte key costs one HMAC of the info (the EVP_KDF path
// allocates, parses parameters and extracts again on every call: 2% of a small file's close).
// Of() returns exactly Hkdf(ikm, salt, info, 32) and is safe from any number of threads.
class HkdfSha256 {
 public:
  HkdfSha256(ByteSpan ikm, ByteSpan salt);
  Key256 Of(ByteSpan info) const;

 private:
  explicit HkdfSha256(Digest prk);  // wipes its copy
  HmacSha256Key prk_;
};

// AES-256-GCM with 12-byte nonces and 16-byte tags appended to the ciphertext.
class Aead {
 public:
  static constexpr std::size_t kNonceSize = 12;
  static constexpr std::size_t kTagSize = 16;
  explicit Aead(const Key256& key);
  ~Aead();
  Aead(const Aead&) = delete;
  Aead& operator=(const Aead&) = delete;
  // Another key for the contexts already made (no new context: a reader reusing one Aead per
  // thread for every chunk's key saves a context's allocation, set-up and wipe per read).
  void Rekey(const Key256& key);
  // Returns ciphertext || tag.
  Bytes Seal(ByteSpan nonce, ByteSpan aad, ByteSpan plaintext) const;
  // Writes the plaintext to `out` (resized); kCorruption if the tag does not verify.
  Status Open(ByteSpan nonce, ByteSpan aad, ByteSpan sealed, Bytes& out) const;
  // The same into caller buffers, for messages sealed in segments: `out` has in.size() bytes
  // and may be `in` itself. The key schedule is done once per Aead, not per call.
  void SealTo(ByteSpan nonce, ByteSpan aad, ByteSpan in, std::uint8_t* out,
              std::uint8_t* tag) const;
  // On a bad tag `out` is wiped and kCorruption returned: unauthenticated bytes never leave.
  Status OpenTo(ByteSpan nonce, ByteSpan aad, ByteSpan in, const std::uint8_t* tag,
                std::uint8_t* out) const;

 private:
  struct Ctx;
  static ::evp_cipher_ctx_st* KeyedCtx(Ctx*& slot, const Key256& key, bool encrypt);
  Key256 key_;
  Ctx* enc_ = nullptr;  // owned; created on first use
  Ctx* dec_ = nullptr;
};

// AES-256-CTR: XORs `data` in place with the keystream at byte `offset` of the stream whose
// first counter block is `iv` (so any range can be encrypted or decrypted on its own).
// Confidentiality only, no integrity: for local scratch data under a key that never leaves
// the process.
void CtrXor(const Key256& key, const std::array<std::uint8_t, 16>& iv, std::uint64_t offset,
            MutableByteSpan data);

// The same with the key schedule done once: for many short ranges under one key (staging files).
// Not thread-safe.
class Ctr {
 public:
  explicit Ctr(const Key256& key);
  ~Ctr();
  Ctr(const Ctr&) = delete;
  Ctr& operator=(const Ctr&) = delete;
  void Xor(const std::array<std::uint8_t, 16>& iv, std::uint64_t offset, MutableByteSpan data);

 private:
  ::evp_cipher_ctx_st* ctx_;  // owned
};

// The cluster key: 32 secret bytes stored in a file as 64 hex digits and a newline.
struct ClusterKey {
  Key256 secret{};
};

// Writes a new random key to `path` with mode 0600. Never overwrites: kExists if it is there.
Status WriteNewKeyFile(const std::filesystem::path& path);
// Reads a key file. Refuses (kPermission) a file readable or writable by group or others, or
// owned by a user other than the effective one, with a message naming the path and its mode or
// owner, as ssh does for private keys.
Result<ClusterKey> ReadKeyFile(const std::filesystem::path& path);

}  // namespace foreverfs::crypto
