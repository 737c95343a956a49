// AES-256-CTR with random access, through EVP.

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "crypto/crypto.h"

namespace foreverfs::crypto {

void CtrXor(const Key256& key, const std::array<std::uint8_t, 16>& iv, std::uint64_t offset,
            MutableByteSpan data) {
  // Counter block for `offset`: iv + offset / 16 as a 128-bit big-endian number.
  std::array<std::uint8_t, 16> counter = iv;
  std::uint64_t add = offset / 16;
  for (int i = 15; i >= 0 && add != 0; --i) {
    std::uint64_t sum = counter[static_cast<std::size_t>(i)] + (add & 0xff);
    counter[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(sum);
    add = (add >> 8) + (sum >> 8);
  }
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                      EVP_CIPHER_CTX_free);
  int len = 0;
  std::array<std::uint8_t, 16> skip{};
  if (!ctx ||
      EVP_EncryptInit_ex2(ctx.get(), EVP_aes_256_ctr(), key.data(), counter.data(), nullptr) != 1 ||
      (offset % 16 != 0 && EVP_EncryptUpdate(ctx.get(), skip.data(), &len, skip.data(),
                                             static_cast<int>(offset % 16)) != 1)) {
    std::fprintf(stderr, "foreverfs: fatal OpenSSL failure in CtrXor\n");
    std::abort();
  }
  std::size_t done = 0;
  while (done < data.size()) {
    int n = static_cast<int>(std::min<std::size_t>(data.size() - done, 1 << 30));
    if (EVP_EncryptUpdate(ctx.get(), data.data() + done, &len, data.data() + done, n) != 1) {
      std::fprintf(stderr, "foreverfs: fatal OpenSSL failure in CtrXor\n");
      std::abort();
    }
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace foreverfs::crypto
