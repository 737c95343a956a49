#include "base/mutex.h"
#include "server/replicator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <deque>
#include <future>
#include <map>
#include <set>

namespace foreverfs::server {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kFeedBatchRecords = 512;
// Encoded bytes per batch: a quarter of a frame, which any single record fits in
// (model::ValidateInode).
constexpr std::size_t kFeedBatchBytes = net::kMaxFrameSize / 4;
constexpr std::size_t kMaxQueuedBytes = 8 * kMiB;  // per link, before the feed waits
constexpr auto kPerPeerTimeout = std::chrono::milliseconds(5000);
constexpr auto kNoPeerRetry = std::chrono::milliseconds(200);
constexpr auto kRecentFailure = std::chrono::milliseconds(500);
// A FeedAck follows applied batches after at most this long (one per link per interval).
constexpr auto kAckDelay = std::chrono::milliseconds(1000);

std::string Short(std::uint64_t node) { return fmt::format("{:016x}", node); }

// Rendezvous score of a node for a chunk: highest wins.
std::uint64_t Score(std::uint64_t node, const cas::ChunkId& id) {
  std::uint64_t h = 1469598103934665603ull ^ node;
  for (auto b : id) h = (h ^ b) * 1099511628211ull;
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  return h ^ (h >> 32);
}

}  // namespace

struct Replicator::Impl : std::enable_shared_from_this<Replicator::Impl> {
  struct Peer {
    std::shared_ptr<net::Link> link;
    std::uint64_t feed_cursor = 0;
    bool subscribed = false;
    bool pump_scheduled = false;
    std::uint64_t records_received = 0;
    std::uint64_t peer_seq = 0;
    Clock::time_point last_progress_log{};
    // A batch from this link failed to apply: later batches on it are ignored (they would move
    // the cursor past the failed one) until the link is replaced.
    bool feed_broken = false;
    // Its feed applied through here (our cursor, persisted), and the last value we told it.
    std::uint64_t applied = 0;
    std::uint64_t acked = 0;
    bool ack_scheduled = false;
  };
  // A chunk-holder query (Holders) in progress; event thread.
  struct HolderQuery {
    std::vector<cas::ChunkId> ids;
    struct Answer {
      std::string addr;
      std::size_t pending = 0;  // batches not answered yet
      bool has_all = true;
    };
    std::map<std::uint64_t, Answer> answers;  // by node id
    std::shared_ptr<std::promise<HolderReport>> promise;
    HolderReport report;
    std::shared_ptr<asio::steady_timer> timer;
    bool done = false;
  };
  struct HaveRequest {
    std::shared_ptr<HolderQuery> query;
    std::uint64_t node = 0;
    std::size_t offset = 0, count = 0;
  };
  using Callback = std::function<void(Result<Bytes>)>;
  struct FetchJob {
    cas::ChunkId id;
    Clock::time_point deadline;
    std::vector<std::uint64_t> tried;
    Callback done;
  };
  struct Pending {
    std::shared_ptr<FetchJob> job;
    std::uint64_t node;
    std::shared_ptr<asio::steady_timer> timer;
  };

  Impl(asio::io_context& io, FileServer& fs, ReplicatorOptions o) : io_(io), fs_(fs), options_(o) {}

  asio::io_context& io_;
  FileServer& fs_;
  ReplicatorOptions options_;
  std::function<void(const std::string&)> dial_;
  std::map<std::uint64_t, Peer> peers_;
  std::map<std::uint64_t, Pending> pending_;
  std::uint64_t next_request_ = 1;
  std::deque<cas::ChunkId> queue_;
  std::set<cas::ChunkId> queued_;
  std::size_t in_flight_ = 0;
  std::atomic<bool> notify_posted_{false};
  // Storage work (verify, seal and write a chunk received; read and open one to send) runs
  // here, off the event thread, which is left with the network. Owned by Replicator, which
  // joins it before Impl can go. Started on first use, on the event thread: threads started
  // before the process daemonizes (fork) would not exist in the daemon.
  std::unique_ptr<asio::thread_pool>* storage_ = nullptr;  // null once Replicator is gone
  // peers_.size(), readable from any thread (peers_ itself belongs to the event thread).
  std::atomic<std::size_t> peer_count_{0};
  // Chunks a blocking Fetch could not get, and when (any thread; guarded).
  Mutex failed_mu_;
  std::map<cas::ChunkId, Clock::time_point> failed_ GUARDED_BY(failed_mu_);
  bool rescan_scheduled_ = false;
  // Peers whose link closed: why, and when (bounded; event thread).
  std::map<std::uint64_t, PeerStatus> gone_;
  std::map<std::uint64_t, HaveRequest> have_requests_;
  // The current round of background chunk fetches, for progress in the log and in status.
  struct Round {
    bool running = false;
    Clock::time_point start{}, end{}, last_log{};
    std::size_t total = 0, done = 0, failed = 0;
    std::uint64_t bytes = 0;
  } round_;

