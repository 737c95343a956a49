#pragma once
// PeerGossip: full-mesh discovery of peers. When a link opens, the new peer is told every
// other connected peer's dialable address, and every other peer is told the new one's (Peers);
// a Peers message names nodes to dial (through the dialer, the transport's AddPeer) and to
// record as members (a node our peer links with may hold what we delete). To be replaced by
// membership gossip; it only reads PeerLinks.
//
// Threading: event thread only. Owns the dialer.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "net/transport.h"
#include "server/namespace_db.h"
#include "server/peer_links.h"

namespace foreverfs::server {

class PeerGossip {
 public:
  PeerGossip(NamespaceDb& ns, std::shared_ptr<const PeerLinks> links);

  // Where learned peer addresses go (the transport's AddPeer).
  void SetDialer(std::function<void(const std::string&)> dial) { dial_ = std::move(dial); }
  // PeerLinks admitted `link`: it and every other peer learn of each other.
  void Opened(const std::shared_ptr<net::Link>& link);
  void OnPeers(const net::Peers& msg);

 private:
  // Tells `to` the dialable address of every other connected peer.
  void SendPeers(const std::shared_ptr<net::Link>& to);

  NamespaceDb& ns_;
  const std::shared_ptr<const PeerLinks> links_;
  std::function<void(const std::string&)> dial_;
};

}  // namespace foreverfs::server
