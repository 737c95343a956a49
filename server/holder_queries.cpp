#include "server/holder_queries.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <future>
#include <set>

#include "server/replication_common.h"

namespace foreverfs::server {

namespace asio = boost::asio;
using replication::Short;

// A query in progress; event thread (ids and the report's local part are set before it is
// posted there).
struct HolderQueries::Query {
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

HolderQueries::HolderQueries(asio::io_context& io, std::shared_ptr<const PeerLinks> links,
                             std::shared_ptr<StorageWork> storage,
                             std::function<bool(const cas::ChunkId&)> has_chunk)
    : io_(io),
      links_(std::move(links)),
      storage_(std::move(storage)),
      has_chunk_(std::move(has_chunk)) {}

HolderReport HolderQueries::Holders(const std::vector<cas::ChunkId>& ids,
                                    std::chrono::milliseconds timeout) {
  auto q = std::make_shared<Query>();
  std::set<cas::ChunkId> distinct;
  for (const auto& id : ids) {
    if (id != cas::kHoleId && distinct.insert(id).second) q->ids.push_back(id);
  }
  q->report.chunks = q->ids.size();
  q->report.local = std::all_of(q->ids.begin(), q->ids.end(), has_chunk_);
  q->promise = std::make_shared<std::promise<HolderReport>>();
  auto future = q->promise->get_future();
  asio::post(io_, [self = shared_from_this(), q, timeout] { self->Start(q, timeout); });
  if (future.wait_for(timeout + std::chrono::seconds(1)) != std::future_status::ready) {
    // The event thread is stuck or stopped: report what is known locally.
    HolderReport r;
    r.chunks = q->ids.size();
    r.local = q->report.local;
    return r;
  }
  return future.get();
}

void HolderQueries::Start(const std::shared_ptr<Query>& q, std::chrono::milliseconds timeout) {
  for (auto& [node, link] : links_->links()) {
    auto& answer = q->answers[node];
    answer.addr = PeerLinks::DialableAddr(link->Peer());
    if (answer.addr.empty()) answer.addr = link->Peer().remote;
    ++q->report.asked;
    // At least one batch, so that an empty list still asks (every peer that answers holds
    // all of nothing).
    for (std::size_t off = 0; off == 0 || off < q->ids.size(); off += net::kMaxHaveChunksQuery) {
      const std::size_t n = std::min<std::size_t>(net::kMaxHaveChunksQuery, q->ids.size() - off);
      const std::uint64_t req = next_request_++;
      requests_[req] = Request{q, node, off, n};
      ++answer.pending;
      net::HaveChunks msg{
          req, std::vector<cas::ChunkId>(q->ids.begin() + off, q->ids.begin() + off + n)};
      link->Send(std::move(msg));
    }
  }
  q->timer = std::make_shared<asio::steady_timer>(io_, timeout);
  q->timer->async_wait([self = shared_from_this(), q](boost::system::error_code ec) {
    if (!ec) self->Finish(q);
  });
  MaybeFinish(q);
}

void HolderQueries::MaybeFinish(const std::shared_ptr<Query>& q) {
  for (auto& [node, a] : q->answers) {
    if (a.pending > 0) return;
  }
  Finish(q);
}

void HolderQueries::Finish(const std::shared_ptr<Query>& q) {
  if (q->done) return;
  q->done = true;
  if (q->timer) q->timer->cancel();
  for (auto it = requests_.begin(); it != requests_.end();) {
    it = it->second.query == q ? requests_.erase(it) : std::next(it);
  }
  for (auto& [node, a] : q->answers) {
    if (a.pending > 0) continue;
    ++q->report.answered;
    if (a.has_all) q->report.peers.push_back({node, a.addr});
  }
  q->promise->set_value(q->report);
}

// An Ask in progress; event thread.
struct HolderQueries::AskQuery {
  std::map<std::uint64_t, std::vector<cas::ChunkId>> ids;
  Answers answers;                              // bits so far, for nodes still counted
  std::map<std::uint64_t, std::size_t> pending;  // batches not answered yet
  std::function<void(Answers)> done;
  std::shared_ptr<asio::steady_timer> timer;
  bool finished = false;
};

void HolderQueries::Ask(std::map<std::uint64_t, std::vector<cas::ChunkId>> asks,
                        std::chrono::milliseconds timeout, std::function<void(Answers)> done) {
  auto q = std::make_shared<AskQuery>();
  q->ids = std::move(asks);
  q->done = std::move(done);
  for (const auto& [node, ids] : q->ids) {
    auto link = links_->Find(node);
    if (!link) continue;  // not answering
    q->answers[node].assign(ids.size(), false);
    auto& pending = q->pending[node];
    for (std::size_t off = 0; off == 0 || off < ids.size(); off += net::kMaxHaveChunksQuery) {
      const std::size_t n = std::min<std::size_t>(net::kMaxHaveChunksQuery, ids.size() - off);
      const std::uint64_t req = next_request_++;
      ask_requests_[req] = AskRequest{q, node, off, n};
      ++pending;
      link->Send(net::HaveChunks{
          req, std::vector<cas::ChunkId>(ids.begin() + static_cast<std::ptrdiff_t>(off),
                                         ids.begin() + static_cast<std::ptrdiff_t>(off + n))});
    }
  }
  q->timer = std::make_shared<asio::steady_timer>(io_, timeout);
  q->timer->async_wait([self = shared_from_this(), q](boost::system::error_code ec) {
    if (!ec) self->FinishAsk(q);
  });
  MaybeFinishAsk(q);
}

void HolderQueries::MaybeFinishAsk(const std::shared_ptr<AskQuery>& q) {
  for (const auto& [node, n] : q->pending) {
    if (n > 0) return;
  }
  FinishAsk(q);
}

void HolderQueries::FinishAsk(const std::shared_ptr<AskQuery>& q) {
  if (q->finished) return;
  q->finished = true;
  if (q->timer) q->timer->cancel();
  for (auto it = ask_requests_.begin(); it != ask_requests_.end();) {
    it = it->second.query == q ? ask_requests_.erase(it) : std::next(it);
  }
  for (const auto& [node, n] : q->pending) {
    if (n > 0) q->answers.erase(node);  // did not answer in time
  }
  auto done = std::move(q->done);
  done(std::move(q->answers));
}

void HolderQueries::OnHaveReply(std::uint64_t node, const net::HaveChunksReply& reply) {
  if (auto a = ask_requests_.find(reply.request_id); a != ask_requests_.end()) {
    if (a->second.node != node) return;  // not its to answer
    AskRequest req = a->second;
    ask_requests_.erase(a);
    auto bits = req.query->answers.find(node);
    if (bits == req.query->answers.end()) return;
    if (reply.count != req.count) {
      spdlog::warn("peer {}: HaveChunks reply for {} ids, asked {}; counted as not answering",
                   Short(node), reply.count, req.count);
      req.query->answers.erase(bits);
      req.query->pending.erase(node);
    } else {
      for (std::size_t i = 0; i < req.count; ++i) bits->second[req.offset + i] = reply.Has(i);
      --req.query->pending[node];
    }
    MaybeFinishAsk(req.query);
    return;
  }
  auto it = requests_.find(reply.request_id);
  if (it == requests_.end() || it->second.node != node) return;  // late or not ours
  Request req = it->second;
  requests_.erase(it);
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
  MaybeFinish(req.query);
}

void HolderQueries::OnHaveChunks(const std::shared_ptr<net::Link>& link, net::HaveChunks&& q) {
  auto ids = std::make_shared<std::vector<cas::ChunkId>>(std::move(q.ids));
  storage_->Run(
      [self = shared_from_this(), ids, req = q.request_id] {
        auto reply = net::EmptyHaveReply(req, static_cast<std::uint32_t>(ids->size()));
        for (std::size_t i = 0; i < ids->size(); ++i) {
          if (self->has_chunk_((*ids)[i])) reply.Set(i);
        }
        return reply;
      },
      [link](net::HaveChunksReply reply) { link->Send(std::move(reply)); });
}

namespace {

// Removes the requests to `node` from `requests` and returns their queries.
template <typename Requests>
auto TakeQueriesOf(Requests& requests, std::uint64_t node) {
  std::vector<decltype(requests.begin()->second.query)> queries;
  for (auto r = requests.begin(); r != requests.end();) {
    if (r->second.node == node) {
      queries.push_back(r->second.query);
      r = requests.erase(r);
    } else {
      ++r;
    }
  }
  return queries;
}

}  // namespace

void HolderQueries::PeerClosed(std::uint64_t node) {
  for (auto& q : TakeQueriesOf(requests_, node)) {
    q->answers.erase(node);
    MaybeFinish(q);
  }
  for (auto& q : TakeQueriesOf(ask_requests_, node)) {
    q->answers.erase(node);
    q->pending.erase(node);
    MaybeFinishAsk(q);
  }
}

}  // namespace foreverfs::server
