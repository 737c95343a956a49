// AES-256-CTR with random access: the NIST SP 800-38A F.5.5 vector, and any sub-range of a
// stream encrypted alone equals the same range of the whole stream.
#include <gtest/gtest.h>

#include <random>

#include "crypto/crypto.h"

namespace foreverfs::crypto {
namespace {

Bytes Hex(std::string_view hex) {
  Bytes out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<std::uint8_t>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

TEST(CtrXor, NistSp800_38aF55) {
  Key256 key{};
  auto k = Hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
  std::copy(k.begin(), k.end(), key.begin());
  std::array<std::uint8_t, 16> iv{};
  auto c = Hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
  std::copy(c.begin(), c.end(), iv.begin());
  Bytes data =
      Hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
          "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710");
  const Bytes expected =
      Hex("601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
          "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6");
  Bytes whole = data;
  CtrXor(key, iv, 0, whole);
  EXPECT_EQ(whole, expected);
  // Block 2 alone (the counter carries from ...feff to ...ff00), and an unaligned piece.
  Bytes block2(data.begin() + 16, data.begin() + 32);
  CtrXor(key, iv, 16, block2);
  EXPECT_EQ(block2, Bytes(expected.begin() + 16, expected.begin() + 32));
  Bytes piece(data.begin() + 21, data.begin() + 50);
  CtrXor(key, iv, 21, piece);
  EXPECT_EQ(piece, Bytes(expected.begin() + 21, expected.begin() + 50));
  CtrXor(key, iv, 0, whole);
  EXPECT_EQ(whole, data);
}

TEST(CtrXor, AnyRangeMatchesTheWholeStream) {
  Key256 key{};
  std::array<std::uint8_t, 16> iv{};
  iv.fill(0xff);  // the counter wraps around 2^128 at once
  RandomBytes(key);
  Bytes plain(100000);
  std::mt19937 rng(7);
  for (auto& b : plain) b = static_cast<std::uint8_t>(rng());
  Bytes whole = plain;
  CtrXor(key, iv, 0, whole);
  for (int i = 0; i < 200; ++i) {
    std::size_t off = rng() % plain.size();
    std::size_t len = rng() % (plain.size() - off);
    Bytes part(plain.begin() + static_cast<long>(off),
               plain.begin() + static_cast<long>(off + len));
    CtrXor(key, iv, off, part);
    ASSERT_TRUE(std::equal(part.begin(), part.end(), whole.begin() + static_cast<long>(off)))
        << "offset " << off << " length " << len;
  }
}

}  // namespace
TEST(Ctr, KeyedOnceMatchesCtrXorForEveryIvAndOffset) {
  Key256 key{};
  for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<std::uint8_t>(i * 7);
  Ctr ctr(key);
  std::mt19937 rng(5);
  for (int i = 0; i < 200; ++i) {
    std::array<std::uint8_t, 16> iv{};
    for (auto& b : iv) b = static_cast<std::uint8_t>(rng());
    const std::uint64_t offset = rng() % 100000;
    Bytes a(rng() % 5000), b;
    for (auto& x : a) x = static_cast<std::uint8_t>(rng());
    b = a;
    CtrXor(key, iv, offset, a);
    ctr.Xor(iv, offset, b);
    ASSERT_EQ(a, b) << i;
  }
}

}  // namespace foreverfs::crypto
