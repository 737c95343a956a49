#include "server/staging_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace foreverfs::server {
namespace {

constexpr std::uint64_t kBlock = 16;
std::uint64_t Down(std::uint64_t v) { return v & ~(kBlock - 1); }
std::uint64_t Up(std::uint64_t v) { return Down(v + kBlock - 1); }

bool ZeroBlock(const std::uint8_t* p) {
  static constexpr std::uint8_t kZero[kBlock] = {};
  return std::memcmp(p, kZero, kBlock) == 0;
}

}  // namespace

Result<StagingFile> StagingFile::Create(const std::filesystem::path& dir) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus(errno, fmt::format("creating a staging file in {}", dir.string()));
  StagingFile f{UniqueFd(fd)};
  crypto::RandomBytes(f.key_);
  crypto::RandomBytes(f.iv_);
  return f;
}

Status StagingFile::ReadRaw(std::uint64_t offset, std::uint8_t* buf, std::size_t len) {
  std::size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd_.get(), buf + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "reading a staging file");
    }
    if (n == 0) {  // past the end: a hole
      std::memset(buf + done, 0, len - done);
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  return Ok();
}

Status StagingFile::WriteRaw(std::uint64_t offset, const std::uint8_t* buf, std::size_t len) {
  std::size_t done = 0;
  while (done < len) {
    ssize_t n = ::pwrite(fd_.get(), buf + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "writing a staging file");
    }
    done += static_cast<std::size_t>(n);
  }
  return Ok();
}

Status StagingFile::Read(std::uint64_t offset, MutableByteSpan out) {
  if (out.empty()) return Ok();
  const std::uint64_t a = Down(offset), b = Up(offset + out.size());
  const bool aligned = a == offset && b == offset + out.size();
  Bytes scratch;
  std::uint8_t* buf = out.data();
  if (!aligned) {
    scratch.resize(static_cast<std::size_t>(b - a));
    buf = scratch.data();
  }
  const std::size_t len = static_cast<std::size_t>(b - a);
  if (auto s = ReadRaw(a, buf, len); !s.ok()) return s;
  // Remember the holes, decrypt everything, then put the holes' zeros back.
  std::vector<std::size_t> holes;
  for (std::size_t i = 0; i < len; i += kBlock) {
    if (ZeroBlock(buf + i)) holes.push_back(i);
  }
  if (holes.size() * kBlock < len) {
    crypto::CtrXor(key_, iv_, a, MutableByteSpan(buf, len));
    for (auto i : holes) std::memset(buf + i, 0, kBlock);
  }
  if (!aligned) std::memcpy(out.data(), buf + (offset - a), out.size());
  return Ok();
}

Status StagingFile::Write(std::uint64_t offset, ByteSpan data) {
  if (data.empty()) return Ok();
  const std::uint64_t a = Down(offset), b = Up(offset + data.size());
  Bytes buf(static_cast<std::size_t>(b - a));
  // Partial first and last blocks keep the bytes around the write.
  if (a != offset) {
    if (auto s = Read(a, MutableByteSpan(buf.data(), kBlock)); !s.ok()) return s;
  }
  if (b != offset + data.size() && (b - kBlock != a || a == offset)) {
    if (auto s = Read(b - kBlock, MutableByteSpan(buf.data() + buf.size() - kBlock, kBlock));
        !s.ok()) {
      return s;
    }
  }
  std::memcpy(buf.data() + (offset - a), data.data(), data.size());
  crypto::CtrXor(key_, iv_, a, buf);
  return WriteRaw(a, buf.data(), buf.size());
}

Status StagingFile::Truncate(std::uint64_t size) {
  const std::uint64_t a = Down(size);
  std::array<std::uint8_t, kBlock> keep{};
  if (a != size) {
    if (auto s = Read(a, MutableByteSpan(keep.data(), size - a)); !s.ok()) return s;
  }
  if (::ftruncate(fd_.get(), static_cast<off_t>(a)) != 0)
    return ErrnoStatus(errno, "truncating a staging file");
  if (a != size) return Write(a, ByteSpan(keep.data(), kBlock));  // the tail of the block is zeros
  return Ok();
}

Status StagingFile::Zero(std::uint64_t offset, std::uint64_t length) {
  if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(length)) == 0) {
    return Ok();
  }
  // All-zero bytes on disk read as zeros too.
  Bytes zeros(static_cast<std::size_t>(std::min<std::uint64_t>(length, 1 << 20)), 0);
  for (std::uint64_t done = 0; done < length; done += zeros.size()) {
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(zeros.size(), length - done));
    if (auto s = WriteRaw(offset + done, zeros.data(), n); !s.ok()) return s;
  }
  return Ok();
}

}  // namespace foreverfs::server
