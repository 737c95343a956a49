#pragma once
// Membership: the cluster's member list, kept without a full mesh (issue 15; doc/membership.md
// is the reference: states and transitions, timers, the link plan, message bounds).
//
// SWIM-style. Every protocol period this node probes one member (round-robin over a shuffled
// list): a MemberPing, and if no MemberAck comes within the ack timeout, a MemberPingReq to k
// other members that probe it for us. No ack by the end of the period: the member becomes
// suspect. A suspect refutes by raising its incarnation (only a member raises its own), which
// makes it alive again everywhere. Unrefuted for the suspicion timeout (scaled with log n), it
// is unreachable (SWIM's "faulty"; still shown and placed as suspect); unrefuted for
// `down_after` (15 min), it is down and leaves placement. Updates travel piggybacked on probes
// and acks, each retransmitted λ·log n times; a whole table goes both ways when a link opens.
// `RemoveMember` (`foreverfs node remove`) removes a member at once, for good: only the member
// itself can bring itself back, by a restart (which raises its incarnation).
//
// Weights: every member's entry carries its placement weight (its capacity), which only the
// member sets, at start, so it changes only with a new incarnation. A node takes the weight of
// every update it applies, and at the member's current incarnation the larger one: the only
// other weight it may hold there is the 1 it assumed for a member first met on a link, before
// the member's own entry arrived.
//
// The link plan: at most `max_links` long-lived links, the union of a few cycles through the
// live members (the ring in id order, and pseudo-random cycles whose order every node computes
// alike), so links are symmetric, the link graph is connected and its diameter is O(log n).
//
// Pure state machine: no sockets, no Asio, no clock and no global randomness. Time is the
// caller's steady clock in milliseconds (`now`, never decreasing); randomness is an
// std::mt19937_64 seeded from the options, so tests and the simulation are deterministic.
// Every input returns the Actions it causes: messages to send and state changes to log or
// place by.
//
// Threading: not thread-safe. In the daemon, call it on the event thread only (like
// Replicator::Impl); other threads read a copy (Members(), Export()) posted back from there.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "base/status.h"
#include "net/messages.h"
#include "server/placement.h"