  // Runs `work` on the storage pool and `then(result)` back on the event thread. The event
  // loop counts as busy meanwhile, so io_context::run does not return under it.
  template <typename Work, typename Then>
  void OffThread(Work work, Then then) {
    if (!storage_) {
      then(work());
      return;
    }
    if (!*storage_) *storage_ = std::make_unique<asio::thread_pool>(2);
    asio::post(**storage_, [self = shared_from_this(), work = std::move(work),
                            then = std::move(then), guard = asio::make_work_guard(io_)]() mutable {
      auto result = work();
      asio::post(self->io_, [then = std::move(then), result = std::move(result)]() mutable {
        then(std::move(result));
      });
    });
  }

  bool ShouldHold(const cas::ChunkId& id) const {
    if (options_.replicas <= 0 ||
        peers_.size() + 1 <= static_cast<std::size_t>(options_.replicas)) {
      return true;
    }
    std::vector<std::pair<std::uint64_t, std::uint64_t>> scores;
    scores.emplace_back(Score(fs_.node_id(), id), fs_.node_id());
    for (auto& [node, p] : peers_) scores.emplace_back(Score(node, id), node);
    std::sort(scores.rbegin(), scores.rend());
    for (int i = 0; i < options_.replicas; ++i) {
      if (scores[static_cast<std::size_t>(i)].second == fs_.node_id()) return true;
    }
    return false;
  }

  // --- namespace feed -------------------------------------------------------------------
  void Pump(std::uint64_t node) {
    auto it = peers_.find(node);
    if (it == peers_.end() || !it->second.subscribed) return;
    Peer& p = it->second;
    for (;;) {
      if (p.link->QueuedBytes() > kMaxQueuedBytes) {
        SchedulePump(node);
        return;
      }
      auto changes = fs_.ns().ChangesSince(p.feed_cursor, kFeedBatchRecords, kFeedBatchBytes);
      if (!changes.ok()) {
        spdlog::error("reading the change feed for peer {}: {}", Short(node),
                      changes.status().message());
        return;
      }
      bool empty = changes->inodes.empty() && changes->dentries.empty();
      if (empty && changes->up_to == p.feed_cursor) return;
      p.feed_cursor = changes->up_to;
      p.link->Send(std::move(*changes));
      if (empty) return;
    }
  }

