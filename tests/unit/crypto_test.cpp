// Crypto against published test vectors, and the cluster key file rules.

#include "crypto/crypto.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace foreverfs::crypto {
namespace {

namespace fs = std::filesystem;

Bytes FromHex(std::string_view hex) {
  Bytes out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<std::uint8_t>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

std::string HexOf(ByteSpan b) { return ToHex(b); }

TEST(HexTest, RoundTrip) {
  const std::string hex = "00ff10abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123";
  auto d = DigestFromHex(hex);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(ToHex(*d), hex);
  auto upper = DigestFromHex("00FF10ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123");
  ASSERT_TRUE(upper.has_value());
  EXPECT_EQ(*upper, *d);
  EXPECT_FALSE(DigestFromHex(hex.substr(1)).has_value());
  EXPECT_FALSE(DigestFromHex(hex + "0").has_value());
  EXPECT_FALSE(DigestFromHex("g" + hex.substr(1)).has_value());
}

// FIPS 180-2 examples.
TEST(Sha256Test, PublishedVectors) {
  EXPECT_EQ(HexOf(Sha256::Of(AsBytes("abc"))),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HexOf(Sha256::Of({})),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(HexOf(Sha256::Of(AsBytes("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, StreamingMatchesOneShot) {
  Sha256 h;
  h.Update(AsBytes("abcdbcdecdefdefgefghfghighij"));
  h.Update({});
  h.Update(AsBytes("hijkijkljklmklmnlmnomnopnopq"));
  EXPECT_EQ(HexOf(h.Finish()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // Finish resets the object for the next message.
  h.Update(AsBytes("abc"));
  EXPECT_EQ(HexOf(h.Finish()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// RFC 4231 test cases 1 and 2.
TEST(HmacSha256Test, Rfc4231) {
  const Bytes key1(20, 0x0b);
  EXPECT_EQ(HexOf(HmacSha256(key1, AsBytes("Hi There"))),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(HexOf(HmacSha256(AsBytes("Jefe"), AsBytes("what do ya want for nothing?"))),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(HmacSha256Test, EmptyInputs) {
  // HMAC-SHA-256 with an empty key of an empty message (widely published value).
  EXPECT_EQ(HexOf(HmacSha256({}, {})),
            "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

// The keyed form gives what the one-call form gives, at every key and message size around
// SHA-256's 64-byte block (RFC 2104: keys over a block are hashed first), and the RFC 4231
// vectors; from several threads at once.
TEST(HmacSha256Test, KeyedFormMatchesTheOneCallForm) {
  EXPECT_EQ(HexOf(HmacSha256Key(Bytes(20, 0x0b)).Of(AsBytes("Hi There"))),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(HexOf(HmacSha256Key(AsBytes("Jefe")).Of(AsBytes("what do ya want for nothing?"))),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // RFC 4231 test case 6: a 131-byte key.
  EXPECT_EQ(HexOf(HmacSha256Key(Bytes(131, 0xaa))
                      .Of(AsBytes("Test Using Larger Than Block-Size Key - Hash Key First"))),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  Bytes data(1 << 20);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 131 + 7);
  for (std::size_t key_size : {0, 1, 31, 32, 63, 64, 65, 128, 200}) {
    const Bytes key(data.begin() + 100, data.begin() + 100 + static_cast<std::ptrdiff_t>(key_size));
    const HmacSha256Key keyed(key);
    for (std::size_t n : {0, 1, 55, 56, 63, 64, 65, 4096, 1 << 20}) {
      const ByteSpan msg(data.data(), n);
      EXPECT_EQ(keyed.Of(msg), HmacSha256(key, msg)) << "key " << key_size << ", message " << n;
      EXPECT_EQ(keyed.Of(msg), keyed.Of(msg)) << "the key is left as it was";
    }
  }
  const Bytes key(32, 0x42);
  const HmacSha256Key keyed(key);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const ByteSpan msg(data.data() + t * 1000 + i, static_cast<std::size_t>(i * 37 % 5000));
        if (keyed.Of(msg) != HmacSha256(key, msg)) ++wrong;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

// RFC 5869 test case 1.
TEST(HkdfTest, Rfc5869Case1) {
  const Bytes ikm(22, 0x0b);
  const Bytes salt = FromHex("000102030405060708090a0b0c");
  const Bytes info = FromHex("f0f1f2f3f4f5f6f7f8f9");
  const Bytes okm = Hkdf(ikm, salt, AsChars(info), 42);
  EXPECT_EQ(HexOf(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
}

// RFC 5869 test case 3: empty salt and info.
TEST(HkdfTest, Rfc5869Case3) {
  const Bytes ikm(22, 0x0b);
  EXPECT_EQ(HexOf(Hkdf(ikm, {}, "", 42)),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
}

// The precomputed form gives the RFC's vectors (their first 32 bytes) and exactly what the
// EVP_KDF path gives, for infos at 0 bytes, one HMAC block less the counter byte, one block,
// one past it and many blocks, and salts absent, short and longer than a block.
TEST(HkdfTest, PrecomputedFormMatchesTheRfcAndEvpKdf) {
  const Bytes ikm(22, 0x0b);
  const Bytes salt = FromHex("000102030405060708090a0b0c");
  const HkdfSha256 case1(ikm, salt);
  const Key256 k1 = case1.Of(FromHex("f0f1f2f3f4f5f6f7f8f9"));
  EXPECT_EQ(HexOf(Bytes(k1.begin(), k1.end())),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf");
  const Key256 k3 = HkdfSha256(ikm, {}).Of({});
  EXPECT_EQ(HexOf(Bytes(k3.begin(), k3.end())),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d");

  Bytes big(300);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::uint8_t>(i * 7 + 1);
  for (const Bytes& s : {Bytes{}, salt, Bytes(65, 0x5a), Bytes(32, 0)}) {
    const HkdfSha256 kdf(big, s);
    for (std::size_t n : {0, 1, 47, 48, 63, 64, 65, 200, 300}) {
      const Bytes info(big.begin(), big.begin() + static_cast<std::ptrdiff_t>(n));
      const Key256 k = kdf.Of(info);
      const std::string_view chars(reinterpret_cast<const char*>(info.data()), info.size());
      EXPECT_EQ(Bytes(k.begin(), k.end()), Hkdf(big, s, chars, 32))
          << "salt " << s.size() << " bytes, info " << n << " bytes";
    }
  }
  // An all-zero salt of hash length is the absent salt (RFC 5869 2.2).
  EXPECT_EQ(HkdfSha256(big, Bytes(32, 0)).Of(salt), HkdfSha256(big, {}).Of(salt));
}

// A chunk's key as the encrypting store derives it (data key 0x42 x 32, info "foreverfs chunk "
// and the id 01..20), against a value computed apart from OpenSSL (Python's hmac module): a
// change of the derivation would make every stored chunk unreadable. And Of() from several
// threads at once gives every thread its own info's key.
TEST(HkdfTest, ChunkKeyKnownAnswerAndThreads) {
  const Bytes data_key(32, 0x42);
  const HkdfSha256 kdf(data_key, {});
  const ByteSpan prefix = AsBytes("foreverfs chunk ");
  Bytes info(prefix.begin(), prefix.end());
  for (int i = 1; i <= 32; ++i) info.push_back(static_cast<std::uint8_t>(i));
  const Key256 k = kdf.Of(info);
  EXPECT_EQ(HexOf(Bytes(k.begin(), k.end())),
            "74bbb2e5e5208929cb413b6b1f9790e2409535770f6a450a4b7abb4087a57813");
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        Bytes mine = info;
        mine.back() = static_cast<std::uint8_t>(t * 64 + i % 64);
        mine.resize(mine.size() + static_cast<std::size_t>(i % 80), static_cast<std::uint8_t>(t));
        const std::string_view chars(reinterpret_cast<const char*>(mine.data()), mine.size());
        const Key256 got = kdf.Of(mine);
        if (Bytes(got.begin(), got.end()) != Hkdf(data_key, {}, chars, 32)) ++wrong;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(HkdfTest, DeriveKeySeparatesPurposes) {
  Key256 master{};
  master.fill(0x42);
  const Key256 a = DeriveKey(master, "foreverfs data v1");
  const Key256 b = DeriveKey(master, "foreverfs chunk-id v1");
  EXPECT_NE(a, b);
  EXPECT_EQ(a, DeriveKey(master, "foreverfs data v1"));
  const Bytes expected = Hkdf(master, {}, "foreverfs data v1", 32);
  EXPECT_EQ(Bytes(a.begin(), a.end()), expected);
}

Key256 KeyFromHex(std::string_view hex) {
  Key256 k{};
  const Bytes b = FromHex(hex);
  std::copy(b.begin(), b.end(), k.begin());
  return k;
}

// McGrew & Viega, "The Galois/Counter Mode of Operation", test case 13 (zero key, empty).
TEST(AeadTest, GcmSpecCase13) {
  const Aead aead(Key256{});
  const Bytes nonce(12, 0);
  const Bytes sealed = aead.Seal(nonce, {}, {});
  EXPECT_EQ(HexOf(sealed), "530f8afbc74536b9a963b4f1c4cb738b");
  Bytes out{1, 2, 3};
  ASSERT_TRUE(aead.Open(nonce, {}, sealed, out).ok());
  EXPECT_TRUE(out.empty());
}

// Same paper, test case 16: 256-bit key, 60-byte plaintext, 20 bytes of AAD.
TEST(AeadTest, GcmSpecCase16) {
  const Aead aead(KeyFromHex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"));
  const Bytes nonce = FromHex("cafebabefacedbaddecaf888");
  const Bytes aad = FromHex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
  const Bytes plain = FromHex(
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
  const std::string expected =
      "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
      "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
      "76fc6ece0f4e1768cddf8853bb2d551b";
  const Bytes sealed = aead.Seal(nonce, aad, plain);
  EXPECT_EQ(HexOf(sealed), expected);
  Bytes out;
  ASSERT_TRUE(aead.Open(nonce, aad, sealed, out).ok());
  EXPECT_EQ(out, plain);
}

// Rekey gives an Aead whose contexts exist (both directions used) another key: it then seals
// and opens exactly as a fresh Aead of that key (the spec's test case 16), and no longer opens
// what the old key sealed.
TEST(AeadTest, RekeyedAeadMatchesAFreshOne) {
  const Key256 spec =
      KeyFromHex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
  const Bytes nonce = FromHex("cafebabefacedbaddecaf888");
  const Bytes aad = FromHex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
  const Bytes plain = FromHex(
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
  Key256 other{};
  RandomBytes(other);
  Aead aead(other);
  const Bytes by_other = aead.Seal(nonce, aad, plain);
  Bytes out;
  ASSERT_TRUE(aead.Open(nonce, aad, by_other, out).ok());
  aead.Rekey(spec);
  const Bytes sealed = aead.Seal(nonce, aad, plain);
  EXPECT_EQ(sealed, Aead(spec).Seal(nonce, aad, plain));
  EXPECT_EQ(HexOf(sealed).substr(0, 16), "522dc1f099567d07");
  ASSERT_TRUE(aead.Open(nonce, aad, sealed, out).ok());
  EXPECT_EQ(out, plain);
  EXPECT_EQ(aead.Open(nonce, aad, by_other, out).code(), Code::kCorruption);
  aead.Rekey(other);  // and back
  ASSERT_TRUE(aead.Open(nonce, aad, by_other, out).ok());
  EXPECT_EQ(out, plain);
  // A fresh Aead rekeyed before any use (no context yet) works the same.
  Aead fresh(Key256{});
  fresh.Rekey(spec);
  EXPECT_EQ(fresh.Seal(nonce, aad, plain), sealed);
}

TEST(AeadTest, TamperingIsCorruption) {
  Key256 key{};
  RandomBytes(key);
  const Aead aead(key);
  const Bytes nonce(12, 7);
  const Bytes aad = {1, 2, 3};
  const Bytes plain(1000, 0x5a);
  const Bytes sealed = aead.Seal(nonce, aad, plain);
  ASSERT_EQ(sealed.size(), plain.size() + Aead::kTagSize);

  for (std::size_t pos : {std::size_t{0}, plain.size() - 1, sealed.size() - 1}) {
    Bytes bad = sealed;
    bad[pos] ^= 0x01;
    Bytes out = {9};
    Status s = aead.Open(nonce, aad, bad, out);
    EXPECT_EQ(s.code(), Code::kCorruption) << "flipped byte " << pos;
    EXPECT_EQ(out, Bytes{9}) << "unauthenticated plaintext must not be released";
  }
  Bytes out;
  EXPECT_EQ(aead.Open(nonce, Bytes{1, 2, 4}, sealed, out).code(), Code::kCorruption);
  EXPECT_EQ(aead.Open(Bytes(12, 8), aad, sealed, out).code(), Code::kCorruption);
  EXPECT_EQ(aead.Open(nonce, aad, ByteSpan(sealed).first(10), out).code(), Code::kCorruption);
  Key256 other = key;
  other[0] ^= 1;
  EXPECT_EQ(Aead(other).Open(nonce, aad, sealed, out).code(), Code::kCorruption);
  ASSERT_TRUE(aead.Open(nonce, aad, sealed, out).ok());
  EXPECT_EQ(out, plain);
}

TEST(RandomTest, ProducesDifferentValues) {
  Bytes a(32), b(32);
  RandomBytes(a);
  RandomBytes(b);
  EXPECT_NE(a, b);
  EXPECT_NE(RandomU64(), RandomU64());
}

class KeyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ffs_crypto_test_" + std::to_string(::getpid()) + "_" + std::to_string(RandomU64()));
    fs::create_directories(dir_);
    path_ = dir_ / "cluster.key";
  }
  void TearDown() override { fs::remove_all(dir_); }

  void WriteFile(const std::string& content, mode_t mode) {
    std::ofstream(path_) << content;
    ASSERT_EQ(::chmod(path_.c_str(), mode), 0);
  }
  std::string ReadFile() {
    std::ifstream in(path_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  fs::path dir_;
  fs::path path_;
};

TEST_F(KeyFileTest, WriteThenReadRoundTrip) {
  ASSERT_TRUE(WriteNewKeyFile(path_).ok());
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  const std::string text = ReadFile();
  ASSERT_EQ(text.size(), 65u);
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(text.find_first_not_of("0123456789abcdef"), 64u);

  Result<ClusterKey> key = ReadKeyFile(path_);
  ASSERT_TRUE(key.ok()) << key.status().message();
  EXPECT_EQ(ToHex(key->secret) + "\n", text);
}

TEST_F(KeyFileTest, TwoKeysDiffer) {
  ASSERT_TRUE(WriteNewKeyFile(path_).ok());
  ASSERT_TRUE(WriteNewKeyFile(dir_ / "other.key").ok());
  EXPECT_NE(ReadKeyFile(path_)->secret, ReadKeyFile(dir_ / "other.key")->secret);
}

TEST_F(KeyFileTest, RefusesToOverwrite) {
  ASSERT_TRUE(WriteNewKeyFile(path_).ok());
  const std::string before = ReadFile();
  Status s = WriteNewKeyFile(path_);
  EXPECT_EQ(s.code(), Code::kExists);
  EXPECT_NE(s.message().find(path_.string()), std::string::npos) << s.message();
  EXPECT_EQ(ReadFile(), before);
}

TEST_F(KeyFileTest, RefusesOpenPermissions) {
  const std::string hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  for (mode_t mode : {0644, 0640, 0604, 0660, 0606}) {
    WriteFile(hex + "\n", mode);
    Result<ClusterKey> key = ReadKeyFile(path_);
    ASSERT_FALSE(key.ok());
    EXPECT_EQ(key.status().code(), Code::kPermission);
    const std::string& msg = key.status().message();
    EXPECT_NE(msg.find(path_.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("too open"), std::string::npos) << msg;
    EXPECT_EQ(msg.find(hex), std::string::npos) << "the key must never be printed";
  }
  char mode_text[8];
  WriteFile(hex + "\n", 0644);
  std::snprintf(mode_text, sizeof mode_text, "%04o", 0644);
  EXPECT_NE(ReadKeyFile(path_).status().message().find(mode_text), std::string::npos);
  ASSERT_EQ(::chmod(path_.c_str(), 0600), 0);
  EXPECT_TRUE(ReadKeyFile(path_).ok());
  ASSERT_EQ(::chmod(path_.c_str(), 0400), 0);
  EXPECT_TRUE(ReadKeyFile(path_).ok());
}

TEST_F(KeyFileTest, RefusesAKeyAnotherUserOwns) {
  if (::geteuid() != 0) GTEST_SKIP() << "only root can give a file to another user";
  ASSERT_TRUE(WriteNewKeyFile(path_).ok());
  ASSERT_TRUE(ReadKeyFile(path_).ok());
  ASSERT_EQ(::chown(path_.c_str(), 65534, 65534), 0);  // nobody
  Result<ClusterKey> key = ReadKeyFile(path_);
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.status().code(), Code::kPermission);
  const std::string& msg = key.status().message();
  EXPECT_NE(msg.find(path_.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("owned by uid 65534"), std::string::npos) << msg;
  // Through a symlink the target's owner counts.
  const fs::path link = dir_ / "link.key";
  fs::create_symlink(path_, link);
  EXPECT_FALSE(ReadKeyFile(link).ok());
  ASSERT_EQ(::chown(path_.c_str(), 0, 0), 0);
  EXPECT_TRUE(ReadKeyFile(link).ok());
}

TEST_F(KeyFileTest, KeygenWrites0600WhateverTheUmask) {
  const mode_t old = ::umask(0);
  Status s = WriteNewKeyFile(path_);
  ::umask(old);
  ASSERT_TRUE(s.ok()) << s.message();
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, ::geteuid());
  EXPECT_TRUE(ReadKeyFile(path_).ok());
}

TEST_F(KeyFileTest, MissingFile) {
  Result<ClusterKey> key = ReadKeyFile(path_);
  EXPECT_EQ(key.status().code(), Code::kNotFound);
  EXPECT_NE(key.status().message().find(path_.string()), std::string::npos);
}

TEST_F(KeyFileTest, UnreadableFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads files of any mode";
  WriteFile(std::string(64, 'a') + "\n", 0200);
  Result<ClusterKey> key = ReadKeyFile(path_);
  EXPECT_EQ(key.status().code(), Code::kPermission);
  EXPECT_NE(key.status().message().find(path_.string()), std::string::npos);
}

TEST_F(KeyFileTest, MalformedContent) {
  const std::string good(64, 'a');
  const std::string cases[] = {
      "",
      good,                          // no newline
      good + "\n\n",                 // trailing data
      good.substr(1) + "\n",         // too short
      std::string(64, 'A') + "\n",   // uppercase
      std::string(63, 'a') + "g\n",  // not hex
      " " + good.substr(1) + "\n",   // whitespace
      good + " \n",                  // trailing space
  };
  for (const std::string& content : cases) {
    WriteFile(content, 0600);
    Result<ClusterKey> key = ReadKeyFile(path_);
    ASSERT_FALSE(key.ok()) << "accepted '" << content << "'";
    EXPECT_EQ(key.status().code(), Code::kInvalid);
    EXPECT_NE(key.status().message().find(path_.string()), std::string::npos);
    EXPECT_EQ(key.status().message().find(good.substr(0, 16)), std::string::npos);
  }
  WriteFile(good + "\n", 0600);
  Result<ClusterKey> key = ReadKeyFile(path_);
  ASSERT_TRUE(key.ok());
  Key256 expected;
  expected.fill(0xaa);
  EXPECT_EQ(key->secret, expected);
}

TEST_F(KeyFileTest, DirectoryIsNotAKey) {
  fs::create_directory(path_);
  ::chmod(path_.c_str(), 0700);
  EXPECT_FALSE(ReadKeyFile(path_).ok());
}

}  // namespace
}  // namespace foreverfs::crypto
