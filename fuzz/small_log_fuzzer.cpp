// libFuzzer target: arbitrary bytes as a small-chunk log (cas/small_chunks.h) found beside the
// database at start, as a crash, a power failure or a damaged disk may leave it. Opening the
// store must not crash or leak; it replays exactly the whole records at the head of the log
// (magic, length of at most kMaxSmallBlob, CRC-32 over length, id and blob), the later of
// two records of one id winning, stops at the first record that is not whole, and deletes the
// log. A reference reader here, written apart from the store's, says what that is.
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "cas/small_chunks.h"

using namespace foreverfs;
namespace fs = std::filesystem;

namespace {

std::map<cas::ChunkId, Bytes> Reference(const std::uint8_t* p, std::size_t n) {
  std::map<cas::ChunkId, Bytes> out;
  std::size_t at = 0;
  while (n - at >= 44 && std::memcmp(p + at, "FFS1", 4) == 0) {
    const std::uint8_t* h = p + at;
    const std::uint32_t len = (std::uint32_t{h[4]} << 24) | (std::uint32_t{h[5]} << 16) |
                              (std::uint32_t{h[6]} << 8) | h[7];
    if (len > cas::kMaxSmallBlob || n - at - 44 < len) break;
    uLong crc = crc32(0L, h + 4, 36);
    crc = crc32(crc, h + 44, len);
    const std::uint32_t want = (std::uint32_t{h[40]} << 24) | (std::uint32_t{h[41]} << 16) |
                               (std::uint32_t{h[42]} << 8) | h[43];
    if (static_cast<std::uint32_t>(crc) != want) break;
    cas::ChunkId id{};
    std::memcpy(id.data(), h + 8, id.size());
    out[id] = Bytes(h + 44, h + 44 + len);
    at += 44 + len;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fs::path dir = [] {
    char tmpl[] = "/tmp/ffs-small-log-fuzz.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) std::abort();
    return fs::path(tmpl);
  }();
  for (const char* f : {"small.db", "small.db-wal", "small.db-shm"}) fs::remove(dir / f);
  {
    std::ofstream log(dir / "small.db-log.7", std::ios::binary | std::ios::trunc);
    log.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!log) std::abort();
  }
  const auto want = Reference(data, size);
  auto store = cas::SmallChunks::Open(dir / "small.db");
  if (!store.ok()) std::abort();  // damaged content is never an error, only I/O is
  if (fs::exists(dir / "small.db-log.7")) std::abort();  // the replayed log stays
  if ((*store)->Usage().chunks != want.size()) std::abort();
  for (const auto& [id, blob] : want) {
    auto got = (*store)->Get(id);
    if (!got.ok() || *got != blob) std::abort();
  }
  return 0;
}
