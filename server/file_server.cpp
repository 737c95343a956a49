#include "server/file_server.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <chrono>
#include <set>

#include "server/open_file.h"

namespace foreverfs::server {
namespace {

Status CheckName(std::string_view name) {
  if (name.size() > net::kMaxNameSize) return Err(Code::kNameTooLong, "name '{}...' is longer than 255 bytes", name.substr(0, 32));
  if (!net::ValidName(name)) return Err(Code::kInvalid, "'{}' is not a valid file name", name);
  return Ok();
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
      hlc_(ns.node_id(), ns.MaxHlc()) {}

FileServer::~FileServer() = default;

std::int64_t FileServer::NowNs() const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Result<Attr> FileServer::MakeAttr(InodeRecord rec) {
  Attr a{std::move(rec), 1};
  if (a.rec.kind != InodeKind::kDir) {
    auto links = ns_.LinksTo(a.rec.id);
    if (links.ok()) a.nlink = static_cast<std::uint32_t>(std::max<std::size_t>(1, links->size()));
  }
  std::shared_ptr<OpenFile> of;
  {
    std::lock_guard lock(files_mu_);
    auto it = open_files_.find(a.rec.id);
    if (it != open_files_.end()) of = it->second.lock();
  }
  if (of) of->Overlay(a.rec);
  return a;
}

Result<InodeRecord> FileServer::LiveDir(InodeId id) {
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  if (rec->kind != InodeKind::kDir) return Err(Code::kNotDir, "inode {:016x} is not a directory", id);
  return rec;
}

Result<ChangeSet> FileServer::CommitLocal(const ChangeSet& cs) {
  auto won = ns_.Apply(cs);
  if (won.ok() && !won->empty() && on_local_change_) on_local_change_();
  return won;
}

Result<Attr> FileServer::Lookup(InodeId parent, std::string_view name) {
  if (name.size() > net::kMaxNameSize) return Err(Code::kNameTooLong, "name is longer than 255 bytes");
  auto d = ns_.GetDentry(parent, name);
  if (!d.ok()) return d.status();
  return GetAttr(d->child);
}

Result<Attr> FileServer::GetAttr(InodeId id) {
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  return MakeAttr(std::move(*rec));
}

Result<Attr> FileServer::SetAttr(InodeId id, const SetAttrRequest& req) {
  if (req.size) {
    auto rec = ns_.GetInode(id);
    if (!rec.ok()) return rec.status();
    if (rec->kind == InodeKind::kDir) return Err(Code::kIsDir, "cannot truncate a directory");
    auto of = OpenFileFor(*rec);
    if (auto s = of->Truncate(*req.size); !s.ok()) return s;
    if (auto s = of->Commit(); !s.ok()) return s;
  }
  if (req.mode || req.uid || req.gid || req.mtime_ns) {
    std::lock_guard lock(ns_mu_);
    auto rec = ns_.GetInode(id);
    if (!rec.ok()) return rec.status();
    if (req.mode) rec->mode = *req.mode & 07777;
    if (req.uid) rec->uid = *req.uid;
    if (req.gid) rec->gid = *req.gid;
    if (req.mtime_ns) rec->mtime_ns = *req.mtime_ns;
    rec->ctime_ns = NowNs();
    rec->version = hlc_.Next();
    if (auto w = CommitLocal({{*rec}, {}}); !w.ok()) return w.status();
  }
  return GetAttr(id);
}

Result<Attr> FileServer::Mkdir(InodeId parent, std::string_view name, std::uint32_t mode,
                               std::uint32_t uid, std::uint32_t gid) {
  if (auto s = CheckName(name); !s.ok()) return s;
  std::lock_guard lock(ns_mu_);
  if (auto p = LiveDir(parent); !p.ok()) return p.status();
  if (ns_.GetDentry(parent, name).ok()) return Err(Code::kExists, "'{}' exists", name);
  InodeRecord rec;
  do rec.id = crypto::RandomU64();
  while (rec.id <= kRootId);
  rec.kind = InodeKind::kDir;
  rec.mode = mode & 07777;
  rec.uid = uid;
  rec.gid = gid;
  rec.mtime_ns = rec.ctime_ns = NowNs();
  rec.version = hlc_.Next();
  DentryRecord d{parent, std::string(name), rec.id, hlc_.Next(), false};
  if (auto w = CommitLocal({{rec}, {d}}); !w.ok()) return w.status();
  return MakeAttr(rec);
}

Result<Attr> FileServer::Symlink(InodeId parent, std::string_view name, std::string_view target,
                                 std::uint32_t uid, std::uint32_t gid) {
  if (auto s = CheckName(name); !s.ok()) return s;
  if (target.empty() || target.size() > net::kMaxSymlinkSize) {
    return Err(Code::kNameTooLong, "symlink target is empty or too long");
  }
  std::lock_guard lock(ns_mu_);
  if (auto p = LiveDir(parent); !p.ok()) return p.status();
  if (ns_.GetDentry(parent, name).ok()) return Err(Code::kExists, "'{}' exists", name);
  InodeRecord rec;
  do rec.id = crypto::RandomU64();
  while (rec.id <= kRootId);
  rec.kind = InodeKind::kSymlink;
  rec.mode = 0777;
  rec.uid = uid;
  rec.gid = gid;
  rec.size = target.size();
  rec.symlink_target = std::string(target);
  rec.mtime_ns = rec.ctime_ns = NowNs();
  rec.version = hlc_.Next();
  DentryRecord d{parent, std::string(name), rec.id, hlc_.Next(), false};
  if (auto w = CommitLocal({{rec}, {d}}); !w.ok()) return w.status();
  return MakeAttr(rec);
}

Result<std::string> FileServer::ReadLink(InodeId id) {
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  if (rec->kind != InodeKind::kSymlink) return Err(Code::kInvalid, "not a symlink");
  return rec->symlink_target;
}

Status FileServer::Unlink(InodeId parent, std::string_view name) {
  std::lock_guard lock(ns_mu_);
  auto d = ns_.GetDentry(parent, name);
  if (!d.ok()) return d.status();
  auto child = ns_.GetInode(d->child);
  if (!child.ok()) return child.status();
  if (child->kind == InodeKind::kDir) return Err(Code::kIsDir, "'{}' is a directory", name);
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
  }
  auto w = CommitLocal(cs);
  return w.ok() ? Ok() : w.status();
}

Status FileServer::Rmdir(InodeId parent, std::string_view name) {
  std::lock_guard lock(ns_mu_);
  auto d = ns_.GetDentry(parent, name);
  if (!d.ok()) return d.status();
  auto child = ns_.GetInode(d->child);
  if (!child.ok()) return child.status();
  if (child->kind != InodeKind::kDir) return Err(Code::kNotDir, "'{}' is not a directory", name);
  if (ns_.HasLiveEntries(child->id)) return Err(Code::kNotEmpty, "directory '{}' is not empty", name);
  DentryRecord tomb = *d;
  tomb.deleted = true;
  tomb.version = hlc_.Next();
  InodeRecord gone = *child;
  gone.deleted = true;
  gone.version = hlc_.Next();
  auto w = CommitLocal({{gone}, {tomb}});
  return w.ok() ? Ok() : w.status();
}

Status FileServer::Rename(InodeId parent, std::string_view name, InodeId new_parent,
                          std::string_view new_name, unsigned flags) {
  if (flags & RENAME_EXCHANGE) return Err(Code::kInvalid, "RENAME_EXCHANGE is not supported");
  if (auto s = CheckName(new_name); !s.ok()) return s;
  std::lock_guard lock(ns_mu_);
  auto src = ns_.GetDentry(parent, name);
  if (!src.ok()) return src.status();
  if (auto p = LiveDir(new_parent); !p.ok()) return p.status();
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
    auto victim = ns_.GetInode(dst->child);
    if (victim.ok() && victim->id != moved->id) {
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
      }
    }
  }
  DentryRecord tomb = *src;
  tomb.deleted = true;
  tomb.version = hlc_.Next();
  DentryRecord fresh{new_parent, std::string(new_name), moved->id, hlc_.Next(), false};
  cs.dentries = {tomb, fresh};
  auto w = CommitLocal(cs);
  return w.ok() ? Ok() : w.status();
}

