// StagingFile: random writes, truncations and zeroed ranges against a plain in-memory model;
// unwritten ranges read as zeros; no plaintext reaches the disk.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "server/staging_file.h"

namespace foreverfs::server {
namespace {

namespace fs = std::filesystem;

class StagingFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ffstaging." + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(StagingFileTest, RandomOperationsMatchAModel) {
  auto f = StagingFile::Create(dir_);
  ASSERT_TRUE(f.ok()) << f.status().message();
  std::mt19937 rng(42);
  Bytes model;
  for (int step = 0; step < 2000; ++step) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 6) {
      std::size_t off = rng() % 70000, len = 1 + rng() % 5000;
      Bytes data(len);
      for (auto& b : data) b = static_cast<std::uint8_t>(rng() % 3 == 0 ? 0 : rng());
      ASSERT_TRUE(f->Write(off, data).ok());
      if (model.size() < off + len) model.resize(off + len, 0);
      std::copy(data.begin(), data.end(), model.begin() + static_cast<long>(off));
    } else if (op < 8) {
      std::size_t size = rng() % 70000;
      ASSERT_TRUE(f->Truncate(size).ok());
      model.resize(size, 0);
    } else {
      std::size_t off = (rng() % 4000) * 16, len = (1 + rng() % 300) * 16;
      ASSERT_TRUE(f->Zero(off, len).ok());
      for (std::size_t i = off; i < std::min(model.size(), off + len); ++i) model[i] = 0;
    }
    std::size_t off = rng() % 72000, len = rng() % 6000;
    Bytes got(len);
    ASSERT_TRUE(f->Read(off, got).ok());
    for (std::size_t i = 0; i < len; ++i) {
      std::uint8_t want = off + i < model.size() ? model[off + i] : 0;
      ASSERT_EQ(got[i], want) << "step " << step << " byte " << off + i;
    }
  }
}

// Writes go to the file in pieces of at most 16 KiB: every length around that bound, and a
// whole 1 MiB chunk at an unaligned offset, read back exactly (empty writes change nothing).
TEST_F(StagingFileTest, WritesAroundThePieceSizeReadBack) {
  auto f = StagingFile::Create(dir_);
  ASSERT_TRUE(f.ok()) << f.status().message();
  std::mt19937 rng(7);
  Bytes model;
  std::size_t off = 3;
  for (std::size_t len : {std::size_t{0}, std::size_t{1}, std::size_t{16383}, std::size_t{16384},
                          std::size_t{16385}, std::size_t{32768}, std::size_t{1} << 20}) {
    Bytes data(len);
    for (auto& b : data) b = static_cast<std::uint8_t>(rng());
    ASSERT_TRUE(f->Write(off, data).ok()) << len;
    if (model.size() < off + len) model.resize(off + len, 0);
    std::copy(data.begin(), data.end(), model.begin() + static_cast<long>(off));
    off += len + 4097;
  }
  Bytes got(model.size() + 100, 0x55);
  ASSERT_TRUE(f->Read(0, got).ok());
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], i < model.size() ? model[i] : 0) << i;
  }
}

TEST_F(StagingFileTest, NeverWrittenRangesReadAsZeros) {
  auto f = StagingFile::Create(dir_);
  ASSERT_TRUE(f.ok());
  Bytes data(10, 0xab);
  ASSERT_TRUE(f->Write(1000003, data).ok());
  Bytes got(2000000, 0x55);
  ASSERT_TRUE(f->Read(0, got).ok());
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], i >= 1000003 && i < 1000013 ? 0xab : 0) << i;
  }
}

TEST_F(StagingFileTest, DiskHoldsNoPlaintext) {
  // The file is unlinked; reach its bytes through /proc/self/fd after a write.
  auto f = StagingFile::Create(dir_);
  ASSERT_TRUE(f.ok());
  const std::string secret = "foreverfs-staging-plaintext-marker-0123456789";
  Bytes data;
  for (int i = 0; i < 100; ++i) data.insert(data.end(), secret.begin(), secret.end());
  ASSERT_TRUE(f->Write(0, data).ok());
  bool found_file = false;
  for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    auto target = fs::read_symlink(e.path(), ec);
    if (ec || target.string().rfind(dir_.string(), 0) != 0) continue;
    found_file = true;
    std::ifstream in(e.path().string(), std::ios::binary);
    std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_GE(raw.size(), data.size());
    EXPECT_EQ(raw.find("foreverfs-staging"), std::string::npos);
  }
  EXPECT_TRUE(found_file);
  Bytes back(data.size());
  ASSERT_TRUE(f->Read(0, back).ok());
  EXPECT_EQ(back, data);
}

}  // namespace
// The bytes on disk at [offset, offset + n).
Bytes OnDisk(const StagingFile& f, std::uint64_t offset, std::size_t n) {
  Bytes out(n);
  EXPECT_EQ(::pread(f.RawFdForTest(), out.data(), n, static_cast<off_t>(offset)),
            static_cast<ssize_t>(n));
  return out;
}

Bytes Xor(const Bytes& a, const Bytes& b) {
  Bytes out(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) out[i] = a[i] ^ b[i];
  return out;
}

