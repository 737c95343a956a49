// SHA-256, HMAC-SHA-256, hex helpers and the CSPRNG, through OpenSSL 3 EVP.

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "crypto/crypto.h"

namespace foreverfs::crypto {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

[[noreturn]] void Die(const char* what) {
  // Failure of the OpenSSL primitives means a broken library or out of memory: a bug, not an
  // error to recover from.
  std::fprintf(stderr, "foreverfs: fatal OpenSSL failure in %s\n", what);
  std::abort();
}

}  // namespace

std::string ToHex(ByteSpan bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::uint8_t b : bytes) {
    out.push_back(kHexDigits[b >> 4]);
    out.push_back(kHexDigits[b & 0xf]);
  }
  return out;
}

std::optional<Digest> DigestFromHex(std::string_view hex) {
  Digest d{};
  if (hex.size() != d.size() * 2) return std::nullopt;
  for (std::size_t i = 0; i < d.size(); ++i) {
    int hi = HexValue(hex[2 * i]);
    int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    d[i] = static_cast<std::uint8_t>((hi << 4) | lo);
  }
  return d;
}

void RandomBytes(MutableByteSpan out) {
  std::size_t done = 0;
  while (done < out.size()) {
    // RAND_bytes takes an int length.
    std::size_t n = std::min<std::size_t>(out.size() - done, 1 << 30);
    if (RAND_bytes(out.data() + done, static_cast<int>(n)) != 1) Die("RAND_bytes");
    done += n;
  }
}

std::uint64_t RandomU64() {
  std::uint8_t buf[8];
  RandomBytes(buf);
  std::uint64_t v;
  std::memcpy(&v, buf, sizeof v);
  return v;
}

struct Sha256::Impl {
  EVP_MD_CTX* ctx = nullptr;
};

Sha256::Sha256() : impl_(new Impl) {
  impl_->ctx = EVP_MD_CTX_new();
  if (impl_->ctx == nullptr) Die("EVP_MD_CTX_new");
  if (EVP_DigestInit_ex2(impl_->ctx, EVP_sha256(), nullptr) != 1) Die("EVP_DigestInit_ex2");
}

Sha256::~Sha256() {
  EVP_MD_CTX_free(impl_->ctx);
  delete impl_;
}

void Sha256::Update(ByteSpan data) {
  if (data.empty()) return;
  if (EVP_DigestUpdate(impl_->ctx, data.data(), data.size()) != 1) Die("EVP_DigestUpdate");
}

Digest Sha256::Finish() {
  Digest d{};
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(impl_->ctx, d.data(), &len) != 1 || len != d.size()) {
    Die("EVP_DigestFinal_ex");
  }
  // Leave the object ready for another message.
  if (EVP_DigestInit_ex2(impl_->ctx, EVP_sha256(), nullptr) != 1) Die("EVP_DigestInit_ex2");
  return d;
}

Digest Sha256::Of(ByteSpan data) {
  Digest d{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), d.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != d.size()) {
    Die("EVP_Digest");
  }
  return d;
}

Digest HmacSha256(ByteSpan key, ByteSpan data) {
  Digest d{};
  std::size_t len = 0;
  // OpenSSL rejects a null key pointer even with length 0; point at a dummy byte instead.
  static const std::uint8_t kEmpty = 0;
  const std::uint8_t* key_ptr = key.empty() ? &kEmpty : key.data();
  const std::uint8_t* data_ptr = data.empty() ? &kEmpty : data.data();
  if (EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key_ptr, key.size(), data_ptr,
                data.size(), d.data(), d.size(), &len) == nullptr ||
      len != d.size()) {
    Die("EVP_Q_mac");
  }
  return d;
}

namespace {

constexpr std::size_t kShaBlock = 64;

EVP_MD_CTX* PaddedCtx(const std::array<std::uint8_t, kShaBlock>& block, std::uint8_t pad) {
  std::array<std::uint8_t, kShaBlock> padded{};
  for (std::size_t i = 0; i < kShaBlock; ++i) padded[i] = block[i] ^ pad;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr || EVP_DigestInit_ex2(ctx, EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(ctx, padded.data(), padded.size()) != 1) {
    Die("HMAC key setup");
  }
  OPENSSL_cleanse(padded.data(), padded.size());
  return ctx;
}

// A reusable digest context per thread for HmacSha256Key::Of (the inner hash, then the outer).
struct ThreadMdCtx {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ThreadMdCtx() {
    if (ctx == nullptr) Die("EVP_MD_CTX_new");
  }
  ~ThreadMdCtx() { EVP_MD_CTX_free(ctx); }
  ThreadMdCtx(const ThreadMdCtx&) = delete;
  ThreadMdCtx& operator=(const ThreadMdCtx&) = delete;
};

}  // namespace

HmacSha256Key::HmacSha256Key(ByteSpan key) {
  // RFC 2104: a key longer than a block is hashed first, a shorter one padded with zeros.
  std::array<std::uint8_t, kShaBlock> block{};
  if (key.size() > kShaBlock) {
    const Digest d = Sha256::Of(key);
    std::copy(d.begin(), d.end(), block.begin());
  } else {
    std::copy(key.begin(), key.end(), block.begin());
  }
  inner_ = PaddedCtx(block, 0x36);
  outer_ = PaddedCtx(block, 0x5c);
  OPENSSL_cleanse(block.data(), block.size());
}

HmacSha256Key::~HmacSha256Key() {
  EVP_MD_CTX_free(inner_);
  EVP_MD_CTX_free(outer_);
}

Digest HmacSha256Key::Of(ByteSpan data) const {
  thread_local ThreadMdCtx work;
  Digest inner{};
  Digest d{};
  unsigned int len = 0;
  if (EVP_MD_CTX_copy_ex(work.ctx, inner_) != 1 ||
      (!data.empty() && EVP_DigestUpdate(work.ctx, data.data(), data.size()) != 1) ||
      EVP_DigestFinal_ex(work.ctx, inner.data(), &len) != 1 || len != inner.size() ||
      EVP_MD_CTX_copy_ex(work.ctx, outer_) != 1 ||
      EVP_DigestUpdate(work.ctx, inner.data(), inner.size()) != 1 ||
      EVP_DigestFinal_ex(work.ctx, d.data(), &len) != 1 || len != d.size()) {
    Die("HMAC-SHA-256");
  }
  return d;
}

}  // namespace foreverfs::crypto
