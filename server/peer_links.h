#pragma once
// PeerLinks: the replicator's bookkeeping of links to peers. At most one link per peer (of two
// dialed at once, both ends keep the same one), the peer each link is, and the peers whose
// link went (why and when; the last 256), for status. The parts of the replicator read it to
// choose whom to ask or tell; only Replicator (the LinkHandler) changes it, on a link's open
// and close. This is where membership (which peers to keep links to) plugs in.
//
// Threading: event thread only, except Count() (any thread). Owns the shared_ptrs of the
// current links (the transport owns the connections).

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "net/transport.h"
#include "server/replication_status.h"

namespace foreverfs::server {

class PeerLinks {
 public:
  using Map = std::map<std::uint64_t, std::shared_ptr<net::Link>>;

  // `self`: this node's id (decides which of two links to one peer stays).
  explicit PeerLinks(std::uint64_t self) : self_(self) {}

  // A link completed its handshake. Two links to one peer (both dialed at once): the one
  // dialed by the lower node id stays, which both ends decide alike. False if `link` is
  // refused; else it is the peer's link from now on, and the one it replaces is closed (its
  // close is then not the current link's: IsCurrent is false for it).
  bool Admit(const std::shared_ptr<net::Link>& link);
  // `link` is the one kept for its peer: messages and closes of any other are ignored.
  bool IsCurrent(const std::shared_ptr<net::Link>& link) const;
  // The current link of a peer closed: the peer goes to the gone list with `reason`.
  void Remove(const std::shared_ptr<net::Link>& link, const std::string& reason);

  // The link to `node`, or null.
  std::shared_ptr<net::Link> Find(std::uint64_t node) const;
  bool Contains(std::uint64_t node) const { return links_.contains(node); }
  const Map& links() const { return links_; }
  std::size_t size() const { return links_.size(); }
  bool empty() const { return links_.empty(); }
  // Connected peers. Any thread.
  std::size_t Count() const { return count_; }
  // Peers whose link closed, by node id (a peer connected again stays here with its last
  // error until it goes again).
  const std::map<std::uint64_t, PeerStatus>& gone() const { return gone_; }

  // The address others can reach a peer at: its advertised one, with our view of its host
  // when it listens on all addresses (":port"); "" if it does not listen.
  static std::string DialableAddr(const net::PeerInfo& p);

 private:
  const std::uint64_t self_;
  Map links_;
  std::atomic<std::size_t> count_{0};  // links_.size()
  std::map<std::uint64_t, PeerStatus> gone_;
};

}  // namespace foreverfs::server
