#define FUSE_USE_VERSION 314
#include "app/node.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "app/virtual_xattrs.h"
#include "server/identity.h"
#include "server/member_links.h"

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace foreverfs::app {

Node::Node(NodeConfig config) : config_(std::move(config)) {}

Node::~Node() { Stop(); }

Status Node::Start() {
  const fs::path& data = config_.data;
  std::error_code ec;
  for (const char* sub : {"", "chunks", "staging"}) {
    fs::create_directories(data / sub, ec);
    if (ec)
      return Status(Code::kIOError, fmt::format("cannot create data directory {}: {}",
                                                (data / sub).string(), ec.message()));
  }
  ::chmod(data.c_str(), 0700);
  lock_ = UniqueFd(::open((data / "lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock_.valid() || ::flock(lock_.get(), LOCK_EX | LOCK_NB) != 0) {
    return Status(
        Code::kIOError,
        fmt::format("data directory {} is in use by another foreverfs process", data.string()));
  }

  auto ns = server::NamespaceDb::Open(data / "meta.db");
  if (!ns.ok()) return ns.status();
  ns_ = std::move(*ns);
  // A copy of another node's data directory must not run under that node's id (README,
  // "Identity"): it takes a fresh one before anything is written.
  auto identity = server::CheckDataDirIdentity(*ns_, data);
  if (!identity.ok()) return identity.status();
  if (identity->renewed) {
    spdlog::warn(
        "{}. Node id {:016x} may still be in use by the node this copy was made from, so this "
        "node takes a fresh id, {:016x} (two processes under one id would miss each other's "
        "changes and lose concurrent writes). Records written before keep the old id: they are "
        "history both nodes share; peers stream this node's changes again from the start.",
        identity->why, identity->old_id, ns_->node_id());
  }
  // This node's placement weight, from --capacity or the free space here; the membership
  // announces it (it is read when the membership starts, and changes only with a restart).
  std::uint64_t capacity = config_.capacity;
  std::string source = "--capacity";
  if (capacity == 0) {
    struct statvfs st {};
    if (::statvfs(data.c_str(), &st) == 0) {
      capacity = static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
      source = "free space in " + data.string();
    } else {
      spdlog::warn(
          "cannot read the free space in {} ({}): this node weighs 1 in placement; "
          "set --capacity",
          data.string(), strerror(errno));
      source = "free space unknown";
    }
  }
  const std::uint32_t weight = server::Placement::WeightOf(capacity);
  spdlog::info("capacity {:.1f} GiB ({}): placement weight {} (one per {} GiB, rounded, 1 to {})",
               static_cast<double>(capacity) / (1 << 30), source, weight,
               server::Placement::kWeightUnit >> 30, server::Placement::kMaxWeight);
  auto store = cas::MakeLocalStore(data / "chunks", config_.key);
  if (!store.ok()) return store.status();
  store_ = std::move(*store);
  files_ = std::make_unique<server::FileServer>(*ns_, *store_, cas::MakeHasher(config_.key),
                                                data / "staging");
  files_->SetMaxClockSkew(
      std::chrono::milliseconds(static_cast<long>(config_.max_clock_skew_s * 1000)));
  maintenance_ = std::make_unique<server::ChunkMaintenance>(*files_);
  usage_ = std::make_unique<ChunkUsage>(data / "chunks", std::chrono::seconds(2),
                                        [this] { return store_->PackedUsage(); });
  latency_ = std::make_unique<OpLatency>(fuse::FuseFs::TimedOpNames());
  fuse_ = std::make_unique<fuse::FuseFs>(*files_);

  io_ = std::make_unique<asio::io_context>(1);
  server::ReplicatorOptions ropts;
  ropts.replicas = config_.replicas;
  ropts.fetch_timeout =
      std::chrono::milliseconds(static_cast<long>(config_.fetch_timeout_s * 1000));
  ropts.max_links = static_cast<std::size_t>(config_.max_links);
  ropts.down_after = std::chrono::milliseconds(static_cast<long>(config_.down_after_s * 1000));
  ropts.sync_copies = static_cast<std::size_t>(config_.sync_copies);
  ropts.sync_timeout = std::chrono::milliseconds(static_cast<long>(config_.sync_timeout_s * 1000));
  ropts.cache_size = config_.cache_size;
  ropts.weight = weight;
  ropts.rebalance_interval =
      std::chrono::milliseconds(static_cast<long>(config_.rebalance_interval_s * 1000));
  replicator_ = std::make_unique<server::Replicator>(*io_, *files_, ropts);
  net::TcpOptions topts;
  topts.node_id = files_->node_id();
  topts.on_same_node_id = [this](const net::SameNodeId& s) { OnSameNodeId(s); };
  topts.listen = config_.listen;
  topts.auth_key = crypto::DeriveKey(config_.key.secret, "foreverfs auth v1");
  topts.tls_psk = crypto::DeriveKey(config_.key.secret, "foreverfs tls psk v1");
  transport_ = std::make_unique<net::TcpTransport>(*io_, topts, *replicator_);
  if (auto s = transport_->Listen(); !s.ok()) return s;
  replicator_->SetDialer([t = transport_.get()](const std::string& addr) { t->AddPeer(addr); });
  for (const auto& p : config_.peers) {
    if (auto hp = net::ParseHostPort(p); !hp.ok())
      return Status(hp.status().code(), fmt::format("--peer: {}", hp.status().message()));
  }
  // The membership starts with the event loop: it joins through the --peer addresses and from
  // then on decides which links the transport keeps (doc/membership.md).
  asio::post(*io_, [r = replicator_.get(), t = transport_.get(), peers = config_.peers] {
    server::Dialer dialer{
        [t](const std::string& addr) { t->AddPeer(addr); },
        [t](const std::string& addr, const std::string& reason) { t->RemovePeer(addr, reason); }};
    r->StartMembership(t->AdvertisedAddr(), peers, std::move(dialer));
  });
  files_->SetRemote(replicator_.get());
  files_->SetOnLocalChange([r = replicator_.get()] { r->NotifyLocalChange(); });
  files_->SetOnPinChange([r = replicator_.get()] { r->Rescan(); });

  fuse_->SetControlPath((data / "control.sock").string());
  fuse_->SetOpObserver(
      [l = latency_.get()](std::size_t op, std::chrono::nanoseconds d) { l->Observe(op, d); });
  fuse_->SetVirtualXattr(
      [f = files_.get(), r = replicator_.get(), self = transport_->AdvertisedAddr()](
          std::uint64_t ino, std::string_view name) {
        return ReplicaXattr(*f, *r, self, ino, name);
      });
  endpoints_ = std::make_unique<Endpoints>(NodeParts{
      *files_, *replicator_, *transport_, *io_, *maintenance_, *usage_, *latency_, data,
      transport_->AdvertisedAddr(), config_.replicas,
      std::chrono::nanoseconds(static_cast<std::int64_t>(config_.tombstone_grace_s * 1e9)),
      [f = fuse_.get()] { return f->ReaderCounters(); }});
  // Rendered on the metrics server's workers, which it starts only once the loop runs.
  if (auto s = endpoints_->BindMetrics(config_.metrics); !s.ok()) return s;
  files_->SetOnRemoteChange([f = fuse_.get()](const server::ChangeSet& cs) { f->Invalidate(cs); });
  if (auto s = fuse_->Mount({config_.mountpoint, config_.fuse_options, 1.0}); !s.ok()) return s;
  spdlog::info("foreverfs {} mounted on {} (node {:016x}, listening on {}, data in {})",
               FOREVERFS_VERSION, config_.mount_abs.string(), files_->node_id(),
               transport_->AdvertisedAddr(), data.string());
  return Status();
}

// Another process with this node id (a VM snapshot or block copy of the data directory, which
// the inode check in Start cannot see): the newer of the two stops and takes a fresh id at its
// next start; the other goes on. Both refuse the link. On the event thread.
void Node::OnSameNodeId(const net::SameNodeId& s) {
  const std::string where = s.listen_addr.empty() ? s.remote : s.listen_addr;
  if (!s.peer_is_older) {
    spdlog::error(
        "the process at {} runs with this node's id {:016x} and started after this one: its "
        "data directory is a copy of this node's; it stops and takes a fresh id",
        where, s.node_id);
    return;
  }
  if (stopped_as_copy_.exchange(true)) return;
  const std::string why = fmt::format(
      "the node at {} runs with this node's id {:016x} and has run longer: this data "
      "directory is a copy of that node's (a VM snapshot or a disk copy)",
      where, s.node_id);
  {
    std::lock_guard lock(copy_mu_);
    copy_why_ = why;
  }
  if (auto st = server::MarkForFreshNodeId(config_.data, why); !st.ok()) {
    spdlog::error("{}", st.message());
  }
  spdlog::error(
      "{}; unmounting and stopping, so that two nodes never write under one id. The "
      "next start takes a fresh node id.",
      why);
  ::kill(::getpid(), SIGTERM);
}

Status Node::Daemonize() {
  // The namespace's group-commit thread would not exist in the child: ended here, started
  // again by the first change after the fork.
  if (auto s = files_->ns().BeforeFork(); !s.ok()) return s;
  // Likewise the small-chunk store's committer (cas/small_chunks.h).
  if (auto s = store_->BeforeFork(); !s.ok()) return s;
  io_->notify_fork(asio::io_context::fork_prepare);
  if (fuse_daemonize(0) != 0) return Status(Code::kIOError, "cannot daemonize");
  io_->notify_fork(asio::io_context::fork_child);
  return Status();
}

Status Node::Run() {
  fuse_->InstallSignalHandlers();
  running_ = true;
  guard_.emplace(asio::make_work_guard(*io_));
  net_thread_ = std::thread([io = io_.get()] { io->run(); });
  endpoints_->Start();
  // Garbage collection every --gc-interval seconds (a chunk goes after two passes).
  gc_thread_ = std::thread([this] {
    std::unique_lock lock(gc_mu_);
    const auto interval =
        std::chrono::milliseconds(static_cast<long>(config_.gc_interval_s * 1000));
    const auto grace =
        std::chrono::nanoseconds(static_cast<std::int64_t>(config_.tombstone_grace_s * 1e9));
    while (!gc_cv_.wait_for(lock, interval, [this] { return gc_stop_; })) {
      lock.unlock();
      if (auto r = maintenance_->Collect(); !r.ok()) spdlog::error("gc: {}", r.status().message());
      (void)PurgeTombstones(*files_, grace);
      lock.lock();
    }
  });
  Status run = fuse_->Run();
  Stop();
  return run;
}

void Node::Stop() {
  if (!running_) return;
  running_ = false;
  {
    std::lock_guard lock(gc_mu_);
    gc_stop_ = true;
  }
  gc_cv_.notify_all();
  gc_thread_.join();
  endpoints_->Stop();
  fuse_->Unmount();
  files_->SetOnRemoteChange(nullptr);
  asio::post(*io_, [r = replicator_.get(), t = transport_.get()] {
    r->StopMembership();
    t->Stop();
  });
  guard_.reset();
  io_->stop();
  net_thread_.join();
  // What lives on the event loop goes with it, before the loop (as the destructor would, in
  // reverse member order; done here so that nothing refers to a stopped loop a moment longer).
  endpoints_.reset();
  transport_.reset();
  replicator_.reset();
  io_.reset();
}

std::optional<std::string> Node::StoppedAsCopy() {
  if (!stopped_as_copy_) return std::nullopt;
  std::lock_guard lock(copy_mu_);
  return copy_why_;
}

}  // namespace foreverfs::app
