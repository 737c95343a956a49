#define FUSE_USE_VERSION 314
#include "fuse/fuse_fs.h"

#include <fuse_lowlevel.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <thread>

#include "base/mutex.h"
#include "fuse/kernel_io.h"
#include "fuse/request_reader.h"
#include "fuse/ops.h"
#include "fuse/reply.h"

namespace foreverfs::fuse {
namespace {

struct Invalidation {
  bool entry;
  std::uint64_t ino;  // parent for entries
  std::string name;
};

// One thread serving a queue of T in order. Push drops the item when `max` are waiting or
// after Stop; Stop lets the item being served finish and drops the rest. The thread starts
// with Start (the daemon forks after building its objects; threads do not survive a fork).
template <typename T>
class QueueThread {
 public:
  explicit QueueThread(std::size_t max) : max_(max) {}
  ~QueueThread() { Stop(); }

  void Start(std::function<void(T&)> serve) {
    thread_ = std::thread([this, serve = std::move(serve)] {
      for (;;) {
        T item;
        {
          MutexLock lock(mu_);
          while (!stop_ && queue_.empty()) cv_.wait(mu_);
          if (stop_) return;
          item = std::move(queue_.front());
          queue_.pop_front();
        }
        serve(item);
      }
    });
  }
  void Push(T item) {
    {
      MutexLock lock(mu_);
      if (stop_ || queue_.size() >= max_) return;
      queue_.push_back(std::move(item));
    }
    cv_.notify_one();
  }
  void Stop() {
    {
      MutexLock lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  const std::size_t max_;
  Mutex mu_;
  std::condition_variable_any cv_;  // waits on mu_
  std::deque<T> queue_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// The production Reply: answers the kernel's request through libfuse. The fuse_reply_*
// functions are poisoned after it, so nothing else here answers around the Reply's mark.
class FuseReply final : public Reply {
 public:
  // Made on the thread that read the request, which is where its kill mark is.
  FuseReply(fuse_req_t req, fuse_session* se, const KernelIo& kio) : req_(req), se_(se) {
    if (kio.killpriv_v2()) kill_suidgid_ = KernelIo::ThisRequestKills();
  }

  RequestContext Context() const override {
    const fuse_ctx* ctx = fuse_req_ctx(req_);
    return {ctx->uid, ctx->gid, ctx->umask, kill_suidgid_};
  }
  std::size_t AddDirEntry(char* buf, std::size_t size, const char* name, const fuse_entry_param& e,
                          off_t next, bool plus) override {
    return plus ? fuse_add_direntry_plus(req_, buf, size, name, &e, next)
                : fuse_add_direntry(req_, buf, size, name, &e.attr, next);
  }
  void InvalInodeAttrs(fuse_ino_t ino) override {
    if (se_) fuse_lowlevel_notify_inval_inode(se_, ino, -1, 0);
  }

 private:
  void DoErr(int err) override { fuse_reply_err(req_, err); }
  void DoNone() override { fuse_reply_none(req_); }
  void DoEntry(const fuse_entry_param& e) override { fuse_reply_entry(req_, &e); }
  void DoCreate(const fuse_entry_param& e, const fuse_file_info& fi) override {
    fuse_reply_create(req_, &e, &fi);
  }
  void DoAttr(const struct stat& st, double timeout) override {
    fuse_reply_attr(req_, &st, timeout);
  }
  void DoReadlink(const char* target) override { fuse_reply_readlink(req_, target); }
  void DoOpen(const fuse_file_info& fi) override { fuse_reply_open(req_, &fi); }
  void DoWrite(std::size_t count) override { fuse_reply_write(req_, count); }
  void DoBuf(const void* data, std::size_t size) override {
    fuse_reply_buf(req_, static_cast<const char*>(data), size);
  }
  void DoXattrSize(std::size_t size) override { fuse_reply_xattr(req_, size); }
  void DoStatfs(const struct statvfs& st) override { fuse_reply_statfs(req_, &st); }
  void DoLseek(off_t off) override { fuse_reply_lseek(req_, off); }

  fuse_req_t req_;    // freed by the answer
  fuse_session* se_;  // for the open-time invalidation; null in no session
  std::optional<bool> kill_suidgid_;
};
#pragma GCC poison fuse_reply_err fuse_reply_none fuse_reply_entry fuse_reply_create
#pragma GCC poison fuse_reply_attr fuse_reply_readlink fuse_reply_open fuse_reply_write
#pragma GCC poison fuse_reply_buf fuse_reply_iov fuse_reply_data fuse_reply_xattr
#pragma GCC poison fuse_reply_statfs fuse_reply_lock fuse_reply_bmap fuse_reply_ioctl
#pragma GCC poison fuse_reply_poll fuse_reply_lseek

}  // namespace

struct FuseFs::Impl {
  explicit Impl(server::FileServer& f) : ops(f) {}
  Ops ops;       // the handlers and their shared state (directory snapshots, kernel-cache record)
  KernelIo kio;  // /dev/fuse reads and writes (the INIT flags libfuse does not negotiate)
  fuse_session* se = nullptr;
  // One worker reads requests at a time and polls before it sleeps (request_reader.h).
  RequestReader reader{{}, [this] { return se && fuse_session_exited(se) != 0; }};
  bool mounted = false;
  std::string mountpoint;

  // Invalidations of the kernel's entries and attributes, sent from a thread of their own
  // (never from a request handler, which could be waiting on the network).
  QueueThread<Invalidation> invalidations{std::numeric_limits<std::size_t>::max()};
  // Pages for the kernel's cache (PageFill), stored from a thread of their own: a store may
  // wait for a page lock that a read in flight holds, so no request handler ever waits on one.
  // Bounded: when full, the newest are dropped (they are only an offer).
  static constexpr std::size_t kMaxPageStores = 64;
  QueueThread<PageStore> page_stores{kMaxPageStores};

  static Impl& Of(fuse_req_t req) { return *static_cast<Impl*>(fuse_req_userdata(req)); }

  void StartThreads() {
    invalidations.Start([this](Invalidation& inv) {
      if (inv.entry) {
        fuse_lowlevel_notify_inval_entry(se, inv.ino, inv.name.c_str(), inv.name.size());
      } else {
        fuse_lowlevel_notify_inval_inode(se, inv.ino, 0, 0);
      }
    });
    page_stores.Start([this](PageStore& p) {
      // Only an offer: a failure (out of memory) loses the offer, never the thread.
      try {
        StorePages(p);
      } catch (const std::exception& e) {
        spdlog::warn("page cache fill of inode {} stopped: {}", p.ino, e.what());
      }
    });
    ops.SetPageSink([this](PageStore&& p) { page_stores.Push(std::move(p)); });
  }

  void StorePages(const PageStore& p) {
    ops.StorePages(p, [&] {
      fuse_bufvec bv = FUSE_BUFVEC_INIT(p.data.size());
      bv.buf[0].mem = const_cast<std::uint8_t*>(p.data.data());
      // An inode the kernel no longer holds (ENOENT) needs nothing.
      if (int rc = fuse_lowlevel_notify_store(se, p.ino, p.offset, &bv, {});
          rc != 0 && rc != -ENOENT) {
        spdlog::debug("storing {} bytes of inode {} at {} in the kernel's cache: error {}",
                      p.data.size(), p.ino, p.offset, rc);
      }
    });
  }

  void StopThreads() {
    invalidations.Stop();
    page_stores.Stop();
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
  // Setuid/setgid: libfuse turns on FUSE_HANDLE_KILLPRIV (v1) by default, which makes the
  // kernel leave truncate and chown to the file system without telling it when. Off: either
  // the kernel takes FUSE_HANDLE_KILLPRIV_V2 (KernelIo adds it) and marks each request that
  // must clear them, or it clears them itself.
  conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
  // Every request comes through KernelIo's read hook (its kill mark), never by splice.
  conn->want &= ~FUSE_CAP_SPLICE_READ;
}

// The libfuse callbacks: each answers through a FuseReply for its request and runs the Ops
// handler of the same name inside Ops::Guard (exactly one reply; an exception becomes EIO and
// a log line; the timed ops are timed). The arguments are passed on as libfuse gave them;
// they live until the handler returns, which is when it has replied.
template <OpId K, auto M, typename... A>
void Serve(fuse_req_t req, A... a) {
  static_assert(K < kOpCount);
  auto& im = Impl::Of(req);
  FuseReply reply(req, im.se, im.kio);
  im.ops.Guard(K, reply, [&] { (im.ops.*M)(reply, a...); });
}
template <OpId K, auto M, typename... A>
constexpr auto MakeServe(void (Ops::*)(Reply&, A...)) {
  return &Serve<K, M, A...>;
}
#define FFS_SERVE(k, handler) MakeServe<k, &Ops::handler>(&Ops::handler)

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops ops{};
  ops.init = OpInit;
  ops.lookup = FFS_SERVE(kOpLookup, Lookup);
  ops.getattr = FFS_SERVE(kOpGetattr, Getattr);
  ops.setattr = FFS_SERVE(kOpSetattr, Setattr);
  ops.mkdir = FFS_SERVE(kOpMkdir, Mkdir);
  ops.create = FFS_SERVE(kOpCreate, Create);
  ops.open = FFS_SERVE(kOpOpen, Open);
  ops.read = FFS_SERVE(kOpRead, Read);
  ops.write = FFS_SERVE(kOpWrite, Write);
  ops.flush = FFS_SERVE(kOpFlush, Flush);
  ops.fsync = FFS_SERVE(kOpFsync, Fsync);
  ops.release = FFS_SERVE(kOpRelease, Release);
  ops.unlink = FFS_SERVE(kOpUnlink, Unlink);
  ops.rmdir = FFS_SERVE(kOpRmdir, Rmdir);
  ops.rename = FFS_SERVE(kOpRename, Rename);
  ops.readdir = FFS_SERVE(kOpReaddir, Readdir);
  ops.getxattr = FFS_SERVE(kOpGetxattr, Getxattr);
  ops.statfs = FFS_SERVE(kOpStatfs, Statfs);
  ops.readdirplus = FFS_SERVE(kOpReaddirplus, Readdirplus);
  ops.forget = FFS_SERVE(kOpForget, Forget);
  ops.forget_multi = FFS_SERVE(kOpForgetMulti, ForgetMulti);
  ops.readlink = FFS_SERVE(kOpReadlink, Readlink);
  ops.symlink = FFS_SERVE(kOpSymlink, Symlink);
  ops.link = FFS_SERVE(kOpLink, Link);
  ops.mknod = FFS_SERVE(kOpMknod, Mknod);
  ops.setxattr = FFS_SERVE(kOpSetxattr, Setxattr);
  ops.listxattr = FFS_SERVE(kOpListxattr, Listxattr);
  ops.removexattr = FFS_SERVE(kOpRemovexattr, Removexattr);
  ops.fallocate = FFS_SERVE(kOpFallocate, Fallocate);
  ops.fsyncdir = FFS_SERVE(kOpFsyncdir, Fsyncdir);
  ops.opendir = FFS_SERVE(kOpOpendir, Opendir);
  ops.releasedir = FFS_SERVE(kOpReleasedir, Releasedir);
  ops.lseek = FFS_SERVE(kOpLseek, Lseek);
  return ops;
}();
#undef FFS_SERVE

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
  impl_->StopThreads();
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
  impl_->ops.SetAttrTimeout(options.attr_timeout_s);
  std::string opts = "fsname=foreverfs,subtype=foreverfs,default_permissions";
  for (const auto& o : options.options) opts += "," + o;
  std::vector<std::string> argv_s = {"foreverfs", "-o", opts};
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  // FOREVERFS_TEST_FUSE_FAULTS="statfs,fsyncdir+": test tooling for the guard (Ops::SetFaults).
  if (const char* faults = std::getenv("FOREVERFS_TEST_FUSE_FAULTS")) impl_->ops.SetFaults(faults);
  impl_->se = fuse_session_new(&args, &kOps, sizeof(kOps), impl_.get());
  if (!impl_->se)
    return Err(Code::kInvalid, "cannot create a FUSE session (mount options '{}')", opts);
  if (fuse_session_mount(impl_->se, impl_->mountpoint.c_str()) != 0) {
    return Err(Code::kIOError, "cannot mount {} (is /dev/fuse there and fusermount3 installed?)",
               impl_->mountpoint);
  }
  impl_->mounted = true;
  // Every request and reply then goes through KernelIo (the session's userdata is Impl).
  static constexpr fuse_custom_io kIo = {
      .writev =
          [](int fd, struct iovec* iov, int count, void* userdata) {
            return static_cast<Impl*>(userdata)->kio.Writev(fd, iov, count);
          },
      .read = [](int fd, void* buf, size_t len,
                 void* userdata) { return static_cast<Impl*>(userdata)->kio.Read(fd, buf, len); },
      .splice_receive = nullptr,
      .splice_send = nullptr,
  };
  impl_->kio.SetReader(&impl_->reader);
  if (int rc = fuse_session_custom_io(impl_->se, &kIo, fuse_session_fd(impl_->se)); rc != 0) {
    return Err(Code::kIOError, "cannot set up the FUSE session's I/O on {}: error {}",
               impl_->mountpoint, rc);
  }
  return Ok();
}

RequestReader::Counters FuseFs::ReaderCounters() const { return impl_->reader.counters(); }

void FuseFs::InstallSignalHandlers() { fuse_set_signal_handlers(impl_->se); }

Status FuseFs::Run() {
  impl_->StartThreads();
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_idle_threads(cfg, 8);
  fuse_loop_cfg_set_max_threads(cfg, 64);
  int rc = fuse_session_loop_mt(impl_->se, cfg);
  fuse_loop_cfg_destroy(cfg);
  fuse_remove_signal_handlers(impl_->se);
  // Unmounted first: requests the loop left unanswered are then aborted, which frees any page
  // a store or an invalidation is waiting for, so both threads can be joined.
  Unmount();
  impl_->StopThreads();
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

void FuseFs::SetControlPath(std::string path) { impl_->ops.SetControlPath(std::move(path)); }

const std::vector<std::string>& FuseFs::TimedOpNames() { return Ops::TimedOpNames(); }

void FuseFs::SetOpObserver(std::function<void(std::size_t, std::chrono::nanoseconds)> fn) {
  impl_->ops.SetOpObserver(std::move(fn));
}

void FuseFs::SetVirtualXattr(VirtualXattr fn) { impl_->ops.SetVirtualXattr(std::move(fn)); }

void FuseFs::Invalidate(const server::ChangeSet& changes) {
  for (const auto& r : changes.inodes) {
    impl_->ops.PeerChanged(r.id);
    // A regular file's cached attributes and pages stay: they are those of the version the
    // handles open here read, and the next open drops them (Ops::Open). Invalidating them
    // here would race the GETATTR of a reader, whose reply the kernel then drops, leaving
    // it reading with the size it had. A stat shows the new version within attr_timeout.
    if (r.kind == server::InodeKind::kFile && !r.deleted) continue;
    impl_->invalidations.Push({false, r.id, {}});
  }
  for (const auto& d : changes.dentries) impl_->invalidations.Push({true, d.parent, d.name});
}

}  // namespace foreverfs::fuse
