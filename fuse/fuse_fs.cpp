#define FUSE_USE_VERSION 314
#include "fuse/fuse_fs.h"

#include <fuse_lowlevel.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

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
    return timespec{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
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

  std::mutex dirs_mu;
  std::map<std::uint64_t, std::vector<server::DirEntry>> dirs;  // open directory snapshots
  std::uint64_t next_dir = 1;

  std::mutex inval_mu;
  std::condition_variable inval_cv;
  std::deque<Invalidation> inval_queue;
  bool inval_stop = false;
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
    fuse_reply_err(req, err);
  }

  void ReplyEntry(fuse_req_t req, const Attr& a) {
    fuse_entry_param e{};
    e.ino = a.rec.id;
    e.attr = ToStat(a);
    e.attr_timeout = timeout;
    e.entry_timeout = timeout;
    fuse_reply_entry(req, &e);
  }

  void InvalidationLoop() {
    for (;;) {
      Invalidation inv;
      {
        std::unique_lock lock(inval_mu);
        inval_cv.wait(lock, [&] { return inval_stop || !inval_queue.empty(); });
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
  conn->max_write = 1 << 20;
  conn->max_readahead = 1 << 20;
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  auto& im = Impl::Of(req);
  auto a = im.fs.Lookup(parent, name);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "lookup");
  im.ReplyEntry(req, *a);
}

void OpForget(fuse_req_t req, fuse_ino_t, uint64_t) { fuse_reply_none(req); }

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  auto& im = Impl::Of(req);
  auto a = im.fs.GetAttr(ino);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "getattr");
  auto st = ToStat(*a);
  fuse_reply_attr(req, &st, im.timeout);
}

void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  auto& im = Impl::Of(req);
  server::SetAttrRequest r;
  if (to_set & FUSE_SET_ATTR_MODE) r.mode = attr->st_mode & 07777;
  if (to_set & FUSE_SET_ATTR_UID) r.uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) r.gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_SIZE) r.size = static_cast<std::uint64_t>(attr->st_size);
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  auto ns = [](const timespec& t) { return t.tv_sec * 1000000000LL + t.tv_nsec; };
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
    r.mtime_ns = ns(now);
  } else if (to_set & FUSE_SET_ATTR_MTIME) {
    r.mtime_ns = ns(attr->st_mtim);
  }
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
    r.atime_ns = ns(now);
  } else if (to_set & FUSE_SET_ATTR_ATIME) {
    r.atime_ns = ns(attr->st_atim);
  }
  auto a = im.fs.SetAttr(ino, r);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "setattr");
  auto st = ToStat(*a);
  fuse_reply_attr(req, &st, im.timeout);
}

void OpReadlink(fuse_req_t req, fuse_ino_t ino) {
  auto t = Impl::Of(req).fs.ReadLink(ino);
  if (!t.ok()) return Impl::ReplyError(req, t.status(), "readlink");
  fuse_reply_readlink(req, t->c_str());
}

void OpMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  auto& im = Impl::Of(req);
  const fuse_ctx* ctx = fuse_req_ctx(req);
  auto a = im.fs.Mkdir(parent, name, mode & ~ctx->umask, ctx->uid, ctx->gid);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "mkdir");
  im.ReplyEntry(req, *a);
}

void OpSymlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  auto& im = Impl::Of(req);
  const fuse_ctx* ctx = fuse_req_ctx(req);
  auto a = im.fs.Symlink(parent, name, target, ctx->uid, ctx->gid);
  if (!a.ok()) return Impl::ReplyError(req, a.status(), "symlink");
  im.ReplyEntry(req, *a);
}

void OpLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
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
  if (std::string_view(name).starts_with(kReservedXattrPrefix))
    return (void)fuse_reply_err(req, EPERM);
  auto s = Impl::Of(req).fs.SetXattr(
      ino, name, ByteSpan(reinterpret_cast<const std::uint8_t*>(value), size), flags);
  if (!s.ok()) return Impl::ReplyError(req, s, "setxattr");
  fuse_reply_err(req, 0);
}

constexpr std::string_view kControlXattr = "user.foreverfs.control";

void OpGetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
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
  if (size == 0) {
    fuse_reply_xattr(req, v->size());
  } else if (size < v->size()) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, reinterpret_cast<const char*>(v->data()), v->size());
  }
}

void OpListxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  auto names = Impl::Of(req).fs.ListXattr(ino);
  if (!names.ok()) return Impl::ReplyError(req, names.status(), "listxattr");
  std::string list;
  for (const auto& n : *names) list.append(n).push_back('\0');
  if (size == 0) {
    fuse_reply_xattr(req, list.size());
  } else if (size < list.size()) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, list.data(), list.size());
  }
}

void OpRemovexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  if (std::string_view(name).starts_with(kReservedXattrPrefix))
    return (void)fuse_reply_err(req, EPERM);
  auto s = Impl::Of(req).fs.RemoveXattr(ino, name);
  if (!s.ok()) return Impl::ReplyError(req, s, "removexattr");
  fuse_reply_err(req, 0);
}