  void SchedulePump(std::uint64_t node) {
    auto& p = peers_[node];
    if (p.pump_scheduled) return;
    p.pump_scheduled = true;
    auto timer = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(20));
    timer->async_wait([self = shared_from_this(), node, timer](boost::system::error_code) {
      auto it = self->peers_.find(node);
      if (it == self->peers_.end()) return;
      it->second.pump_scheduled = false;
      self->Pump(node);
    });
  }

  void PumpAll() {
    for (auto& [node, p] : peers_) Pump(node);
  }

  void OnChanges(std::uint64_t node, net::Changes&& changes) {
    if (auto p = peers_.find(node); p != peers_.end()) {
      auto& peer = p->second;
      if (peer.feed_broken) return;
      const std::size_t n = changes.inodes.size() + changes.dentries.size();
      peer.records_received += n;
      peer.peer_seq = changes.up_to;
      // A long catch-up of the namespace says how far it got every 5 s.
      const auto now = Clock::now();
      if (n > 0 && now - peer.last_progress_log >= std::chrono::seconds(5)) {
        if (peer.last_progress_log != Clock::time_point{}) {
          spdlog::info("catch-up from peer {}: {} records received, at its change {}", Short(node),
                       peer.records_received, peer.peer_seq);
        }
        peer.last_progress_log = now;
      }
    }
    auto won = fs_.ApplyRemote(changes, node);
    if (!won.ok()) {
      // The cursor stayed before this batch (it moves in the same transaction). Close the link:
      // the next one subscribes from the cursor and the batch comes again.
      spdlog::error("applying changes from peer {}: {}; closing the link to receive them again",
                    Short(node), won.status().message());
      if (auto p = peers_.find(node); p != peers_.end()) {
        p->second.feed_broken = true;
        p->second.link->Close("its changes could not be applied: " + won.status().message());
      }
      return;
    }
    ScheduleAck(node, changes.up_to);
    if (won->empty()) return;
    spdlog::debug("peer {}: applied {} inode and {} entry changes", Short(node), won->inodes.size(),
                  won->dentries.size());
    for (const auto& r : won->inodes) {
      if (!r.deleted) EnqueueManifest(r);
    }
    PumpAll();  // relay to the others
  }

  // Tells the peer how far into its feed we are (FeedAck), at most once per kAckDelay: it
  // purges a tombstone only once every member confirmed it.
  void ScheduleAck(std::uint64_t node, std::uint64_t applied) {
    auto it = peers_.find(node);
    if (it == peers_.end()) return;
    Peer& p = it->second;
    p.applied = applied;
    if (p.ack_scheduled || p.applied == p.acked) return;
    p.ack_scheduled = true;
    auto timer = std::make_shared<asio::steady_timer>(io_, kAckDelay);
    timer->async_wait([self = shared_from_this(), node, link = p.link,
                       timer](boost::system::error_code) {
      auto it = self->peers_.find(node);
      if (it == self->peers_.end() || it->second.link != link) return;
      Peer& p = it->second;
      p.ack_scheduled = false;
      if (p.feed_broken || p.applied == p.acked) return;
      p.acked = p.applied;
      self->SendAck(node, link, p.applied);
    });
  }

  // An ack goes out only once what it confirms is on disk (the namespace commits without
  // waiting for the disk): a member that loses its last commits to a power cut must not have
  // confirmed them, or their tombstones would be purged while it still holds the live records.
  // It never confirms past a batch that held a record this node refused (AckCap).
  void SendAck(std::uint64_t node, const std::shared_ptr<net::Link>& link, std::uint64_t applied) {
    OffThread([self = shared_from_this()] { return self->fs_.ns().Sync(); },
              [self = shared_from_this(), node, link, applied](Status synced) {
                if (!synced.ok()) {
                  spdlog::warn("not confirming peer {}'s changes: {}", Short(node),
                               synced.message());
                  return;
                }
                auto it = self->peers_.find(node);
                if (it == self->peers_.end() || it->second.link != link) return;
                link->Send(net::FeedAck{std::min(applied, self->fs_.ns().AckCap(node)),
                                        self->fs_.ns().LastSeq()});
              });
  }

  void RecordAck(std::uint64_t node, const net::FeedAck& ack) {
    if (auto s = fs_.ns().RecordAck(node, ack.applied, ack.own_seq); !s.ok()) {
      spdlog::error("recording how far peer {} is in our changes: {}", Short(node), s.message());
    }
  }

  void AddMember(std::uint64_t node) {
    if (auto s = fs_.ns().AddMember(node); !s.ok()) {
      spdlog::error("recording node {} as a member: {}", Short(node), s.message());
    }
  }

  // --- chunks ---------------------------------------------------------------------------
  void EnqueueManifest(const InodeRecord& r) {
    for (const auto& [index, id] : r.manifest) {
      if (queued_.contains(id) || !ShouldHold(id) || fs_.HasChunk(id)) continue;
      queued_.insert(id);
      queue_.push_back(id);
      if (!round_.running) {
        round_ = Round{true, Clock::now(), {}, Clock::now(), 0, 0, 0, 0};
      }
      ++round_.total;
    }
    RunQueue();
  }

  void ScanMissing() {
    auto s = fs_.ns().ForEachLiveManifest([this](const InodeRecord& r) { EnqueueManifest(r); });
    if (!s.ok()) spdlog::error("scanning for missing chunks: {}", s.message());
  }

  void RunQueue() {
    while (in_flight_ < options_.background_fetches && !queue_.empty() && !peers_.empty()) {
      cas::ChunkId id = queue_.front();
      queue_.pop_front();
      if (fs_.HasChunk(id)) {
        queued_.erase(id);
        continue;
      }
      ++in_flight_;
      StartFetch(id, [self = shared_from_this(), id](Result<Bytes> r) {
        --self->in_flight_;
        self->queued_.erase(id);
        if (!r.ok()) {
          ++self->round_.failed;
          spdlog::warn("chunk {}: background replication failed: {}", cas::Hex(id),
                       r.status().message());
          self->ScheduleRescan();
        } else {
          ++self->round_.done;
          self->round_.bytes += r->size();
        }
        self->RunQueue();
        self->LogRound();
      });
    }
  }

  // A progress line every 5 s while a round of background fetches runs, and one at its end.
  void LogRound() {
    if (!round_.running) return;
    const auto now = Clock::now();
    const double secs = std::chrono::duration<double>(now - round_.start).count();
    const double mib = static_cast<double>(round_.bytes) / kMiB;
    if (queue_.empty() && in_flight_ == 0) {
      round_.running = false;
      round_.end = now;
      if (round_.total >= 16 || secs >= 1) {
        spdlog::info(
            "catch-up done: {} of {} chunks fetched ({:.1f} MiB) in {:.1f} s, {:.1f} MiB/s{}",
            round_.done, round_.total, mib, secs, secs > 0 ? mib / secs : 0.0,
            round_.failed ? fmt::format(", {} failed (retried later)", round_.failed)
                          : std::string());
      }
    } else if (now - round_.last_log >= std::chrono::seconds(5)) {
      round_.last_log = now;
      spdlog::info("catch-up: {} of {} chunks fetched ({:.1f} MiB), {:.1f} chunks/s, {:.1f} MiB/s",
                   round_.done, round_.total, mib, secs > 0 ? round_.done / secs : 0.0,
                   secs > 0 ? mib / secs : 0.0);
    }
  }

  // --- chunk holders --------------------------------------------------------------------
  void StartHolderQuery(const std::shared_ptr<HolderQuery>& q, std::chrono::milliseconds timeout) {
    for (auto& [node, p] : peers_) {
      auto& answer = q->answers[node];
      answer.addr = DialableAddr(p.link->Peer());
      if (answer.addr.empty()) answer.addr = p.link->Peer().remote;
      ++q->report.asked;
      // At least one batch, so that an empty list still asks (every peer that answers holds
      // all of nothing).
      for (std::size_t off = 0; off == 0 || off < q->ids.size(); off += net::kMaxHaveChunksQuery) {
        const std::size_t n = std::min<std::size_t>(net::kMaxHaveChunksQuery, q->ids.size() - off);
        const std::uint64_t req = next_request_++;
        have_requests_[req] = HaveRequest{q, node, off, n};
        ++answer.pending;
        net::HaveChunks msg{
            req, std::vector<cas::ChunkId>(q->ids.begin() + off, q->ids.begin() + off + n)};
        p.link->Send(std::move(msg));
      }
    }
    q->timer = std::make_shared<asio::steady_timer>(io_, timeout);
    q->timer->async_wait([self = shared_from_this(), q](boost::system::error_code ec) {
      if (!ec) self->FinishHolderQuery(q);
    });
    MaybeFinishHolderQuery(q);
  }

  void MaybeFinishHolderQuery(const std::shared_ptr<HolderQuery>& q) {
    for (auto& [node, a] : q->answers) {
      if (a.pending > 0) return;
    }
    FinishHolderQuery(q);
  }

  void FinishHolderQuery(const std::shared_ptr<HolderQuery>& q) {
    if (q->done) return;
    q->done = true;
    if (q->timer) q->timer->cancel();
    for (auto it = have_requests_.begin(); it != have_requests_.end();) {
      it = it->second.query == q ? have_requests_.erase(it) : std::next(it);
    }
    for (auto& [node, a] : q->answers) {
      if (a.pending > 0) continue;
      ++q->report.answered;
      if (a.has_all) q->report.peers.push_back({node, a.addr});
    }
    q->promise->set_value(q->report);
  }

  void OnHaveReply(std::uint64_t node, const net::HaveChunksReply& reply) {
    auto it = have_requests_.find(reply.request_id);
    if (it == have_requests_.end() || it->second.node != node) return;  // late or not ours
    HaveRequest req = it->second;
    have_requests_.erase(it);
    auto& a = req.query->answers[node];
    if (reply.count != req.count) {
      spdlog::warn("peer {}: HaveChunks reply for {} ids, asked {}; counted as not holding",
                   Short(node), reply.count, req.count);
      a.has_all = false;
    }
    for (std::size_t i = 0; i < req.count && a.has_all; ++i) {
      if (!reply.Has(i)) a.has_all = false;
    }
    --a.pending;
    MaybeFinishHolderQuery(req.query);
  }

  void OnHaveChunks(const std::shared_ptr<net::Link>& link, net::HaveChunks&& q) {
    auto ids = std::make_shared<std::vector<cas::ChunkId>>(std::move(q.ids));
    OffThread(
        [this, ids, req = q.request_id] {
          auto reply = net::EmptyHaveReply(req, static_cast<std::uint32_t>(ids->size()));
          for (std::size_t i = 0; i < ids->size(); ++i) {
            if (fs_.HasChunk((*ids)[i])) reply.Set(i);
          }
          return reply;
        },
        [link](net::HaveChunksReply reply) { link->Send(std::move(reply)); });
  }

  // A background fetch failed (no peer had the chunk yet): look for missing chunks again one
  // fetch timeout later, since no new link or manifest may come along to trigger it.
  void ScheduleRescan() {
    if (rescan_scheduled_) return;
    rescan_scheduled_ = true;
    auto timer = std::make_shared<asio::steady_timer>(io_, options_.fetch_timeout);
    timer->async_wait([self = shared_from_this(), timer](boost::system::error_code) {
      self->rescan_scheduled_ = false;
      self->ScanMissing();
    });
  }

  void StartFetch(const cas::ChunkId& id, Callback done) {
    auto job = std::make_shared<FetchJob>(
        FetchJob{id, Clock::now() + options_.fetch_timeout, {}, std::move(done)});
    TryNext(job);
  }

  void TryNext(const std::shared_ptr<FetchJob>& job) {
    const auto now = Clock::now();
    if (now >= job->deadline) {
      job->done(Err(Code::kUnavailable, "chunk {}: no reachable peer served it within {} ms",
                    cas::Hex(job->id), options_.fetch_timeout.count()));
      return;
    }
    // Candidates not tried yet, best rendezvous score first.
    std::uint64_t best = 0, best_score = 0;
    bool found = false;
    for (auto& [node, p] : peers_) {
      if (std::find(job->tried.begin(), job->tried.end(), node) != job->tried.end()) continue;
      auto s = Score(node, job->id);
      if (!found || s > best_score) best = node, best_score = s, found = true;
    }
    if (!found) {
      // Nobody (left) to ask: wait for a peer to (re)connect, until the deadline.
      job->tried.clear();
      auto timer = std::make_shared<asio::steady_timer>(io_, kNoPeerRetry);
      timer->async_wait([self = shared_from_this(), job, timer](boost::system::error_code) {
        self->TryNext(job);
      });
      return;
    }
    job->tried.push_back(best);
    std::uint64_t req = next_request_++;
    auto timer = std::make_shared<asio::steady_timer>(
        io_, std::min<Clock::duration>(kPerPeerTimeout, job->deadline - now));
    pending_[req] = Pending{job, best, timer};
    timer->async_wait([self = shared_from_this(), req](boost::system::error_code ec) {
      if (ec) return;  // cancelled: the reply came
      auto it = self->pending_.find(req);
      if (it == self->pending_.end()) return;
      auto job = it->second.job;
      spdlog::debug("chunk {}: peer {} did not answer in time", cas::Hex(job->id),
                    Short(it->second.node));
      self->pending_.erase(it);
      self->TryNext(job);
    });
    peers_[best].link->Send(net::GetChunk{req, job->id});
  }

  void OnChunkReply(std::uint64_t node, net::ChunkReply&& reply) {
    auto it = pending_.find(reply.request_id);
    if (it == pending_.end() || it->second.node != node) return;  // late or not ours
    auto job = it->second.job;
    it->second.timer->cancel();
    pending_.erase(it);
    if (!reply.found) {
      TryNext(job);
      return;
    }
    auto data = std::make_shared<Bytes>(std::move(reply.data));
    OffThread([this, id = job->id, data] { return fs_.StoreChunk(id, *data); },
              [self = shared_from_this(), job, node, data](Status s) {
                if (s.ok()) {
                  job->done(std::move(*data));
                } else if (s.code() == Code::kCorruption) {
                  spdlog::warn("peer {} sent chunk {} with bytes that do not match it; ignored",
                               Short(node), cas::Hex(job->id));
                  self->TryNext(job);
                } else {
                  job->done(Err(s.code(), "storing chunk {}: {}", cas::Hex(job->id), s.message()));
                }
              });
  }

  void OnGetChunk(const std::shared_ptr<net::Link>& link, const net::GetChunk& req) {
    OffThread([this, id = req.id] { return fs_.LocalChunk(id); },
              [link, req](Result<Bytes> data) {
                net::ChunkReply reply{req.request_id, false, {}};
                if (data.ok()) {
                  reply.found = true;
                  reply.data = std::move(*data);
                } else if (data.status().code() == Code::kCorruption) {
                  spdlog::error("chunk {}: local copy is corrupt; not serving it ({})",
                                cas::Hex(req.id), data.status().message());
                }
                link->Send(std::move(reply));
              });
  }

  void SendPeers(const std::shared_ptr<net::Link>& to) {
    net::Peers msg;
    for (auto& [node, p] : peers_) {
      if (p.link == to) continue;
      auto addr = DialableAddr(p.link->Peer());
      if (!addr.empty()) msg.peers.push_back({node, addr});
    }
    if (!msg.peers.empty()) to->Send(std::move(msg));
  }

  // The address others can reach a peer at: its advertised one, with our view of its host
  // when it listens on all addresses (":port").
  static std::string DialableAddr(const net::PeerInfo& p) {
    if (p.listen_addr.empty()) return {};
    if (p.listen_addr.front() != ':') return p.listen_addr;
    auto colon = p.remote.rfind(':');
    if (colon == std::string::npos) return {};
    return p.remote.substr(0, colon) + p.listen_addr;
  }
};

