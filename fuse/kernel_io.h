#pragma once
// What passes between the kernel and libfuse on /dev/fuse, seen through libfuse's custom I/O
// hooks (fuse_session_custom_io), for two things libfuse 3.14 does not do:
//
// - Negotiate FUSE_HANDLE_KILLPRIV_V2. Without it the kernel asks GETXATTR
//   "security.capability" before every write(2): a second round trip per 4 KiB random write
//   (half the requests of fio randwrite), although this file system stores no security.*
//   attribute. With it the kernel marks the super block SB_NOSEC, stops asking once it has
//   seen a file without setuid/setgid, and leaves clearing setuid/setgid to the file system.
//   The INIT reply gets the flag when the kernel offered it (NoteRequest/PatchInitReply).
// - Pass on the kernel's "kill setuid/setgid" marks that come with the flag and that libfuse
//   3.14 drops: FUSE_WRITE_KILL_SUIDGID in a write, FATTR_KILL_SUIDGID in a setattr,
//   FUSE_OPEN_KILL_SUIDGID in an open or create. The kernel sets them exactly when the caller
//   lacks CAP_FSETID (for chown: always). libfuse serves a request on the thread that read
//   it, so the mark of the request a thread is serving is a thread-local (ThisRequestKills).
//
// Only the INIT exchange is ever changed; every other byte goes through untouched.

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace foreverfs::fuse {

class RequestReader;

// With the flag taken the kernel stops probing security.capability before every write and
// leaves clearing setuid/setgid to the daemon: on write and truncate by its per-request mark,
// on every chown of anything but a directory (FileServer::SetAttr). Off, the kernel clears
// them itself (libfuse's v1 flag is off too, see OpInit) and the INIT reply goes out as
// libfuse wrote it.
inline constexpr bool kNegotiateKillprivV2 = true;

class KernelIo {
 public:
  // Called with every request read from /dev/fuse (`n` bytes at `buf`). Notes the INIT
  // request's number and whether the kernel offers FUSE_HANDLE_KILLPRIV_V2, and this thread's
  // kill mark. A short or malformed request is left for libfuse to refuse.
  void NoteRequest(const void* buf, std::size_t n);

  // Called with every reply before it is written. If it is the successful answer to INIT and
  // the kernel offered FUSE_HANDLE_KILLPRIV_V2, returns true and fills `out` (count iovecs,
  // at most 8) with the reply whose init_out is copied to `init_copy` (at least 256 bytes)
  // with the flag added; false: write the reply as it is.
  bool PatchInitReply(const struct iovec* iov, int count, struct iovec* out,
                      std::uint8_t* init_copy);

  // True once the kernel has been told this file system handles KILLPRIV_V2: the kernel no
  // longer clears setuid/setgid itself, and ThisRequestKills() is what it asks.
  bool killpriv_v2() const { return killpriv_v2_.load(std::memory_order_acquire); }

  // The kill mark of the request this thread last read (false for any other opcode).
  static bool ThisRequestKills();

  // What libfuse's read and writev hooks do: read(2) (through `reader` once one is set) and
  // writev(2) on /dev/fuse, seen.
  ssize_t Read(int fd, void* buf, std::size_t len);
  void SetReader(RequestReader* reader) { reader_ = reader; }
  ssize_t Writev(int fd, const struct iovec* iov, int count);

 private:
  std::atomic<bool> init_pending_{false};  // INIT read, its answer not yet written
  std::atomic<std::uint64_t> init_unique_{0};
  std::atomic<bool> kernel_offers_v2_{false};
  std::atomic<bool> killpriv_v2_{false};
  RequestReader* reader_ = nullptr;  // set before the loop starts
};

}  // namespace foreverfs::fuse
