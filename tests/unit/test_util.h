#pragma once
// Helpers shared by the unit tests of every layer: deterministic pseudo-random bytes, fixed
// keys, whole-file reads and writes, a full disk. Temporary directories are in temp_dir.h
// (included).

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "base/bytes.h"
#include "crypto/crypto.h"
#include "unit/temp_dir.h"

namespace foreverfs::test {

// `size` bytes that depend only on `seed`: different seeds give different bytes.
inline Bytes Pattern(std::size_t size, std::uint32_t seed) {
  Bytes b(size);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : b) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<std::uint8_t>(x >> 24);
  }
  return b;
}

// A key of 32 copies of `fill`.
inline crypto::Key256 FixedKey(std::uint8_t fill = 0x5a) {
  crypto::Key256 k;
  k.fill(fill);
  return k;
}

inline Bytes ReadFileBytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

// Replaces the file's contents with `data`.
inline void WriteFileBytes(const std::filesystem::path& p, ByteSpan data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// Runs `f` with this process's files unable to grow past `limit` bytes (RLIMIT_FSIZE, SIGXFSZ
// ignored: a write past it is cut short, then fails with EFBIG, as on a full disk), and
// returns what it returns. The limit and the signal's handler are restored after.
template <typename F>
auto WithFileSizeLimit(std::uint64_t limit, F&& f) {
  struct rlimit old {};
  EXPECT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = limit;
  EXPECT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  auto result = f();
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_handler);
  return result;
}

}  // namespace foreverfs::test