Replicator::Replicator(asio::io_context& io, FileServer& fs, ReplicatorOptions options)
    : impl_(std::make_shared<Impl>(io, fs, options)) {
  impl_->storage_ = &storage_;
}

Replicator::~Replicator() {
  if (storage_) storage_->join();
  impl_->storage_ = nullptr;
}

bool Replicator::OnOpen(const std::shared_ptr<net::Link>& link) {
  auto& im = *impl_;
  const auto& info = link->Peer();
  const std::uint64_t self = im.fs_.node_id();
  auto it = im.peers_.find(info.node_id);
  if (it != im.peers_.end()) {
    // Two links to one peer (both dialed at once): keep the one dialed by the lower node id,
    // which both ends decide alike.
    auto dialer = [&](const net::PeerInfo& p) { return p.outbound ? self : p.node_id; };
    if (dialer(info) >= dialer(it->second.link->Peer())) return false;
    auto old = it->second.link;
    im.peers_.erase(it);
    old->Close("replaced by a newer link to the same peer");
  }
  spdlog::info("peer {} ({}) connected", info.remote, Short(info.node_id));
  // A member from now on: no tombstone is purged before it confirms it holds it.
  im.AddMember(info.node_id);
  {
    MutexLock lock(im.failed_mu_);
    im.failed_.clear();  // the new peer may have what nobody had
  }
  im.peers_[info.node_id] = Impl::Peer{link};
  im.peer_count_ = im.peers_.size();
  im.SendPeers(link);
  for (auto& [node, p] : im.peers_) {
    if (node != info.node_id) im.SendPeers(p.link);
  }
  const std::uint64_t cursor = im.fs_.ns().Cursor(info.node_id);
  link->Send(net::Subscribe{cursor});
  // What we hold of its feed already, so that it can purge without waiting for a new change.
  im.SendAck(info.node_id, link, cursor);
  im.peers_[info.node_id].applied = im.peers_[info.node_id].acked = cursor;
  im.ScanMissing();
  return true;
}

