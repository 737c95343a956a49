#include "fuse/ops.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <ctime>

namespace foreverfs::fuse {
namespace {

// Open flags that let the handle write (and an O_TRUNC cut the file).
bool Writes(int flags) { return (flags & O_ACCMODE) != O_RDONLY; }

using server::Attr;
using server::InodeKind;

// Every answer goes through the Reply (which marks the request as answered); nothing here may
// answer around it.
#pragma GCC poison fuse_reply_err fuse_reply_none fuse_reply_entry fuse_reply_create
#pragma GCC poison fuse_reply_attr fuse_reply_readlink fuse_reply_open fuse_reply_write
#pragma GCC poison fuse_reply_buf fuse_reply_iov fuse_reply_data fuse_reply_xattr
#pragma GCC poison fuse_reply_statfs fuse_reply_lock fuse_reply_bmap fuse_reply_ioctl
#pragma GCC poison fuse_reply_poll fuse_reply_lseek

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
bool NameFits(Reply& r, const char* name) {
  if (::strnlen(name, kMaxNameBytes + 1) <= kMaxNameBytes) return true;
  r.Err(ENAMETOOLONG);
  return false;
}

// Whether a write or an O_TRUNC open clears setuid/setgid: as the kernel says where it does
// (FUSE_HANDLE_KILLPRIV_V2), else for any caller but root (CAP_FSETID, as near as a uid gets).
bool KillsSuidgid(const RequestContext& ctx) { return ctx.kill_suidgid.value_or(ctx.uid != 0); }

// Nanoseconds since the epoch, saturated to what an int64 holds (years 1677 to 2262).
std::int64_t ToNs(const timespec& t) {
  constexpr std::int64_t kMaxSec = INT64_MAX / 1000000000 - 1;
  if (t.tv_sec > kMaxSec) return INT64_MAX;
  if (t.tv_sec < -kMaxSec) return INT64_MIN;
  return static_cast<std::int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

// Names the daemon answers itself (the control socket, replica counts): read-only.
constexpr std::string_view kReservedXattrPrefix = "user.foreverfs.";
constexpr std::string_view kControlXattr = "user.foreverfs.control";
constexpr std::string_view kPinXattr = "user.foreverfs.pin";

// By OpId.
constexpr std::array<const char*, kOpCount> kOpNames = {
    // Timed.
    "lookup", "getattr", "setattr", "mkdir", "create", "open", "read", "write", "flush", "fsync",
    "release", "unlink", "rmdir", "rename", "readdir", "getxattr", "statfs", "readdirplus",
    // Not timed.
    "forget", "readlink", "symlink", "link", "mknod", "setxattr", "listxattr", "removexattr",
    "fallocate", "fsyncdir", "opendir", "releasedir", "lseek", "forget_multi"};
static_assert(kOpNames[kOpForget] == std::string_view("forget"));
static_assert(kOpNames[kOpForgetMulti] == std::string_view("forget_multi"));
static_assert(kOpNames[kTimedOps - 1] == std::string_view("readdirplus"));

}  // namespace

Ops::Ops(server::FileServer& fs) : fs_(fs) {}

const char* Ops::OpName(std::size_t op) noexcept {
  return op < kOpNames.size() ? kOpNames[op] : "unknown";
}

const std::vector<std::string>& Ops::TimedOpNames() {
  static const std::vector<std::string> names(kOpNames.begin(), kOpNames.begin() + kTimedOps);
  return names;
}

void Ops::SetFaults(std::string_view spec) {
  std::string_view rest = spec;
  while (!rest.empty()) {
    auto comma = rest.find(',');
    auto item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    const bool late = item.ends_with('+');
    if (late) item.remove_suffix(1);
    for (std::size_t k = 0; k < kOpCount; ++k) {
      if (item != OpName(k)) continue;
      (late ? fault_after_ : fault_before_).set(k);
      spdlog::warn("fault injection: the {} handler throws {} it replies", item,
                   late ? "after" : "before");
    }
  }
}

void Ops::Unanswered(Reply& r, std::size_t op, const char* why) noexcept {
  const bool replied = r.replied();
  if (!replied) {
    try {
      if (op == kOpForget || op == kOpForgetMulti) {
        r.None();
      } else {
        r.Err(EIO);
      }
    } catch (...) {
    }
  }
  try {
    spdlog::error("fuse {}: {}{}", OpName(op), why,
                  replied ? " (after its reply)" : "; the request got EIO");
  } catch (...) {
  }
}

// Kernel-cache record.

void Ops::Told(fuse_ino_t ino, const model::Version& version, bool entry) {
  MutexLock lock(known_mu_);
  if (entry) {
    auto& k = known_[ino];
    ++k.lookups;
    k.version = version;
  } else if (auto it = known_.find(ino); it != known_.end()) {
    it->second.version = version;
  }
}

void Ops::Forgot(fuse_ino_t ino, std::uint64_t lookups) {
  MutexLock lock(known_mu_);
  auto it = known_.find(ino);
  if (it == known_.end()) return;
  if (it->second.lookups <= lookups) {
    known_.erase(it);
  } else {
    it->second.lookups -= lookups;
  }
}

// Replies race one another and the kernel drops a reply that an invalidation overtook, so for
// a while after a peer changed the inode the answer is yes whatever was told last.
bool Ops::KernelHasOther(fuse_ino_t ino, const model::Version& v) {
  MutexLock lock(known_mu_);
  auto it = known_.find(ino);
  if (it == known_.end()) return true;
  const bool recent = std::chrono::steady_clock::now() - it->second.peer_change <
                      std::chrono::duration<double>(2 * timeout_ + 1);
  if (it->second.version == v && !recent) return false;
  it->second.version = v;
  return true;
}

void Ops::PeerChanged(fuse_ino_t ino) {
  {
    MutexLock lock(known_mu_);
    if (auto it = known_.find(ino); it != known_.end()) {
      it->second.peer_change = std::chrono::steady_clock::now();
    }
  }
  pages_.PeerChanged(ino);
}

std::uint64_t Ops::KernelLookups(fuse_ino_t ino) {
  MutexLock lock(known_mu_);
  auto it = known_.find(ino);
  return it == known_.end() ? 0 : it->second.lookups;
}

// Replies.

void Ops::ReplyError(Reply& r, const Status& s, const char* op) {
  int err = ToErrno(s);
  if (err == EIO || err == ETIMEDOUT || err == ENOSPC) {
    spdlog::error("{}: {}", op, s.message());
  } else {
    spdlog::debug("{}: {}", op, s.message());
  }
  r.Err(err);
}

void Ops::ReplyEntry(Reply& r, const Attr& a) {
  Told(a, /*entry=*/true);
  fuse_entry_param e{};
  e.ino = a.rec.id;
  e.attr = ToStat(a);
  e.attr_timeout = timeout_;
  e.entry_timeout = timeout_;
  r.Entry(e);
}

// Handlers.

void Ops::Lookup(Reply& r, fuse_ino_t parent, const char* name) {
  if (!NameFits(r, name)) return;
  auto a = fs_.Lookup(parent, name);
  if (!a.ok()) return ReplyError(r, a.status(), "lookup");
  ReplyEntry(r, *a);
}

void Ops::Forget(Reply& r, fuse_ino_t ino, std::uint64_t nlookup) {
  Forgot(ino, nlookup);
  r.None();
}

void Ops::ForgetMulti(Reply& r, std::size_t count, fuse_forget_data* forgets) {
  for (std::size_t i = 0; i < count; ++i) Forgot(forgets[i].ino, forgets[i].nlookup);
  r.None();
}

void Ops::Getattr(Reply& r, fuse_ino_t ino, fuse_file_info* fi) {
  // With a handle (the kernel checking the size before a read): the version that handle reads.
  auto a = fi ? fs_.GetAttr(ino, fi->fh) : fs_.GetAttr(ino);
  if (!a.ok()) return ReplyError(r, a.status(), "getattr");
  Told(*a, /*entry=*/false);
  r.Attr(ToStat(*a), timeout_);
}

void Ops::Setattr(Reply& r, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  server::SetAttrRequest req;
  if (to_set & FUSE_SET_ATTR_MODE) req.mode = attr->st_mode & 07777;
  if (to_set & FUSE_SET_ATTR_UID) req.uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) req.gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_SIZE) {
    if (attr->st_size < 0) return r.Err(EINVAL);
    req.size = static_cast<std::uint64_t>(attr->st_size);
  }
  // Only where the kernel says so: otherwise it sends the mode change itself.
  req.kill_suidgid = r.Context().kill_suidgid.value_or(false);
  // A setattr that sets nothing is a chown naming neither owner nor group (chown(path, -1,
  // -1)): utimensat with both times omitted never leaves the kernel. Linux clears setuid, and
  // setgid where group-executable, there too (the POSIX model test found a 04050 file kept it).
  constexpr int kSetsSomething = FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID |
                                 FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME |
                                 FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW;
  if (!(to_set & kSetsSomething)) req.kill_suidgid = true;
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
    req.mtime_ns = ToNs(now);
  } else if (to_set & FUSE_SET_ATTR_MTIME) {
    req.mtime_ns = ToNs(attr->st_mtim);
  }
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
    req.atime_ns = ToNs(now);
  } else if (to_set & FUSE_SET_ATTR_ATIME) {
    req.atime_ns = ToNs(attr->st_atim);
  }
  auto a = fs_.SetAttr(ino, req);
  if (req.size) pages_.Changed(ino);  // whether or not it took: a part may have
  if (!a.ok()) return ReplyError(r, a.status(), "setattr");
  Told(*a, /*entry=*/false);
  r.Attr(ToStat(*a), timeout_);
}

