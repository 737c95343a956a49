#pragma once
// MemberLinks: the cluster membership (server/membership.h, doc/membership.md) on live links.
// It runs the Membership state machine on the event thread (its timer, the messages it sends
// and receives), keeps the transport dialing exactly the long-lived links of the link plan
// (at most --max-links), opens short-lived connections to members it must reach without one
// (a probe, a join) and closes them once idle, persists the member list in meta.db, and tells
// the rest of the replicator which links are long-lived (the change feed runs on those) and
// which members placement ranks, with their weights (capacities).
//
// Threading: event thread only, except Members() and PlacementMembers() (any thread: they
// read a copy taken after every change). Owns the Membership and its timer; held by
// shared_ptr (the timer keeps it alive).

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "base/mutex.h"
#include "cas/chunk_store.h"
#include "net/transport.h"
#include "server/membership.h"
#include "server/namespace_db.h"
#include "server/peer_links.h"
#include "server/placement.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace foreverfs::server {

// What MemberLinks asks of the transport (TcpTransport::AddPeer / RemovePeer).
struct Dialer {
  std::function<void(const std::string& addr)> add;
  std::function<void(const std::string& addr, const std::string& reason)> remove;
};

struct MemberLinksOptions {
  std::size_t max_links = 8;
  std::chrono::milliseconds down_after{15 * 60 * 1000};
  std::chrono::milliseconds protocol_period{1000};
  // A short-lived link (its peer not in our plan) closes after this long without a membership
  // message sent or received on it; a message queued for an address we cannot reach is
  // dropped after this long.
  std::chrono::milliseconds short_idle{3000};
  // This node's placement weight (--capacity: Placement::WeightOf), announced with its
  // membership entry; clamped to 1..Placement::kMaxWeight.
  std::uint32_t weight = 1;
};

class MemberLinks : public std::enable_shared_from_this<MemberLinks> {
 public:
  MemberLinks(boost::asio::io_context& io, NamespaceDb& ns, std::shared_ptr<const PeerLinks> links,
              MemberLinksOptions options);
  ~MemberLinks();

  // Starts the membership: restores the persisted list, joins through `seeds` (--peer) and
  // arms the timer. `self_addr` is what others dial ("host:port"). Event thread.
  void Start(const std::string& self_addr, const std::vector<std::string>& seeds, Dialer dialer);
  // Persists the list and stops the timer. Event thread.
  void Stop();

  // PeerLinks admitted `link`. True if it is a long-lived link (its peer is in the plan): the
  // change feed should run on it.
  bool Opened(const std::shared_ptr<net::Link>& link);
  void Closed(std::uint64_t node);
  // A membership message (MemberPing, MemberAck, MemberPingReq, MemberSync) on a link.
  void OnMessage(std::uint64_t from, const net::Message& m);
  // Whether the link to `node` is long-lived (in the plan now).
  bool Planned(std::uint64_t node) const { return planned_.contains(node); }

  // Called when a link turns long-lived (feed starts) or short-lived (feed stops).
  void SetPlanObserver(std::function<void(std::uint64_t node, bool planned)> fn) {
    plan_observer_ = std::move(fn);
  }

  // Opens short-lived links to the `n` members ranked highest for chunk `id` (placement), and
  // to `hint` if not 0, that we have no link to, so that a fetch can ask them
  // (ChunkFetcher::Reach); a dial that does not connect is dropped after short_idle. Event
  // thread.
  void Reach(const cas::ChunkId& id, std::size_t n, std::uint64_t hint);
  // The same for the members `nodes` (`why` goes to the debug log). Event thread.
  void ReachNodes(const std::vector<std::uint64_t>& nodes, std::string_view why);
  // Traffic on the link to `node`: a short-lived link stays open while it is used. Event
  // thread.
  void Touch(std::uint64_t node) { last_used_[node] = Now(); }

  // True while requests of ours to `node` wait for an answer: its short-lived link stays open.
  void SetBusy(std::function<bool(std::uint64_t node)> fn) { busy_ = std::move(fn); }
  // Called when the members placement ranks change (one joined, went down or was removed): the
  // chunks ranked to this node may have changed (repair, rebalancing).
  void SetPlacementObserver(std::function<void()> fn) { placement_observer_ = std::move(fn); }

  // `foreverfs node remove ID`. Event thread.
  Status Remove(std::uint64_t node);

  // Any thread.
  std::vector<MemberInfo> Members() const;
  std::vector<std::uint64_t> PlacementMembers() const;
  // The placement over PlacementMembers() and their weights, built once per change of the
  // list or of a weight (null before Start).
  std::shared_ptr<const Placement> PlacementMap() const;

 private:
  using SteadyMs = std::chrono::milliseconds;
  SteadyMs Now() const;
  void Handle(Actions&& actions);
  void Send(Outgoing&& out);
  void Reconcile();
  void Arm();
  void OnTimer();
  // Refreshes the copies other threads read; true if the placement members changed.
  bool Publish();
  void Persist();

  boost::asio::io_context& io_;
  NamespaceDb& ns_;
  const std::shared_ptr<const PeerLinks> links_;
  const MemberLinksOptions options_;
  std::unique_ptr<Membership> membership_;
  struct Timer;  // an Asio steady_timer, kept out of this header
  std::unique_ptr<Timer> timer_;
  Dialer dialer_;
  std::function<void(std::uint64_t, bool)> plan_observer_;
  std::function<void()> placement_observer_;
  std::function<bool(std::uint64_t)> busy_;
  std::set<std::uint64_t> planned_;              // node ids of the plan
  std::map<std::string, std::uint64_t> dialed_;  // plan addresses we keep dialing -> node
  // Short-lived: messages waiting for a link to an address, and when each link was last used.
  struct Pending {
    std::vector<net::Message> messages;
    SteadyMs since{0};
  };
  std::map<std::string, Pending> pending_;
  std::map<std::uint64_t, SteadyMs> last_used_;
  std::set<std::string> short_dials_;                // addresses dialed for short-lived links
  std::map<std::uint64_t, std::string> short_addr_;  // node -> its short-lived dial address
  bool dirty_ = false;                               // the list changed since the last Persist
  SteadyMs last_persist_{0};

  mutable Mutex copy_mu_;  // leaf: the copies other threads read
  std::vector<MemberInfo> members_copy_ GUARDED_BY(copy_mu_);
  std::vector<Placement::Member> placement_copy_ GUARDED_BY(copy_mu_);
  std::shared_ptr<const Placement> placement_map_ GUARDED_BY(copy_mu_);
};

}  // namespace foreverfs::server