void Replicator::OnMessage(const std::shared_ptr<net::Link>& link, net::Message&& m) {
  auto& im = *impl_;
  const std::uint64_t node = link->Peer().node_id;
  auto it = im.peers_.find(node);
  if (it == im.peers_.end() || it->second.link != link) return;
  std::visit(
      [&](auto&& msg) {
        using T = std::decay_t<decltype(msg)>;
        if constexpr (std::is_same_v<T, net::Subscribe>) {
          auto since = msg.since;
          if (since > im.fs_.ns().LastSeq()) since = 0;  // our feed restarted: send it all
          it->second.feed_cursor = since;
          it->second.subscribed = true;
          im.Pump(node);
        } else if constexpr (std::is_same_v<T, net::Changes>) {
          im.OnChanges(node, std::move(msg));
        } else if constexpr (std::is_same_v<T, net::GetChunk>) {
          im.OnGetChunk(link, msg);
        } else if constexpr (std::is_same_v<T, net::ChunkReply>) {
          im.OnChunkReply(node, std::move(msg));
        } else if constexpr (std::is_same_v<T, net::HaveChunks>) {
          im.OnHaveChunks(link, std::move(msg));
        } else if constexpr (std::is_same_v<T, net::HaveChunksReply>) {
          im.OnHaveReply(node, msg);
        } else if constexpr (std::is_same_v<T, net::FeedAck>) {
          im.RecordAck(node, msg);
        } else if constexpr (std::is_same_v<T, net::Peers>) {
          for (const auto& p : msg.peers) {
            // A node our peer links with may hold what we delete: a member too (README,
            // "Tombstones").
            if (p.node_id != im.fs_.node_id()) im.AddMember(p.node_id);
            if (p.node_id != im.fs_.node_id() && !im.peers_.contains(p.node_id) && im.dial_) {
              im.dial_(p.addr);
            }
          }
        }
      },
      std::move(m));
}