void OpFallocate(fuse_req_t req, fuse_ino_t, int mode, off_t offset, off_t length,
                 fuse_file_info* fi) {
  auto s = Impl::Of(req).fs.Fallocate(fi->fh, mode, static_cast<std::uint64_t>(offset),
                                      static_cast<std::uint64_t>(length));
  if (!s.ok()) return Impl::ReplyError(req, s, "fallocate");
  fuse_reply_err(req, 0);
}

void OpLseek(fuse_req_t req, fuse_ino_t, off_t off, int whence, fuse_file_info* fi) {
  // The kernel answers SEEK_SET/CUR/END itself; only SEEK_DATA and SEEK_HOLE come here.
  if ((whence != SEEK_DATA && whence != SEEK_HOLE) || off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  auto r = Impl::Of(req).fs.Seek(fi->fh, static_cast<std::uint64_t>(off), whence == SEEK_DATA);
  if (!r.ok()) return Impl::ReplyError(req, r.status(), "lseek");
  fuse_reply_lseek(req, static_cast<off_t>(*r));
}

void OpUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  auto s = Impl::Of(req).fs.Unlink(parent, name);
  if (!s.ok()) return Impl::ReplyError(req, s, "unlink");
  fuse_reply_err(req, 0);
}

void OpRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  auto s = Impl::Of(req).fs.Rmdir(parent, name);
  if (!s.ok()) return Impl::ReplyError(req, s, "rmdir");
  fuse_reply_err(req, 0);
}

void OpRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
              const char* newname, unsigned int flags) {
  auto s = Impl::Of(req).fs.Rename(parent, name, newparent, newname, flags);
  if (!s.ok()) return Impl::ReplyError(req, s, "rename");
  fuse_reply_err(req, 0);
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto h = Impl::Of(req).fs.Open(ino, fi->flags);
  if (!h.ok()) return Impl::ReplyError(req, h.status(), "open");
  fi->fh = *h;
  fuse_reply_open(req, fi);
}

void OpCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
              fuse_file_info* fi) {
  auto& im = Impl::Of(req);
  const fuse_ctx* ctx = fuse_req_ctx(req);
  auto c = im.fs.Create(parent, name, mode & ~ctx->umask, ctx->uid, ctx->gid, fi->flags);
  if (!c.ok()) return Impl::ReplyError(req, c.status(), "create");
  fi->fh = c->handle;
  fuse_entry_param e{};
  e.ino = c->attr.rec.id;
  e.attr = ToStat(c->attr);
  e.attr_timeout = im.timeout;
  e.entry_timeout = im.timeout;
  fuse_reply_create(req, &e, fi);
}

void OpRead(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  Bytes buf(size);
  auto n = Impl::Of(req).fs.Read(fi->fh, static_cast<std::uint64_t>(off), buf);
  if (!n.ok()) return Impl::ReplyError(req, n.status(), "read");
  fuse_reply_buf(req, reinterpret_cast<const char*>(buf.data()), *n);
}

void OpWrite(fuse_req_t req, fuse_ino_t, const char* data, size_t size, off_t off,
             fuse_file_info* fi) {
  auto n = Impl::Of(req).fs.Write(fi->fh, static_cast<std::uint64_t>(off),
                                  ByteSpan(reinterpret_cast<const std::uint8_t*>(data), size),
                                  fuse_req_ctx(req)->uid);
  if (!n.ok()) return Impl::ReplyError(req, n.status(), "write");
  fuse_reply_write(req, *n);
}

void OpFlush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  auto s = Impl::Of(req).fs.Flush(fi->fh);
  if (!s.ok()) return Impl::ReplyError(req, s, "flush");
  fuse_reply_err(req, 0);
}

void OpRelease(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Impl::Of(req).fs.Release(fi->fh);
  fuse_reply_err(req, 0);
}

void OpFsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info* fi) {
  auto s = Impl::Of(req).fs.Fsync(fi->fh);
  if (!s.ok()) return Impl::ReplyError(req, s, "fsync");
  fuse_reply_err(req, 0);
}

void OpFsyncdir(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) {
  auto s = Impl::Of(req).fs.Sync();
  if (!s.ok()) return Impl::ReplyError(req, s, "fsyncdir");
  fuse_reply_err(req, 0);
}

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto& im = Impl::Of(req);
  auto entries = im.fs.ReadDir(ino);
  if (!entries.ok()) return Impl::ReplyError(req, entries.status(), "opendir");
  std::lock_guard lock(im.dirs_mu);
  fi->fh = im.next_dir++;
  im.dirs[fi->fh] = std::move(*entries);
  fuse_reply_open(req, fi);
}

