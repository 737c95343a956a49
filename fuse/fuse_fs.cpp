#define FUSE_USE_VERSION 314
#include "base/mutex.h"
#include "fuse/fuse_fs.h"

#include <fuse_lowlevel.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <array>
#include <bitset>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>

namespace foreverfs::fuse {
namespace {

using server::Attr;
using server::InodeKind;

mode_t KindBits(InodeKind k) {
  switch (k) {
    case InodeKind::kDir:
      return S_IFDIR;
    case InodeKind::kSymlink:
      return S_IFLNK;
    case InodeKind::kFifo:
      return S_IFIFO;
    case InodeKind::kBlockDevice:
      return S_IFBLK;
    case InodeKind::kCharDevice:
      return S_IFCHR;
    case InodeKind::kSocket:
      return S_IFSOCK;
    case InodeKind::kFile:
      break;
  }
  return S_IFREG;
}

struct stat ToStat(const Attr& a) {
  struct stat st {};
  const auto& r = a.rec;
  st.st_ino = r.id;
  st.st_mode = KindBits(r.kind) | (r.mode & 07777);
  st.st_rdev = static_cast<dev_t>(r.rdev);
  st.st_nlink = a.nlink;
  st.st_uid = r.uid;
  st.st_gid = r.gid;
  st.st_size = static_cast<off_t>(r.kind == InodeKind::kDir ? 4096 : r.size);
  st.st_blksize = 1 << 20;
  // What the file holds, not its size: holes take no room (du, tar --sparse and cp see them).
  std::uint64_t held = static_cast<std::uint64_t>(st.st_size);
  if (r.kind == InodeKind::kFile) {
    held = std::min<std::uint64_t>(held, r.manifest.size() * std::uint64_t{1 << 20});
  }
  st.st_blocks = static_cast<blkcnt_t>((held + 511) / 512);
  auto ts = [](std::int64_t ns) {
    // Floor division: a time before 1970 has a negative second and 0 <= tv_nsec < 10^9.
    std::int64_t sec = ns / 1000000000, rem = ns % 1000000000;
    if (rem < 0) {
      --sec;
      rem += 1000000000;
    }
    return timespec{static_cast<time_t>(sec), static_cast<long>(rem)};
  };
  st.st_mtim = ts(r.mtime_ns);
  st.st_atim = ts(r.atime_ns);
  st.st_ctim = ts(r.ctime_ns);
  return st;
}

struct Invalidation {
  bool entry;
  std::uint64_t ino;  // parent for entries
  std::string name;
};

// Exactly one reply per request. Every reply goes through the helpers below, which mark the
// request on this thread as answered (handlers reply before they return, on the thread that
// called them); the guard around every handler (Guarded, further down) replies EIO to a
// request left without one, whether its handler threw or forgot. The fuse_reply_* functions
// are poisoned after this block, so no handler can reply around the mark.
thread_local bool t_replied = false;

void ReplyErr(fuse_req_t req, int err) {
  t_replied = true;
  fuse_reply_err(req, err);
}
void ReplyNone(fuse_req_t req) {
  t_replied = true;
  fuse_reply_none(req);
}
void ReplyEntryParam(fuse_req_t req, const fuse_entry_param& e) {
  t_replied = true;
  fuse_reply_entry(req, &e);
}
void ReplyCreate(fuse_req_t req, const fuse_entry_param& e, const fuse_file_info* fi) {
  t_replied = true;
  fuse_reply_create(req, &e, fi);
}
void ReplyAttr(fuse_req_t req, const struct stat& st, double timeout) {
  t_replied = true;
  fuse_reply_attr(req, &st, timeout);
}
void ReplyReadlink(fuse_req_t req, const char* target) {
  t_replied = true;
  fuse_reply_readlink(req, target);
}
void ReplyOpen(fuse_req_t req, const fuse_file_info* fi) {
  t_replied = true;
  fuse_reply_open(req, fi);
}
void ReplyWrite(fuse_req_t req, std::size_t count) {
  t_replied = true;
  fuse_reply_write(req, count);
}
void ReplyBuf(fuse_req_t req, const void* data, std::size_t size) {
  t_replied = true;
  fuse_reply_buf(req, static_cast<const char*>(data), size);
}
void ReplyXattrSize(fuse_req_t req, std::size_t size) {
  t_replied = true;
  fuse_reply_xattr(req, size);
}
void ReplyStatfs(fuse_req_t req, const struct statvfs& st) {
  t_replied = true;
  fuse_reply_statfs(req, &st);
}
void ReplyLseek(fuse_req_t req, off_t off) {
  t_replied = true;
  fuse_reply_lseek(req, off);
}
#pragma GCC poison fuse_reply_err fuse_reply_none fuse_reply_entry fuse_reply_create
#pragma GCC poison fuse_reply_attr fuse_reply_readlink fuse_reply_open fuse_reply_write
#pragma GCC poison fuse_reply_buf fuse_reply_iov fuse_reply_data fuse_reply_xattr
#pragma GCC poison fuse_reply_statfs fuse_reply_lock fuse_reply_bmap fuse_reply_ioctl
#pragma GCC poison fuse_reply_poll fuse_reply_lseek

// Bounds on the numbers a request carries, checked before anything is sized by them. The
// kernel checks most of them already for a local file system (whose limits it knows); for FUSE
// it lets through what fits in an off_t, and a request may come from any kernel.
// File sizes above model::kMaxFileSize are the server's to refuse (EFBIG); here only what would
// be misread once cast to unsigned (negative offsets) and what sizes an allocation.
constexpr std::size_t kMaxNameBytes = model::kMaxNameSize;          // NAME_MAX
constexpr std::size_t kMaxXattrValueBytes = model::kMaxXattrValue;  // XATTR_SIZE_MAX
// A READ or READDIR larger than this is refused (the kernel asks for at most max_pages, 256
// pages: 1 MiB).
constexpr std::size_t kMaxReadBytes = 16 * 1024 * 1024;
// Directory entries held by all open directory handles together (opendir snapshots the
// listing): about 64 MiB.
constexpr std::size_t kMaxDirEntriesHeld = 1 << 20;

// Replies ENAMETOOLONG (as ext4's lookup does) and returns false for a name over NAME_MAX.
bool NameFits(fuse_req_t req, const char* name) {
  if (::strnlen(name, kMaxNameBytes + 1) <= kMaxNameBytes) return true;
  ReplyErr(req, ENAMETOOLONG);
  return false;
}

// Nanoseconds since the epoch, saturated to what an int64 holds (years 1677 to 2262).
std::int64_t ToNs(const timespec& t) {
  constexpr std::int64_t kMaxSec = INT64_MAX / 1000000000 - 1;
  if (t.tv_sec > kMaxSec) return INT64_MAX;
  if (t.tv_sec < -kMaxSec) return INT64_MIN;
  return static_cast<std::int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

}  // namespace

struct FuseFs::Impl {
  explicit Impl(server::FileServer& f) : fs(f) {}
  server::FileServer& fs;
  fuse_session* se = nullptr;
  bool mounted = false;
  double timeout = 1.0;
  std::string mountpoint;
  std::string control_path;
  std::function<void(std::size_t, std::chrono::nanoseconds)> op_observer;
  FuseFs::VirtualXattr virtual_xattr;
  static constexpr std::size_t kMaxOps = 32;
  std::bitset<kMaxOps> fault_before, fault_after;  // handlers that throw, by op number (tests)