namespace foreverfs::server {

using Millis = std::chrono::milliseconds;  // steady time, from any fixed origin

// Incarnations above this are ignored as malformed: a node raises its own by one per refutation
// or restart, so a real one never gets near it, and `+ 1` never overflows.
inline constexpr std::uint64_t kMaxIncarnation = std::uint64_t{1} << 62;

struct MembershipOptions {
  std::uint64_t self_id = 0;      // must not be 0
  std::string self_addr;          // "host:port" others dial (may be empty)
  std::uint64_t incarnation = 0;  // at start; Import raises it past the persisted one
  // This node's placement weight (its capacity: Placement::WeightOf), gossiped with its
  // entry. Set at start only: it changes with a restart, which raises the incarnation.
  std::uint32_t weight = 1;
  std::size_t max_links = 8;        // long-lived links in the plan
  Millis protocol_period{1000};     // one probe per period
  Millis ack_timeout{500};          // direct probe; then indirect probes until the period ends
  std::size_t indirect_probes = 3;  // k
  // Suspicion timeout = suspicion_mult * max(1, log10(members)) * protocol_period.
  unsigned suspicion_mult = 4;
  Millis down_after{15 * 60 * 1000};  // unrefuted suspicion this long: down
  // Each update is piggybacked on retransmit_mult * ceil(log10(members + 1)) messages.
  unsigned retransmit_mult = 4;
  std::size_t max_piggyback = 16;  // updates per message, at most net::kMaxMemberUpdates
  Millis rejoin_interval{10000};   // while no other member is alive, ask the seeds this often
  // Anti-entropy: this often (times ceil(log2(n / 32)) + 1 above 32 members, as memberlist),
  // whole tables are exchanged with one random alive member, beside those on new links.
  Millis sync_interval{30000};
  std::uint64_t seed = 1;  // of the random generator
};

// A member as this node sees it (`foreverfs status`).
struct MemberInfo {
  std::uint64_t node_id = 0;
  std::string addr;
  net::MemberState state = net::MemberState::kAlive;
  bool unreachable = false;  // suspect whose suspicion timed out (SWIM: faulty)
  std::uint64_t incarnation = 0;
  std::uint32_t weight = 1;  // its placement weight, as it announced it (at least 1)
  Millis state_since{0};     // when it entered its state (steady time)
  // Last evidence that it is up: a message or ack from it, or an alive update with a new
  // incarnation. Empty: none since this process started.
  std::optional<Millis> last_seen;
  bool linked = false;  // a link to it is up (OnLinkUp)
  bool self = false;
  bool operator==(const MemberInfo&) const = default;
};

// A state change, for placement (down and removed leave it; alive/suspect come back into it)
// and for the log.
struct MemberEvent {
  enum class Kind {
    kAdded,        // first heard of (state says which)
    kChanged,      // state moved from `old_state` to `state`
    kUnreachable,  // suspicion timed out; still suspect
    kRefuted,      // this node raised its own incarnation to refute a suspicion
    kSelfRemoved,  // an operator removed this node; it stays out until it restarts
  };
  Kind kind = Kind::kAdded;
  std::uint64_t node_id = 0;
  std::string addr;
  net::MemberState old_state = net::MemberState::kAlive;
  net::MemberState state = net::MemberState::kAlive;
  std::uint64_t incarnation = 0;
  bool operator==(const MemberEvent&) const = default;
};

// A message to send. `to` is the member's node id, or 0 for a seed known only by address.
// `linked` is whether a long-lived link to it is up (as OnLinkUp/OnLinkDown said); otherwise
// the caller opens a short-lived connection to `addr` (or answers on the connection the
// message came in on).
struct Outgoing {
  std::uint64_t to = 0;
  std::string addr;
  bool linked = false;
  net::Message message;
};

struct Actions {
  std::vector<Outgoing> send;
  std::vector<MemberEvent> events;
  bool links_changed = false;  // LinkPlan() may differ: compute it again
  void Append(Actions&& other);
};

struct PlannedLink {
  std::uint64_t node_id = 0;
  std::string addr;
  bool operator==(const PlannedLink&) const = default;
};

// One row of the persisted table (the integrator keeps it in meta.db). Times are relative, so
// a restart does not need the old steady clock.
struct MemberRecord {
  std::uint64_t node_id = 0;
  std::string addr;
  net::MemberState state = net::MemberState::kAlive;
  std::uint64_t incarnation = 0;
  std::int64_t unseen_ms = -1;  // since last seen at export; -1 never
  std::uint32_t weight = 1;
  bool operator==(const MemberRecord&) const = default;
};

class Membership {
 public:
  Membership(MembershipOptions options, Millis now);

  // Timers: probes, indirect probes, suspicion, down, rejoin. Call at NextDeadline() (or more
  // often: extra calls do nothing).
  Actions Tick(Millis now);
  // The earliest time Tick has something to do.
  Millis NextDeadline() const;
  // A membership message from `from` (the node id the link authenticated; 0 if unknown).
  // Other message types are ignored.
  Actions OnMessage(std::uint64_t from, const net::Message& message, Millis now);
  // A long-lived link to `node` opened (it listens at `addr`, may be empty) or closed. Opening
  // sends our whole table (anti-entropy); both ends do, so both merge.
  Actions OnLinkUp(std::uint64_t node, const std::string& addr, Millis now);
  void OnLinkDown(std::uint64_t node);
  // Addresses to join through (--peer): while no other member is alive, every
  // rejoin_interval, each is sent our table and asked for theirs.
  Actions Join(const std::vector<std::string>& seeds, Millis now);
  // `foreverfs node remove ID`: removed at once here, and gossiped. Refused for this node
  // itself and for id 0.
  Result<Actions> RemoveMember(std::uint64_t node, Millis now);

  // Long-lived links this node should keep (at most max_links, by node id).
  std::vector<PlannedLink> LinkPlan() const;
  // Members placement ranks: alive and suspect (unreachable included), this node too; by id.
  std::vector<std::uint64_t> PlacementMembers() const;
  // The same with their weights, for Placement.
  std::vector<Placement::Member> WeightedPlacementMembers() const;
  // Every member, this node included, by id.
  std::vector<MemberInfo> Members() const;
  std::optional<MemberInfo> Member(std::uint64_t node) const;
  std::uint64_t Incarnation() const { return incarnation_; }
  std::uint64_t self_id() const { return options_.self_id; }
  bool self_removed() const { return self_removed_; }