// readdir and readdirplus: the second also gives each entry's attributes, so that `ls -l`
// does not send a LOOKUP per entry. Offsets: 1 is ".", 2 is "..", 3 + i is entries[i].
void ReplyDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
              bool plus) {
  auto& im = Impl::Of(req);
  std::lock_guard lock(im.dirs_mu);
  auto it = im.dirs.find(fi->fh);
  if (it == im.dirs.end()) {
    fuse_reply_err(req, EBADF);
    return;
  }
  const auto& entries = it->second;
  std::vector<char> buf(size);
  std::size_t used = 0;
  for (auto pos = static_cast<std::size_t>(off); pos < entries.size() + 2; ++pos) {
    fuse_entry_param e{};
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
    used += n;
  }
  fuse_reply_buf(req, buf.data(), used);
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
    std::lock_guard lock(im.dirs_mu);
    im.dirs.erase(fi->fh);
  }
  fuse_reply_err(req, 0);
}

void OpStatfs(fuse_req_t req, fuse_ino_t) {
  auto st = Impl::Of(req).fs.StatFs();
  if (!st.ok()) return Impl::ReplyError(req, st.status(), "statfs");
  fuse_reply_statfs(req, &*st);
}

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops ops{};
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.forget = OpForget;
  ops.getattr = OpGetattr;
  ops.setattr = OpSetattr;
  ops.readlink = OpReadlink;
  ops.mkdir = OpMkdir;
  ops.symlink = OpSymlink;
  ops.unlink = OpUnlink;
  ops.link = OpLink;
  ops.mknod = OpMknod;
  ops.setxattr = OpSetxattr;
  ops.getxattr = OpGetxattr;
  ops.listxattr = OpListxattr;
  ops.removexattr = OpRemovexattr;
  ops.fallocate = OpFallocate;
  ops.lseek = OpLseek;
  ops.rmdir = OpRmdir;
  ops.rename = OpRename;
  ops.open = OpOpen;
  ops.create = OpCreate;
  ops.read = OpRead;
  ops.write = OpWrite;
  ops.flush = OpFlush;
  ops.release = OpRelease;
  ops.fsync = OpFsync;
  ops.fsyncdir = OpFsyncdir;
  ops.opendir = OpOpendir;
  ops.readdir = OpReaddir;
  ops.readdirplus = OpReaddirplus;
  ops.releasedir = OpReleasedir;
  ops.statfs = OpStatfs;
  return ops;
}();

// Timing hook for metrics: the same handlers, each wrapped to report how long it took.
template <std::size_t K, auto Op, typename... A>
void Timed(fuse_req_t req, A... a) {
  auto& im = Impl::Of(req);  // before Op: replying frees req
  const auto start = std::chrono::steady_clock::now();
  Op(req, a...);
  if (im.op_observer) im.op_observer(K, std::chrono::steady_clock::now() - start);
}
template <std::size_t K, auto Op, typename... A>
constexpr auto MakeTimed(void (*)(fuse_req_t, A...)) {
  return &Timed<K, Op, A...>;
}
#define FFS_TIMED(k, op) MakeTimed<k, op>(op)

const std::vector<std::string> kTimedOpNames = {
    "lookup", "getattr", "setattr", "mkdir",    "create",  "open",
    "read",   "write",   "flush",   "fsync",    "release", "unlink",
    "rmdir",  "rename",  "readdir", "getxattr", "statfs",  "readdirplus"};

const fuse_lowlevel_ops kTimedOps = [] {
  fuse_lowlevel_ops ops = kOps;
  ops.lookup = FFS_TIMED(0, OpLookup);
  ops.getattr = FFS_TIMED(1, OpGetattr);
  ops.setattr = FFS_TIMED(2, OpSetattr);
  ops.mkdir = FFS_TIMED(3, OpMkdir);
  ops.create = FFS_TIMED(4, OpCreate);
  ops.open = FFS_TIMED(5, OpOpen);
  ops.read = FFS_TIMED(6, OpRead);
  ops.write = FFS_TIMED(7, OpWrite);
  ops.flush = FFS_TIMED(8, OpFlush);
  ops.fsync = FFS_TIMED(9, OpFsync);
  ops.release = FFS_TIMED(10, OpRelease);
  ops.unlink = FFS_TIMED(11, OpUnlink);
  ops.rmdir = FFS_TIMED(12, OpRmdir);
  ops.rename = FFS_TIMED(13, OpRename);
  ops.readdir = FFS_TIMED(14, OpReaddir);
  ops.readdirplus = FFS_TIMED(17, OpReaddirplus);
  ops.getxattr = FFS_TIMED(15, OpGetxattr);
  ops.statfs = FFS_TIMED(16, OpStatfs);
  return ops;
}();
#undef FFS_TIMED

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
    std::lock_guard lock(impl_->inval_mu);
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
  impl_->se = fuse_session_new(&args, &kTimedOps, sizeof(kTimedOps), impl_.get());
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
    std::lock_guard lock(impl_->inval_mu);
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
    std::lock_guard lock(impl_->inval_mu);
    if (impl_->inval_stop) return;
    for (const auto& r : changes.inodes) impl_->inval_queue.push_back({false, r.id, {}});
    for (const auto& d : changes.dentries) impl_->inval_queue.push_back({true, d.parent, d.name});
  }
  impl_->inval_cv.notify_one();
}

}  // namespace foreverfs::fuse