Result<std::vector<DirEntry>> FileServer::ReadDir(InodeId id) {
  if (auto d = LiveDir(id); !d.ok()) return d.status();
  auto entries = ns_.ListDir(id);
  if (!entries.ok()) return entries.status();
  std::vector<DirEntry> out;
  out.reserve(entries->size());
  for (auto& e : *entries) {
    auto child = ns_.GetInode(e.child);
    if (child.ok()) out.push_back({std::move(e.name), e.child, child->kind});
  }
  return out;
}

Result<struct statvfs> FileServer::StatFs() {
  struct statvfs st {};
  if (::statvfs(staging_dir_.c_str(), &st) != 0) return ErrnoStatus(errno, "statfs of the data directory");
  st.f_namemax = 255;
  return st;
}

std::shared_ptr<OpenFile> FileServer::OpenFileFor(const InodeRecord& rec) {
  std::lock_guard lock(files_mu_);
  auto& slot = open_files_[rec.id];
  if (auto of = slot.lock()) return of;
  auto of = std::make_shared<OpenFile>(*this, rec);
  slot = of;
  return of;
}

std::shared_ptr<OpenFile> FileServer::HandleFile(std::uint64_t handle) {
  std::lock_guard lock(files_mu_);
  auto it = handles_.find(handle);
  return it == handles_.end() ? nullptr : it->second;
}

