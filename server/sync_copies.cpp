#include "server/sync_copies.h"

#include <fmt/format.h>
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
using replication::Short;

constexpr auto kMaxHedgeDelay = std::chrono::milliseconds(2000);
constexpr auto kRetry = std::chrono::milliseconds(200);  // no candidate left: look again
constexpr auto kPoll = std::chrono::milliseconds(20);    // serving: wait for the record
constexpr std::size_t kMaxServing = 64;                  // requests served at once
constexpr auto kServeLimit = std::chrono::seconds(120);  // serving: give up after this
constexpr std::size_t kConcurrentFetches = 8;

}  // namespace

struct SyncCopies::Timer : asio::steady_timer {
  using asio::steady_timer::steady_timer;
};

struct SyncCopies::Ask {
  InodeId id = 0;
  model::Version version;
  std::uint64_t seq = 0;
  std::size_t needed = 0;  // peers, this node not counted
  std::size_t hedges = 0;  // peers asked beyond `needed` because one was slow
  std::vector<std::uint64_t> preferred;
  std::chrono::milliseconds timeout{0};
  std::set<std::uint64_t> confirmed, pending;
  std::map<std::uint64_t, std::string> failed;
  std::promise<Status> promise;
  bool done = false;
  std::shared_ptr<Timer> deadline, retry, hedge;
};

struct SyncCopies::Serve {
  std::shared_ptr<net::Link> link;
  net::DurableRequest req;
  std::uint64_t from = 0;
  Clock::time_point deadline;
  bool have_record = false;
  std::vector<cas::ChunkId> missing;
  std::size_t next = 0, in_flight = 0;
  bool syncing = false;
  bool answered = false;
};

SyncCopies::SyncCopies(asio::io_context& io, FileServer& fs, std::shared_ptr<const PeerLinks> links,
                       std::shared_ptr<ChunkFetcher> fetcher, std::shared_ptr<StorageWork> storage,
                       std::function<std::vector<std::uint64_t>()> candidates,
                       std::function<std::vector<std::uint64_t>()> members)
    : io_(io),
      fs_(fs),
      links_(std::move(links)),
      fetcher_(std::move(fetcher)),
      storage_(std::move(storage)),
      candidates_(std::move(candidates)),
      members_(std::move(members)) {}

Status SyncCopies::Wait(InodeId id, const model::Version& version, std::uint64_t seq,
                        std::size_t copies, std::chrono::milliseconds timeout,
                        std::vector<std::uint64_t> preferred) {
  if (copies <= 1) return Ok();
  auto ask = std::make_shared<Ask>();
  ask->id = id;
  ask->version = version;
  ask->seq = seq;
  ask->needed = copies - 1;
  ask->timeout = timeout;
  ask->preferred = std::move(preferred);
  auto done = ask->promise.get_future();
  asio::post(io_, [self = shared_from_this(), ask] { self->Start(ask); });
  if (done.wait_for(timeout + std::chrono::seconds(2)) != std::future_status::ready) {
    return Err(Code::kIOError, "inode {:016x}: no answer about durable copies within {} ms", id,
               timeout.count());
  }
  return done.get();
}

void SyncCopies::Start(const std::shared_ptr<Ask>& ask) {
  ask->deadline = std::make_shared<Timer>(io_, ask->timeout);
  ask->deadline->async_wait([self = shared_from_this(), ask](boost::system::error_code ec) {
    if (ec || ask->done) return;
    std::string missing =
        Unconfirmed(ask->confirmed, ask->pending, ask->failed,
                    self->members_ ? self->members_() : std::vector<std::uint64_t>{},
                    [&](std::uint64_t n) { return self->links_->Find(n) != nullptr; });
    if (missing.empty()) missing = " none connected that applies this node's changes";
    self->Finish(ask, Err(Code::kIOError,
                          "inode {:016x}: durable on {} of {} members after {} ms; not confirmed "
                          "by:{}",
                          ask->id, ask->confirmed.size() + 1, ask->needed + 1, ask->timeout.count(),
                          missing));
  });
  AskMore(ask);
  ArmHedge(ask);
}

