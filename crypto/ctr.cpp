// AES-256-CTR with random access, through EVP.

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "crypto/crypto.h"

namespace foreverfs::crypto {

namespace {

[[noreturn]] void Fatal() {
  std::fprintf(stderr, "foreverfs: fatal OpenSSL failure in AES-CTR\n");
  std::abort();
}

// Counter block for `offset`: iv + offset / 16 as a 128-bit big-endian number.
std::array<std::uint8_t, 16> CounterAt(const std::array<std::uint8_t, 16>& iv,
                                       std::uint64_t offset) {
  std::array<std::uint8_t, 16> counter = iv;
  std::uint64_t add = offset / 16;
  for (int i = 15; i >= 0 && add != 0; --i) {
    std::uint64_t sum = counter[static_cast<std::size_t>(i)] + (add & 0xff);
    counter[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(sum);
    add = (add >> 8) + (sum >> 8);
  }
  return counter;
}

// `ctx` is keyed and positioned at the counter block of `offset`.
void XorFrom(EVP_CIPHER_CTX* ctx, std::uint64_t offset, MutableByteSpan data) {
  int len = 0;
  std::array<std::uint8_t, 16> skip{};
  if (offset % 16 != 0 &&
      EVP_EncryptUpdate(ctx, skip.data(), &len, skip.data(), static_cast<int>(offset % 16)) != 1) {
    Fatal();
  }
  std::size_t done = 0;
  while (done < data.size()) {
    int n = static_cast<int>(std::min<std::size_t>(data.size() - done, 1 << 30));
    if (EVP_EncryptUpdate(ctx, data.data() + done, &len, data.data() + done, n) != 1) Fatal();
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace

void CtrXor(const Key256& key, const std::array<std::uint8_t, 16>& iv, std::uint64_t offset,
            MutableByteSpan data) {
  const auto counter = CounterAt(iv, offset);
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                      EVP_CIPHER_CTX_free);
  if (!ctx ||
      EVP_EncryptInit_ex2(ctx.get(), EVP_aes_256_ctr(), key.data(), counter.data(), nullptr) != 1) {
    Fatal();
  }
  XorFrom(ctx.get(), offset, data);
}

Ctr::Ctr(const Key256& key) : ctx_(EVP_CIPHER_CTX_new()) {
  if (!ctx_ || EVP_EncryptInit_ex2(ctx_, EVP_aes_256_ctr(), key.data(), nullptr, nullptr) != 1) {
    Fatal();
  }
}

Ctr::~Ctr() { EVP_CIPHER_CTX_free(ctx_); }

void Ctr::Xor(const std::array<std::uint8_t, 16>& iv, std::uint64_t offset, MutableByteSpan data) {
  const auto counter = CounterAt(iv, offset);
  // A new IV only: the key schedule stays.
  if (EVP_EncryptInit_ex2(ctx_, nullptr, nullptr, counter.data(), nullptr) != 1) Fatal();
  XorFrom(ctx_, offset, data);
}

}  // namespace foreverfs::crypto
