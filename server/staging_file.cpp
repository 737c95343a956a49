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

constexpr std::uint64_t kLost = ~std::uint64_t{0};  // a page's generation after a failed write

bool ZeroBlock(const std::uint8_t* p) {
  static constexpr std::uint8_t kZero[kBlock] = {};
  return std::memcmp(p, kZero, kBlock) == 0;
}

}  // namespace

Result<StagingFile> StagingFile::Create(const std::filesystem::path& dir) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus(errno, fmt::format("creating a staging file in {}", dir.string()));
  crypto::Key256 key{};
  crypto::RandomBytes(key);
  StagingFile f{UniqueFd(fd), key};
  crypto::RandomBytes(MutableByteSpan(reinterpret_cast<std::uint8_t*>(&f.prefix_), 8));
  return f;
}

StagingFile::StagingFile(UniqueFd fd, const crypto::Key256& key)
    : fd_(std::move(fd)), ctr_(std::make_unique<crypto::Ctr>(key)) {}

std::array<std::uint8_t, 16> StagingFile::Iv(std::uint64_t gen) const {
  std::array<std::uint8_t, 16> iv{};
  const std::uint64_t hi = prefix_ ^ gen;
  for (int i = 0; i < 8; ++i)
    iv[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(hi >> (56 - 8 * i));
  return iv;
}

void StagingFile::Crypt(std::uint64_t offset, std::uint8_t* buf, std::size_t len) {
  // Runs of pages under one generation take one call (a range written at once is one run).
  std::uint64_t pos = offset;
  const std::uint64_t end = offset + len;
  while (pos < end) {
    const std::uint64_t gen = GenOf(pos / kPage);
    std::uint64_t run_end = std::min(end, (pos / kPage + 1) * kPage);
    while (run_end < end && GenOf(run_end / kPage) == gen) run_end = std::min(end, run_end + kPage);
    ctr_->Xor(Iv(gen), pos,
              MutableByteSpan(buf + (pos - offset), static_cast<std::size_t>(run_end - pos)));
    pos = run_end;
  }
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
  // At most 16 KiB per pwrite: the page cache sizes the folios it makes for a write by the
  // write's length, and ext4 walks every block of a folio on each later write into it. A chunk
  // copied in with one 1 MiB pwrite made every 4 KiB random write into it walk 256 blocks
  // (ext4_block_write_begin: 42% of the daemon's time in fio randwrite on Linux 6.18).
  constexpr std::size_t kMaxPiece = 16 * 1024;
  std::size_t done = 0;
  while (done < len) {
    ssize_t n = ::pwrite(fd_.get(), buf + done, std::min(len - done, kMaxPiece),
                         static_cast<off_t>(offset + done));
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
  for (std::uint64_t p = a / kPage; p <= (b - 1) / kPage; ++p) {
    if (GenOf(p) == kLost) {
      return Err(Code::kIOError, "staging page at {} was lost by a failed write", p * kPage);
    }
  }
  // Remember the holes, decrypt everything, then put the holes' zeros back.
  std::vector<std::size_t> holes;
  for (std::size_t i = 0; i < len; i += kBlock) {
    if (ZeroBlock(buf + i)) holes.push_back(i);
  }
  if (holes.size() * kBlock < len) {
    Crypt(a, buf, len);
    for (auto i : holes) std::memset(buf + i, 0, kBlock);
  }
  if (!aligned) std::memcpy(out.data(), buf + (offset - a), out.size());
  return Ok();
}

Status StagingFile::Write(std::uint64_t offset, ByteSpan data) {
  if (data.empty()) return Ok();
  // Whole pages, so that every page is under one generation: the bytes around the write in its
  // first and last page are read (decrypted) and written again under the new one.
  const std::uint64_t a = offset / kPage * kPage;
  const std::uint64_t b = (offset + data.size() + kPage - 1) / kPage * kPage;
  Bytes buf(static_cast<std::size_t>(b - a));
  if (a != offset) {
    if (auto s = Read(a, MutableByteSpan(buf.data(), kPage)); !s.ok()) return s;
  }
  if (b != offset + data.size() && (b - kPage != a || a == offset)) {
    if (auto s = Read(b - kPage, MutableByteSpan(buf.data() + buf.size() - kPage, kPage));
        !s.ok()) {
      return s;
    }
  }
  std::memcpy(buf.data() + (offset - a), data.data(), data.size());
  const std::uint64_t gen = ++next_gen_;
  if (gens_.size() < b / kPage) gens_.resize(static_cast<std::size_t>(b / kPage), 0);
  auto first = gens_.begin() + static_cast<std::ptrdiff_t>(a / kPage);
  auto last = gens_.begin() + static_cast<std::ptrdiff_t>(b / kPage);
  std::fill(first, last, gen);
  Crypt(a, buf.data(), buf.size());
  Status s = WriteRaw(a, buf.data(), buf.size());
  // A failed write may have reached some pages and not others: none of them can be decrypted
  // for sure any more, the bytes around the write included. They read as an error (never as
  // wrong bytes) until a write covers them whole.
  if (!s.ok()) std::fill(first, last, kLost);
  return s;
}

Status StagingFile::Truncate(std::uint64_t size) {
  const std::uint64_t a = Down(size);
  std::array<std::uint8_t, kBlock> keep{};
  if (a != size) {
    if (auto s = Read(a, MutableByteSpan(keep.data(), size - a)); !s.ok()) return s;
  }
  if (::ftruncate(fd_.get(), static_cast<off_t>(a)) != 0)
    return ErrnoStatus(errno, "truncating a staging file");
  // Pages wholly past the end are holes now, whatever they were.
  const auto pages = static_cast<std::size_t>((a + kPage - 1) / kPage);
  if (gens_.size() > pages) {
    gens_.resize(pages);
    gens_.shrink_to_fit();
  }
  if (a != size) return Write(a, ByteSpan(keep.data(), kBlock));  // the tail of the block is zeros
  return Ok();
}

Status StagingFile::Zero(std::uint64_t offset, std::uint64_t length) {
  if (length == 0) return Ok();
  // A block cut by either end is written (zeros encrypted), not punched: a punched part of a
  // block leaves it part ciphertext, part zero bytes, and one whose remaining ciphertext
  // happened to be zero too (1 in 256 for one byte) read as all zeros, losing its other bytes.
  // A truncate to a size that is not a multiple of 16 cut the last block of the file so.
  // (A page already lost by a failed write cannot be cut so: its bytes cannot be read. The
  // zeroing then fails with the page's error, where it used to leave the page lost.)
  const std::uint64_t stop = offset + length;
  const std::uint64_t a = Up(offset), b = Down(stop);
  if (a >= b) return Write(offset, Bytes(static_cast<std::size_t>(length), 0));
  // One end written and the other not: every page of the range reads as an error, never as
  // half-zeroed bytes.
  auto lose = [&](Status failed) {
    for (std::uint64_t p = offset / kPage; p <= (stop - 1) / kPage && p < gens_.size(); ++p) {
      gens_[static_cast<std::size_t>(p)] = kLost;
    }
    return failed;
  };
  if (a != offset) {
    auto s = Write(offset, Bytes(static_cast<std::size_t>(a - offset), 0));
    if (!s.ok()) return lose(s);
  }
  if (b != stop) {
    auto s = Write(b, Bytes(static_cast<std::size_t>(stop - b), 0));
    if (!s.ok()) return lose(s);
  }
  offset = a;
  length = b - a;
  Status s = Ok();
  if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(length)) != 0) {
    // All-zero bytes on disk read as zeros too.
    Bytes zeros(static_cast<std::size_t>(std::min<std::uint64_t>(length, 1 << 20)), 0);
    for (std::uint64_t done = 0; done < length && s.ok(); done += zeros.size()) {
      auto n = static_cast<std::size_t>(std::min<std::uint64_t>(zeros.size(), length - done));
      s = WriteRaw(offset + done, zeros.data(), n);
    }
  }
  const std::uint64_t first = s.ok() ? (offset + kPage - 1) / kPage : offset / kPage;
  const std::uint64_t end =
      s.ok() ? (offset + length) / kPage : (offset + length + kPage - 1) / kPage;
  // Done: pages wholly inside the range are holes, whatever they were (a lost page included).
  // Failed part way: every page it touched reads as an error, never as half-zeroed bytes.
  for (std::uint64_t p = first; p < end && p < gens_.size(); ++p) {
    gens_[static_cast<std::size_t>(p)] = s.ok() ? 0 : kLost;
  }
  return s;
}

}  // namespace foreverfs::server