void Ops::Readlink(Reply& r, fuse_ino_t ino) {
  auto t = fs_.ReadLink(ino);
  if (!t.ok()) return ReplyError(r, t.status(), "readlink");
  r.Readlink(t->c_str());
}

void Ops::Mkdir(Reply& r, fuse_ino_t parent, const char* name, mode_t mode) {
  if (!NameFits(r, name)) return;
  const RequestContext ctx = r.Context();
  auto a = fs_.Mkdir(parent, name, mode & ~ctx.umask, ctx.uid, ctx.gid);
  if (!a.ok()) return ReplyError(r, a.status(), "mkdir");
  ReplyEntry(r, *a);
}

void Ops::Symlink(Reply& r, const char* target, fuse_ino_t parent, const char* name) {
  if (!NameFits(r, name)) return;
  const RequestContext ctx = r.Context();
  auto a = fs_.Symlink(parent, name, target, ctx.uid, ctx.gid);
  if (!a.ok()) return ReplyError(r, a.status(), "symlink");
  ReplyEntry(r, *a);
}

void Ops::Link(Reply& r, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  if (!NameFits(r, newname)) return;
  auto a = fs_.Link(ino, newparent, newname);
  if (!a.ok()) return ReplyError(r, a.status(), "link");
  ReplyEntry(r, *a);
}