std::string Unconfirmed(const std::set<std::uint64_t>& confirmed,
                        const std::set<std::uint64_t>& pending,
                        const std::map<std::uint64_t, std::string>& failed,
                        const std::vector<std::uint64_t>& members,
                        const std::function<bool(std::uint64_t)>& linked) {
  std::string out;
  for (std::uint64_t n : pending) out += fmt::format(" {} (no answer)", Short(n));
  for (const auto& [n, why] : failed) out += fmt::format(" {} ({})", Short(n), why);
  std::size_t unasked = 0;
  for (std::uint64_t n : members) {
    if (confirmed.contains(n) || pending.contains(n) || failed.contains(n)) continue;
    if (++unasked <= kNamedUnasked) {
      out += fmt::format(" {} ({})", Short(n),
                         linked(n) ? "linked, not applying this node's changes" : "not connected");
    }
  }
  if (unasked > kNamedUnasked)
    out += fmt::format(" and {} more not asked", unasked - kNamedUnasked);
  return out;
}

void SyncCopies::ArmHedge(const std::shared_ptr<Ask>& ask) {
  const auto delay = std::min<std::chrono::milliseconds>(ask->timeout / 4, kMaxHedgeDelay);
  ask->hedge = std::make_shared<Timer>(io_, delay);
  ask->hedge->async_wait([self = shared_from_this(), ask](boost::system::error_code ec) {
    if (ec || ask->done || ask->pending.empty()) return;
    // A peer is slow: ask one more beside it (the first `needed` confirmations count).
    ++ask->hedges;
    self->AskMore(ask);
    self->ArmHedge(ask);
  });
}

void SyncCopies::AskMore(const std::shared_ptr<Ask>& ask) {
  if (ask->done) return;
  // The members placement ranks for the file first, then the others that apply our feed.
  auto order = ask->preferred;
  for (std::uint64_t node : candidates_()) {
    if (std::find(order.begin(), order.end(), node) == order.end()) order.push_back(node);
  }
  const std::set<std::uint64_t> allowed = [&] {
    auto c = candidates_();
    return std::set<std::uint64_t>(c.begin(), c.end());
  }();
  const std::size_t want = ask->needed + ask->hedges;
  for (std::uint64_t node : order) {
    if (ask->confirmed.size() >= ask->needed) return;
    if (ask->confirmed.size() + ask->pending.size() >= want) return;
    if (!allowed.contains(node)) continue;
    if (ask->confirmed.contains(node) || ask->pending.contains(node) ||
        ask->failed.contains(node)) {
      continue;
    }
    auto link = links_->Find(node);
    if (!link) continue;
    const std::uint64_t req = next_request_++;
    asked_[req] = {ask, node};
    ask->pending.insert(node);
    link->Send(net::DurableRequest{req, ask->seq, ask->id, ask->version});
  }
  if (ask->confirmed.size() + ask->pending.size() >= want) return;
  // Too few peers now: look again shortly (one that failed may be asked again then).
  if (ask->retry) return;
  ask->retry = std::make_shared<Timer>(io_, kRetry);
  ask->retry->async_wait([self = shared_from_this(), ask](boost::system::error_code ec) {
    if (ec || ask->done) return;
    ask->retry.reset();
    ask->failed.clear();
    self->AskMore(ask);
  });
}

void SyncCopies::OnReply(std::uint64_t node, const net::DurableReply& reply) {
  auto it = asked_.find(reply.request_id);
  if (it == asked_.end() || it->second.second != node) return;  // late, or not ours
  auto ask = it->second.first;
  asked_.erase(it);
  ask->pending.erase(node);
  if (reply.ok) {
    ask->confirmed.insert(node);
    if (ask->confirmed.size() >= ask->needed) {
      Finish(ask, Ok());
      return;
    }
  } else {
    ask->failed[node] = reply.error;
    spdlog::warn("inode {:016x}: peer {} could not make it durable: {}", ask->id, Short(node),
                 reply.error);
  }
  AskMore(ask);
}

