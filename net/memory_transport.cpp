#include "net/memory_transport.h"

#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <deque>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace foreverfs::net {
namespace asio = boost::asio;

// Not in an anonymous namespace: MemoryNetwork::Impl, which has external linkage, holds them.
namespace memory_detail {

std::string MemAddr(std::uint64_t node) { return "mem:" + std::to_string(node); }

struct Pipe;

class MemoryLink final : public Link {
 public:
  MemoryLink(std::weak_ptr<Pipe> pipe, int side, PeerInfo peer)
      : pipe_(std::move(pipe)), side_(side), peer_(std::move(peer)) {}

  void Send(Message m) override;
  void Close(std::string reason) override;
  const PeerInfo& Peer() const override { return peer_; }
  std::size_t QueuedBytes() const override { return 0; }
  const Traffic& Counters() const override { return traffic_; }
  Traffic traffic_;

 private:
  std::weak_ptr<Pipe> pipe_;
  const int side_;
  const PeerInfo peer_;
};

}  // namespace memory_detail

using memory_detail::MemAddr;
using memory_detail::MemoryLink;
using memory_detail::Pipe;

struct MemoryNetwork::Impl : std::enable_shared_from_this<MemoryNetwork::Impl> {
  explicit Impl(asio::io_context& io) : io_(io) {}

  void Open(std::uint64_t node_a, LinkHandler& a, std::uint64_t node_b, LinkHandler& b);
  void Disconnect(std::uint64_t node_a, std::uint64_t node_b);
  // A fault closed `pipe`: open the pair again later, if faults say so.
  void Redial(const Pipe& pipe);
  bool Blocked(std::uint64_t a, std::uint64_t b) const {
    return partitions_.contains({std::min(a, b), std::max(a, b)});
  }

  asio::io_context& io_;
  bool stopped_ = false;
  std::set<std::shared_ptr<Pipe>> pipes_;  // open links
  std::optional<Faults> faults_;
  std::mt19937_64 rng_;
  std::uint64_t dropped_ = 0;
  std::set<std::pair<std::uint64_t, std::uint64_t>> partitions_;  // (smaller, larger) node id
};

namespace memory_detail {

// Both ends of one link. Ownership: the network holds open pipes, a pipe holds its two links,
// a link points back weakly; posted deliveries hold the pipe until they ran.
struct Pipe : std::enable_shared_from_this<Pipe> {
  Pipe(asio::io_context& io, std::weak_ptr<MemoryNetwork::Impl> net)
      : io(io), net(std::move(net)) {}

  // Event thread: decodes a frame sent towards side `to` and hands it to that side's handler.
  void Deliver(int to, const Bytes& frame) {
    if (closed) return;
    ByteSpan all(frame);
    if (all.size() < kFrameHeaderSize) return Close("frame shorter than its header");
    auto header = DecodeFrameHeader(all.first(kFrameHeaderSize));
    if (!header.ok()) return Close(header.status().message());
    if (std::size_t{header->length} + 4 != all.size()) {
      return Close(fmt::format("frame length {} does not match the {} bytes sent", header->length,
                               all.size() - 4));
    }
    links[to]->traffic_.In(all.size());
    auto msg = DecodePayload(header->type, all.subspan(kFrameHeaderSize));
    if (!msg.ok()) return Close(msg.status().message());
    handlers[to]->OnMessage(links[to], std::move(*msg));
  }

  // Event thread: closes both ends once; OnClose follows, posted, on each side that accepted.
  void Close(const std::string& reason) {
    if (closed) return;
    closed = true;
    if (auto n = net.lock()) n->pipes_.erase(shared_from_this());
    spdlog::debug("memory link {} <-> {} closed: {}", nodes[0], nodes[1], reason);
    asio::post(io, [self = shared_from_this(), reason] {
      for (int side = 0; side < 2; ++side) {
        if (self->accepted[side]) self->handlers[side]->OnClose(self->links[side], reason);
      }
    });
  }

  asio::io_context& io;
  std::weak_ptr<MemoryNetwork::Impl> net;
  std::uint64_t nodes[2] = {0, 0};
  LinkHandler* handlers[2] = {nullptr, nullptr};
  std::shared_ptr<MemoryLink> links[2];
  bool accepted[2] = {false, false};
  bool closed = false;
  std::optional<MemoryNetwork::Faults> faults;  // copied from the network when opened
  // Frames held back by an injected delay, towards each side, in the order sent.
  std::deque<std::pair<std::chrono::steady_clock::time_point, Bytes>> delayed[2];

