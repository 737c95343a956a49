#include "server/chunk_fetcher.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <future>

#include "server/replication_common.h"

namespace foreverfs::server {
namespace {

namespace asio = boost::asio;
using replication::Clock;
using replication::Score;
using replication::Short;

constexpr auto kPerPeerTimeout = std::chrono::milliseconds(5000);
constexpr auto kNoPeerRetry = std::chrono::milliseconds(200);
constexpr auto kRecentFailure = std::chrono::milliseconds(500);

}  // namespace

struct ChunkFetcher::Timer : asio::steady_timer {
  using asio::steady_timer::steady_timer;
};

ChunkFetcher::ChunkFetcher(asio::io_context& io, FileServer& fs,
                           std::shared_ptr<const PeerLinks> links,
                           std::shared_ptr<StorageWork> storage,
                           std::chrono::milliseconds fetch_timeout)
    : io_(io),
      fs_(fs),
      links_(std::move(links)),
      storage_(std::move(storage)),
      fetch_timeout_(fetch_timeout) {}

void ChunkFetcher::Start(const cas::ChunkId& id, Callback done, std::uint64_t hint) {
  auto job =
      std::make_shared<Job>(Job{id, Clock::now() + fetch_timeout_, {}, std::move(done), hint});
  TryNext(job);
}

void ChunkFetcher::TryNext(const std::shared_ptr<Job>& job) {
  const auto now = Clock::now();
  if (now >= job->deadline) {
    job->done(Err(Code::kUnavailable, "chunk {}: no reachable peer served it within {} ms",
                  cas::Hex(job->id), fetch_timeout_.count()));
    return;
  }
  // Candidates not tried yet, best rendezvous score first.
  std::uint64_t best = 0, best_score = 0;
  bool found = false;
  for (auto& [node, link] : links_->links()) {
    if (std::find(job->tried.begin(), job->tried.end(), node) != job->tried.end()) continue;
    auto s = Score(node, job->id);
    if (!found || s > best_score) best = node, best_score = s, found = true;
  }
  if (!found) {
    // Nobody (left) to ask: reach the members ranked for it, or wait for a peer to
    // (re)connect, until the deadline.
    job->tried.clear();
    waiting_.push_back(job);
    if (reach_.reach) reach_.reach(job->id, job->hint);
    auto timer = std::make_shared<asio::steady_timer>(io_, kNoPeerRetry);
    timer->async_wait([self = shared_from_this(), job, timer](boost::system::error_code) {
      // Unless a peer that connected meanwhile (PeerOpened) took it on already.
      auto it = std::find(self->waiting_.begin(), self->waiting_.end(), job);
      if (it == self->waiting_.end()) return;
      self->waiting_.erase(it);
      self->TryNext(job);
    });
    return;
  }
  job->tried.push_back(best);
  spdlog::debug("chunk {}: asking peer {}", cas::Hex(job->id), Short(best));
  std::uint64_t req = next_request_++;
  auto timer =
      std::make_shared<Timer>(io_, std::min<Clock::duration>(kPerPeerTimeout, job->deadline - now));
  pending_[req] = Pending{job, best, timer};
  if (reach_.used) reach_.used(best);
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
  links_->Find(best)->Send(net::GetChunk{req, job->id});
}

void ChunkFetcher::OnChunkReply(std::uint64_t node, net::ChunkReply&& reply) {
  auto it = pending_.find(reply.request_id);
  if (it == pending_.end() || it->second.node != node) return;  // late or not ours
  auto job = it->second.job;
  it->second.timer->cancel();
  pending_.erase(it);
  if (!reply.found) {
    spdlog::debug("chunk {}: peer {} does not have it", cas::Hex(job->id), Short(node));
    TryNext(job);
    return;
  }
  auto data = std::make_shared<Bytes>(std::move(reply.data));
  storage_->Run(
      [self = shared_from_this(), id = job->id, data] { return self->fs_.StoreChunk(id, *data); },
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

void ChunkFetcher::OnGetChunk(const std::shared_ptr<net::Link>& link, const net::GetChunk& req) {
  storage_->Run([self = shared_from_this(), id = req.id] { return self->fs_.LocalChunk(id); },
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

void ChunkFetcher::PeerOpened() {
  {
    MutexLock lock(failed_mu_);
    failed_.clear();
  }
  // After the link's OnOpen has finished (the peer's own handlers may not be ready before).
  asio::post(io_, [self = shared_from_this()] {
    auto jobs = std::move(self->waiting_);
    self->waiting_.clear();
    for (auto& job : jobs) self->TryNext(job);
  });
}

void ChunkFetcher::PeerClosed(std::uint64_t node) {
  std::vector<std::shared_ptr<Job>> retry;
  for (auto p = pending_.begin(); p != pending_.end();) {
    if (p->second.node == node) {
      p->second.timer->cancel();
      retry.push_back(p->second.job);
      p = pending_.erase(p);
    } else {
      ++p;
    }
  }
  for (auto& job : retry) TryNext(job);
}

void ChunkFetcher::Drop() {
  for (auto& [req, p] : pending_) p.timer->cancel();
  pending_.clear();
  waiting_.clear();
}

std::size_t ChunkFetcher::InFlightTo(std::uint64_t node) const {
  return static_cast<std::size_t>(std::count_if(
      pending_.begin(), pending_.end(), [&](const auto& p) { return p.second.node == node; }));
}

Result<Bytes> ChunkFetcher::Fetch(const cas::ChunkId& id) {
  // A chunk nobody could serve a moment ago fails at once: the kernel retries a failed
  // read-ahead page with a second read right away, which must not wait the whole timeout
  // again. Half a second covers that retry and no more.
  {
    MutexLock lock(failed_mu_);
    auto it = failed_.find(id);
    if (it != failed_.end()) {
      if (Clock::now() - it->second < kRecentFailure) {
        return Err(Code::kUnavailable, "chunk {}: no reachable peer served it (recently)",
                   cas::Hex(id));
      }
      failed_.erase(it);
    }
  }
  auto promise = std::make_shared<std::promise<Result<Bytes>>>();
  auto future = promise->get_future();
  asio::post(io_, [self = shared_from_this(), id, promise] {
    self->Start(id, [promise](Result<Bytes> r) { promise->set_value(std::move(r)); });
  });
  Result<Bytes> result =
      future.wait_for(fetch_timeout_ + std::chrono::seconds(2)) == std::future_status::ready
          ? future.get()
          : Result<Bytes>(
                Err(Code::kTimedOut, "chunk {}: fetch did not finish in time", cas::Hex(id)));
  if (!result.ok()) {
    MutexLock lock(failed_mu_);
    if (failed_.size() > 4096) failed_.clear();
    failed_[id] = Clock::now();
  }
  return result;
}

}  // namespace foreverfs::server