void SyncCopies::PeerClosed(std::uint64_t node) {
  std::vector<std::shared_ptr<Ask>> retry;
  for (auto it = asked_.begin(); it != asked_.end();) {
    if (it->second.second == node) {
      auto ask = it->second.first;
      ask->pending.erase(node);
      ask->failed[node] = "its link closed";
      retry.push_back(ask);
      it = asked_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& ask : retry) AskMore(ask);
}

void SyncCopies::Finish(const std::shared_ptr<Ask>& ask, Status s) {
  if (ask->done) return;
  ask->done = true;
  if (ask->deadline) ask->deadline->cancel();
  if (ask->retry) ask->retry->cancel();
  if (ask->hedge) ask->hedge->cancel();
  std::erase_if(asked_, [&](const auto& e) { return e.second.first == ask; });
  if (!s.ok()) spdlog::error("{}", s.message());
  ask->promise.set_value(std::move(s));
}

void SyncCopies::OnRequest(const std::shared_ptr<net::Link>& link, const net::DurableRequest& req) {
  if (serving_ >= kMaxServing) {
    link->Send(net::DurableReply{req.request_id, false,
                                 fmt::format("busy: {} requests served already", serving_)});
    return;
  }
  ++serving_;
  auto serve = std::make_shared<Serve>();
  serve->link = link;
  serve->req = req;
  serve->from = link->Peer().node_id;
  serve->deadline = Clock::now() + kServeLimit;
  Step(serve);
}

void SyncCopies::Step(const std::shared_ptr<Serve>& serve) {
  if (serve->answered || serve->syncing) return;
  if (!links_->IsCurrent(serve->link)) {  // the asker went: nobody waits for the answer
    Answer(serve, Err(Code::kUnavailable, "link closed"));
    return;
  }
  if (Clock::now() >= serve->deadline) {
    Answer(serve,
           Err(Code::kTimedOut, "its change {} did not arrive here in time", serve->req.seq));
    return;
  }
  if (!serve->have_record) {
    if (fs_.ns().Cursor(serve->from) < serve->req.seq) {
      // Not applied yet: the feed brings it.
      auto t = std::make_shared<Timer>(io_, kPoll);
      t->async_wait(
          [self = shared_from_this(), serve, t](boost::system::error_code) { self->Step(serve); });
      return;
    }
    auto rec = fs_.ns().GetInodeOrTombstone(serve->req.inode);
    if (!rec.ok()) {
      Answer(serve, Err(Code::kNotFound, "inode {:016x} is not here", serve->req.inode));
      return;
    }
    if (rec->version < serve->req.version) {
      Answer(serve,
             Err(Code::kInvalid, "inode {:016x}: its version was refused here", serve->req.inode));
      return;
    }
    if (rec->version != serve->req.version && !rec->deleted) {
      // A newer version won here. It stands for the asked one only if it descends from it (its
      // content clock has the asked write); a concurrent one left the asked content as a
      // conflict copy, which this request does not cover.
      const auto& v = serve->req.version;
      const bool descends = std::any_of(
          rec->content_clock.begin(), rec->content_clock.end(),
          [&](const model::ClockEntry& c) { return c.node == v.node && c.hlc >= v.hlc; });
      if (!descends) {
        Answer(serve, Err(Code::kInvalid,
                          "inode {:016x}: a concurrent version won here; the asked one is a "
                          "conflict copy",
                          serve->req.inode));
        return;
      }
    }
    serve->have_record = true;
    if (!rec->deleted) {
      for (const auto& [index, id] : rec->manifest) {
        if (!fs_.HasChunk(id)) serve->missing.push_back(id);
      }
    }
  }
  while (serve->in_flight < kConcurrentFetches && serve->next < serve->missing.size()) {
    const cas::ChunkId id = serve->missing[serve->next++];
    ++serve->in_flight;
    fetcher_->Start(
        id,
        [self = shared_from_this(), serve](Result<Bytes> r) {
          --serve->in_flight;
          if (!r.ok()) {
            self->Answer(serve, r.status());
            return;
          }
          self->Step(serve);
        },
        serve->from);
  }
  if (serve->in_flight > 0 || serve->next < serve->missing.size()) return;
  // Everything is here: make it durable.
  serve->syncing = true;
  storage_->Run([self = shared_from_this()] { return self->fs_.Sync(); },
                [self = shared_from_this(), serve](Status s) { self->Answer(serve, s); });
}

void SyncCopies::Answer(const std::shared_ptr<Serve>& serve, Status s) {
  if (serve->answered) return;
  serve->answered = true;
  --serving_;
  std::string error = s.ok() ? std::string() : s.message();
  if (error.size() > net::kMaxErrorSize) error.resize(net::kMaxErrorSize);
  serve->link->Send(net::DurableReply{serve->req.request_id, s.ok(), std::move(error)});
}

}  // namespace foreverfs::server