void Replicator::OnClose(const std::shared_ptr<net::Link>& link, const std::string& reason) {
  auto& im = *impl_;
  const auto& info = link->Peer();
  auto it = im.peers_.find(info.node_id);
  if (it == im.peers_.end() || it->second.link != link) return;
  spdlog::info("peer {} ({}) disconnected: {}", info.remote, Short(info.node_id), reason);
  {
    PeerStatus gone;
    gone.node_id = info.node_id;
    gone.addr = Impl::DialableAddr(info);
    gone.remote = info.remote;
    gone.outbound = info.outbound;
    gone.connected_since = std::chrono::system_clock::now();
    gone.bytes_in = link->Counters().BytesIn();
    gone.bytes_out = link->Counters().BytesOut();
    gone.last_error = "disconnected: " + reason;
    gone.last_error_at = gone.connected_since;
    if (im.gone_.size() >= 256 && !im.gone_.contains(info.node_id)) {
      auto oldest = std::min_element(im.gone_.begin(), im.gone_.end(), [](auto& a, auto& b) {
        return a.second.last_error_at < b.second.last_error_at;
      });
      im.gone_.erase(oldest);
    }
    im.gone_[info.node_id] = std::move(gone);
  }
  // Holder queries waiting on that peer count it as not answering.
  std::vector<std::shared_ptr<Impl::HolderQuery>> queries;
  for (auto r = im.have_requests_.begin(); r != im.have_requests_.end();) {
    if (r->second.node == info.node_id) {
      queries.push_back(r->second.query);
      r = im.have_requests_.erase(r);
    } else {
      ++r;
    }
  }
  for (auto& q : queries) {
    q->answers.erase(info.node_id);
    im.MaybeFinishHolderQuery(q);
  }
  im.peers_.erase(it);
  im.peer_count_ = im.peers_.size();
  // Requests in flight to that peer go to the next one.
  std::vector<std::shared_ptr<Impl::FetchJob>> retry;
  for (auto p = im.pending_.begin(); p != im.pending_.end();) {
    if (p->second.node == info.node_id) {
      p->second.timer->cancel();
      retry.push_back(p->second.job);
      p = im.pending_.erase(p);
    } else {
      ++p;
    }
  }
  for (auto& job : retry) im.TryNext(job);
}