void Ops::Mknod(Reply& r, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  const RequestContext ctx = r.Context();
  auto a = fs_.Mknod(parent, name, (mode & S_IFMT) | (mode & ~S_IFMT & ~ctx.umask), ctx.uid,
                     ctx.gid, rdev);
  if (!a.ok()) return ReplyError(r, a.status(), "mknod");
  ReplyEntry(r, *a);
}

void Ops::Setxattr(Reply& r, fuse_ino_t ino, const char* name, const char* value, std::size_t size,
                   int flags) {
  // The kernel refuses both before asking (ERANGE, E2BIG), as Linux does for every file system.
  if (::strnlen(name, kMaxNameBytes + 1) > kMaxNameBytes) return r.Err(ERANGE);
  if (size > kMaxXattrValueBytes) return r.Err(E2BIG);
  if (name == kPinXattr) {
    auto s = fs_.SetPin(ino, ByteSpan(reinterpret_cast<const std::uint8_t*>(value), size));
    if (!s.ok()) return ReplyError(r, s, "setxattr");
    return r.Err(0);
  }
  if (std::string_view(name).starts_with(kReservedXattrPrefix)) return r.Err(EPERM);
  auto s =
      fs_.SetXattr(ino, name, ByteSpan(reinterpret_cast<const std::uint8_t*>(value), size), flags);
  if (!s.ok()) return ReplyError(r, s, "setxattr");
  r.Err(0);
}

