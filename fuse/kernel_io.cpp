#include "fuse/kernel_io.h"

#include "fuse/request_reader.h"

#include <linux/fuse.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace foreverfs::fuse {
namespace {

thread_local bool t_request_kills = false;

// Whether the request's argument T has `bit` set in `field`; false for a request shorter
// than its argument (libfuse refuses those itself).
template <typename T>
bool Marked(const std::uint8_t* p, std::size_t n, std::uint32_t T::*field, std::uint32_t bit) {
  if (n < sizeof(fuse_in_header) + sizeof(T)) return false;
  T arg;
  std::memcpy(&arg, p + sizeof(fuse_in_header), sizeof(T));
  return (arg.*field & bit) != 0;
}

}  // namespace

void KernelIo::NoteRequest(const void* buf, std::size_t n) {
  t_request_kills = false;
  const auto* p = static_cast<const std::uint8_t*>(buf);
  if (n < sizeof(fuse_in_header)) return;
  fuse_in_header h;
  std::memcpy(&h, p, sizeof(h));
  switch (h.opcode) {
    case FUSE_INIT: {
      // The first four fields are in every protocol version; flags2 (FUSE_INIT_EXT) holds
      // nothing this looks at.
      struct {
        std::uint32_t major, minor, max_readahead, flags;
      } in;
      if (n < sizeof(fuse_in_header) + sizeof(in)) return;
      std::memcpy(&in, p + sizeof(fuse_in_header), sizeof(in));
      kernel_offers_v2_.store((in.flags & FUSE_HANDLE_KILLPRIV_V2) != 0, std::memory_order_relaxed);
      init_unique_.store(h.unique, std::memory_order_relaxed);
      init_pending_.store(true, std::memory_order_release);
      return;
    }
    case FUSE_WRITE:
      t_request_kills = Marked(p, n, &fuse_write_in::write_flags, FUSE_WRITE_KILL_SUIDGID);
      return;
    case FUSE_SETATTR:
      t_request_kills = Marked(p, n, &fuse_setattr_in::valid, FATTR_KILL_SUIDGID);
      return;
    case FUSE_OPEN:
      t_request_kills = Marked(p, n, &fuse_open_in::open_flags, FUSE_OPEN_KILL_SUIDGID);
      return;
    case FUSE_CREATE:
      t_request_kills = Marked(p, n, &fuse_create_in::open_flags, FUSE_OPEN_KILL_SUIDGID);
      return;
    default:
      return;
  }
}

bool KernelIo::PatchInitReply(const struct iovec* iov, int count, struct iovec* out,
                              std::uint8_t* init_copy) {
  if (!init_pending_.load(std::memory_order_acquire)) return false;
  if (count < 2 || count > 8 || iov[0].iov_len < sizeof(fuse_out_header)) return false;
  fuse_out_header h;
  std::memcpy(&h, iov[0].iov_base, sizeof(h));
  if (h.unique != init_unique_.load(std::memory_order_relaxed)) return false;
  init_pending_.store(false, std::memory_order_relaxed);
  // libfuse answers INIT with the header and one init_out (shorter for old protocol minors,
  // never shorter than its flags field).
  constexpr std::size_t kFlagsEnd = offsetof(fuse_init_out, flags) + sizeof(std::uint32_t);
  if (h.error != 0 || count != 2 || iov[1].iov_len < kFlagsEnd || iov[1].iov_len > 256 ||
      !kernel_offers_v2_.load(std::memory_order_relaxed)) {
    return false;
  }
  std::memcpy(init_copy, iov[1].iov_base, iov[1].iov_len);
  std::uint32_t flags;
  std::memcpy(&flags, init_copy + offsetof(fuse_init_out, flags), sizeof(flags));
  flags |= FUSE_HANDLE_KILLPRIV_V2;
  std::memcpy(init_copy + offsetof(fuse_init_out, flags), &flags, sizeof(flags));
  out[0] = iov[0];
  out[1] = {init_copy, iov[1].iov_len};
  killpriv_v2_.store(true, std::memory_order_release);
  return true;
}

bool KernelIo::ThisRequestKills() { return t_request_kills; }

ssize_t KernelIo::Read(int fd, void* buf, std::size_t len) {
  const ssize_t n = reader_ ? reader_->Read(fd, buf, len) : ::read(fd, buf, len);
  if (n > 0) NoteRequest(buf, static_cast<std::size_t>(n));
  return n;  // errno as read left it, which libfuse reads next
}

ssize_t KernelIo::Writev(int fd, const struct iovec* iov, int count) {
  if (kNegotiateKillprivV2 && init_pending_.load(std::memory_order_relaxed)) {
    struct iovec patched[8];
    std::uint8_t init_copy[256];
    if (PatchInitReply(iov, count, patched, init_copy)) return ::writev(fd, patched, count);
  }
  return ::writev(fd, iov, count);
}

}  // namespace foreverfs::fuse