  Mutex dirs_mu;
  std::map<std::uint64_t, std::vector<server::DirEntry>> dirs GUARDED_BY(dirs_mu);  // snapshots
  std::uint64_t next_dir GUARDED_BY(dirs_mu) = 1;
  std::size_t dir_entries_held GUARDED_BY(dirs_mu) = 0;  // in all snapshots, bounded by kMaxDirEntriesHeld

  // What the kernel caches of each inode it was given: its lookup count (dropped by FORGET)
  // and the version of the attributes last sent for it. An open whose handle reads another
  // version invalidates the kernel's attributes before it replies (the pages go at every open:
  // no keep_cache), so that no read pairs one version's size with another's bytes. Leaf lock.
  struct Known {
    std::uint64_t lookups = 0;
    model::Version version;
    std::chrono::steady_clock::time_point peer_change{};  // last change a peer made
  };
  Mutex known_mu;
  std::unordered_map<fuse_ino_t, Known> known GUARDED_BY(known_mu);

  // Before a reply that gives the kernel attributes of `ino` at `version`; `entry` if it
  // counts as a lookup (entry replies, readdirplus entries).
  void Told(fuse_ino_t ino, const model::Version& version, bool entry) {
    MutexLock lock(known_mu);
    if (entry) {
      auto& k = known[ino];
      ++k.lookups;
      k.version = version;
    } else if (auto it = known.find(ino); it != known.end()) {
      it->second.version = version;
    }
  }
  void Told(const Attr& a, bool entry) { Told(a.rec.id, a.rec.version, entry); }

  void Forgot(fuse_ino_t ino, std::uint64_t lookups) {
    MutexLock lock(known_mu);
    auto it = known.find(ino);
    if (it == known.end()) return;
    if (it->second.lookups <= lookups) {
      known.erase(it);
    } else {
      it->second.lookups -= lookups;
    }
  }

  // The kernel may cache attributes of a version other than `v` (it is then told to drop
  // them, and `v` becomes what it will ask for). Replies race one another and the kernel
  // drops a reply that an invalidation overtook, so for a while after a peer changed the
  // inode the answer is yes whatever was told last.
  bool KernelHasOther(fuse_ino_t ino, const model::Version& v) {
    MutexLock lock(known_mu);
    auto it = known.find(ino);
    if (it == known.end()) return true;
    const bool recent = std::chrono::steady_clock::now() - it->second.peer_change <
                        std::chrono::duration<double>(2 * timeout + 1);
    if (it->second.version == v && !recent) return false;
    it->second.version = v;
    return true;
  }