  // Persistence. Export at any time (after every Actions with events, say); Import once,
  // right after construction. Importing this node's own row raises its incarnation above it,
  // so a restart refutes whatever the cluster says about the previous run.
  std::vector<MemberRecord> Export(Millis now) const;
  Actions Import(const std::vector<MemberRecord>& records, Millis now);

  // The timeouts for the current member count (for logs, status and the simulation).
  Millis SuspicionTimeout() const;
  Millis SyncInterval() const;
  unsigned RetransmitLimit() const;
  // Updates refused as malformed (id 0, unknown state, incarnation over kMaxIncarnation,
  // address too long), for tests and a metric.
  std::uint64_t ignored_updates() const { return ignored_; }

 private:
  struct Entry {
    std::uint64_t id = 0;
    std::string addr;
    net::MemberState state = net::MemberState::kAlive;
    std::uint64_t incarnation = 0;
    std::uint32_t weight = 1;  // at least 1
    bool unreachable = false;
    bool verified = true;  // heard of in this process (not only from Import)
    bool linked = false;
    Millis state_since{0};
    std::optional<Millis> last_seen;
  };
  struct Probe {
    std::uint64_t target = 0;
    std::uint64_t seq = 0;
    Millis started{0};
    bool acked = false;
    bool indirect_sent = false;
    std::uint64_t incarnation = 0;  // the target's, when the probe started
  };
  struct Forward {  // a MemberPingReq we are serving
    std::uint64_t requester = 0;
    std::uint64_t requester_seq = 0;
    Millis expires{0};
  };
  struct Broadcast {
    net::MemberUpdate update;
    unsigned transmits = 0;
    std::uint64_t order = 0;  // newer first among equal transmits
  };

  net::MemberUpdate UpdateOf(const Entry& e) const;
  bool Valid(const net::MemberUpdate& u) const;
  void Apply(const net::MemberUpdate& u, Millis now, bool from_sync, Actions& out);
  void ApplySelf(const net::MemberUpdate& u, Actions& out);
  void SetState(Entry& e, net::MemberState state, std::uint64_t incarnation, Millis now,
                Actions& out);
  void Enqueue(const net::MemberUpdate& u);
  std::vector<net::MemberUpdate> Piggyback(std::uint64_t to);
  void Send(std::uint64_t to, net::Message m, Actions& out);
  void SendToAddr(const std::string& addr, net::Message m, Actions& out);
  std::vector<net::MemberSync> SyncMessages(bool want_reply) const;
  void StartProbe(Millis now, Actions& out);
  void SendIndirect(Actions& out);
  void ProbeFailed(Millis now, Actions& out);
  void CheckSuspects(Millis now, Actions& out);
  void AddToProbeOrder(std::uint64_t id);
  bool Eligible(const Entry& e) const;  // in the link plan
  bool AnyOtherAlive() const;
  std::size_t CountedMembers() const;  // for the log n scalings: not removed, self included

  MembershipOptions options_;
  std::mt19937_64 rng_;
  std::uint64_t incarnation_;
  bool self_removed_ = false;
  std::map<std::uint64_t, Entry> members_;  // every member, this node included
  std::size_t removed_count_ = 0;           // members in state removed
  std::set<std::uint64_t> suspects_;        // members in state suspect
  std::vector<std::uint64_t> probe_order_;
  std::size_t probe_index_ = 0;
  std::optional<Probe> probe_;
  Millis next_probe_{0};
  std::uint64_t next_seq_ = 1;
  std::map<std::uint64_t, Forward> forwards_;  // by the seq of our ping to the target
  std::map<std::uint64_t, Broadcast> queue_;   // at most one pending update per member
  std::uint64_t broadcast_order_ = 0;
  std::vector<std::string> seeds_;
  Millis next_join_{0};
  Millis next_sync_{0};
  std::uint64_t ignored_ = 0;
};

}  // namespace foreverfs::server
