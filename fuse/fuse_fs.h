#pragma once
// fuse/: the libfuse3 low-level adapter over a FileServer, in three parts:
//  - fuse::Ops (ops.h): the request handlers and what they share (open directories'
//    snapshots, the record of what the kernel caches of each inode), answering through
//  - fuse::Reply (reply.h): one request's answer (fuse_reply_*), its caller (uid, gid, umask)
//    and the open-time attribute invalidation; and
//  - FuseFs (here): the session, mount and loop, the libfuse callbacks (trampolines that
//    build a Reply for their fuse_req_t and run the Ops handler inside Ops::Guard), and the
//    invalidation thread.
// Unit tests (test_fuse) drive Ops with a recording Reply, without a kernel or /dev/fuse.
//
// Inode numbers are the namespace's stable 64-bit inode ids (the root is 1), so no inode
// table is needed; lookup counts only bound the small record of what version of each inode's
// attributes the kernel caches (an open of another version drops the kernel's cached size
// before it replies). Every Status becomes an errno in exactly one place (Ops::ReplyError).
// Every request gets exactly one reply: an exception escaping a handler becomes EIO for that
// request and a log line, never std::terminate; sizes, offsets and names are bounded before
// anything is sized by them (16 TiB files, 255-byte names, 64 KiB xattr values). For tests,
// the environment variable FOREVERFS_TEST_FUSE_FAULTS="op,op+" makes the named handlers throw
// before they run (or after they replied, with "+"); it is read at Mount. Peer changes
// invalidate the kernel's cached entries, attributes and pages from a dedicated thread, never
// from a request handler, so a handler waiting on the network cannot deadlock with it.
// Knows nothing of sockets.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "fuse/request_reader.h"
#include "server/file_server.h"

namespace foreverfs::fuse {

struct MountOptions {
  std::string mountpoint;
  std::vector<std::string> options;  // -o options passed to libfuse ("allow_other", "ro", ...)
  double attr_timeout_s = 1.0;
};

class FuseFs {
 public:
  explicit FuseFs(server::FileServer& fs);
  ~FuseFs();
  FuseFs(const FuseFs&) = delete;
  FuseFs& operator=(const FuseFs&) = delete;

  // Creates the session and mounts. Errors name the mountpoint and the reason.
  Status Mount(const MountOptions& options);
  // Installs SIGINT/SIGTERM/SIGHUP handlers that end Run.
  void InstallSignalHandlers();
  // Serves requests on several threads until unmounted or signalled. Starts the invalidation
  // thread. Returns Ok after a clean unmount.
  Status Run();
  // Unmounts if still mounted (after Run returned because of a signal).
  void Unmount();
  // Where the daemon's control socket is: the root answers it as xattr user.foreverfs.control.
  void SetControlPath(std::string path);
  // Names of the operations whose handler time goes to the observer, by index.
  static const std::vector<std::string>& TimedOpNames();
  // Called after each timed handler with its index in TimedOpNames() and how long it took
  // (from the request's arrival in the handler to its return, which is when it replied).
  // Set before Mount; called on FUSE threads.
  void SetOpObserver(std::function<void(std::size_t op, std::chrono::nanoseconds)> fn);
  // Extended attributes computed by the daemon (user.foreverfs.replicas, .holders): for a name
  // it knows, returns the value or an error; nullopt for any other name. Not listed by
  // listxattr; every user.foreverfs.* name is read-only (setxattr and removexattr give EPERM).
  // May block (getxattr of these names may wait on the network). Set before Mount.
  using VirtualXattr =
      std::function<std::optional<Result<Bytes>>(std::uint64_t ino, std::string_view name)>;
  void SetVirtualXattr(VirtualXattr fn);
  // How the workers have taken requests from the kernel (fuse/request_reader.h). Any thread.
  RequestReader::Counters ReaderCounters() const;
  // Queues kernel cache invalidations for records a peer changed. Any thread.
  void Invalidate(const server::ChangeSet& changes);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace foreverfs::fuse