  void PeerChanged(fuse_ino_t ino) {
    MutexLock lock(known_mu);
    if (auto it = known.find(ino); it != known.end()) {
      it->second.peer_change = std::chrono::steady_clock::now();
    }
  }

  Mutex inval_mu;
  std::condition_variable_any inval_cv;  // waits on inval_mu
  std::deque<Invalidation> inval_queue GUARDED_BY(inval_mu);
  bool inval_stop GUARDED_BY(inval_mu) = false;
  std::thread inval_thread;

  static Impl& Of(fuse_req_t req) { return *static_cast<Impl*>(fuse_req_userdata(req)); }

  // The one place a Status becomes an errno.
  static void ReplyError(fuse_req_t req, const Status& s, const char* op) {
    int err = ToErrno(s);
    if (err == EIO || err == ETIMEDOUT || err == ENOSPC) {
      spdlog::error("{}: {}", op, s.message());
    } else {
      spdlog::debug("{}: {}", op, s.message());
    }
    ReplyErr(req, err);
  }

  void ReplyEntry(fuse_req_t req, const Attr& a) {
    Told(a, /*entry=*/true);
    fuse_entry_param e{};
    e.ino = a.rec.id;
    e.attr = ToStat(a);
    e.attr_timeout = timeout;
    e.entry_timeout = timeout;
    ReplyEntryParam(req, e);
  }

  void InvalidationLoop() {
    for (;;) {
      Invalidation inv;
      {
        MutexLock lock(inval_mu);
        while (!inval_stop && inval_queue.empty()) inval_cv.wait(inval_mu);
        if (inval_stop) return;
        inv = std::move(inval_queue.front());
        inval_queue.pop_front();
      }
      if (inv.entry) {
        fuse_lowlevel_notify_inval_entry(se, inv.ino, inv.name.c_str(), inv.name.size());
      } else {
        fuse_lowlevel_notify_inval_inode(se, inv.ino, 0, 0);
      }
    }
  }
};

namespace {

using Impl = FuseFs::Impl;

void OpInit(void* userdata, fuse_conn_info* conn) {
  (void)userdata;
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  // Attributes come with directory listings (the kernel asks for them when it sees lookups
  // follow a listing, as `ls -l` does).
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO) conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
  // The kernel checks size and mtime before it serves cached pages (when its attributes have
  // expired or were invalidated) and drops the pages if either changed: how a peer's new
  // version, or a handle's own (GetAttr with the handle), replaces what it cached.
  if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA) conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
  conn->max_write = 1 << 20;
  conn->max_readahead = 1 << 20;
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  if (!NameFits(req, name)) return;
  auto& im = Impl::Of(req);
  auto a = im.fs.Lookup(parent, name);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "lookup");
  im.ReplyEntry(req, *a);
}

void OpForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Impl::Of(req).Forgot(ino, nlookup);
  ReplyNone(req);
}

void OpForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  auto& im = Impl::Of(req);
  for (size_t i = 0; i < count; ++i) im.Forgot(forgets[i].ino, forgets[i].nlookup);
  ReplyNone(req);
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto& im = Impl::Of(req);
  // With a handle (the kernel checking the size before a read): the version that handle reads.
  auto a = fi ? im.fs.GetAttr(ino, fi->fh) : im.fs.GetAttr(ino);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "getattr");
  im.Told(*a, /*entry=*/false);
  ReplyAttr(req, ToStat(*a), im.timeout);
}

void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  auto& im = Impl::Of(req);
  server::SetAttrRequest r;
  if (to_set & FUSE_SET_ATTR_MODE) r.mode = attr->st_mode & 07777;
  if (to_set & FUSE_SET_ATTR_UID) r.uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) r.gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_SIZE) {
    if (attr->st_size < 0) return ReplyErr(req, EINVAL);
    r.size = static_cast<std::uint64_t>(attr->st_size);
  }
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
    r.mtime_ns = ToNs(now);
  } else if (to_set & FUSE_SET_ATTR_MTIME) {
    r.mtime_ns = ToNs(attr->st_mtim);
  }
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
    r.atime_ns = ToNs(now);
  } else if (to_set & FUSE_SET_ATTR_ATIME) {
    r.atime_ns = ToNs(attr->st_atim);
  }
  auto a = im.fs.SetAttr(ino, r);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "setattr");
  im.Told(*a, /*entry=*/false);
  ReplyAttr(req, ToStat(*a), im.timeout);
}

void OpReadlink(fuse_req_t req, fuse_ino_t ino) {
  auto t = Impl::Of(req).fs.ReadLink(ino);
  if (!t.ok()) return Impl::ReplyError(req, t.status(), "readlink");
  ReplyReadlink(req, t->c_str());
}

void OpMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  if (!NameFits(req, name)) return;
  auto& im = Impl::Of(req);
  const fuse_ctx* ctx = fuse_req_ctx(req);
  auto a = im.fs.Mkdir(parent, name, mode & ~ctx->umask, ctx->uid, ctx->gid);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "mkdir");
  im.ReplyEntry(req, *a);
}

void OpSymlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  if (!NameFits(req, name)) return;
  auto& im = Impl::Of(req);
  const fuse_ctx* ctx = fuse_req_ctx(req);
  auto a = im.fs.Symlink(parent, name, target, ctx->uid, ctx->gid);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "symlink");
  im.ReplyEntry(req, *a);
}

void OpLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  if (!NameFits(req, newname)) return;
  auto& im = Impl::Of(req);
  auto a = im.fs.Link(ino, newparent, newname);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "link");
  im.ReplyEntry(req, *a);
}

void OpMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  auto& im = Impl::Of(req);
  const fuse_ctx* ctx = fuse_req_ctx(req);
  auto a = im.fs.Mknod(parent, name, (mode & S_IFMT) | (mode & ~S_IFMT & ~ctx->umask), ctx->uid,
                       ctx->gid, rdev);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "mknod");
  im.ReplyEntry(req, *a);
}

// Names the daemon answers itself (the control socket, replica counts): read-only.
constexpr std::string_view kReservedXattrPrefix = "user.foreverfs.";

void OpSetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
                int flags) {
  // The kernel refuses both before asking (ERANGE, E2BIG), as Linux does for every file system.
  if (::strnlen(name, kMaxNameBytes + 1) > kMaxNameBytes) return ReplyErr(req, ERANGE);
  if (size > kMaxXattrValueBytes) return ReplyErr(req, E2BIG);
  if (std::string_view(name).starts_with(kReservedXattrPrefix)) return ReplyErr(req, EPERM);
  auto s = Impl::Of(req).fs.SetXattr(
      ino, name, ByteSpan(reinterpret_cast<const std::uint8_t*>(value), size), flags);
  if (!s.ok()) return Impl::ReplyError(req, s, "setxattr");
  ReplyErr(req, 0);
}

constexpr std::string_view kControlXattr = "user.foreverfs.control";

void OpGetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  if (::strnlen(name, kMaxNameBytes + 1) > kMaxNameBytes) return ReplyErr(req, ERANGE);
  auto& im = Impl::Of(req);
  std::optional<Result<Bytes>> virt;
  if (im.virtual_xattr && std::string_view(name).starts_with(kReservedXattrPrefix)) {
    virt = im.virtual_xattr(ino, name);
  }
  auto v = virt ? std::move(*virt)
           : ino == FUSE_ROOT_ID && name == kControlXattr && !im.control_path.empty()
               ? Result<Bytes>(Bytes(im.control_path.begin(), im.control_path.end()))
               : im.fs.GetXattr(ino, name);
  if (!v.ok()) return Impl::ReplyError(req, v.status(), "getxattr");
  // Size 0 asks how big the value is; a buffer too small for it gives ERANGE.
  if (v->size() > kMaxXattrValueBytes) return ReplyErr(req, E2BIG);
  if (size == 0) return ReplyXattrSize(req, v->size());
  if (size < v->size()) return ReplyErr(req, ERANGE);
  ReplyBuf(req, v->data(), v->size());
}

void OpListxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  auto names = Impl::Of(req).fs.ListXattr(ino);
  if (!names.ok()) return Impl::ReplyError(req, names.status(), "listxattr");
  std::string list;
  for (const auto& n : *names) list.append(n).push_back('\0');
  if (list.size() > kMaxXattrValueBytes) return ReplyErr(req, E2BIG);  // XATTR_LIST_MAX
  if (size == 0) return ReplyXattrSize(req, list.size());
  if (size < list.size()) return ReplyErr(req, ERANGE);
  ReplyBuf(req, list.data(), list.size());
}

void OpRemovexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  if (::strnlen(name, kMaxNameBytes + 1) > kMaxNameBytes) return ReplyErr(req, ERANGE);
  if (std::string_view(name).starts_with(kReservedXattrPrefix)) return ReplyErr(req, EPERM);
  auto s = Impl::Of(req).fs.RemoveXattr(ino, name);
  if (!s.ok()) return Impl::ReplyError(req, s, "removexattr");
  ReplyErr(req, 0);
}

void OpFallocate(fuse_req_t req, fuse_ino_t, int mode, off_t offset, off_t length,
                 fuse_file_info* fi) {
  // As vfs_fallocate; a range past the largest file size is the server's EFBIG (whatever the
  // mode: ext4 refuses one even with FALLOC_FL_KEEP_SIZE).
  if (offset < 0 || length <= 0) return ReplyErr(req, EINVAL);
  auto s = Impl::Of(req).fs.Fallocate(fi->fh, mode, static_cast<std::uint64_t>(offset),
                                      static_cast<std::uint64_t>(length));
  if (!s.ok()) return Impl::ReplyError(req, s, "fallocate");
  ReplyErr(req, 0);
}

