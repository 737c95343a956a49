#pragma once
// fuse::Ops: the FUSE request handlers over a FileServer, answering through a fuse::Reply
// (fuse/reply.h). fuse_fs.cpp's libfuse callbacks are trampolines: each builds the reply for
// its fuse_req_t and calls the handler of the same name inside Guard. Unit tests
// (tests/unit/fuse_*.cpp) drive the same handlers with a recording Reply, without a kernel.
//
// Ops also holds what the handlers share across requests: the open directories' snapshots and
// the record of what the kernel caches of each inode (its lookup count and the version of the
// attributes it was given: an open of another version drops the kernel's attributes before it
// replies). Every Status becomes an errno in one place (ReplyError); sizes, offsets and names
// are bounded before anything is sized by them.
//
// Thread-safe: the handlers run on any number of FUSE threads at once, each with its own
// Reply. The setters are for before the first request.

#include <bitset>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"
#include "fuse/page_fill.h"
#include "fuse/reply.h"
#include "server/file_server.h"

namespace foreverfs::fuse {

// The ops by number, the timed ones first: their durations go to the op observer (the metrics
// histogram), named by Ops::TimedOpNames() in this order. Names in Ops::OpName.
enum OpId : std::size_t {
  // Timed.
  kOpLookup,
  kOpGetattr,
  kOpSetattr,
  kOpMkdir,
  kOpCreate,
  kOpOpen,
  kOpRead,
  kOpWrite,
  kOpFlush,
  kOpFsync,
  kOpRelease,
  kOpUnlink,
  kOpRmdir,
  kOpRename,
  kOpReaddir,
  kOpGetxattr,
  kOpStatfs,
  kOpReaddirplus,
  // Not timed.
  kOpForget,  // takes no reply
  kOpReadlink,
  kOpSymlink,
  kOpLink,
  kOpMknod,
  kOpSetxattr,
  kOpListxattr,
  kOpRemovexattr,
  kOpFallocate,
  kOpFsyncdir,
  kOpOpendir,
  kOpReleasedir,
  kOpLseek,
  kOpForgetMulti,  // takes no reply either
  kOpCount
};
inline constexpr std::size_t kTimedOps = kOpForget;

// Extended attributes computed by the daemon (user.foreverfs.replicas, .holders): for a name it
// knows, the value or an error; nullopt for any other name. May block.
using VirtualXattr =
    std::function<std::optional<Result<Bytes>>(std::uint64_t ino, std::string_view name)>;
using OpObserver = std::function<void(std::size_t op, std::chrono::nanoseconds)>;

class Ops {
 public:
  explicit Ops(server::FileServer& fs);
  Ops(const Ops&) = delete;
  Ops& operator=(const Ops&) = delete;

  // Configuration, before the first request.
  // How long the kernel may cache entries and attributes (seconds).
  void SetAttrTimeout(double seconds) { timeout_ = seconds; }
  // The root answers xattr user.foreverfs.control with this path (the daemon's control socket).
  void SetControlPath(std::string path) { control_path_ = std::move(path); }
  // Every user.foreverfs.* name is read-only (setxattr and removexattr give EPERM); getxattr of
  // one asks this first.
  void SetVirtualXattr(VirtualXattr fn) { virtual_xattr_ = std::move(fn); }
  // Called by Guard after each timed handler with its OpId and how long it took.
  void SetOpObserver(OpObserver fn) { op_observer_ = std::move(fn); }
  // Where a small read's neighbouring pages go after its reply (FuseFs queues them for the
  // kernel's cache; see PageFill). None: small reads read only what they are asked.
  void SetPageSink(std::function<void(PageStore&&)> fn) { page_sink_ = std::move(fn); }
  // Test tooling for the guard: "statfs,fsyncdir+" makes the named handlers throw
  // (std::bad_alloc) before they run, or, with "+", an exception after they replied. Names as
  // OpName; unknown names are ignored.
  void SetFaults(std::string_view spec);

