// HKDF-SHA-256 (RFC 5869) through the OpenSSL 3 EVP_KDF interface.

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "crypto/crypto.h"

namespace foreverfs::crypto {
namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "foreverfs: fatal OpenSSL failure in %s\n", what);
  std::abort();
}

// Fetching the KDF is comparatively costly; do it once. EVP_KDF objects are immutable and
// may be shared between threads.
EVP_KDF* HkdfAlgorithm() {
  static EVP_KDF* kdf = [] {
    EVP_KDF* k = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
    if (k == nullptr) Die("EVP_KDF_fetch(HKDF)");
    return k;
  }();
  return kdf;
}

}  // namespace

Bytes Hkdf(ByteSpan ikm, ByteSpan salt, std::string_view info, std::size_t length) {
  Bytes out(length);
  if (length == 0) return out;
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(HkdfAlgorithm());
  if (ctx == nullptr) Die("EVP_KDF_CTX_new");
  char digest[] = "SHA256";
  OSSL_PARAM params[5];
  std::size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = OSSL_PARAM_construct_octet_string(
      OSSL_KDF_PARAM_KEY, const_cast<std::uint8_t*>(ikm.data()), ikm.size());
  if (!salt.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_SALT, const_cast<std::uint8_t*>(salt.data()), salt.size());
  }
  if (!info.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO,
                                                    const_cast<char*>(info.data()), info.size());
  }
  params[n] = OSSL_PARAM_construct_end();
  int rc = EVP_KDF_derive(ctx, out.data(), out.size(), params);
  EVP_KDF_CTX_free(ctx);
  if (rc != 1) Die("EVP_KDF_derive(HKDF)");
  return out;
}

Key256 DeriveKey(const Key256& master, std::string_view purpose) {
  Bytes b = Hkdf(master, {}, purpose, 32);
  Key256 k{};
  std::copy(b.begin(), b.end(), k.begin());
  OPENSSL_cleanse(b.data(), b.size());
  return k;
}

// RFC 5869 2.2: an absent salt is HashLen zeros, which HMAC pads to the same block as empty.
HkdfSha256::HkdfSha256(ByteSpan ikm, ByteSpan salt) : HkdfSha256(HmacSha256(salt, ikm)) {}

HkdfSha256::HkdfSha256(Digest prk) : prk_(prk) { OPENSSL_cleanse(prk.data(), prk.size()); }

Key256 HkdfSha256::Of(ByteSpan info) const {
  // RFC 5869 2.3 for L = HashLen: T(1) = HMAC(PRK, info || 0x01), one block.
  thread_local Bytes msg;
  msg.assign(info.begin(), info.end());
  msg.push_back(0x01);
  Key256 out = prk_.Of(msg);
  OPENSSL_cleanse(msg.data(), msg.size());
  return out;
}

}  // namespace foreverfs::crypto