void OpLseek(fuse_req_t req, fuse_ino_t, off_t off, int whence, fuse_file_info* fi) {
  // The kernel answers SEEK_SET/CUR/END itself; only SEEK_DATA and SEEK_HOLE come here.
  if (whence != SEEK_DATA && whence != SEEK_HOLE) return ReplyErr(req, EINVAL);
  if (off < 0) return ReplyErr(req, ENXIO);  // as ext4
  auto r = Impl::Of(req).fs.Seek(fi->fh, static_cast<std::uint64_t>(off), whence == SEEK_DATA);
  if (!r.ok()) return Impl::ReplyError(req, r.status(), "lseek");
  ReplyLseek(req, static_cast<off_t>(*r));
}

void OpUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  if (!NameFits(req, name)) return;
  auto s = Impl::Of(req).fs.Unlink(parent, name);
  if (!s.ok()) return Impl::ReplyError(req, s, "unlink");
  ReplyErr(req, 0);
}

void OpRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  if (!NameFits(req, name)) return;
  auto s = Impl::Of(req).fs.Rmdir(parent, name);
  if (!s.ok()) return Impl::ReplyError(req, s, "rmdir");
  ReplyErr(req, 0);
}

void OpRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
              const char* newname, unsigned int flags) {
  if (!NameFits(req, name) || !NameFits(req, newname)) return;
  auto s = Impl::Of(req).fs.Rename(parent, name, newparent, newname, flags);
  if (!s.ok()) return Impl::ReplyError(req, s, "rename");
  ReplyErr(req, 0);
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto& im = Impl::Of(req);
  auto h = im.fs.Open(ino, fi->flags, fuse_req_ctx(req)->uid);
  if (!h.ok()) return Impl::ReplyError(req, h.status(), "open");
  fi->fh = *h;
  // A version whose attributes the kernel may not hold (a peer's, or another handle's): its
  // cached size goes before the first read (attributes only, which takes no page lock: safe
  // inside a request). Regular files are not invalidated from the invalidation thread.
  if (auto v = im.fs.HandleVersion(*h); v && im.KernelHasOther(ino, *v) && im.se) {
    fuse_lowlevel_notify_inval_inode(im.se, ino, -1, 0);
  }
  ReplyOpen(req, fi);
}

void OpCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
              fuse_file_info* fi) {
  if (!NameFits(req, name)) return;
  auto& im = Impl::Of(req);
  const fuse_ctx* ctx = fuse_req_ctx(req);
  auto c = im.fs.Create(parent, name, mode & ~ctx->umask, ctx->uid, ctx->gid, fi->flags);
  if (!c.ok()) return Impl::ReplyError(req, c.status(), "create");
  fi->fh = c->handle;
  im.Told(c->attr, /*entry=*/true);
  fuse_entry_param e{};
  e.ino = c->attr.rec.id;
  e.attr = ToStat(c->attr);
  e.attr_timeout = im.timeout;
  e.entry_timeout = im.timeout;
  ReplyCreate(req, e, fi);
}

void OpRead(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  if (off < 0 || size > kMaxReadBytes) return ReplyErr(req, EINVAL);
  Bytes buf(size);
  auto n = Impl::Of(req).fs.Read(fi->fh, static_cast<std::uint64_t>(off), buf);
  if (!n.ok()) return Impl::ReplyError(req, n.status(), "read");
  ReplyBuf(req, buf.data(), *n);
}

void OpWrite(fuse_req_t req, fuse_ino_t, const char* data, size_t size, off_t off,
             fuse_file_info* fi) {
  // The largest file size is the server's (a write that starts past it fails with EFBIG, one
  // that crosses it is cut short there, as generic_write_checks does).
  if (off < 0) return ReplyErr(req, EINVAL);
  auto n = Impl::Of(req).fs.Write(fi->fh, static_cast<std::uint64_t>(off),
                                  ByteSpan(reinterpret_cast<const std::uint8_t*>(data), size),
                                  fuse_req_ctx(req)->uid);
  if (!n.ok()) return Impl::ReplyError(req, n.status(), "write");
  ReplyWrite(req, *n);
}

void OpFlush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  auto s = Impl::Of(req).fs.Flush(fi->fh);
  if (!s.ok()) return Impl::ReplyError(req, s, "flush");
  ReplyErr(req, 0);
}

void OpRelease(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Impl::Of(req).fs.Release(fi->fh);
  ReplyErr(req, 0);
}

void OpFsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info* fi) {
  auto s = Impl::Of(req).fs.Fsync(fi->fh);
  if (!s.ok()) return Impl::ReplyError(req, s, "fsync");
  ReplyErr(req, 0);
}

