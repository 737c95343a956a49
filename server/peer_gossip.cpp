#include "server/peer_gossip.h"

#include "server/replication_common.h"

namespace foreverfs::server {

PeerGossip::PeerGossip(NamespaceDb& ns, std::shared_ptr<const PeerLinks> links)
    : ns_(ns), links_(std::move(links)) {}

void PeerGossip::Opened(const std::shared_ptr<net::Link>& link) {
  SendPeers(link);
  const std::uint64_t new_node = link->Peer().node_id;
  for (auto& [node, other] : links_->links()) {
    if (node != new_node) SendPeers(other);
  }
}

void PeerGossip::SendPeers(const std::shared_ptr<net::Link>& to) {
  net::Peers msg;
  for (auto& [node, link] : links_->links()) {
    if (link == to) continue;
    auto addr = PeerLinks::DialableAddr(link->Peer());
    if (!addr.empty()) msg.peers.push_back({node, addr});
  }
  if (!msg.peers.empty()) to->Send(std::move(msg));
}

void PeerGossip::OnPeers(const net::Peers& msg) {
  const std::uint64_t self = ns_.node_id();
  for (const auto& p : msg.peers) {
    // A node our peer links with may hold what we delete: a member too (README, "Tombstones").
    if (p.node_id != self) replication::AddMember(ns_, p.node_id);
    if (p.node_id != self && !links_->Contains(p.node_id) && dial_) dial_(p.addr);
  }
}

}  // namespace foreverfs::server
