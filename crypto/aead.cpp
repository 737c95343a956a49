// AES-256-GCM through EVP_CIPHER_CTX. Each Aead keeps one context per direction, keyed once;
// every message then only sets its nonce.

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "crypto/crypto.h"

namespace foreverfs::crypto {
namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "foreverfs: fatal OpenSSL failure in %s\n", what);
  std::abort();
}

int IntSize(std::size_t n, const char* what) {
  if (n > static_cast<std::size_t>(INT_MAX)) Die(what);
  return static_cast<int>(n);
}

}  // namespace

struct Aead::Ctx {
  EVP_CIPHER_CTX* ctx = nullptr;
  ~Ctx() { EVP_CIPHER_CTX_free(ctx); }
};

// The context in `slot`, created and keyed on first use (the key schedule is done once).
EVP_CIPHER_CTX* Aead::KeyedCtx(Ctx*& slot, const Key256& key, bool encrypt) {
  if (!slot) {
    slot = new Ctx;
    slot->ctx = EVP_CIPHER_CTX_new();
    if (!slot->ctx) Die("EVP_CIPHER_CTX_new");
    if (EVP_CipherInit_ex2(slot->ctx, EVP_aes_256_gcm(), key.data(), nullptr, encrypt ? 1 : 0,
                           nullptr) != 1) {
      Die("EVP_CipherInit_ex2(key)");
    }
  }
  return slot->ctx;
}

Aead::Aead(const Key256& key) : key_(key) {}

void Aead::Rekey(const Key256& key) {
  key_ = key;
  for (auto [slot, encrypt] : {std::pair{enc_, 1}, std::pair{dec_, 0}}) {
    if (slot &&
        EVP_CipherInit_ex2(slot->ctx, nullptr, key_.data(), nullptr, encrypt, nullptr) != 1) {
      Die("EVP_CipherInit_ex2(rekey)");
    }
  }
}

Aead::~Aead() {
  delete enc_;
  delete dec_;
  OPENSSL_cleanse(key_.data(), key_.size());
}

void Aead::SealTo(ByteSpan nonce, ByteSpan aad, ByteSpan in, std::uint8_t* out,
                  std::uint8_t* tag) const {
  if (nonce.size() != kNonceSize) Die("Aead::Seal: nonce size");
  EVP_CIPHER_CTX* ctx = KeyedCtx(const_cast<Aead*>(this)->enc_, key_, true);
  if (EVP_EncryptInit_ex2(ctx, nullptr, nullptr, nonce.data(), nullptr) != 1) {
    Die("EVP_EncryptInit_ex2(nonce)");
  }
  int len = 0;
  if (!aad.empty() &&
      EVP_EncryptUpdate(ctx, nullptr, &len, aad.data(), IntSize(aad.size(), "aad size")) != 1) {
    Die("EVP_EncryptUpdate(aad)");
  }
  std::size_t written = 0;
  if (!in.empty()) {
    if (EVP_EncryptUpdate(ctx, out, &len, in.data(), IntSize(in.size(), "plaintext size")) != 1) {
      Die("EVP_EncryptUpdate");
    }
    written = static_cast<std::size_t>(len);
  }
  if (EVP_EncryptFinal_ex(ctx, out + written, &len) != 1) Die("EVP_EncryptFinal_ex");
  written += static_cast<std::size_t>(len);
  if (written != in.size()) Die("AES-GCM output size");
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagSize), tag) != 1) {
    Die("EVP_CTRL_GCM_GET_TAG");
  }
}

Status Aead::OpenTo(ByteSpan nonce, ByteSpan aad, ByteSpan in, const std::uint8_t* tag,
                    std::uint8_t* out) const {
  if (nonce.size() != kNonceSize) return Err(Code::kInvalid, "AES-GCM nonce must be 12 bytes");
  EVP_CIPHER_CTX* ctx = KeyedCtx(const_cast<Aead*>(this)->dec_, key_, false);
  if (EVP_DecryptInit_ex2(ctx, nullptr, nullptr, nonce.data(), nullptr) != 1) {
    Die("EVP_DecryptInit_ex2(nonce)");
  }
  int len = 0;
  if (!aad.empty() &&
      EVP_DecryptUpdate(ctx, nullptr, &len, aad.data(), IntSize(aad.size(), "aad size")) != 1) {
    Die("EVP_DecryptUpdate(aad)");
  }
  std::size_t written = 0;
  if (!in.empty()) {
    if (EVP_DecryptUpdate(ctx, out, &len, in.data(), IntSize(in.size(), "ciphertext size")) != 1) {
      Die("EVP_DecryptUpdate");
    }
    written = static_cast<std::size_t>(len);
  }
  // The tag is copied because the ctrl takes a non-const pointer.
  std::uint8_t t[kTagSize];
  std::copy(tag, tag + kTagSize, t);
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagSize), t) != 1) {
    Die("EVP_CTRL_GCM_SET_TAG");
  }
  if (EVP_DecryptFinal_ex(ctx, out + written, &len) != 1) {
    OPENSSL_cleanse(out, in.size());
    return Err(Code::kCorruption, "AES-GCM tag does not verify");
  }
  return Ok();
}

Bytes Aead::Seal(ByteSpan nonce, ByteSpan aad, ByteSpan plaintext) const {
  Bytes out(plaintext.size() + kTagSize);
  SealTo(nonce, aad, plaintext, out.data(), out.data() + plaintext.size());
  return out;
}

Status Aead::Open(ByteSpan nonce, ByteSpan aad, ByteSpan sealed, Bytes& out) const {
  if (nonce.size() != kNonceSize) return Err(Code::kInvalid, "AES-GCM nonce must be 12 bytes");
  if (sealed.size() < kTagSize) {
    return Err(Code::kCorruption, "sealed data of {} bytes is shorter than its tag", sealed.size());
  }
  const std::size_t ct_size = sealed.size() - kTagSize;
  Bytes plain(ct_size);
  if (Status s = OpenTo(nonce, aad, sealed.first(ct_size), sealed.data() + ct_size, plain.data());
      !s.ok()) {
    return s;
  }
  out = std::move(plain);
  return Ok();
}

}  // namespace foreverfs::crypto
