#pragma once
// A simulated network of Membership nodes for tests and bench/membership_sim.cpp: one process,
// simulated time, deterministic. Every message goes through the real codec (EncodeFrame, then
// DecodeFrameHeader and DecodePayload at the receiver), so the bytes counted are the bytes a
// node would put in frames. Faults: latency, loss, a per-node delay (a slow node), killed nodes,
// restarts, partitions. Long-lived links follow the nodes' link plans: a link is up while
// either end plans it and both ends are up and can reach each other; OnLinkUp/OnLinkDown are
// called on both ends, as the transport would.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "net/messages.h"
#include "server/membership.h"

namespace foreverfs::server::testing {

class MembershipNetwork {
 public:
  struct Options {
    Millis latency{5};  // one way
    Millis step{10};    // time advances in steps of this
    double loss = 0;    // probability a message is lost
    std::uint64_t seed = 1;
    MembershipOptions node;  // self_id, self_addr and seed are set per node
    bool links = true;       // keep long-lived links along the link plans
  };
  using EventHook = std::function<void(std::uint64_t observer, const MemberEvent&, Millis now)>;

  explicit MembershipNetwork(Options options) : options_(std::move(options)), rng_(options_.seed) {}

  Millis now() const { return now_; }

  // Starts a node (random id, spread over the id space) that joins through `seeds` (node ids
  // whose addresses it is given, as --peer would), with placement weight `weight` (0: the
  // options').
  std::uint64_t AddNode(const std::vector<std::uint64_t>& seeds = {}, std::uint32_t weight = 0) {
    std::uint64_t id = 0;
    while (id == 0 || nodes_.contains(id)) id = rng_();
    nodes_[id].weight = weight;
    Start(id, {}, seeds);
    return id;
  }

  // Starts nodes that already know each other (as after a previous run): each imports the same
  // table, so a large cluster starts converged without a join storm.
  std::vector<std::uint64_t> AddConvergedNodes(std::size_t n) {
    std::vector<std::uint64_t> ids;
    std::vector<MemberRecord> table;
    while (ids.size() < n) {
      std::uint64_t id = rng_();
      if (id == 0 || nodes_.contains(id) || std::count(ids.begin(), ids.end(), id)) continue;
      ids.push_back(id);
      table.push_back({id, Addr(id), net::MemberState::kAlive, 1, 0});
    }
    // Everyone at incarnation 1, which each node's own row at 0 gives it on import: no node
    // comes up with news to spread (a real restart of every node at once would have some).
    for (std::size_t i = 0; i < ids.size(); ++i) {
      table[i].incarnation = 0;
      Start(ids[i], table, {});
      table[i].incarnation = 1;
    }
    return ids;
  }

  Membership& node(std::uint64_t id) { return *nodes_.at(id).m; }
  const Membership& node(std::uint64_t id) const { return *nodes_.at(id).m; }
  bool up(std::uint64_t id) const { return nodes_.at(id).up; }
  std::vector<std::uint64_t> ids() const {
    std::vector<std::uint64_t> all;
    for (const auto& [id, n] : nodes_) all.push_back(id);
    return all;
  }
  std::vector<std::uint64_t> up_ids() const {
    std::vector<std::uint64_t> all;
    for (const auto& [id, n] : nodes_) {
      if (n.up) all.push_back(id);
    }
    return all;
  }
  static std::string Addr(std::uint64_t id) {
    return "10." + std::to_string((id >> 16) & 255) + "." + std::to_string((id >> 8) & 255) + "." +
           std::to_string(id & 255) + ":" + std::to_string(3000 + (id >> 56));
  }

  // The process dies: nothing more in or out; its peers' links close.
  void Kill(std::uint64_t id) {
    Slot& s = nodes_.at(id);
    s.saved = s.m->Export(now_);
    s.up = false;
    DropLinksOf(id);
  }
  // The process starts again from its persisted table (so with a higher incarnation), with
  // placement weight `weight` (0: as before).
  void Restart(std::uint64_t id, const std::vector<std::uint64_t>& seeds,
               std::uint32_t weight = 0) {
    Slot& s = nodes_.at(id);
    if (weight != 0) s.weight = weight;
    std::vector<MemberRecord> saved = s.up ? s.m->Export(now_) : s.saved;
    if (s.up) Kill(id);
    Start(id, saved, seeds);
  }
  // Extra one-way delay on everything the node sends and receives (a slow node).
  void SetDelay(std::uint64_t id, Millis delay) { nodes_.at(id).delay = delay; }
  // Nodes on different sides cannot reach each other; side 0 is everyone not listed.
  void Partition(const std::vector<std::uint64_t>& side_one) {
    for (std::uint64_t id : side_one) nodes_.at(id).side = 1;
    for (auto& [a, b] : std::set<std::pair<std::uint64_t, std::uint64_t>>(links_)) {
      if (!Reachable(a, b)) CloseLink(a, b);
    }
  }
  void Heal() {
    for (auto& [id, s] : nodes_) {
      s.side = 0;
      s.plan_dirty = true;
    }
  }