TEST_F(StagingFileTest, RewritingAnOffsetNeverReusesTheKeystream) {
  // Two snapshots of the disk taken around a rewrite: with the keystream reused, XOR of the two
  // ciphertexts is XOR of the two plaintexts. Aligned and unaligned, small and chunk-sized.
  auto f = StagingFile::Create(dir_);
  ASSERT_TRUE(f.ok()) << f.status().message();
  std::mt19937 rng(7);
  struct Case {
    std::uint64_t offset;
    std::size_t len;
  };
  for (Case c : {Case{0, 4096}, Case{4096 + 100, 50}, Case{1 << 20, 1 << 20}, Case{8192, 16}}) {
    SCOPED_TRACE(c.offset);
    Bytes p1(c.len), p2(c.len);
    for (auto& b : p1) b = static_cast<std::uint8_t>(rng());
    for (auto& b : p2) b = static_cast<std::uint8_t>(rng());
    // The 16-byte blocks the write covers (what is on disk for those bytes).
    const std::uint64_t a = c.offset / 16 * 16;
    const std::size_t n = static_cast<std::size_t>((c.offset + c.len + 15) / 16 * 16 - a);
    ASSERT_TRUE(f->Write(c.offset, p1).ok());
    const Bytes c1 = OnDisk(*f, a, n);
    ASSERT_TRUE(f->Write(c.offset, p2).ok());
    const Bytes c2 = OnDisk(*f, a, n);
    const Bytes dx = Xor(c1, c2);
    const Bytes px = Xor(p1, p2);
    EXPECT_NE(Bytes(dx.begin() + static_cast<long>(c.offset - a),
                    dx.begin() + static_cast<long>(c.offset - a + c.len)),
              px)
        << "the keystream was reused";
    // Not even one 16-byte block of it leaks.
    std::size_t leaked = 0;
    for (std::size_t i = 0; i + 16 <= c.len; i += 16) {
      leaked +=
          std::equal(px.begin() + static_cast<long>(i), px.begin() + static_cast<long>(i + 16),
                     dx.begin() + static_cast<long>(c.offset - a + i));
    }
    EXPECT_EQ(leaked, 0u);
    Bytes back(c.len);
    ASSERT_TRUE(f->Read(c.offset, back).ok());
    EXPECT_EQ(back, p2);
  }
}

TEST_F(StagingFileTest, RewritesKeepTheBytesAroundThem) {
  // A small write re-encrypts its whole page: the bytes around it in that page survive.
  auto f = StagingFile::Create(dir_);
  ASSERT_TRUE(f.ok());
  Bytes page(3 * StagingFile::kPage);
  for (std::size_t i = 0; i < page.size(); ++i) page[i] = static_cast<std::uint8_t>(i * 31 + 7);
  ASSERT_TRUE(f->Write(0, page).ok());
  Bytes small(40, 0xEE);
  for (std::uint64_t off :
       {std::uint64_t{5}, StagingFile::kPage - 20, 2 * StagingFile::kPage + 1}) {
    ASSERT_TRUE(f->Write(off, small).ok());
    std::copy(small.begin(), small.end(), page.begin() + static_cast<long>(off));
    Bytes back(page.size());
    ASSERT_TRUE(f->Read(0, back).ok());
    ASSERT_EQ(back, page) << off;
  }
}

// Zero at any offset keeps the bytes around it: a range cut in a 16-byte block must not leave
// that block part ciphertext, part zeros, which read as all zeros whenever the ciphertext left
// was zero too. Forced here: files are made until the one byte of ciphertext kept before the
// cut is zero (1 in 256; the key is random per file), then every byte must read back.
TEST_F(StagingFileTest, ZeroCutInsideABlockKeepsTheBytesBeforeIt) {
  constexpr std::uint64_t kCut = 26177;  // one byte of its block (26176) stays
  Bytes data(32768);
  std::mt19937 rng(9);
  for (auto& b : data) b = static_cast<std::uint8_t>(1 + rng() % 255);
  bool forced = false;
  for (int attempt = 0; attempt < 5000 && !forced; ++attempt) {
    auto f = StagingFile::Create(dir_);
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(f->Write(0, data).ok());
    if (OnDisk(*f, kCut - 1, 1)[0] != 0) continue;
    forced = true;
    ASSERT_TRUE(f->Zero(kCut, data.size() - kCut).ok());
    Bytes got(data.size());
    ASSERT_TRUE(f->Read(0, got).ok());
    for (std::size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i], i < kCut ? data[i] : 0) << "byte " << i << " after Zero(" << kCut << ")";
    }
  }
  EXPECT_TRUE(forced) << "no key in 5000 gave a zero byte of ciphertext there";
}

// Zero's boundaries: empty, inside one block, across two, aligned at either end, a whole page.
TEST_F(StagingFileTest, ZeroAtEveryAlignment) {
  for (std::uint64_t off : {0, 1, 15, 16, 17, 4095, 4096, 4097}) {
    for (std::uint64_t len : {0, 1, 14, 15, 16, 17, 31, 32, 33, 4096, 8191}) {
      auto f = StagingFile::Create(dir_);
      ASSERT_TRUE(f.ok());
      Bytes model(16384);
      std::mt19937 rng(static_cast<unsigned>(off * 10007 + len));
      for (auto& b : model) b = static_cast<std::uint8_t>(rng());
      ASSERT_TRUE(f->Write(0, model).ok());
      ASSERT_TRUE(f->Zero(off, len).ok()) << off << "+" << len;
      for (std::uint64_t i = off; i < off + len; ++i) model[i] = 0;
      Bytes got(model.size());
      ASSERT_TRUE(f->Read(0, got).ok());
      ASSERT_EQ(got, model) << "Zero(" << off << ", " << len << ")";
    }
  }
}

}  // namespace foreverfs::server
