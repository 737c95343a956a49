#include "server/file_server.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <array>
#include <chrono>
#include <cstring>
#include <set>

#include "server/content_clock.h"
#include "server/open_file.h"

namespace foreverfs::server {
namespace {

// What a write, truncate or chown leaves of `mode`: without setuid, and setgid where it means
// "set group id" (group-executable), as Linux's should_remove_suid; nullopt if that changes
// nothing, or for a directory (whose setgid means inheritance).
std::optional<std::uint32_t> WithoutSetIds(InodeKind kind, std::uint32_t mode) {
  const std::uint32_t kill = S_ISUID | ((mode & S_IXGRP) ? S_ISGID : 0);
  if (kind == InodeKind::kDir || !(mode & kill)) return std::nullopt;
  return mode & ~kill;
}

Status CheckName(std::string_view name) {
  if (name.size() > model::kMaxNameSize)
    return Err(Code::kNameTooLong, "name '{}...' is longer than 255 bytes", name.substr(0, 32));
  if (!model::ValidName(name)) return Err(Code::kInvalid, "'{}' is not a valid file name", name);
  return Ok();
}

// Whether a record from a peer may be applied: within the file limits (model::ValidateInode) and
// dated no further than `skew_ns` ahead of this clock (a version near 2^64 would win over every
// later write for good).
Status Admissible(const InodeRecord& r, std::uint64_t skew_ns) {
  if (auto s = model::ValidateInode(r); !s.ok()) return s;
  bool ahead = !Hlc::Plausible(r.version.hlc, skew_ns);
  for (const auto& e : r.content_clock) ahead = ahead || !Hlc::Plausible(e.hlc, skew_ns);
  if (ahead) {
    return Err(Code::kInvalid, "inode {:016x}: dated more than {} s ahead of this clock", r.id,
               skew_ns / 1000000000);
  }
  return Ok();
}

Status Admissible(const DentryRecord& d, std::uint64_t skew_ns) {
  if (Hlc::Plausible(d.version.hlc, skew_ns) && Hlc::Plausible(d.replaces.hlc, skew_ns))
    return Ok();
  return Err(Code::kInvalid, "entry '{}' in {:016x}: dated more than {} s ahead of this clock",
             d.name, d.parent, skew_ns / 1000000000);
}

// Times that change as a side effect (a directory's when its entries change, an inode's ctime
// when it is renamed or loses a link) are committed with the version that directly follows the
// record's own, not a fresh one from the clock. It replaces that record on every node, but
// loses to anything done to the record concurrently elsewhere: a chmod is not undone by a
// create in the directory, and the tombstone of a concurrent rmdir still wins, so that the
// directory comes back with its name because of the entry created in it (NamespaceDb's
// ReviveDir) instead of living on without a name. The clock observes the version, so that no
// later change of this node reuses it.
InodeRecord WithTimesChanged(InodeRecord rec, Hlc& hlc) {
  rec.version = {rec.version.hlc + 1, hlc.node()};
  hlc.Observe(rec.version.hlc);
  return rec;
}

// `dir` after an entry was added to or removed from it at `now`: POSIX updates its mtime and
// ctime. The record goes into the same commit as the entry (one transaction, no extra commit
// per create).
InodeRecord TouchDir(InodeRecord dir, std::int64_t now, Hlc& hlc) {
  dir.mtime_ns = dir.ctime_ns = now;
  return WithTimesChanged(std::move(dir), hlc);
}

// `rec` after a change of its name or of its number of links at `now` (ctime only).
InodeRecord TouchCtime(InodeRecord rec, std::int64_t now, Hlc& hlc) {
  rec.ctime_ns = now;
  return WithTimesChanged(std::move(rec), hlc);
}

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> parts;
  while (!path.empty()) {
    auto slash = path.find('/');
    auto part = path.substr(0, slash);
    if (!part.empty() && part != ".") parts.push_back(part);
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return parts;
}

}  // namespace

FileServer::FileServer(NamespaceDb& ns, cas::ChunkStore& store, cas::ChunkHasher hasher,
                       std::filesystem::path staging_dir)
    : ns_(ns),
      store_(store),
      hasher_(hasher),
      staging_dir_(std::move(staging_dir)),
      hlc_(ns.node_id(), ns.MaxHlc()),
      inode_ids_([&ns](InodeId lo, InodeId hi) { return ns.AnyInodeIn(lo, hi); }) {}

FileServer::~FileServer() = default;

std::int64_t FileServer::NowNs() const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Result<Attr> FileServer::MakeAttr(InodeRecord rec, std::optional<std::uint32_t> links) {
  Attr a = links ? Attr{std::move(rec), *links} : WithLinkCount(std::move(rec)).first;
  if (auto of = OpenFileOf(a.rec.id)) of->Overlay(a.rec);
  return a;
}

std::pair<Attr, std::size_t> FileServer::WithLinkCount(InodeRecord rec) {
  if (rec.kind == InodeKind::kDir) return {Attr{std::move(rec), 1}, 1};
  const std::size_t names = ns_.CountLinks(rec.id);
  return {Attr{std::move(rec), static_cast<std::uint32_t>(std::max<std::size_t>(1, names))}, names};
}

Result<InodeRecord> FileServer::LiveDir(InodeId id) {
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  if (rec->kind != InodeKind::kDir)
    return Err(Code::kNotDir, "inode {:016x} is not a directory", id);
  return rec;
}

Result<ChangeSet> FileServer::CommitLocal(const ChangeSet& cs) {
  auto won = ns_.Apply(cs);
  if (won.ok() && !won->empty() && on_local_change_) on_local_change_();
  return won;
}

Result<Attr> FileServer::Lookup(InodeId parent, std::string_view name) {
  if (name.size() > model::kMaxNameSize)
    return Err(Code::kNameTooLong, "name is longer than 255 bytes");
  auto d = ns_.GetDentry(parent, name);
  if (!d.ok()) return d.status();
  return GetAttr(d->child);
}

Result<Attr> FileServer::GetAttr(InodeId id) {
  // An open file's commit may land between reading the record and overlaying what the file
  // holds uncommitted (a chmod waiting for the commit, say): then read again, so that stat
  // never shows the record from before a commit without the changes that commit carried.
  auto of = OpenFileOf(id);
  for (int attempt = 0;; ++attempt) {
    const std::uint64_t generation = of ? of->Generation() : 0;
    auto attr = StoredAttr(id);
    if (!attr.ok()) {
      // Unlinked but still open: fstat works and says it has no links, as on a local disk.
      if (!of) return attr.status();
      return Attr{of->Snapshot(), 0};
    }
    if (of) of->Overlay(attr->rec);
    if (!of || of->Generation() == generation || attempt >= 8) return attr;
  }
}

Result<Attr> FileServer::StoredAttr(InodeId id) {
  // Exact, not a cache with a timeout: every write and rollback moves the stamp, and the
  // entry is kept only if no change happened while it was read.
  const std::uint64_t stamp = ns_.ChangeStamp();
  {
    MutexLock lock(attr_cache_mu_);
    if (attr_cache_ && attr_cache_->rec.id == id && attr_cache_stamp_ == stamp) {
      return *attr_cache_;
    }
  }
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  auto [a, names] = WithLinkCount(std::move(*rec));
  // A count of 0 (an open file's last name gone, or the count failed) is not kept.
  if (names > 0 && ns_.ChangeStamp() == stamp) {
    MutexLock lock(attr_cache_mu_);
    attr_cache_ = a;
    attr_cache_stamp_ = stamp;
  }
  return a;
}

Result<Attr> FileServer::GetAttr(InodeId id, std::uint64_t handle) {
  auto of = HandleFile(handle);
  auto a = GetAttr(id);
  if (!of || of->id() != id || (a.ok() && a->rec.version == of->Version())) return a;
  // A peer replaced the version this handle reads (or the file is gone): its own attributes.
  return Attr{of->Snapshot(), a.ok() ? a->nlink : 0};
}

Result<Attr> FileServer::SetAttr(InodeId id, const SetAttrRequest& request) {
  SetAttrRequest req = request;
  // A chown or chgrp clears them whoever asks, as Linux does for anything but a directory:
  // FIFOs and device nodes too (with FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to us;
  // a mkfifo'd 04141 node kept setuid after a chgrp in the POSIX model test).
  if (req.uid || req.gid) req.kill_suidgid = true;
  if (req.kill_suidgid) {
    // In the same change as the chown (or the mode change after the truncate), as Linux
    // does: the mode set, or the file's, less setuid, and setgid where group-executable.
    auto a = GetAttr(id);
    if (!a.ok()) return a.status();
    if (auto mode = WithoutSetIds(a->rec.kind, req.mode.value_or(a->rec.mode))) req.mode = mode;
    req.kill_suidgid = false;
  }
  if (req.size) {
    auto rec = ns_.GetInode(id);
    if (!rec.ok()) return rec.status();
    if (rec->kind == InodeKind::kDir) return Err(Code::kIsDir, "cannot truncate a directory");
    auto of = OpenFileFor(*rec);
    if (auto s = of->Truncate(*req.size); !s.ok()) return s;
    if (auto s = of->Commit(); !s.ok()) return s;
  }
  if (req.mode || req.uid || req.gid || req.mtime_ns || req.atime_ns) {
    auto open = OpenFileOf(id);
    if (!open || !open->DeferAttrs(req)) {
      auto s = UpdateInode(id, [&](InodeRecord& rec) {
        if (req.mode) rec.mode = *req.mode & 07777;
        if (req.uid) rec.uid = *req.uid;
        if (req.gid) rec.gid = *req.gid;
        if (req.mtime_ns) rec.mtime_ns = *req.mtime_ns;
        if (req.atime_ns) rec.atime_ns = *req.atime_ns;
        return Ok();
      });
      if (!s.ok()) return s;
      // A file open for writing keeps the time just set, not the time of its last write.
      if (req.mtime_ns && open) open->SetMtime(*req.mtime_ns);
    }
    // A mode or owner set again may need clearing again at the next write.
    if (open && (req.mode || req.uid || req.gid)) open->ResetPrivilegeCheck();
  }
  return GetAttr(id);
}

Status FileServer::UpdateInode(InodeId id, const std::function<Status(InodeRecord&)>& change) {
  MutexLock lock(ns_mu_);
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  if (auto s = change(*rec); !s.ok()) return s;
  rec->ctime_ns = NowNs();
  rec->version = hlc_.Next();
  auto w = CommitLocal({{*rec}, {}});
  return w.ok() ? Ok() : w.status();
}

InodeRecord FileServer::NewInode(InodeKind kind, std::uint32_t mode, std::uint32_t uid,
                                 std::uint32_t gid, const InodeRecord& parent) {
  InodeRecord rec;
  rec.id = inode_ids_.Next();
  rec.kind = kind;
  rec.mode = mode & 07777;
  rec.uid = uid;
  rec.gid = gid;
  if (parent.mode & S_ISGID) {  // BSD group semantics in a setgid directory
    rec.gid = parent.gid;
    if (kind == InodeKind::kDir) rec.mode |= S_ISGID;
  }
  rec.mtime_ns = rec.ctime_ns = rec.atime_ns = NowNs();
  rec.version = hlc_.Next();
  if (kind == InodeKind::kFile) rec.content_clock = {{hlc_.node(), rec.version.hlc}};
  return rec;
}

Status FileServer::AddEntry(InodeRecord dir, std::string_view name, const InodeRecord& rec) {
  if (ns_.GetDentry(dir.id, name).ok()) return Err(Code::kExists, "'{}' exists", name);
  DentryRecord d{dir.id, std::string(name), rec.id, hlc_.Next(), false};
  // The directory gets the new inode's time, as on ext4.
  auto w = CommitLocal({{rec, TouchDir(std::move(dir), rec.ctime_ns, hlc_)}, {d}});
  return w.ok() ? Ok() : w.status();
}

Result<Attr> FileServer::Mkdir(InodeId parent, std::string_view name, std::uint32_t mode,
                               std::uint32_t uid, std::uint32_t gid) {
  if (auto s = CheckName(name); !s.ok()) return s;
  MutexLock lock(ns_mu_);
  auto p = LiveDir(parent);
  if (!p.ok()) return p.status();
  InodeRecord rec = NewInode(InodeKind::kDir, mode, uid, gid, *p);
  if (auto s = AddEntry(*p, name, rec); !s.ok()) return s;
  return MakeAttr(rec);
}

Result<Attr> FileServer::Symlink(InodeId parent, std::string_view name, std::string_view target,
                                 std::uint32_t uid, std::uint32_t gid) {
  if (auto s = CheckName(name); !s.ok()) return s;
  if (target.empty() || target.size() > model::kMaxSymlinkSize) {
    return Err(Code::kNameTooLong, "symlink target is empty or too long");
  }
  MutexLock lock(ns_mu_);
  auto p = LiveDir(parent);
  if (!p.ok()) return p.status();
  InodeRecord rec = NewInode(InodeKind::kSymlink, 0777, uid, gid, *p);
  rec.size = target.size();
  rec.symlink_target = std::string(target);
  if (auto s = AddEntry(*p, name, rec); !s.ok()) return s;
  return MakeAttr(rec);
}

Result<std::string> FileServer::ReadLink(InodeId id) {
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  if (rec->kind != InodeKind::kSymlink) return Err(Code::kInvalid, "not a symlink");
  return rec->symlink_target;
}

Result<Attr> FileServer::Link(InodeId id, InodeId new_parent, std::string_view new_name) {
  if (auto s = CheckName(new_name); !s.ok()) return s;
  MutexLock lock(ns_mu_);
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  if (rec->kind == InodeKind::kDir) return Err(Code::kNotPermitted, "cannot hard-link a directory");
  auto p = LiveDir(new_parent);
  if (!p.ok()) return p.status();
  if (ns_.GetDentry(new_parent, new_name).ok()) return Err(Code::kExists, "'{}' exists", new_name);
  const std::int64_t now = NowNs();
  InodeRecord touched = std::move(*rec);  // a new link changes the inode's ctime
  touched.ctime_ns = now;
  touched.version = hlc_.Next();
  DentryRecord d{new_parent, std::string(new_name), id, hlc_.Next(), false};
  if (auto w = CommitLocal({{touched, TouchDir(std::move(*p), now, hlc_)}, {d}}); !w.ok())
    return w.status();
  return MakeAttr(touched);
}

Result<Attr> FileServer::Mknod(InodeId parent, std::string_view name, std::uint32_t mode,
                               std::uint32_t uid, std::uint32_t gid, std::uint64_t rdev) {
  InodeKind kind;
  switch (mode & S_IFMT) {
    case 0:
    case S_IFREG:
      kind = InodeKind::kFile;
      break;
    case S_IFIFO:
      kind = InodeKind::kFifo;
      break;
    case S_IFSOCK:
      kind = InodeKind::kSocket;
      break;
    case S_IFBLK:
      kind = InodeKind::kBlockDevice;
      break;
    case S_IFCHR:
      kind = InodeKind::kCharDevice;
      break;
    default:
      return Err(Code::kInvalid, "'{}': mode {:#o} is not a file type mknod makes", name, mode);
  }
  if (auto s = CheckName(name); !s.ok()) return s;
  MutexLock lock(ns_mu_);
  auto p = LiveDir(parent);
  if (!p.ok()) return p.status();
  InodeRecord rec = NewInode(kind, mode, uid, gid, *p);
  if (kind == InodeKind::kBlockDevice || kind == InodeKind::kCharDevice) rec.rdev = rdev;
  if (auto s = AddEntry(*p, name, rec); !s.ok()) return s;
  return MakeAttr(rec);
}

namespace {
constexpr std::string_view kUserPrefix = "user.";
bool UserXattr(std::string_view name) {
  return name.starts_with(kUserPrefix) && name.size() > kUserPrefix.size();
}
}  // namespace

Status FileServer::SetXattr(InodeId id, std::string_view name, ByteSpan value, int flags) {
  if (!UserXattr(name))
    return Err(Code::kNotSupported, "only user.* extended attributes are stored");
  if (name.size() > model::kMaxNameSize)
    return Err(Code::kRange, "xattr name longer than 255 bytes");
  if (value.size() > model::kMaxXattrValue) return Err(Code::kNoSpace, "xattr value over 64 KiB");
  return UpdateInode(id, [&](InodeRecord& rec) -> Status {
    auto it =
        std::lower_bound(rec.xattrs.begin(), rec.xattrs.end(), name,
                         [](const model::Xattr& x, std::string_view n) { return x.name < n; });
    const bool exists = it != rec.xattrs.end() && it->name == name;
    if (exists && (flags & XATTR_CREATE)) return Err(Code::kExists, "xattr {} exists", name);
    if (!exists && (flags & XATTR_REPLACE)) return Err(Code::kNoData, "no xattr {}", name);
    std::size_t total = name.size() + value.size();
    for (const auto& x : rec.xattrs) {
      if (x.name != name) total += x.name.size() + x.value.size();
    }
    if (total > model::kMaxXattrTotal)
      return Err(Code::kNoSpace, "xattrs of an inode are limited to 64 KiB");
    if (!exists && rec.xattrs.size() >= model::kMaxXattrs)
      return Err(Code::kNoSpace, "too many xattrs");
    if (exists) {
      it->value.assign(value.begin(), value.end());
    } else {
      rec.xattrs.insert(it, model::Xattr{std::string(name), Bytes(value.begin(), value.end())});
    }
    return Ok();
  });
}

Result<Bytes> FileServer::GetXattr(InodeId id, std::string_view name) {
  // Not a user attribute: none is stored (SetXattr refuses them alike). The kernel asks
  // security.capability before every write(2) and `ls -l` asks security.selinux of every
  // entry: answered before any record lookup, and EOPNOTSUPP (not ENODATA) makes ls stop
  // asking for the rest of the file system.
  if (!UserXattr(name))
    return Err(Code::kNotSupported, "only user.* extended attributes are stored");
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  for (const auto& x : rec->xattrs) {
    if (x.name == name) return x.value;
  }
  return Err(Code::kNoData, "no xattr {}", name);
}

Result<std::vector<std::string>> FileServer::ListXattr(InodeId id) {
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  std::vector<std::string> names;
  for (const auto& x : rec->xattrs) names.push_back(x.name);
  return names;
}

Status FileServer::RemoveXattr(InodeId id, std::string_view name) {
  if (!UserXattr(name)) return Err(Code::kNoData, "no xattr {}", name);
  return UpdateInode(id, [&](InodeRecord& rec) -> Status {
    auto it = std::find_if(rec.xattrs.begin(), rec.xattrs.end(),
                           [&](const model::Xattr& x) { return x.name == name; });
    if (it == rec.xattrs.end()) return Err(Code::kNoData, "no xattr {}", name);
    rec.xattrs.erase(it);
    return Ok();
  });
}

Status FileServer::Unlink(InodeId parent, std::string_view name) {
  MutexLock lock(ns_mu_);
  auto d = ns_.GetDentry(parent, name);
  if (!d.ok()) return d.status();
  auto child = ns_.GetInode(d->child);
  if (!child.ok()) return child.status();
  if (child->kind == InodeKind::kDir) return Err(Code::kIsDir, "'{}' is a directory", name);
  const std::int64_t now = NowNs();
  ChangeSet cs;
  DentryRecord tomb = *d;
  tomb.deleted = true;
  tomb.version = hlc_.Next();
  cs.dentries.push_back(tomb);
  auto links = ns_.LinksTo(child->id);
  if (links.ok() && links->size() <= 1) {
    InodeRecord gone = *child;
    gone.deleted = true;
    gone.manifest.clear();
    gone.version = hlc_.Next();
    cs.inodes.push_back(gone);
  } else {
    cs.inodes.push_back(TouchCtime(std::move(*child), now, hlc_));  // one link fewer
  }
  if (auto dir = ns_.GetInode(parent); dir.ok()) {
    cs.inodes.push_back(TouchDir(std::move(*dir), now, hlc_));
  }
  auto w = CommitLocal(cs);
  return w.ok() ? Ok() : w.status();
}

Status FileServer::Rmdir(InodeId parent, std::string_view name) {
  MutexLock lock(ns_mu_);
  auto d = ns_.GetDentry(parent, name);
  if (!d.ok()) return d.status();
  auto child = ns_.GetInode(d->child);
  if (!child.ok()) return child.status();
  if (child->kind != InodeKind::kDir) return Err(Code::kNotDir, "'{}' is not a directory", name);
  if (ns_.HasLiveEntries(child->id))
    return Err(Code::kNotEmpty, "directory '{}' is not empty", name);
  DentryRecord tomb = *d;
  tomb.deleted = true;
  tomb.version = hlc_.Next();
  InodeRecord gone = *child;
  gone.deleted = true;
  gone.version = hlc_.Next();
  ChangeSet cs{{gone}, {tomb}};
  if (auto dir = ns_.GetInode(parent); dir.ok()) {
    cs.inodes.push_back(TouchDir(std::move(*dir), NowNs(), hlc_));
  }
  auto w = CommitLocal(cs);
  return w.ok() ? Ok() : w.status();
}

Status FileServer::Rename(InodeId parent, std::string_view name, InodeId new_parent,
                          std::string_view new_name, unsigned flags) {
  if (flags & RENAME_EXCHANGE) return Err(Code::kInvalid, "RENAME_EXCHANGE is not supported");
  if (auto s = CheckName(new_name); !s.ok()) return s;
  MutexLock lock(ns_mu_);
  auto src = ns_.GetDentry(parent, name);
  if (!src.ok()) return src.status();
  auto to_dir = LiveDir(new_parent);
  if (!to_dir.ok()) return to_dir.status();
  auto moved = ns_.GetInode(src->child);
  if (!moved.ok()) return moved.status();
  if (parent == new_parent && name == new_name) return Ok();
  if (moved->kind == InodeKind::kDir) {
    // Refuse to move a directory into its own subtree. Concurrent renames on two nodes can
    // leave a cycle cut off from the root, so stop at a directory seen before.
    std::set<InodeId> seen;
    for (InodeId at = new_parent; at != kRootId && seen.insert(at).second;) {
      if (at == moved->id) return Err(Code::kInvalid, "cannot move '{}' into itself", name);
      auto up = ns_.LinksTo(at);
      if (!up.ok() || up->empty()) break;
      at = up->front().parent;
    }
  }
  ChangeSet cs;
  auto dst = ns_.GetDentry(new_parent, new_name);
  if (dst.ok()) {
    if (flags & RENAME_NOREPLACE) return Err(Code::kExists, "'{}' exists", new_name);
    // Both names already point at the same inode: POSIX says do nothing.
    if (dst->child == moved->id) return Ok();
    auto victim = ns_.GetInode(dst->child);
    if (victim.ok()) {
      bool victim_dir = victim->kind == InodeKind::kDir;
      bool moved_dir = moved->kind == InodeKind::kDir;
      if (victim_dir && !moved_dir) return Err(Code::kIsDir, "'{}' is a directory", new_name);
      if (!victim_dir && moved_dir) return Err(Code::kNotDir, "'{}' is not a directory", new_name);
      if (victim_dir && ns_.HasLiveEntries(victim->id)) {
        return Err(Code::kNotEmpty, "directory '{}' is not empty", new_name);
      }
      auto links = ns_.LinksTo(victim->id);
      if (victim_dir || (links.ok() && links->size() <= 1)) {
        InodeRecord gone = *victim;
        gone.deleted = true;
        gone.manifest.clear();
        gone.version = hlc_.Next();
        cs.inodes.push_back(gone);
      } else {
        cs.inodes.push_back(TouchCtime(std::move(*victim), NowNs(), hlc_));  // one link fewer
      }
    }
  }
  // Both directories change (mtime and ctime), and the moved inode's ctime, as on ext4.
  const std::int64_t now = NowNs();
  cs.inodes.push_back(TouchCtime(std::move(*moved), now, hlc_));
  if (parent != new_parent) {
    if (auto from_dir = ns_.GetInode(parent); from_dir.ok()) {
      cs.inodes.push_back(TouchDir(std::move(*from_dir), now, hlc_));
    }
  }
  cs.inodes.push_back(TouchDir(std::move(*to_dir), now, hlc_));
  DentryRecord tomb = *src;
  tomb.deleted = true;
  tomb.version = hlc_.Next();
  DentryRecord fresh{new_parent, std::string(new_name), src->child, hlc_.Next(), false};
  if (dst.ok()) fresh.replaces = dst->version;  // we saw what we replace: not a conflict
  cs.dentries = {tomb, fresh};
  auto w = CommitLocal(cs);
  return w.ok() ? Ok() : w.status();
}

Result<std::vector<DirEntry>> FileServer::ReadDir(InodeId id) {
  if (auto d = LiveDir(id); !d.ok()) return d.status();
  auto rows = ns_.ListDirKinds(id);
  if (!rows.ok()) return rows.status();
  std::vector<DirEntry> out;
  out.reserve(rows->size());
  for (auto& r : *rows) out.push_back({std::move(r.name), r.child, r.kind});
  return out;
}

Result<struct statvfs> FileServer::StatFs() {
  struct statvfs st {};
  if (::statvfs(staging_dir_.c_str(), &st) != 0)
    return ErrnoStatus(errno, "statfs of the data directory");
  st.f_namemax = 255;
  return st;
}

std::shared_ptr<OpenFile> FileServer::OpenFileFor(const InodeRecord& rec) {
  MutexLock lock(files_mu_);
  auto& slot = open_files_[rec.id];
  if (auto of = slot.lock()) return of;
  auto of = std::make_shared<OpenFile>(*this, rec);
  slot = of;
  return of;
}

std::shared_ptr<OpenFile> FileServer::OpenFileOf(InodeId id) {
  MutexLock lock(files_mu_);
  auto it = open_files_.find(id);
  return it == open_files_.end() ? nullptr : it->second.lock();
}

std::shared_ptr<OpenFile> FileServer::HandleFile(std::uint64_t handle) {
  MutexLock lock(files_mu_);
  auto it = handles_.find(handle);
  return it == handles_.end() ? nullptr : it->second;
}

Result<Created> FileServer::Create(InodeId parent, std::string_view name, std::uint32_t mode,
                                   std::uint32_t uid, std::uint32_t gid, int flags,
                                   bool kill_suidgid) {
  if (auto s = CheckName(name); !s.ok()) return s;
  InodeId id = 0;
  std::optional<InodeRecord> created;
  {
    MutexLock lock(ns_mu_);
    auto p = LiveDir(parent);
    if (!p.ok()) return p.status();
    auto d = ns_.GetDentry(parent, name);
    if (!d.ok()) {
      InodeRecord rec = NewInode(InodeKind::kFile, mode, uid, gid, *p);
      Status s = AddEntry(std::move(*p), name, rec);
      if (s.ok()) {
        id = rec.id;
        created = std::move(rec);
      } else {
        // A peer's entry of that name applied between the two looks (a remote change does not
        // take ns_mu_): without O_EXCL that file is opened, as if it had been there.
        if (s.code() != Code::kExists || (flags & O_EXCL)) return s;
        d = ns_.GetDentry(parent, name);
        if (!d.ok()) return s;
      }
    }
    if (!created) {
      if (flags & O_EXCL) return Err(Code::kExists, "'{}' exists", name);
      id = d->child;
    }
  }
  if (created) {
    // A new file: its record and its one link are known, no need to read them back (a create
    // is two FUSE round trips and one commit; every query saved shows in `tar -x`).
    auto handle = OpenRecord(*created, flags, false);
    if (!handle.ok()) return handle.status();
    auto attr = MakeAttr(std::move(*created), 1);
    if (!attr.ok()) return attr.status();
    return Created{std::move(*attr), *handle};
  }
  auto handle = Open(id, flags, kill_suidgid);
  if (!handle.ok()) return handle.status();
  auto attr = GetAttr(id);
  if (!attr.ok()) return attr.status();
  return Created{std::move(*attr), *handle};
}

Result<std::uint64_t> FileServer::Open(InodeId id, int flags, bool kill_suidgid) {
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  return OpenRecord(*rec, flags, kill_suidgid);
}

Result<std::uint64_t> FileServer::OpenRecord(const InodeRecord& rec, int flags, bool kill_suidgid) {
  const InodeId id = rec.id;
  if (rec.kind == InodeKind::kDir && (flags & O_ACCMODE) != O_RDONLY) {
    return Err(Code::kIsDir, "cannot open a directory for writing");
  }
  auto of = OpenFileFor(rec);
  if ((flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY) {
    if (auto s = of->Truncate(0); !s.ok()) return s;
    // With atomic O_TRUNC the kernel leaves this to the file system, as it does the truncate.
    if (kill_suidgid) {
      if (auto s = ClearSetIds(id); !s.ok()) return s;
    }
  }
  // The handle remembers O_APPEND in its low bit.
  std::uint64_t handle = next_handle_.fetch_add(2) << 1 | ((flags & O_APPEND) ? 1 : 0);
  MutexLock lock(files_mu_);
  handles_[handle] = std::move(of);
  return handle;
}

std::optional<model::Version> FileServer::HandleVersion(std::uint64_t handle) {
  auto of = HandleFile(handle);
  if (!of) return std::nullopt;
  return of->Version();
}

Result<std::size_t> FileServer::Read(std::uint64_t handle, std::uint64_t offset,
                                     MutableByteSpan out, ReadWindow* window) {
  auto of = HandleFile(handle);
  if (!of) return Err(Code::kBadHandle, "no open file with handle {}", handle);
  // A window only from the file's current version here: a handle that still reads an older
  // one (a peer's version arrived since it opened) reads its own bytes, which the kernel's
  // cache of the inode must not take.
  if (window && OpenFileOf(of->id()) != of) window = nullptr;
  return of->Read(offset, out, window);
}

Result<std::size_t> FileServer::Write(std::uint64_t handle, std::uint64_t offset, ByteSpan data,
                                      bool kill_suidgid) {
  auto of = HandleFile(handle);
  if (!of) return Err(Code::kBadHandle, "no open file with handle {}", handle);
  if (kill_suidgid && of->TakePrivilegeCheck()) {
    // Writing drops setuid, and setgid where it means "set group id" (group-executable).
    if (auto s = ClearSetIds(of->id()); !s.ok()) return s;
  }
  return of->Write(offset, data, handle & 1);
}

Status FileServer::ClearSetIds(InodeId id) {
  auto a = GetAttr(id);
  if (!a.ok()) return a.status();
  SetAttrRequest req;
  req.mode = WithoutSetIds(a->rec.kind, a->rec.mode);
  if (!req.mode) return Ok();  // nothing to commit
  auto changed = SetAttr(id, req);
  return changed.ok() ? Ok() : changed.status();
}

Status FileServer::Fallocate(std::uint64_t handle, int mode, std::uint64_t offset,
                             std::uint64_t length, bool kill_suidgid) {
  auto of = HandleFile(handle);
  if (!of) return Err(Code::kBadHandle, "no open file with handle {}", handle);
  if (kill_suidgid) {
    if (auto s = ClearSetIds(of->id()); !s.ok()) return s;
  }
  if (offset > model::kMaxFileSize || length > model::kMaxFileSize - offset) {
    return Err(Code::kTooBig, "fallocate of [{}, +{}) is past the largest file size", offset,
               length);
  }
  const bool keep_size = mode & FALLOC_FL_KEEP_SIZE;
  switch (mode & ~FALLOC_FL_KEEP_SIZE) {
    case 0:
      // Space is not reserved ahead in a CAS: allocation only grows the file.
      return keep_size ? Ok() : of->Extend(offset + length);
    case FALLOC_FL_PUNCH_HOLE:
      if (!keep_size) return Err(Code::kNotSupported, "PUNCH_HOLE needs KEEP_SIZE");
      return of->ZeroRange(offset, length, true);
    case FALLOC_FL_ZERO_RANGE:
      return of->ZeroRange(offset, length, keep_size);
    default:
      return Err(Code::kNotSupported, "fallocate mode {:#x} is not supported", mode);
  }
}

Result<std::uint64_t> FileServer::Seek(std::uint64_t handle, std::uint64_t offset, bool data) {
  auto of = HandleFile(handle);
  if (!of) return Err(Code::kBadHandle, "no open file with handle {}", handle);
  return of->Seek(offset, data);
}

Status FileServer::Flush(std::uint64_t handle) {
  auto of = HandleFile(handle);
  if (!of) return Err(Code::kBadHandle, "no open file with handle {}", handle);
  return of->Commit();
}

Status FileServer::SetPin(InodeId id, ByteSpan value) {
  std::string v(value.begin(), value.end());
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
  if (v != "0" && v != "1") {
    return Err(Code::kInvalid, "user.foreverfs.pin takes 1 (pin) or 0 (unpin), not {:?}", v);
  }
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  if (auto s = ns_.SetPin(id, v == "1"); !s.ok()) return s;
  spdlog::info("inode {:016x}: {}", id, v == "1" ? "pinned here" : "unpinned");
  if (on_pin_change_) on_pin_change_();
  return Ok();
}

Result<Bytes> FileServer::GetPin(InodeId id) {
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  const char c = ns_.PinnedHere(id) ? '1' : '0';
  return Bytes{static_cast<std::uint8_t>(c)};
}

Status FileServer::Fsync(std::uint64_t handle) {
  auto of = HandleFile(handle);
  if (!of) return Err(Code::kBadHandle, "no open file with handle {}", handle);
  if (auto s = of->Commit(); !s.ok()) return s;
  if (auto s = Sync(); !s.ok()) return s;
  if (!remote_) return Ok();
  // Durable here; and on --sync-copies members in all.
  auto rec = ns_.GetInode(of->id());
  if (!rec.ok()) return rec.status().code() == Code::kNotFound ? Ok() : rec.status();
  return remote_->MakeDurable(rec->id, rec->version, ns_.LastSeq());
}

Status FileServer::Sync() {
  // Chunks first: once the namespace is durable, every chunk it names must be.
  if (auto s = store_.Sync(); !s.ok()) return s;
  return ns_.Sync();
}

void FileServer::Release(std::uint64_t handle) {
  std::shared_ptr<OpenFile> of;
  {
    MutexLock lock(files_mu_);
    auto it = handles_.find(handle);
    if (it == handles_.end()) return;
    of = std::move(it->second);
    handles_.erase(it);
  }
  if (auto s = of->Commit(); !s.ok()) {
    spdlog::error("inode {:016x}: commit on close failed: {}", of->id(), s.message());
  }
  InodeId id = of->id();
  of.reset();
  MutexLock lock(files_mu_);
  auto it = open_files_.find(id);
  if (it != open_files_.end() && it->second.expired()) open_files_.erase(it);
}

Result<std::pair<InodeId, std::string>> FileServer::ResolveParent(std::string_view path) {
  auto parts = SplitPath(path);
  if (parts.empty()) return Err(Code::kInvalid, "path '{}' names the root", path);
  InodeId at = kRootId;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    auto d = ns_.GetDentry(at, parts[i]);
    if (!d.ok()) return Err(Code::kNotFound, "'{}': no such directory '{}'", path, parts[i]);
    at = d->child;
  }
  return std::pair{at, std::string(parts.back())};
}

Result<Attr> FileServer::Resolve(std::string_view path) {
  InodeId at = kRootId;
  for (auto part : SplitPath(path)) {
    auto d = ns_.GetDentry(at, part);
    if (!d.ok()) return Err(Code::kNotFound, "'{}' not found", path);
    at = d->child;
  }
  return GetAttr(at);
}

Status FileServer::Store(std::string_view path,
                         const std::function<Result<std::size_t>(MutableByteSpan)>& read) {
  auto where = ResolveParent(path);
  if (!where.ok()) return where.status();
  auto created = Create(where->first, where->second, 0644, getuid(), getgid(), O_WRONLY | O_TRUNC);
  if (!created.ok()) return created.status();
  const std::uint64_t h = created->handle;
  Bytes buf(cas::kChunkSize);
  std::uint64_t offset = 0;
  Status status;
  for (;;) {
    auto n = read(buf);
    if (!n.ok()) {
      status = n.status();
      break;
    }
    if (*n == 0) break;
    auto w = Write(h, offset, ByteSpan(buf.data(), *n));
    if (!w.ok()) {
      status = w.status();
      break;
    }
    offset += *n;
  }
  if (status.ok()) status = Flush(h);
  Release(h);
  return status;
}

Status FileServer::Get(std::string_view path, const std::function<Status(ByteSpan)>& write) {
  auto attr = Resolve(path);
  if (!attr.ok()) return attr.status();
  if (attr->rec.kind != InodeKind::kFile) return Err(Code::kIsDir, "'{}' is not a file", path);
  auto h = Open(attr->rec.id, O_RDONLY);
  if (!h.ok()) return h.status();
  Bytes buf(cas::kChunkSize);
  std::uint64_t offset = 0;
  Status status;
  for (;;) {
    auto n = Read(*h, offset, buf);
    if (!n.ok()) {
      status = Err(n.status().code(), "reading '{}': {}", path, n.status().message());
      break;
    }
    if (*n == 0) break;
    if (status = write(ByteSpan(buf.data(), *n)); !status.ok()) break;
    offset += *n;
  }
  Release(*h);
  return status;
}

Status FileServer::Remove(std::string_view path) {
  auto where = ResolveParent(path);
  if (!where.ok()) return where.status();
  auto d = ns_.GetDentry(where->first, where->second);
  if (!d.ok()) return Err(Code::kNotFound, "'{}' not found", path);
  auto rec = ns_.GetInode(d->child);
  if (rec.ok() && rec->kind == InodeKind::kDir) return Rmdir(where->first, where->second);
  return Unlink(where->first, where->second);
}

Result<ChangeSet> FileServer::ApplyRemote(const net::Changes& changes, std::uint64_t peer) {
  // A record over the limits, or from a clock too far ahead, is refused alone with a log line:
  // it can never become acceptable, and the rest of the batch (and the feed) goes on.
  const std::uint64_t skew = max_clock_skew_ns_.load();
  ChangeSet cs;
  bool refused = false;
  auto admit = [&](const auto& record, auto& into) {
    if (Status s = Admissible(record, skew); !s.ok()) {
      spdlog::warn("peer {:016x}: record refused: {}", peer, s.message());
      refused = true;
    } else {
      into.push_back(record);
    }
  };
  for (const auto& r : changes.inodes) admit(r, cs.inodes);
  for (const auto& d : changes.dentries) admit(d, cs.dentries);
  for (const auto& r : cs.inodes) hlc_.Observe(r.version.hlc);
  for (const auto& d : cs.dentries) hlc_.Observe(d.version.hlc);
  if (refused) {
    // Before the cursor moves past it: this node must never confirm the refused record.
    if (Status s = ns_.CapAcks(peer, ns_.Cursor(peer)); !s.ok()) return s;
  }
  auto won = ns_.Apply(cs, peer, changes.up_to);
  if (!won.ok()) return won;
  for (const auto& r : won->inodes) {
    std::shared_ptr<OpenFile> of;
    {
      MutexLock lock(files_mu_);
      auto it = open_files_.find(r.id);
      if (it != open_files_.end()) of = it->second.lock();
      // Handles already open keep reading the version they opened, whole; the next open gets
      // the new one. Garbage collection still sees the old version: it walks every handle's
      // file (ForEachOpenManifest). A file with uncommitted writes stays: its commit follows,
      // and a concurrent version becomes a conflict copy.
      if (of && !of->HasUncommittedWrites()) {
        open_files_.erase(it);
        of.reset();
      }
    }
    if (of) of->OnRemoteUpdate(r);
  }
  if (!won->empty() && on_remote_change_) on_remote_change_(*won);
  return won;
}

Result<NamespaceDb::PurgeStats> FileServer::PurgeTombstones(std::chrono::nanoseconds grace) {
  std::set<InodeId> keep;
  {
    MutexLock lock(files_mu_);
    for (auto& [handle, of] : handles_) keep.insert(of->id());
    for (auto& [id, weak] : open_files_) keep.insert(id);
  }
  // The clock is past every version stored here, so with no grace every tombstone qualifies.
  const std::uint64_t now = hlc_.Next().hlc;
  const std::uint64_t g = static_cast<std::uint64_t>(std::max<std::int64_t>(grace.count(), 0));
  return ns_.PurgeTombstones(now > g ? now - g : 0, keep);
}

void FileServer::ForEachOpenManifest(const std::function<void(const model::ChunkMap&)>& fn) {
  // Every handle's file, not only the current one of each inode: a handle opened before a
  // peer replaced the file still reads the version it opened.
  std::set<std::shared_ptr<OpenFile>> open;
  {
    MutexLock lock(files_mu_);
    for (auto& [handle, of] : handles_) open.insert(of);
    for (auto& [id, weak] : open_files_) {
      if (auto of = weak.lock()) open.insert(std::move(of));
    }
  }
  for (auto& of : open) fn(of->Manifest());
}

Result<Bytes> FileServer::LocalChunk(const cas::ChunkId& id) { return store_.Get(id); }

Status FileServer::StoreChunk(const cas::ChunkId& id, ByteSpan data) {
  // Whatever the store below checks, bytes from a peer never enter it under the wrong name.
  if (data.size() > cas::kMaxChunkSize || hasher_.IdOf(data) != id) {
    return Err(Code::kCorruption, "chunk {}: {} bytes received that do not match the id",
               cas::Hex(id), data.size());
  }
  // A copy already here that fails verification is replaced now that good bytes are in hand
  // (a store keeps the first copy of an id otherwise).
  if (store_.Has(id) && store_.Get(id).status().code() == Code::kCorruption) {
    if (auto s = store_.Remove(id); !s.ok()) return s;
    spdlog::info("chunk {}: corrupt local copy replaced by a verified one", cas::Hex(id));
  }
  return PutChunk(id, data);
}

void FileServer::NoteRead(const cas::ChunkId& id) {
  MutexLock lock(reads_mu_);
  reads_[id] = ++read_clock_;
}

std::map<cas::ChunkId, std::uint64_t> FileServer::Reads() {
  MutexLock lock(reads_mu_);
  return reads_;
}

std::uint64_t FileServer::LastRead(const cas::ChunkId& id) {
  MutexLock lock(reads_mu_);
  auto it = reads_.find(id);
  return it == reads_.end() ? 0 : it->second;
}

void FileServer::PruneReads(const std::function<bool(const cas::ChunkId&)>& keep) {
  MutexLock lock(reads_mu_);
  std::erase_if(reads_, [&](const auto& e) { return !keep(e.first); });
}

Status FileServer::ReadChunk(const cas::ChunkId& id, std::size_t offset, MutableByteSpan out) {
  auto part = store_.ReadAt(id, offset, out);
  if (part.ok()) {
    NoteRead(id);
  } else {  // LoadChunk notes the read
    auto whole = LoadChunk(id);
    if (!whole.ok()) return whole.status();
    part = cas::Extent{0, whole->size()};
    if (offset < whole->size()) {
      part->n = std::min(out.size(), whole->size() - offset);
      std::memcpy(out.data(), whole->data() + offset, part->n);
    }
  }
  if (part->n < out.size()) std::memset(out.data() + part->n, 0, out.size() - part->n);
  return Ok();
}

Status FileServer::CopyChunk(const cas::ChunkId& id, std::uint64_t len,
                             const std::function<Status(std::uint64_t, ByteSpan)>& sink) {
  std::array<std::uint8_t, kCopyPiece> buf;  // NOLINT: filled before it is read
  const MutableByteSpan piece(buf);
  // The whole file into the page cache at once: chunk files are read without the kernel's
  // read-ahead, and a segment at a time they would be 64 small disk reads.
  if (len > kCopyPiece) store_.Prefetch(id);
  std::uint64_t at = 0;
  while (at < len) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(piece.size(), len - at));
    auto part = store_.ReadAt(id, static_cast<std::size_t>(at), MutableByteSpan(piece.data(), n));
    if (!part.ok()) break;  // not here, or damaged: the whole chunk from LoadChunk below
    if (at == 0) NoteRead(id);
    if (part->n < n) std::memset(piece.data() + part->n, 0, n - part->n);
    if (auto s = sink(at, ByteSpan(piece.data(), n)); !s.ok()) return s;
    at += n;
  }
  if (at >= len) return Ok();
  auto whole = LoadChunk(id);
  if (!whole.ok()) return whole.status();
  while (at < len) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kCopyPiece, len - at));
    const std::size_t have =
        at < whole->size() ? std::min<std::size_t>(n, whole->size() - static_cast<std::size_t>(at))
                           : 0;
    // Straight from the chunk, or padded with zeros through `piece` past its end.
    ByteSpan out(whole->data() + (have ? at : 0), have);
    if (have < n) {
      if (have) std::memcpy(piece.data(), out.data(), have);
      std::memset(piece.data() + have, 0, n - have);
      out = ByteSpan(piece.data(), n);
    }
    if (auto s = sink(at, out); !s.ok()) return s;
    at += n;
  }
  return Ok();
}