  // Injects a message as if `from` had sent it (for malformed or stale gossip).
  void Inject(std::uint64_t from, std::uint64_t to, const net::Message& m) {
    Handle(to, nodes_.at(to).m->OnMessage(from, m, now_));
  }
  // Runs a manual removal on `at`.
  void Remove(std::uint64_t at, std::uint64_t member) {
    auto r = nodes_.at(at).m->RemoveMember(member, now_);
    if (!r.ok()) throw std::runtime_error(r.status().message());
    Handle(at, std::move(*r));
  }

  void Run(Millis duration) {
    const Millis end = now_ + duration;
    while (now_ < end) Step();
  }
  // Steps until `done()` (checked every `every`) or `limit` passed; true if done.
  bool RunUntil(const std::function<bool()>& done, Millis limit, Millis every = Millis(100)) {
    const Millis end = now_ + limit;
    Millis next_check = now_;
    while (true) {
      if (now_ >= next_check) {
        if (done()) return true;
        next_check = now_ + every;
      }
      if (now_ >= end) return false;
      Step();
    }
  }

  void Step() {
    now_ += options_.step;
    while (!pending_.empty() && pending_.top().at <= now_) {
      Delivery d = pending_.top();
      pending_.pop();
      Deliver(d);
    }
    for (auto& [id, s] : nodes_) {
      if (s.up && now_ >= s.deadline) Handle(id, s.m->Tick(now_));
    }
    if (options_.links) UpdateLinks();
  }

  // How `observer` sees `member` (nullopt: unknown to it).
  std::optional<net::MemberState> StateAt(std::uint64_t observer, std::uint64_t member) const {
    auto info = node(observer).Member(member);
    if (!info) return std::nullopt;
    return info->state;
  }
  // True if every up node other than `member` sees it in `state`.
  bool AllSee(std::uint64_t member, net::MemberState state) const {
    for (const auto& [id, s] : nodes_) {
      if (id != member && s.up && StateAt(id, member) != state) return false;
    }
    return true;
  }

  // The undirected graph of the up nodes' plans (an edge if either end plans it).
  std::map<std::uint64_t, std::set<std::uint64_t>> PlanGraph() const {
    std::map<std::uint64_t, std::set<std::uint64_t>> g;
    for (const auto& [id, s] : nodes_) {
      if (!s.up) continue;
      g[id];
      for (const PlannedLink& l : s.m->LinkPlan()) {
        if (!nodes_.contains(l.node_id) || !nodes_.at(l.node_id).up) continue;
        g[id].insert(l.node_id);
        g[l.node_id].insert(id);
      }
    }
    return g;
  }
  const std::set<std::pair<std::uint64_t, std::uint64_t>>& links() const { return links_; }

  EventHook on_event;
  struct Counters {
    std::uint64_t messages = 0, bytes = 0, dropped = 0;
    std::map<net::MessageType, std::uint64_t> by_type;
  } sent;

 private:
  struct Slot {
    std::unique_ptr<Membership> m;
    bool up = false;
    int side = 0;
    Millis delay{0};
    std::uint32_t weight = 0;  // 0: options_.node.weight
    Millis deadline{0};
    bool plan_dirty = true;
    std::set<std::uint64_t> plan;
    std::vector<MemberRecord> saved;
  };
  struct Delivery {
    Millis at;
    std::uint64_t order;
    std::uint64_t from, to;
    Bytes frame;
    bool operator<(const Delivery& o) const {  // priority_queue: earliest first
      return at != o.at ? at > o.at : order > o.order;
    }
  };

  void Start(std::uint64_t id, const std::vector<MemberRecord>& table,
             const std::vector<std::uint64_t>& seeds) {
    MembershipOptions o = options_.node;
    o.self_id = id;
    o.self_addr = Addr(id);
    o.seed = rng_();
    Slot& s = nodes_[id];
    if (s.weight != 0) o.weight = s.weight;
    s.m = std::make_unique<Membership>(o, now_);
    s.up = true;
    s.plan_dirty = true;
    s.saved.clear();
    addr_to_id_[o.self_addr] = id;
    if (!table.empty()) Handle(id, s.m->Import(table, now_));
    std::vector<std::string> addrs;
    for (std::uint64_t seed : seeds) addrs.push_back(Addr(seed));
    if (!addrs.empty()) Handle(id, s.m->Join(addrs, now_));
    s.deadline = s.m->NextDeadline();
  }

