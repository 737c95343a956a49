// AES-256-GCM through EVP_CIPHER_CTX.

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

struct CtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CtxDeleter>;

CipherCtx NewCtx() {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) Die("EVP_CIPHER_CTX_new");
  return ctx;
}

int IntSize(std::size_t n, const char* what) {
  if (n > static_cast<std::size_t>(INT_MAX)) Die(what);
  return static_cast<int>(n);
}

}  // namespace

Bytes Aead::Seal(ByteSpan nonce, ByteSpan aad, ByteSpan plaintext) const {
  if (nonce.size() != kNonceSize) Die("Aead::Seal: nonce size");
  CipherCtx ctx = NewCtx();
  if (EVP_EncryptInit_ex2(ctx.get(), EVP_aes_256_gcm(), key_.data(), nonce.data(), nullptr) != 1) {
    Die("EVP_EncryptInit_ex2");
  }
  int len = 0;
  if (!aad.empty() && EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(),
                                        IntSize(aad.size(), "aad size")) != 1) {
    Die("EVP_EncryptUpdate(aad)");
  }
  Bytes out(plaintext.size() + kTagSize);
  std::size_t written = 0;
  if (!plaintext.empty()) {
    if (EVP_EncryptUpdate(ctx.get(), out.data(), &len, plaintext.data(),
                          IntSize(plaintext.size(), "plaintext size")) != 1) {
      Die("EVP_EncryptUpdate");
    }
    written = static_cast<std::size_t>(len);
  }
  if (EVP_EncryptFinal_ex(ctx.get(), out.data() + written, &len) != 1) Die("EVP_EncryptFinal_ex");
  written += static_cast<std::size_t>(len);
  if (written != plaintext.size()) Die("AES-GCM output size");
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagSize),
                          out.data() + written) != 1) {
    Die("EVP_CTRL_GCM_GET_TAG");
  }
  return out;
}

Status Aead::Open(ByteSpan nonce, ByteSpan aad, ByteSpan sealed, Bytes& out) const {
  if (nonce.size() != kNonceSize) return Err(Code::kInvalid, "AES-GCM nonce must be 12 bytes");
  if (sealed.size() < kTagSize) {
    return Err(Code::kCorruption, "sealed data of {} bytes is shorter than its tag", sealed.size());
  }
  const std::size_t ct_size = sealed.size() - kTagSize;
  CipherCtx ctx = NewCtx();
  if (EVP_DecryptInit_ex2(ctx.get(), EVP_aes_256_gcm(), key_.data(), nonce.data(), nullptr) != 1) {
    Die("EVP_DecryptInit_ex2");
  }
  int len = 0;
  if (!aad.empty() && EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(),
                                        IntSize(aad.size(), "aad size")) != 1) {
    Die("EVP_DecryptUpdate(aad)");
  }
  Bytes plain(ct_size);
  std::size_t written = 0;
  if (ct_size > 0) {
    if (EVP_DecryptUpdate(ctx.get(), plain.data(), &len, sealed.data(),
                          IntSize(ct_size, "ciphertext size")) != 1) {
      Die("EVP_DecryptUpdate");
    }
    written = static_cast<std::size_t>(len);
  }
  // The tag is copied because the ctrl takes a non-const pointer.
  std::uint8_t tag[kTagSize];
  std::copy(sealed.begin() + static_cast<std::ptrdiff_t>(ct_size), sealed.end(), tag);
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagSize), tag) != 1) {
    Die("EVP_CTRL_GCM_SET_TAG");
  }
  if (EVP_DecryptFinal_ex(ctx.get(), plain.data() + written, &len) != 1) {
    // Never release unauthenticated plaintext.
    OPENSSL_cleanse(plain.data(), plain.size());
    return Err(Code::kCorruption, "AES-GCM tag does not verify");
  }
  out = std::move(plain);
  return Ok();
}

}  // namespace foreverfs::crypto