  static const char* OpName(std::size_t op) noexcept;
  static const std::vector<std::string>& TimedOpNames();

  // Runs `handler` (which calls one of the handlers below with `r`) for request op `op` and
  // makes sure the request gets exactly one reply: an exception escaping it (std::bad_alloc
  // included) becomes EIO for the request (nothing for a forget) and one log line naming the
  // op, never std::terminate; a handler that returns without replying (a bug) gets EIO too, so
  // no request is left hanging; an exception after the reply is logged only. Times the timed
  // ops for the observer.
  template <typename F>
  void Guard(OpId op, Reply& r, F&& handler) noexcept;

  // The handlers: libfuse's low-level callbacks, with the Reply in place of the fuse_req_t.
  // Each replies exactly once through `r` before it returns, unless it throws.
  void Lookup(Reply& r, fuse_ino_t parent, const char* name);
  void Forget(Reply& r, fuse_ino_t ino, std::uint64_t nlookup);
  void ForgetMulti(Reply& r, std::size_t count, fuse_forget_data* forgets);
  void Getattr(Reply& r, fuse_ino_t ino, fuse_file_info* fi);
  void Setattr(Reply& r, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi);
  void Readlink(Reply& r, fuse_ino_t ino);
  void Mkdir(Reply& r, fuse_ino_t parent, const char* name, mode_t mode);
  void Symlink(Reply& r, const char* target, fuse_ino_t parent, const char* name);
  void Link(Reply& r, fuse_ino_t ino, fuse_ino_t newparent, const char* newname);
  void Mknod(Reply& r, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev);
  void Setxattr(Reply& r, fuse_ino_t ino, const char* name, const char* value, std::size_t size,
                int flags);
  void Getxattr(Reply& r, fuse_ino_t ino, const char* name, std::size_t size);
  void Listxattr(Reply& r, fuse_ino_t ino, std::size_t size);
  void Removexattr(Reply& r, fuse_ino_t ino, const char* name);
  void Fallocate(Reply& r, fuse_ino_t ino, int mode, off_t offset, off_t length,
                 fuse_file_info* fi);
  void Lseek(Reply& r, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi);
  void Unlink(Reply& r, fuse_ino_t parent, const char* name);
  void Rmdir(Reply& r, fuse_ino_t parent, const char* name);
  void Rename(Reply& r, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
              const char* newname, unsigned int flags);
  void Open(Reply& r, fuse_ino_t ino, fuse_file_info* fi);
  void Create(Reply& r, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi);
  void Read(Reply& r, fuse_ino_t ino, std::size_t size, off_t off, fuse_file_info* fi);
  void Write(Reply& r, fuse_ino_t ino, const char* data, std::size_t size, off_t off,
             fuse_file_info* fi);
  void Flush(Reply& r, fuse_ino_t ino, fuse_file_info* fi);
  void Release(Reply& r, fuse_ino_t ino, fuse_file_info* fi);
  void Fsync(Reply& r, fuse_ino_t ino, int datasync, fuse_file_info* fi);
  void Fsyncdir(Reply& r, fuse_ino_t ino, int datasync, fuse_file_info* fi);
  void Opendir(Reply& r, fuse_ino_t ino, fuse_file_info* fi);
  void Readdir(Reply& r, fuse_ino_t ino, std::size_t size, off_t off, fuse_file_info* fi);
  void Readdirplus(Reply& r, fuse_ino_t ino, std::size_t size, off_t off, fuse_file_info* fi);
  void Releasedir(Reply& r, fuse_ino_t ino, fuse_file_info* fi);
  void Statfs(Reply& r, fuse_ino_t ino);

  // A peer changed `ino`: for a while the kernel may hold attributes other than those last
  // sent (see KernelHasOther), and pages read before it are not stored. Any thread.
  void PeerChanged(fuse_ino_t ino);
  // Hands pages from the sink to the kernel through `store`, unless the inode changed since
  // they were read (PageFill::StoreIfCurrent). True if `store` ran.
  bool StorePages(const PageStore& p, const std::function<void()>& store) {
    return pages_.StoreIfCurrent(p, store);
  }
  // The kernel's lookup count of `ino` as this side counts it (0 once forgotten). For tests.
  std::uint64_t KernelLookups(fuse_ino_t ino);