  bool Reachable(std::uint64_t a, std::uint64_t b) const {
    const Slot& x = nodes_.at(a);
    const Slot& y = nodes_.at(b);
    return x.up && y.up && x.side == y.side;
  }

  void Handle(std::uint64_t id, Actions&& a) {
    Slot& s = nodes_.at(id);
    for (Outgoing& o : a.send) {
      std::uint64_t to = o.to;
      if (to == 0) {
        auto it = addr_to_id_.find(o.addr);
        if (it == addr_to_id_.end()) continue;
        to = it->second;
      }
      Send(id, to, o.message);
    }
    if (on_event) {
      for (const MemberEvent& e : a.events) on_event(id, e, now_);
    }
    if (a.links_changed) s.plan_dirty = true;
    s.deadline = s.m->NextDeadline();
  }

  void Send(std::uint64_t from, std::uint64_t to, const net::Message& m) {
    Bytes frame = net::EncodeFrame(m);
    ++sent.messages;
    sent.bytes += frame.size();
    ++sent.by_type[net::TypeOf(m)];
    auto it = nodes_.find(to);
    if (it == nodes_.end() || !Reachable(from, to) ||
        (options_.loss > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < options_.loss)) {
      ++sent.dropped;
      return;
    }
    const Millis at = now_ + options_.latency + nodes_.at(from).delay + it->second.delay;
    pending_.push(Delivery{at, ++order_, from, to, std::move(frame)});
  }

  void Deliver(const Delivery& d) {
    if (!Reachable(d.from, d.to)) {
      ++sent.dropped;
      return;
    }
    auto h = net::DecodeFrameHeader(ByteSpan(d.frame).first(net::kFrameHeaderSize));
    if (!h.ok()) throw std::runtime_error(h.status().message());
    auto m = net::DecodePayload(h->type, ByteSpan(d.frame).subspan(net::kFrameHeaderSize));
    if (!m.ok()) throw std::runtime_error(m.status().message());
    Handle(d.to, nodes_.at(d.to).m->OnMessage(d.from, *m, now_));
  }

  void UpdateLinks() {
    std::vector<std::uint64_t> dirty;
    for (auto& [id, s] : nodes_) {
      if (s.up && s.plan_dirty) dirty.push_back(id);
    }
    for (std::uint64_t id : dirty) {
      Slot& s = nodes_.at(id);
      s.plan_dirty = false;
      s.plan.clear();
      for (const PlannedLink& l : s.m->LinkPlan()) s.plan.insert(l.node_id);
      for (std::uint64_t peer : s.plan) {
        if (nodes_.contains(peer) && Reachable(id, peer)) OpenLink(id, peer);
      }
      // Links neither end plans any more.
      for (auto [a, b] : std::set<std::pair<std::uint64_t, std::uint64_t>>(links_)) {
        if (a != id && b != id) continue;
        if (!nodes_.at(a).plan.contains(b) && !nodes_.at(b).plan.contains(a)) CloseLink(a, b);
      }
    }
  }

  void OpenLink(std::uint64_t a, std::uint64_t b) {
    auto key = std::minmax(a, b);
    if (!links_.insert({key.first, key.second}).second) return;
    Handle(a, nodes_.at(a).m->OnLinkUp(b, Addr(b), now_));
    Handle(b, nodes_.at(b).m->OnLinkUp(a, Addr(a), now_));
  }
  void CloseLink(std::uint64_t a, std::uint64_t b) {
    auto key = std::minmax(a, b);
    if (links_.erase({key.first, key.second}) == 0) return;
    if (nodes_.at(a).up) nodes_.at(a).m->OnLinkDown(b);
    if (nodes_.at(b).up) nodes_.at(b).m->OnLinkDown(a);
  }
  void DropLinksOf(std::uint64_t id) {
    for (auto [a, b] : std::set<std::pair<std::uint64_t, std::uint64_t>>(links_)) {
      if (a == id || b == id) CloseLink(a, b);
    }
  }

  Options options_;
  std::mt19937_64 rng_;
  Millis now_{0};
  std::map<std::uint64_t, Slot> nodes_;
  std::map<std::string, std::uint64_t> addr_to_id_;
  std::priority_queue<Delivery> pending_;
  std::uint64_t order_ = 0;
  std::set<std::pair<std::uint64_t, std::uint64_t>> links_;
};

}  // namespace foreverfs::server::testing