Result<Bytes> Replicator::Fetch(const cas::ChunkId& id) {
  // A chunk nobody could serve a moment ago fails at once: the kernel retries a failed
  // read-ahead page with a second read right away, which must not wait the whole timeout
  // again. Half a second covers that retry and no more.
  {
    MutexLock lock(impl_->failed_mu_);
    auto it = impl_->failed_.find(id);
    if (it != impl_->failed_.end()) {
      if (Clock::now() - it->second < kRecentFailure) {
        return Err(Code::kUnavailable, "chunk {}: no reachable peer served it (recently)",
                   cas::Hex(id));
      }
      impl_->failed_.erase(it);
    }
  }
  auto promise = std::make_shared<std::promise<Result<Bytes>>>();
  auto future = promise->get_future();
  asio::post(impl_->io_, [impl = impl_, id, promise] {
    impl->StartFetch(id, [promise](Result<Bytes> r) { promise->set_value(std::move(r)); });
  });
  Result<Bytes> result =
      future.wait_for(impl_->options_.fetch_timeout + std::chrono::seconds(2)) ==
              std::future_status::ready
          ? future.get()
          : Result<Bytes>(
                Err(Code::kTimedOut, "chunk {}: fetch did not finish in time", cas::Hex(id)));
  if (!result.ok()) {
    MutexLock lock(impl_->failed_mu_);
    if (impl_->failed_.size() > 4096) impl_->failed_.clear();
    impl_->failed_[id] = Clock::now();
  }
  return result;
}