Result<Created> FileServer::Create(InodeId parent, std::string_view name, std::uint32_t mode,
                                   std::uint32_t uid, std::uint32_t gid, int flags) {
  if (auto s = CheckName(name); !s.ok()) return s;
  InodeId id = 0;
  {
    std::lock_guard lock(ns_mu_);
    if (auto p = LiveDir(parent); !p.ok()) return p.status();
    if (auto d = ns_.GetDentry(parent, name); d.ok()) {
      if (flags & O_EXCL) return Err(Code::kExists, "'{}' exists", name);
      id = d->child;
    } else {
      InodeRecord rec;
      do rec.id = crypto::RandomU64();
      while (rec.id <= kRootId);
      rec.kind = InodeKind::kFile;
      rec.mode = mode & 07777;
      rec.uid = uid;
      rec.gid = gid;
      rec.mtime_ns = rec.ctime_ns = NowNs();
      rec.version = hlc_.Next();
      DentryRecord entry{parent, std::string(name), rec.id, hlc_.Next(), false};
      if (auto w = CommitLocal({{rec}, {entry}}); !w.ok()) return w.status();
      id = rec.id;
    }
  }
  auto handle = Open(id, flags);
  if (!handle.ok()) return handle.status();
  auto attr = GetAttr(id);
  if (!attr.ok()) return attr.status();
  return Created{std::move(*attr), *handle};
}

Result<std::uint64_t> FileServer::Open(InodeId id, int flags) {
  auto rec = ns_.GetInode(id);
  if (!rec.ok()) return rec.status();
  if (rec->kind == InodeKind::kDir && (flags & O_ACCMODE) != O_RDONLY) {
    return Err(Code::kIsDir, "cannot open a directory for writing");
  }
  auto of = OpenFileFor(*rec);
  if ((flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY) {
    if (auto s = of->Truncate(0); !s.ok()) return s;
  }
  // The handle remembers O_APPEND in its low bit.
  std::uint64_t handle = next_handle_.fetch_add(2) << 1 | ((flags & O_APPEND) ? 1 : 0);
  std::lock_guard lock(files_mu_);
  handles_[handle] = std::move(of);
  return handle;
}

Result<std::size_t> FileServer::Read(std::uint64_t handle, std::uint64_t offset,
                                     MutableByteSpan out) {
  auto of = HandleFile(handle);
  if (!of) return Err(Code::kBadHandle, "no open file with handle {}", handle);
  return of->Read(offset, out);
}

Result<std::size_t> FileServer::Write(std::uint64_t handle, std::uint64_t offset, ByteSpan data) {
  auto of = HandleFile(handle);
  if (!of) return Err(Code::kBadHandle, "no open file with handle {}", handle);
  return of->Write(offset, data, handle & 1);
}

Status FileServer::Flush(std::uint64_t handle) {
  auto of = HandleFile(handle);
  if (!of) return Err(Code::kBadHandle, "no open file with handle {}", handle);
  return of->Commit();
}

void FileServer::Release(std::uint64_t handle) {
  std::shared_ptr<OpenFile> of;
  {
    std::lock_guard lock(files_mu_);
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
  std::lock_guard lock(files_mu_);
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
  ChangeSet cs{changes.inodes, changes.dentries};
  for (const auto& r : cs.inodes) hlc_.Observe(r.version.hlc);
  for (const auto& d : cs.dentries) hlc_.Observe(d.version.hlc);
  auto won = ns_.Apply(cs, peer, changes.up_to);
  if (!won.ok()) return won;
  for (const auto& r : won->inodes) {
    std::shared_ptr<OpenFile> of;
    {
      std::lock_guard lock(files_mu_);
      auto it = open_files_.find(r.id);
      if (it != open_files_.end()) of = it->second.lock();
    }
    if (of) of->OnRemoteUpdate(r);
  }
  if (!won->empty() && on_remote_change_) on_remote_change_(*won);
  return won;
}

Result<Bytes> FileServer::LocalChunk(const cas::ChunkId& id) { return store_.Get(id); }

Status FileServer::StoreChunk(const cas::ChunkId& id, ByteSpan data) {
  // Whatever the store below checks, bytes from a peer never enter it under the wrong name.
  if (data.size() > cas::kMaxChunkSize || hasher_.IdOf(data) != id) {
    return Err(Code::kCorruption, "chunk {}: {} bytes received that do not match the id",
               cas::Hex(id), data.size());
  }
  return store_.Put(id, data);
}

Result<Bytes> FileServer::LoadChunk(const cas::ChunkId& id) {
  auto local = store_.Get(id);
  if (local.ok()) return local;
  if (local.status().code() == Code::kCorruption) {
    spdlog::error("chunk {}: local copy is corrupt ({}); fetching it again from peers",
                  cas::Hex(id), local.status().message());
    (void)store_.Remove(id);
  } else if (local.status().code() != Code::kNotFound) {
    return local;
  }
  if (!remote_) return Err(Code::kUnavailable, "chunk {} is not stored here and there are no peers", cas::Hex(id));
  return remote_->Fetch(id);
}

}  // namespace foreverfs::server
