#include "net/memory_transport.h"

#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
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

  asio::io_context& io_;
  bool stopped_ = false;
  std::set<std::shared_ptr<Pipe>> pipes_;  // open links
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
};

void MemoryLink::Send(Message m) {
  auto pipe = pipe_.lock();
  if (!pipe || pipe->closed) return;
  Bytes frame = EncodeFrame(m);
  asio::post(pipe->io,
             [pipe, to = 1 - side_, frame = std::move(frame)] { pipe->Deliver(to, frame); });
}

void MemoryLink::Close(std::string reason) {
  if (auto pipe = pipe_.lock()) pipe->Close(reason);
}

}  // namespace memory_detail

void MemoryNetwork::Impl::Open(std::uint64_t node_a, LinkHandler& a, std::uint64_t node_b,
                               LinkHandler& b) {
  if (stopped_) return;
  auto pipe = std::make_shared<Pipe>(io_, weak_from_this());
  pipe->nodes[0] = node_a;
  pipe->nodes[1] = node_b;
  pipe->handlers[0] = &a;
  pipe->handlers[1] = &b;
  pipe->links[0] = std::make_shared<MemoryLink>(
      pipe, 0, PeerInfo{node_b, MemAddr(node_b), MemAddr(node_b), /*outbound=*/true});
  pipe->links[1] = std::make_shared<MemoryLink>(
      pipe, 1, PeerInfo{node_a, MemAddr(node_a), MemAddr(node_a), /*outbound=*/false});
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

}  // namespace foreverfs::net