void OpFsyncdir(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) {
  auto s = Impl::Of(req).fs.Sync();
  if (!s.ok()) return Impl::ReplyError(req, s, "fsyncdir");
  ReplyErr(req, 0);
}

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto& im = Impl::Of(req);
  auto entries = im.fs.ReadDir(ino);
  if (!entries.ok()) return Impl::ReplyError(req, entries.status(), "opendir");
  MutexLock lock(im.dirs_mu);
  // Thousands of handles on a large directory would otherwise hold thousands of copies of it.
  // One snapshot is always allowed, whatever its size.
  if (!im.dirs.empty() && im.dir_entries_held + entries->size() > kMaxDirEntriesHeld) {
    spdlog::warn("opendir: {} directory entries held by open handles already; refused (ENFILE)",
                 im.dir_entries_held);
    return ReplyErr(req, ENFILE);
  }
  im.dir_entries_held += entries->size();
  fi->fh = im.next_dir++;
  im.dirs[fi->fh] = std::move(*entries);
  ReplyOpen(req, fi);
}

// readdir and readdirplus: the second also gives each entry's attributes, so that `ls -l`
// does not send a LOOKUP per entry. Offsets: 1 is ".", 2 is "..", 3 + i is entries[i].
void ReplyDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
              bool plus) {
  if (off < 0 || size > kMaxReadBytes) return ReplyErr(req, EINVAL);
  auto& im = Impl::Of(req);
  MutexLock lock(im.dirs_mu);
  auto it = im.dirs.find(fi->fh);
  if (it == im.dirs.end()) return ReplyErr(req, EBADF);
  const auto& entries = it->second;
  std::vector<char> buf(size);
  std::size_t used = 0;
  for (auto pos = static_cast<std::size_t>(off); pos < entries.size() + 2; ++pos) {
    fuse_entry_param e{};
    model::Version told_version;
    const char* name;
    if (pos < 2) {
      name = pos == 0 ? "." : "..";
      e.attr.st_ino = ino;
      e.attr.st_mode = S_IFDIR;
    } else {
      const auto& d = entries[pos - 2];
      name = d.name.c_str();
      e.attr.st_ino = d.id;
      e.attr.st_mode = KindBits(d.kind);
      if (plus) {
        // An entry gone since opendir goes out without attributes (ino 0: the kernel then
        // looks it up if it needs it).
        if (auto a = im.fs.GetAttr(d.id); a.ok()) {
          told_version = a->rec.version;
          e.ino = d.id;
          e.attr = ToStat(*a);
          e.attr_timeout = im.timeout;
          e.entry_timeout = im.timeout;
        }
      }
    }
    const off_t next = static_cast<off_t>(pos + 1);
    std::size_t n =
        plus ? fuse_add_direntry_plus(req, buf.data() + used, size - used, name, &e, next)
             : fuse_add_direntry(req, buf.data() + used, size - used, name, &e.attr, next);
    if (n > size - used) break;
    // The kernel takes each entry with attributes as a lookup.
    if (plus && e.ino != 0) im.Told(e.ino, told_version, /*entry=*/true);
    used += n;
  }
  ReplyBuf(req, buf.data(), used);
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  ReplyDir(req, ino, size, off, fi, false);
}

void OpReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  ReplyDir(req, ino, size, off, fi, true);
}

void OpReleasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  auto& im = Impl::Of(req);
  {
    MutexLock lock(im.dirs_mu);
    if (auto it = im.dirs.find(fi->fh); it != im.dirs.end()) {
      im.dir_entries_held -= it->second.size();
      im.dirs.erase(it);
    }
  }
  ReplyErr(req, 0);
}

void OpStatfs(fuse_req_t req, fuse_ino_t) {
  auto st = Impl::Of(req).fs.StatFs();
  if (!st.ok()) return Impl::ReplyError(req, st.status(), "statfs");
  ReplyStatfs(req, *st);
}

// Every handler runs inside Guarded, which times it for the metrics (the ops named in
// kTimedOpNames) and makes sure the request gets exactly one reply: an exception escaping the
// handler (std::bad_alloc included) becomes EIO for that request and one log line naming the
// op, never std::terminate; a handler that returns without replying (a bug) gets EIO too, so
// no request is left hanging. Ops are numbered as in kOpNames, the timed ones first.
constexpr std::array<const char*, 32> kOpNames = {
    // Timed: their durations go to the op observer (the metrics histogram).
    "lookup", "getattr", "setattr", "mkdir", "create", "open", "read", "write", "flush", "fsync",
    "release", "unlink", "rmdir", "rename", "readdir", "getxattr", "statfs", "readdirplus",
    // Not timed.
    "forget", "readlink", "symlink", "link", "mknod", "setxattr", "listxattr", "removexattr",
    "fallocate", "fsyncdir", "opendir", "releasedir", "lseek", "forget_multi"};
constexpr std::size_t kTimedOps = 18;
constexpr std::size_t kForgetOp = kTimedOps;  // takes no reply
constexpr std::size_t kForgetMultiOp = 31;    // nor does this
constexpr std::size_t kOpCount = kOpNames.size();
static_assert(kOpCount <= FuseFs::Impl::kMaxOps);
const std::vector<std::string> kTimedOpNames(kOpNames.begin(), kOpNames.begin() + kTimedOps);

const char* OpName(std::size_t k) noexcept { return kOpNames[k]; }