void Ops::Getxattr(Reply& r, fuse_ino_t ino, const char* name, std::size_t size) {
  if (::strnlen(name, kMaxNameBytes + 1) > kMaxNameBytes) return r.Err(ERANGE);
  std::optional<Result<Bytes>> virt;
  if (name == kPinXattr) {
    virt = fs_.GetPin(ino);
  } else if (virtual_xattr_ && std::string_view(name).starts_with(kReservedXattrPrefix)) {
    virt = virtual_xattr_(ino, name);
  }
  auto v = virt ? std::move(*virt)
           : ino == FUSE_ROOT_ID && name == kControlXattr && !control_path_.empty()
               ? Result<Bytes>(Bytes(control_path_.begin(), control_path_.end()))
               : fs_.GetXattr(ino, name);
  if (!v.ok()) return ReplyError(r, v.status(), "getxattr");
  // Size 0 asks how big the value is; a buffer too small for it gives ERANGE.
  if (v->size() > kMaxXattrValueBytes) return r.Err(E2BIG);
  if (size == 0) return r.XattrSize(v->size());
  if (size < v->size()) return r.Err(ERANGE);
  r.Buf(v->data(), v->size());
}

void Ops::Listxattr(Reply& r, fuse_ino_t ino, std::size_t size) {
  auto names = fs_.ListXattr(ino);
  if (!names.ok()) return ReplyError(r, names.status(), "listxattr");
  std::string list;
  for (const auto& n : *names) list.append(n).push_back('\0');
  if (list.size() > kMaxXattrValueBytes) return r.Err(E2BIG);  // XATTR_LIST_MAX
  if (size == 0) return r.XattrSize(list.size());
  if (size < list.size()) return r.Err(ERANGE);
  r.Buf(list.data(), list.size());
}

void Ops::Removexattr(Reply& r, fuse_ino_t ino, const char* name) {
  if (::strnlen(name, kMaxNameBytes + 1) > kMaxNameBytes) return r.Err(ERANGE);
  if (std::string_view(name).starts_with(kReservedXattrPrefix)) return r.Err(EPERM);
  auto s = fs_.RemoveXattr(ino, name);
  if (!s.ok()) return ReplyError(r, s, "removexattr");
  r.Err(0);
}

void Ops::Fallocate(Reply& r, fuse_ino_t, int mode, off_t offset, off_t length,
                    fuse_file_info* fi) {
  // As vfs_fallocate; a range past the largest file size is the server's EFBIG (whatever the
  // mode: ext4 refuses one even with FALLOC_FL_KEEP_SIZE).
  if (offset < 0 || length <= 0) return r.Err(EINVAL);
  // The kernel marks no fallocate (it clears nothing itself with FUSE_HANDLE_KILLPRIV_V2):
  // any caller but root clears setuid/setgid, as near to CAP_FSETID as a uid gets.
  auto s = fs_.Fallocate(fi->fh, mode, static_cast<std::uint64_t>(offset),
                         static_cast<std::uint64_t>(length), r.Context().uid != 0);
  if (!s.ok()) return ReplyError(r, s, "fallocate");
  r.Err(0);
}

void Ops::Lseek(Reply& r, fuse_ino_t, off_t off, int whence, fuse_file_info* fi) {
  // The kernel answers SEEK_SET/CUR/END itself; only SEEK_DATA and SEEK_HOLE come here.
  if (whence != SEEK_DATA && whence != SEEK_HOLE) return r.Err(EINVAL);
  if (off < 0) return r.Err(ENXIO);  // as ext4
  auto s = fs_.Seek(fi->fh, static_cast<std::uint64_t>(off), whence == SEEK_DATA);
  if (!s.ok()) return ReplyError(r, s.status(), "lseek");
  r.Lseek(static_cast<off_t>(*s));
}

void Ops::Unlink(Reply& r, fuse_ino_t parent, const char* name) {
  if (!NameFits(r, name)) return;
  auto s = fs_.Unlink(parent, name);
  if (!s.ok()) return ReplyError(r, s, "unlink");
  r.Err(0);
}