Result<Bytes> FileServer::LoadChunk(const cas::ChunkId& id) {
  NoteRead(id);
  auto local = store_.Get(id);
  if (local.ok()) return local;
  if (local.status().code() == Code::kCorruption) {
    // Keep the bad copy until a verified one replaces it (StoreChunk): the damage may be in
    // the read, not on disk, and with no peer there is nothing better to keep.
    spdlog::error("chunk {}: local copy is corrupt ({}); fetching it again from peers",
                  cas::Hex(id), local.status().message());
    if (!remote_) return local;
  } else if (local.status().code() != Code::kNotFound) {
    return local;
  }
  if (!remote_)
    return Err(Code::kUnavailable, "chunk {} is not stored here and there are no peers",
               cas::Hex(id));
  return remote_->Fetch(id);
}

bool FileServer::TakeSeqBuffer() {
  if (seq_buffers_.fetch_add(1) >= kMaxSeqBuffers) {
    seq_buffers_.fetch_sub(1);
    return false;
  }
  return true;
}

Status FileServer::PutChunk(const cas::ChunkId& id, ByteSpan data) {
  {
    MutexLock lock(gc_mu_);
    if (gc_window_) gc_touched_.insert(id);
  }
  return store_.Put(id, data);
}

void FileServer::BeginGcWindow() {
  MutexLock lock(gc_mu_);
  gc_window_ = true;
  gc_touched_.clear();
}

Result<bool> FileServer::RemoveIfUntouched(const cas::ChunkId& id) {
  // Under gc_mu_: a Put of `id` either registered before (the chunk stays) or comes after the
  // removal (and writes the chunk again, since it is gone).
  MutexLock lock(gc_mu_);
  if (gc_touched_.contains(id)) return false;
  if (auto s = store_.Remove(id); !s.ok()) return s;
  return true;
}

bool FileServer::TouchedInGcWindow(const cas::ChunkId& id) {
  MutexLock lock(gc_mu_);
  return gc_touched_.contains(id);
}

void FileServer::EndGcWindow() {
  MutexLock lock(gc_mu_);
  gc_window_ = false;
  std::set<cas::ChunkId>().swap(gc_touched_);
}

}  // namespace foreverfs::server