  // Event thread: delivers delayed frames towards `to` as they come due, in order.
  void ArmDelayed(int to) {
    auto timer = std::make_shared<asio::steady_timer>(io, delayed[to].front().first);
    timer->async_wait([self = shared_from_this(), to, timer](const boost::system::error_code&) {
      auto& q = self->delayed[to];
      while (!q.empty() && q.front().first <= std::chrono::steady_clock::now()) {
        Bytes frame = std::move(q.front().second);
        q.pop_front();
        self->Deliver(to, frame);
      }
      if (!q.empty() && !self->closed) self->ArmDelayed(to);
    });
  }
};

void MemoryLink::Send(Message m) {
  auto pipe = pipe_.lock();
  if (!pipe || pipe->closed) return;
  Bytes frame = EncodeFrame(m);
  traffic_.Out(frame.size());
  const int to = 1 - side_;
  auto net = pipe->net.lock();
  if (!pipe->faults || !net) {
    asio::post(pipe->io, [pipe, to, frame = std::move(frame)] { pipe->Deliver(to, frame); });
    return;
  }
  const MemoryNetwork::Faults& f = *pipe->faults;
  if (std::uniform_real_distribution<double>(0, 1)(net->rng_) < f.drop) {
    ++net->dropped_;
    pipe->Close("injected fault: connection reset");
    net->Redial(*pipe);
    return;
  }
  const auto delay = std::chrono::milliseconds(
      std::uniform_int_distribution<std::int64_t>(0, f.max_delay.count())(net->rng_));
  auto& q = pipe->delayed[to];
  const auto due = std::max(q.empty() ? std::chrono::steady_clock::time_point{} : q.back().first,
                            std::chrono::steady_clock::now() + delay);
  q.emplace_back(due, std::move(frame));
  if (q.size() == 1) pipe->ArmDelayed(to);
}

void MemoryLink::Close(std::string reason) {
  if (auto pipe = pipe_.lock()) pipe->Close(reason);
}

}  // namespace memory_detail

void MemoryNetwork::Impl::Open(std::uint64_t node_a, LinkHandler& a, std::uint64_t node_b,
                               LinkHandler& b) {
  if (stopped_ || Blocked(node_a, node_b)) return;
  auto pipe = std::make_shared<Pipe>(io_, weak_from_this());
  pipe->nodes[0] = node_a;
  pipe->nodes[1] = node_b;
  pipe->handlers[0] = &a;
  pipe->handlers[1] = &b;
  pipe->faults = faults_;
  const auto now = std::chrono::system_clock::now();
  pipe->links[0] =
      std::make_shared<MemoryLink>(pipe, 0,
                                   PeerInfo{node_b, node_b, MemAddr(node_b), MemAddr(node_b),
                                            /*outbound=*/true, kProtocolVersion, now});
  pipe->links[1] =
      std::make_shared<MemoryLink>(pipe, 1,
                                   PeerInfo{node_a, node_a, MemAddr(node_a), MemAddr(node_a),
                                            /*outbound=*/false, kProtocolVersion, now});
  pipes_.insert(pipe);
  pipe->accepted[0] = a.OnOpen(pipe->links[0]);
  if (pipe->accepted[0] && !pipe->closed) pipe->accepted[1] = b.OnOpen(pipe->links[1]);
  if (!pipe->accepted[0] || !pipe->accepted[1]) pipe->Close("link refused");
}

void MemoryNetwork::Impl::Disconnect(std::uint64_t node_a, std::uint64_t node_b) {
  std::vector<std::shared_ptr<Pipe>> matching;
  for (const auto& p : pipes_) {
    if ((p->nodes[0] == node_a && p->nodes[1] == node_b) ||
        (p->nodes[0] == node_b && p->nodes[1] == node_a)) {
      matching.push_back(p);
    }
  }
  for (const auto& p : matching) p->Close("disconnected");
}

void MemoryNetwork::Impl::Redial(const Pipe& pipe) {
  if (stopped_ || !pipe.faults || pipe.faults->redial_after.count() == 0) return;
  auto timer = std::make_shared<asio::steady_timer>(io_, pipe.faults->redial_after);
  timer->async_wait([self = shared_from_this(), timer, a = pipe.nodes[0], b = pipe.nodes[1],
                     ha = pipe.handlers[0],
                     hb = pipe.handlers[1]](const boost::system::error_code&) {
    if (!self->stopped_) self->Open(a, *ha, b, *hb);
  });
}

MemoryNetwork::MemoryNetwork(asio::io_context& io) : impl_(std::make_shared<Impl>(io)) {}

MemoryNetwork::~MemoryNetwork() {
  impl_->stopped_ = true;
  for (const auto& p : impl_->pipes_) p->closed = true;
  impl_->pipes_.clear();
}

void MemoryNetwork::Connect(std::uint64_t node_a, LinkHandler& a, std::uint64_t node_b,
                            LinkHandler& b) {
  asio::post(impl_->io_,
             [impl = impl_, node_a, &a, node_b, &b] { impl->Open(node_a, a, node_b, b); });
}

void MemoryNetwork::Disconnect(std::uint64_t node_a, std::uint64_t node_b) {
  asio::post(impl_->io_, [impl = impl_, node_a, node_b] { impl->Disconnect(node_a, node_b); });
}

std::size_t MemoryNetwork::LinkCount() const { return impl_->pipes_.size(); }

void MemoryNetwork::SetFaults(Faults faults) {
  asio::post(impl_->io_, [impl = impl_, faults] {
    impl->faults_ = faults;
    impl->rng_.seed(faults.seed);
  });
}

void MemoryNetwork::Partition(std::uint64_t node_a, std::uint64_t node_b) {
  asio::post(impl_->io_, [impl = impl_, node_a, node_b] {
    impl->partitions_.insert({std::min(node_a, node_b), std::max(node_a, node_b)});
    impl->Disconnect(node_a, node_b);
  });
}

void MemoryNetwork::Heal(std::uint64_t node_a, std::uint64_t node_b) {
  asio::post(impl_->io_, [impl = impl_, node_a, node_b] {
    impl->partitions_.erase({std::min(node_a, node_b), std::max(node_a, node_b)});
  });
}

std::uint64_t MemoryNetwork::Dropped() const { return impl_->dropped_; }

}  // namespace foreverfs::net
