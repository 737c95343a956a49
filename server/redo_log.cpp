#include "server/redo_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "crypto/crypto.h"
#include "net/messages.h"

namespace foreverfs::server {
namespace {

constexpr std::array<std::uint8_t, 4> kMagic{'F', 'F', 'R', '1'};
constexpr std::size_t kHeaderSize = 4 + 4 + 8;  // magic, frame length, checksum

std::array<std::uint8_t, 8> Checksum(ByteSpan frame) {
  const crypto::Digest d = crypto::Sha256::Of(frame);
  std::array<std::uint8_t, 8> out;
  std::memcpy(out.data(), d.data(), out.size());
  return out;
}

Bytes Frame(const ChangeSet& changes) {
  return net::EncodeFrame(net::Message{net::Changes{0, changes.inodes, changes.dentries}});
}

// Reads exactly out.size() bytes at `off`, or fewer only at the end of the file.
Result<std::size_t> ReadAt(int fd, MutableByteSpan out, std::uint64_t off,
                           const std::filesystem::path& path) {
  std::size_t got = 0;
  while (got < out.size()) {
    const ssize_t n =
        ::pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(off + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, fmt::format("reading {}", path.string()));
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  return got;
}

}  // namespace

Result<RedoLog> RedoLog::Open(const std::filesystem::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) return ErrnoStatus(errno, fmt::format("opening {}", path.string()));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoStatus(errno, fmt::format("examining {}", path.string()));
  }
  return RedoLog(path, std::move(fd), static_cast<std::uint64_t>(st.st_size));
}

std::size_t RedoLog::RecordSize(const ChangeSet& changes) {
  std::size_t n = kHeaderSize + net::kFrameHeaderSize + 16;  // up_to, the two counts
  for (const auto& r : changes.inodes) n += net::EncodedSize(r);
  for (const auto& d : changes.dentries) n += net::EncodedSize(d);
  return n;
}

Status RedoLog::Append(const ChangeSet& changes) {
  const Bytes frame = Frame(changes);
  if (frame.size() - 4 > net::kMaxFrameSize) {
    return Err(Code::kInvalid, "a change set of {} bytes does not fit a record of {}", frame.size(),
               path_.string());
  }
  Bytes rec(kHeaderSize + frame.size());
  std::memcpy(rec.data(), kMagic.data(), 4);
  const auto len = static_cast<std::uint32_t>(frame.size());
  for (int i = 0; i < 4; ++i) rec[4 + i] = static_cast<std::uint8_t>(len >> (24 - 8 * i));
  const auto sum = Checksum(frame);
  std::memcpy(rec.data() + 8, sum.data(), sum.size());
  std::memcpy(rec.data() + kHeaderSize, frame.data(), frame.size());
  std::size_t done = 0;
  while (done < rec.size()) {
    const ssize_t n =
        ::pwrite(fd_.get(), rec.data() + done, rec.size() - done, static_cast<off_t>(size_ + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      // A partial record would fail its checksum at replay, but the next one would then be
      // lost behind it: take it back.
      if (done > 0 && ::ftruncate(fd_.get(), static_cast<off_t>(size_)) != 0) {
        return ErrnoStatus(err, fmt::format("appending to {} (and a partial record is left: {})",
                                            path_.string(), std::strerror(errno)));
      }
      return ErrnoStatus(err, fmt::format("appending to {}", path_.string()));
    }
    done += static_cast<std::size_t>(n);
  }
  size_ += rec.size();
  return Ok();
}

Result<RedoLog::ReplayStats> RedoLog::Replay(const std::function<Status(const ChangeSet&)>& fn) {
  ReplayStats st;
  std::uint64_t off = 0;
  Bytes frame;
  for (;;) {
    std::array<std::uint8_t, kHeaderSize> h{};
    auto got = ReadAt(fd_.get(), h, off, path_);
    if (!got.ok()) return got.status();
    if (*got < h.size() || std::memcmp(h.data(), kMagic.data(), 4) != 0) break;
    std::uint32_t len = 0;
    for (int i = 0; i < 4; ++i) len = (len << 8) | h[4 + i];
    if (len < net::kFrameHeaderSize || len - 4 > net::kMaxFrameSize) break;
    frame.resize(len);
    got = ReadAt(fd_.get(), frame, off + kHeaderSize, path_);
    if (!got.ok()) return got.status();
    if (*got < len || std::memcmp(Checksum(frame).data(), h.data() + 8, 8) != 0) break;
    auto header = net::DecodeFrameHeader(ByteSpan(frame).first(net::kFrameHeaderSize));
    auto msg = header.ok() ? net::DecodePayload(header->type,
                                                ByteSpan(frame).subspan(net::kFrameHeaderSize))
                           : Result<net::Message>(header.status());
    const auto* changes = msg.ok() ? std::get_if<net::Changes>(&*msg) : nullptr;
    if (changes == nullptr) {
      return Err(Code::kCorruption,
                 "{}: record {} at byte {} is whole but does not decode ({});"
                 " move the file aside to start without the changes it holds",
                 path_.string(), st.records + 1, off,
                 msg.ok() ? "not a change set" : msg.status().message());
    }
    if (auto s = fn(ChangeSet{changes->inodes, changes->dentries}); !s.ok()) {
      return Err(s.code(), "{}: replaying record {} at byte {}: {}", path_.string(), st.records + 1,
                 off, s.message());
    }
    ++st.records;
    off += kHeaderSize + len;
  }
  st.dropped_bytes = size_ > off ? size_ - off : 0;
  return st;
}

Status RedoLog::Clear() { return size_ == 0 ? Ok() : TruncateTo(0); }

Status RedoLog::TruncateTo(std::uint64_t size) {
  if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoStatus(errno, fmt::format("truncating {} to {} bytes", path_.string(), size));
  }
  size_ = size;
  return Ok();
}

}  // namespace foreverfs::server
