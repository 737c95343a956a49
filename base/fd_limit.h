#pragma once
// The open-files limit. Each peer link, inbound handshake, open chunk and FUSE request can hold a
// file descriptor, and the usual soft limit (1024) is reached by a few hundred connections from
// strangers. RaiseFdLimit lifts this process's soft RLIMIT_NOFILE to its hard limit, which any
// process may do; the hard limit itself comes from the service manager (LimitNOFILE= in the
// systemd unit). Nothing here uses select(2), so descriptors above 1024 are fine.

#include <sys/resource.h>

#include <cerrno>
#include <cstdint>
#include <fstream>

namespace foreverfs {

struct FdLimit {
  std::uint64_t before = 0;  // the soft limit found
  std::uint64_t after = 0;   // the soft limit now
  int error = 0;             // errno of a failed getrlimit/setrlimit, 0 if none
};

inline FdLimit RaiseFdLimit() {
  FdLimit out;
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) {
    out.error = errno;
    return out;
  }
  out.before = out.after = lim.rlim_cur;
  rlim_t target = lim.rlim_max;
  if (target == RLIM_INFINITY) {
    // The kernel refuses more than fs.nr_open per process, whatever the hard limit says.
    std::uint64_t nr_open = 1024 * 1024;
    std::ifstream("/proc/sys/fs/nr_open") >> nr_open;
    target = static_cast<rlim_t>(nr_open);
  }
  if (lim.rlim_cur == RLIM_INFINITY || lim.rlim_cur >= target) return out;
  lim.rlim_cur = target;
  if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) {
    out.error = errno;
    return out;
  }
  out.after = target;
  return out;
}

}  // namespace foreverfs