namespace {
constexpr auto kNotifyDelay = std::chrono::milliseconds(2);
}  // namespace

void Replicator::NotifyLocalChange() {
  // With no peer connected there is no one to tell: a peer that connects later subscribes
  // from its cursor and gets the change then.
  if (impl_->peer_count_ == 0) return;
  if (impl_->notify_posted_.exchange(true)) return;
  // Changes that follow within kNotifyDelay go out in the same pump: a tar of small files
  // commits every few hundred microseconds, and waking the event thread for each costs more
  // than the change.
  auto timer = std::make_shared<asio::steady_timer>(impl_->io_, kNotifyDelay);
  timer->async_wait([impl = impl_, timer](boost::system::error_code) {
    impl->notify_posted_ = false;
    impl->PumpAll();
  });
}

void Replicator::SetDialer(std::function<void(const std::string&)> dial) {
  impl_->dial_ = std::move(dial);
}

std::vector<PeerStatus> Replicator::Peers(bool include_gone) const {
  auto& im = *impl_;
  std::vector<PeerStatus> out;
  const std::uint64_t last_seq = im.fs_.ns().LastSeq();
  for (auto& [node, p] : im.peers_) {
    const auto& info = p.link->Peer();
    PeerStatus s;
    s.node_id = node;
    s.addr = Impl::DialableAddr(info);
    s.remote = info.remote;
    s.outbound = info.outbound;
    s.connected = true;
    s.connected_since = info.connected_since;
    s.bytes_in = p.link->Counters().BytesIn();
    s.bytes_out = p.link->Counters().BytesOut();
    s.changes_to_send = p.subscribed && last_seq > p.feed_cursor ? last_seq - p.feed_cursor : 0;
    for (auto& [req, pending] : im.pending_) {
      if (pending.node == node) ++s.chunks_in_flight;
    }
    s.records_received = p.records_received;
    s.peer_seq = p.peer_seq;
    if (auto g = im.gone_.find(node); g != im.gone_.end()) {
      s.last_error = g->second.last_error;
      s.last_error_at = g->second.last_error_at;
    }
    out.push_back(std::move(s));
  }
  if (include_gone) {
    for (auto& [node, g] : im.gone_) {
      if (!im.peers_.contains(node)) out.push_back(g);
    }
  }
  return out;
}

std::size_t Replicator::PeerCount() const { return impl_->peer_count_; }

CatchUpStatus Replicator::CatchUp() const {
  const auto& r = impl_->round_;
  CatchUpStatus s;
  s.running = r.running;
  s.total = r.total;
  s.done = r.done;
  s.failed = r.failed;
  s.bytes = r.bytes;
  if (r.start != Clock::time_point{}) {
    s.seconds = std::chrono::duration<double>((r.running ? Clock::now() : r.end) - r.start).count();
  }
  return s;
}

HolderReport Replicator::Holders(const std::vector<cas::ChunkId>& ids,
                                 std::chrono::milliseconds timeout) {
  auto q = std::make_shared<Impl::HolderQuery>();
  std::set<cas::ChunkId> distinct;
  for (const auto& id : ids) {
    if (id != cas::kHoleId && distinct.insert(id).second) q->ids.push_back(id);
  }
  q->report.chunks = q->ids.size();
  q->report.local = std::all_of(q->ids.begin(), q->ids.end(),
                                [&](const cas::ChunkId& id) { return impl_->fs_.HasChunk(id); });
  q->promise = std::make_shared<std::promise<HolderReport>>();
  auto future = q->promise->get_future();
  asio::post(impl_->io_, [impl = impl_, q, timeout] { impl->StartHolderQuery(q, timeout); });
  if (future.wait_for(timeout + std::chrono::seconds(1)) != std::future_status::ready) {
    // The event thread is stuck or stopped: report what is known locally.
    HolderReport r;
    r.chunks = q->ids.size();
    r.local = q->report.local;
    return r;
  }
  return future.get();
}

std::size_t Replicator::Backlog() const { return impl_->queue_.size() + impl_->in_flight_; }

}  // namespace foreverfs::server