void Ops::Rmdir(Reply& r, fuse_ino_t parent, const char* name) {
  if (!NameFits(r, name)) return;
  auto s = fs_.Rmdir(parent, name);
  if (!s.ok()) return ReplyError(r, s, "rmdir");
  r.Err(0);
}

void Ops::Rename(Reply& r, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
                 const char* newname, unsigned int flags) {
  if (!NameFits(r, name) || !NameFits(r, newname)) return;
  auto s = fs_.Rename(parent, name, newparent, newname, flags);
  if (!s.ok()) return ReplyError(r, s, "rename");
  r.Err(0);
}

void Ops::Open(Reply& r, fuse_ino_t ino, fuse_file_info* fi) {
  auto h = fs_.Open(ino, fi->flags, KillsSuidgid(r.Context()));
  if (!h.ok()) {
    // An O_TRUNC open may have cut the file before it failed.
    if ((fi->flags & O_TRUNC) && Writes(fi->flags)) pages_.Changed(ino);
    return ReplyError(r, h.status(), "open");
  }
  fi->fh = *h;
  pages_.Opened(ino, *h, Writes(fi->flags));
  // A version whose attributes the kernel may not hold (a peer's, or another handle's): its
  // cached size goes before the first read (attributes only, which takes no page lock: safe
  // inside a request). Regular files are not invalidated from the invalidation thread.
  if (auto v = fs_.HandleVersion(*h); v && KernelHasOther(ino, *v)) r.InvalInodeAttrs(ino);
  r.Open(*fi);
}

void Ops::Create(Reply& r, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  if (!NameFits(r, name)) return;
  const RequestContext ctx = r.Context();
  auto c =
      fs_.Create(parent, name, mode & ~ctx.umask, ctx.uid, ctx.gid, fi->flags, KillsSuidgid(ctx));
  if (!c.ok()) return ReplyError(r, c.status(), "create");
  fi->fh = c->handle;
  pages_.Opened(c->attr.rec.id, c->handle, Writes(fi->flags));
  Told(c->attr, /*entry=*/true);
  fuse_entry_param e{};
  e.ino = c->attr.rec.id;
  e.attr = ToStat(c->attr);
  e.attr_timeout = timeout_;
  e.entry_timeout = timeout_;
  r.Create(e, *fi);
}

void Ops::Read(Reply& r, fuse_ino_t ino, std::size_t size, off_t off, fuse_file_info* fi) {
  if (off < 0 || size > kMaxReadBytes) return r.Err(EINVAL);
  // A small read (the kernel's random reads are one page) also brings the rest of its segment,
  // for the kernel's cache: taken before the read, so a change after it stops the store.
  std::optional<std::uint64_t> ticket;
  if (page_sink_ && size < server::ReadWindow::kSize) ticket = pages_.Ticket(ino);
  Bytes window_buf;
  server::ReadWindow window;
  if (ticket) {
    window_buf.resize(server::ReadWindow::kSize);
    window.buf = window_buf;
  }
  Bytes buf(size);
  auto n = fs_.Read(fi->fh, static_cast<std::uint64_t>(off), buf, ticket ? &window : nullptr);
  if (!n.ok()) return ReplyError(r, n.status(), "read");
  r.Buf(buf.data(), *n);
  if (window.n > 0) {
    window_buf.resize(window.n);
    page_sink_(PageStore{ino, window.offset, std::move(window_buf), *ticket});
  }
}

void Ops::Write(Reply& r, fuse_ino_t, const char* data, std::size_t size, off_t off,
                fuse_file_info* fi) {
  // The largest file size is the server's (a write that starts past it fails with EFBIG, one
  // that crosses it is cut short there, as generic_write_checks does).
  if (off < 0) return r.Err(EINVAL);
  auto n = fs_.Write(fi->fh, static_cast<std::uint64_t>(off),
                     ByteSpan(reinterpret_cast<const std::uint8_t*>(data), size),
                     KillsSuidgid(r.Context()));
  if (!n.ok()) return ReplyError(r, n.status(), "write");
  r.Write(*n);
}