 private:
  // What the kernel caches of an inode it was given: its lookup count (dropped by FORGET) and
  // the version of the attributes last sent for it. An open whose handle reads another version
  // invalidates the kernel's attributes before it replies (the pages go at every open: no
  // keep_cache), so that no read pairs one version's size with another's bytes.
  struct Known {
    std::uint64_t lookups = 0;
    model::Version version;
    std::chrono::steady_clock::time_point peer_change{};  // last change a peer made
  };

  // The one place a Status becomes an errno.
  static void ReplyError(Reply& r, const Status& s, const char* op);
  void ReplyEntry(Reply& r, const server::Attr& a);
  void ReplyDir(Reply& r, fuse_ino_t ino, std::size_t size, off_t off, fuse_file_info* fi,
                bool plus);
  // Before a reply that gives the kernel attributes of `ino` at `version`; `entry` if it
  // counts as a lookup (entry replies, readdirplus entries).
  void Told(fuse_ino_t ino, const model::Version& version, bool entry);
  void Told(const server::Attr& a, bool entry) { Told(a.rec.id, a.rec.version, entry); }
  void Forgot(fuse_ino_t ino, std::uint64_t lookups);
  // The kernel may cache attributes of a version other than `v` (it is then told to drop
  // them, and `v` becomes what it will ask for).
  bool KernelHasOther(fuse_ino_t ino, const model::Version& v);
  // Called when request `op` left its handler abnormally: replies EIO (nothing for a forget)
  // if it has no reply yet and logs one line. Never throws (it runs in a catch block, maybe
  // out of memory).
  static void Unanswered(Reply& r, std::size_t op, const char* why) noexcept;

  server::FileServer& fs_;
  double timeout_ = 1.0;
  std::string control_path_;
  VirtualXattr virtual_xattr_;
  OpObserver op_observer_;
  std::function<void(PageStore&&)> page_sink_;
  PageFill pages_;
  std::bitset<kOpCount> fault_before_, fault_after_;  // handlers that throw (tests)

  // Open directories: opendir snapshots the listing, readdir pages through it. Held while
  // readdirplus asks the file server for each entry's attributes (before every server lock).
  Mutex dirs_mu_;
  std::map<std::uint64_t, std::vector<server::DirEntry>> dirs_ GUARDED_BY(dirs_mu_);
  std::uint64_t next_dir_ GUARDED_BY(dirs_mu_) = 1;
  // In all snapshots, bounded by kMaxDirEntriesHeld (ops.cpp).
  std::size_t dir_entries_held_ GUARDED_BY(dirs_mu_) = 0;

  // Leaf lock (taken inside dirs_mu_ by readdirplus and inside FuseFs's inval_mu).
  Mutex known_mu_;
  std::unordered_map<fuse_ino_t, Known> known_ GUARDED_BY(known_mu_);
};

template <typename F>
void Ops::Guard(OpId op, Reply& r, F&& handler) noexcept {
  const auto start = std::chrono::steady_clock::now();
  try {
    if (fault_before_.test(op)) throw std::bad_alloc();
    handler();
    if (fault_after_.test(op)) throw std::runtime_error("fault injected after the reply");
    if (!r.replied()) Unanswered(r, op, "the handler returned without a reply");
    if (op < kTimedOps && op_observer_) {
      op_observer_(op, std::chrono::steady_clock::now() - start);
    }
  } catch (const std::bad_alloc&) {
    Unanswered(r, op, "out of memory (std::bad_alloc escaped the handler)");
  } catch (const std::exception& e) {
    Unanswered(r, op, e.what());
  } catch (...) {
    Unanswered(r, op, "an exception of unknown type escaped the handler");
  }
}

}  // namespace foreverfs::fuse