// Called when request `k` left its handler abnormally: replies EIO if it has no reply yet and
// logs one line. Never throws (it runs in a catch block, maybe out of memory).
void Unanswered(fuse_req_t req, std::size_t k, const char* why) noexcept {
  const bool replied = t_replied;
  if (!replied) {
    if (k == kForgetOp || k == kForgetMultiOp) {
      ReplyNone(req);
    } else {
      ReplyErr(req, EIO);
    }
  }
  try {
    spdlog::error("fuse {}: {}{}", OpName(k), why,
                  replied ? " (after its reply)" : "; the request got EIO");
  } catch (...) {
  }
}

template <std::size_t K, auto Op, typename... A>
void Guarded(fuse_req_t req, A... a) {
  static_assert(K < kOpCount);
  auto& im = Impl::Of(req);  // before Op: replying frees req
  const auto start = std::chrono::steady_clock::now();
  t_replied = false;
  try {
    if (im.fault_before.test(K)) throw std::bad_alloc();
    Op(req, a...);
    if (im.fault_after.test(K)) throw std::runtime_error("fault injected after the reply");
    if (!t_replied) Unanswered(req, K, "the handler returned without a reply");
    if (K < kTimedOps && im.op_observer) {
      im.op_observer(K, std::chrono::steady_clock::now() - start);
    }
  } catch (const std::bad_alloc&) {
    Unanswered(req, K, "out of memory (std::bad_alloc escaped the handler)");
  } catch (const std::exception& e) {
    Unanswered(req, K, e.what());
  } catch (...) {
    Unanswered(req, K, "an exception of unknown type escaped the handler");
  }
}
template <std::size_t K, auto Op, typename... A>
constexpr auto MakeGuarded(void (*)(fuse_req_t, A...)) {
  return &Guarded<K, Op, A...>;
}
#define FFS_GUARDED(k, op) MakeGuarded<k, op>(op)

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops ops{};
  ops.init = OpInit;
  ops.lookup = FFS_GUARDED(0, OpLookup);
  ops.getattr = FFS_GUARDED(1, OpGetattr);
  ops.setattr = FFS_GUARDED(2, OpSetattr);
  ops.mkdir = FFS_GUARDED(3, OpMkdir);
  ops.create = FFS_GUARDED(4, OpCreate);
  ops.open = FFS_GUARDED(5, OpOpen);
  ops.read = FFS_GUARDED(6, OpRead);
  ops.write = FFS_GUARDED(7, OpWrite);
  ops.flush = FFS_GUARDED(8, OpFlush);
  ops.fsync = FFS_GUARDED(9, OpFsync);
  ops.release = FFS_GUARDED(10, OpRelease);
  ops.unlink = FFS_GUARDED(11, OpUnlink);
  ops.rmdir = FFS_GUARDED(12, OpRmdir);
  ops.rename = FFS_GUARDED(13, OpRename);
  ops.readdir = FFS_GUARDED(14, OpReaddir);
  ops.getxattr = FFS_GUARDED(15, OpGetxattr);
  ops.statfs = FFS_GUARDED(16, OpStatfs);
  ops.readdirplus = FFS_GUARDED(17, OpReaddirplus);
  ops.forget = FFS_GUARDED(18, OpForget);
  ops.forget_multi = FFS_GUARDED(kForgetMultiOp, OpForgetMulti);
  ops.readlink = FFS_GUARDED(19, OpReadlink);
  ops.symlink = FFS_GUARDED(20, OpSymlink);
  ops.link = FFS_GUARDED(21, OpLink);
  ops.mknod = FFS_GUARDED(22, OpMknod);
  ops.setxattr = FFS_GUARDED(23, OpSetxattr);
  ops.listxattr = FFS_GUARDED(24, OpListxattr);
  ops.removexattr = FFS_GUARDED(25, OpRemovexattr);
  ops.fallocate = FFS_GUARDED(26, OpFallocate);
  ops.fsyncdir = FFS_GUARDED(27, OpFsyncdir);
  ops.opendir = FFS_GUARDED(28, OpOpendir);
  ops.releasedir = FFS_GUARDED(29, OpReleasedir);
  ops.lseek = FFS_GUARDED(30, OpLseek);
  return ops;
}();
#undef FFS_GUARDED

// FOREVERFS_TEST_FUSE_FAULTS="statfs,fsyncdir+": the named handlers throw (std::bad_alloc)
// before they run, or, with "+", an exception after they replied. Test tooling for the guard.
void ParseFaults(const char* spec, std::bitset<Impl::kMaxOps>& before,
                 std::bitset<Impl::kMaxOps>& after) {
  std::string_view rest = spec ? spec : "";
  while (!rest.empty()) {
    auto comma = rest.find(',');
    auto item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    const bool late = item.ends_with('+');
    if (late) item.remove_suffix(1);
    for (std::size_t k = 0; k < kOpCount; ++k) {
      if (item != OpName(k)) continue;
      (late ? after : before).set(k);
      spdlog::warn("fault injection: the {} handler throws {} it replies", item,
                   late ? "after" : "before");
    }
  }
}