void Ops::Flush(Reply& r, fuse_ino_t, fuse_file_info* fi) {
  auto s = fs_.Flush(fi->fh);
  if (!s.ok()) return ReplyError(r, s, "flush");
  r.Err(0);
}

void Ops::Release(Reply& r, fuse_ino_t, fuse_file_info* fi) {
  fs_.Release(fi->fh);
  pages_.Released(fi->fh);
  r.Err(0);
}

void Ops::Fsync(Reply& r, fuse_ino_t, int, fuse_file_info* fi) {
  auto s = fs_.Fsync(fi->fh);
  if (!s.ok()) return ReplyError(r, s, "fsync");
  r.Err(0);
}

void Ops::Fsyncdir(Reply& r, fuse_ino_t, int, fuse_file_info*) {
  auto s = fs_.Sync();
  if (!s.ok()) return ReplyError(r, s, "fsyncdir");
  r.Err(0);
}

void Ops::Opendir(Reply& r, fuse_ino_t ino, fuse_file_info* fi) {
  auto entries = fs_.ReadDir(ino);
  if (!entries.ok()) return ReplyError(r, entries.status(), "opendir");
  MutexLock lock(dirs_mu_);
  // Thousands of handles on a large directory would otherwise hold thousands of copies of it.
  // One snapshot is always allowed, whatever its size.
  if (!dirs_.empty() && dir_entries_held_ + entries->size() > kMaxDirEntriesHeld) {
    spdlog::warn("opendir: {} directory entries held by open handles already; refused (ENFILE)",
                 dir_entries_held_);
    return r.Err(ENFILE);
  }
  dir_entries_held_ += entries->size();
  fi->fh = next_dir_++;
  dirs_[fi->fh] = std::move(*entries);
  r.Open(*fi);
}

// readdir and readdirplus: the second also gives each entry's attributes, so that `ls -l`
// does not send a LOOKUP per entry. Offsets: 1 is ".", 2 is "..", 3 + i is entries[i].
void Ops::ReplyDir(Reply& r, fuse_ino_t ino, std::size_t size, off_t off, fuse_file_info* fi,
                   bool plus) {
  if (off < 0 || size > kMaxReadBytes) return r.Err(EINVAL);
  MutexLock lock(dirs_mu_);
  auto it = dirs_.find(fi->fh);
  if (it == dirs_.end()) return r.Err(EBADF);
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
        if (auto a = fs_.GetAttr(d.id); a.ok()) {
          told_version = a->rec.version;
          e.ino = d.id;
          e.attr = ToStat(*a);
          e.attr_timeout = timeout_;
          e.entry_timeout = timeout_;
        }
      }
    }
    const off_t next = static_cast<off_t>(pos + 1);
    std::size_t n = r.AddDirEntry(buf.data() + used, size - used, name, e, next, plus);
    if (n > size - used) break;
    // The kernel takes each entry with attributes as a lookup.
    if (plus && e.ino != 0) Told(e.ino, told_version, /*entry=*/true);
    used += n;
  }
  r.Buf(buf.data(), used);
}

void Ops::Readdir(Reply& r, fuse_ino_t ino, std::size_t size, off_t off, fuse_file_info* fi) {
  ReplyDir(r, ino, size, off, fi, false);
}

void Ops::Readdirplus(Reply& r, fuse_ino_t ino, std::size_t size, off_t off, fuse_file_info* fi) {
  ReplyDir(r, ino, size, off, fi, true);
}

void Ops::Releasedir(Reply& r, fuse_ino_t, fuse_file_info* fi) {
  {
    MutexLock lock(dirs_mu_);
    if (auto it = dirs_.find(fi->fh); it != dirs_.end()) {
      dir_entries_held_ -= it->second.size();
      dirs_.erase(it);
    }
  }
  r.Err(0);
}

void Ops::Statfs(Reply& r, fuse_ino_t) {
  auto st = fs_.StatFs();
  if (!st.ok()) return ReplyError(r, st.status(), "statfs");
  r.Statfs(*st);
}

}  // namespace foreverfs::fuse