bool IsMounted(const std::string& path) {
  std::ifstream mounts("/proc/self/mounts");
  std::string dev, dir, rest;
  while (mounts >> dev >> dir && std::getline(mounts, rest)) {
    if (dir == path) return true;
  }
  return false;
}

}  // namespace

FuseFs::FuseFs(server::FileServer& fs) : impl_(std::make_unique<Impl>(fs)) {}

FuseFs::~FuseFs() {
  {
    MutexLock lock(impl_->inval_mu);
    impl_->inval_stop = true;
  }
  impl_->inval_cv.notify_all();
  if (impl_->inval_thread.joinable()) impl_->inval_thread.join();
  Unmount();
  if (impl_->se) fuse_session_destroy(impl_->se);
}

Status FuseFs::Mount(const MountOptions& options) {
  std::error_code ec;
  auto canonical = std::filesystem::canonical(options.mountpoint, ec);
  if (ec) return Err(Code::kNotFound, "mountpoint {}: {}", options.mountpoint, ec.message());
  if (!std::filesystem::is_directory(canonical)) {
    return Err(Code::kNotDir, "mountpoint {} is not a directory", options.mountpoint);
  }
  if (IsMounted(canonical.string())) {
    return Err(Code::kExists, "mountpoint {} is already in use (unmount it with fusermount -u {})",
               canonical.string(), canonical.string());
  }
  impl_->mountpoint = canonical.string();
  impl_->timeout = options.attr_timeout_s;
  std::string opts = "fsname=foreverfs,subtype=foreverfs,default_permissions";
  for (const auto& o : options.options) opts += "," + o;
  std::vector<std::string> argv_s = {"foreverfs", "-o", opts};
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  ParseFaults(std::getenv("FOREVERFS_TEST_FUSE_FAULTS"), impl_->fault_before, impl_->fault_after);
  impl_->se = fuse_session_new(&args, &kOps, sizeof(kOps), impl_.get());
  if (!impl_->se)
    return Err(Code::kInvalid, "cannot create a FUSE session (mount options '{}')", opts);
  if (fuse_session_mount(impl_->se, impl_->mountpoint.c_str()) != 0) {
    return Err(Code::kIOError, "cannot mount {} (is /dev/fuse there and fusermount3 installed?)",
               impl_->mountpoint);
  }
  impl_->mounted = true;
  return Ok();
}

void FuseFs::InstallSignalHandlers() { fuse_set_signal_handlers(impl_->se); }

Status FuseFs::Run() {
  impl_->inval_thread = std::thread([im = impl_.get()] { im->InvalidationLoop(); });
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_idle_threads(cfg, 8);
  fuse_loop_cfg_set_max_threads(cfg, 64);
  int rc = fuse_session_loop_mt(impl_->se, cfg);
  fuse_loop_cfg_destroy(cfg);
  fuse_remove_signal_handlers(impl_->se);
  {
    MutexLock lock(impl_->inval_mu);
    impl_->inval_stop = true;
  }
  impl_->inval_cv.notify_all();
  impl_->inval_thread.join();
  if (rc != 0 && rc != SIGINT && rc != SIGTERM && rc != SIGHUP) {
    return Err(Code::kIOError, "FUSE session on {} ended with error {}", impl_->mountpoint, rc);
  }
  return Ok();
}

void FuseFs::Unmount() {
  if (impl_->se && impl_->mounted) {
    fuse_session_unmount(impl_->se);
    impl_->mounted = false;
  }
}

void FuseFs::SetControlPath(std::string path) { impl_->control_path = std::move(path); }

const std::vector<std::string>& FuseFs::TimedOpNames() { return kTimedOpNames; }

void FuseFs::SetOpObserver(std::function<void(std::size_t, std::chrono::nanoseconds)> fn) {
  impl_->op_observer = std::move(fn);
}

void FuseFs::SetVirtualXattr(VirtualXattr fn) { impl_->virtual_xattr = std::move(fn); }

void FuseFs::Invalidate(const server::ChangeSet& changes) {
  {
    MutexLock lock(impl_->inval_mu);
    if (impl_->inval_stop) return;
    for (const auto& r : changes.inodes) {
      impl_->PeerChanged(r.id);
      // A regular file's cached attributes and pages stay: they are those of the version the
      // handles open here read, and the next open drops them (OpOpen). Invalidating them
      // here would race the GETATTR of a reader, whose reply the kernel then drops, leaving
      // it reading with the size it had. A stat shows the new version within attr_timeout.
      if (r.kind == InodeKind::kFile && !r.deleted) continue;
      impl_->inval_queue.push_back({false, r.id, {}});
    }
    for (const auto& d : changes.dentries) impl_->inval_queue.push_back({true, d.parent, d.name});
  }
  impl_->inval_cv.notify_one();
}

}  // namespace foreverfs::fuse
