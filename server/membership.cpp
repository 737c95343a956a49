// Membership: SWIM-style failure detection, gossip and the link plan (doc/membership.md).

#include "server/membership.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace foreverfs::server {
namespace {

using net::MemberState;
using net::MemberUpdate;

int Rank(MemberState s) { return static_cast<int>(s); }

bool KnownState(MemberState s) {
  return Rank(s) >= Rank(MemberState::kAlive) && Rank(s) <= Rank(MemberState::kRemoved);
}

// splitmix64: the order of the pseudo-random cycles, the same on every node.
std::uint64_t Mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

void Actions::Append(Actions&& other) {
  for (auto& s : other.send) send.push_back(std::move(s));
  for (auto& e : other.events) events.push_back(std::move(e));
  links_changed = links_changed || other.links_changed;
}

Membership::Membership(MembershipOptions options, Millis now)
    : options_(std::move(options)), rng_(options_.seed), incarnation_(options_.incarnation) {
  options_.max_piggyback =
      std::clamp<std::size_t>(options_.max_piggyback, 1, net::kMaxMemberUpdates);
  if (incarnation_ > kMaxIncarnation) incarnation_ = kMaxIncarnation;
  Entry self;
  self.id = options_.self_id;
  self.addr = options_.self_addr;
  self.incarnation = incarnation_;
  self.weight = std::max<std::uint32_t>(options_.weight, 1);
  self.state_since = now;
  self.last_seen = now;
  members_.emplace(self.id, std::move(self));
  // Nodes started together do not probe in step.
  const auto period = std::max<std::int64_t>(options_.protocol_period.count(), 1);
  next_probe_ =
      now + Millis(static_cast<std::int64_t>(rng_() % static_cast<std::uint64_t>(period)));
  const auto sync = std::max<std::int64_t>(options_.sync_interval.count(), 1);
  next_sync_ = now + Millis(static_cast<std::int64_t>(rng_() % static_cast<std::uint64_t>(sync)));
}

// --- Inputs -------------------------------------------------------------------------------

Actions Membership::Tick(Millis now) {
  Actions out;
  if (self_removed_) return out;
  if (probe_ && !probe_->acked && !probe_->indirect_sent &&
      now >= probe_->started + options_.ack_timeout) {
    probe_->indirect_sent = true;
    SendIndirect(out);
  }
  if (now >= next_probe_) {
    if (probe_ && !probe_->acked) ProbeFailed(now, out);
    probe_.reset();
    StartProbe(now, out);
    next_probe_ += options_.protocol_period;
    if (next_probe_ <= now) next_probe_ = now + options_.protocol_period;
  }
  CheckSuspects(now, out);
  for (auto it = forwards_.begin(); it != forwards_.end();) {
    it = it->second.expires <= now ? forwards_.erase(it) : std::next(it);
  }
  if (now >= next_sync_) {
    next_sync_ = now + SyncInterval();
    std::vector<std::uint64_t> alive;
    for (const auto& [id, e] : members_) {
      if (id != options_.self_id && e.state == MemberState::kAlive) alive.push_back(id);
    }
    if (!alive.empty()) {
      std::uniform_int_distribution<std::size_t> pick(0, alive.size() - 1);
      const std::uint64_t peer = alive[pick(rng_)];
      for (auto& m : SyncMessages(true)) Send(peer, std::move(m), out);
    }
  }
  if (!seeds_.empty() && now >= next_join_) {
    next_join_ = now + options_.rejoin_interval;
    if (!AnyOtherAlive()) {
      for (const std::string& seed : seeds_) {
        for (auto& m : SyncMessages(true)) SendToAddr(seed, std::move(m), out);
      }
    }
  }
  return out;
}

Millis Membership::NextDeadline() const {
  if (self_removed_) return Millis::max();  // nothing runs until a restart
  Millis next = next_probe_;
  if (probe_ && !probe_->acked && !probe_->indirect_sent) {
    next = std::min(next, probe_->started + options_.ack_timeout);
  }
  const Millis suspicion = SuspicionTimeout();
  const Millis down = std::max(options_.down_after, suspicion);
  for (std::uint64_t id : suspects_) {
    const Entry& e = members_.at(id);
    next = std::min(next, e.state_since + (e.unreachable ? down : suspicion));
  }
  for (const auto& [seq, f] : forwards_) next = std::min(next, f.expires);
  if (!seeds_.empty()) next = std::min(next, next_join_);
  return std::min(next, next_sync_);
}

Actions Membership::OnMessage(std::uint64_t from, const net::Message& message, Millis now) {
  Actions out;
  if (from != 0 && from != options_.self_id) {
    if (auto it = members_.find(from); it != members_.end()) {
      it->second.last_seen = now;
      it->second.verified = true;
    }
  }
  if (const auto* ping = std::get_if<net::MemberPing>(&message)) {
    for (const MemberUpdate& u : ping->updates) Apply(u, now, false, out);
    Send(from, net::MemberAck{ping->seq, Piggyback(from)}, out);
  } else if (const auto* ack = std::get_if<net::MemberAck>(&message)) {
    for (const MemberUpdate& u : ack->updates) Apply(u, now, false, out);
    if (probe_ && ack->seq == probe_->seq) {
      probe_->acked = true;
      if (auto it = members_.find(probe_->target); it != members_.end()) {
        it->second.last_seen = now;
        it->second.verified = true;
      }
    } else if (auto f = forwards_.find(ack->seq); f != forwards_.end()) {
      const Forward fw = f->second;
      forwards_.erase(f);
      Send(fw.requester, net::MemberAck{fw.requester_seq, Piggyback(fw.requester)}, out);
    }
  } else if (const auto* req = std::get_if<net::MemberPingReq>(&message)) {
    for (const MemberUpdate& u : req->updates) Apply(u, now, false, out);
    if (req->target == options_.self_id) {
      Send(from, net::MemberAck{req->seq, Piggyback(from)}, out);
    } else if (req->target != 0 && !self_removed_) {
      const std::uint64_t seq = next_seq_++;
      forwards_[seq] = Forward{from, req->seq, now + options_.protocol_period};
      Outgoing o{req->target, req->target_addr, false,
                 net::MemberPing{seq, Piggyback(req->target)}};
      if (auto it = members_.find(req->target); it != members_.end()) {
        if (!it->second.addr.empty()) o.addr = it->second.addr;
        o.linked = it->second.linked;
      }
      out.send.push_back(std::move(o));
    }
  } else if (const auto* sync = std::get_if<net::MemberSync>(&message)) {
    for (const MemberUpdate& u : sync->members) Apply(u, now, true, out);
    if (sync->want_reply) {
      for (auto& m : SyncMessages(false)) Send(from, std::move(m), out);
    }
  }
  return out;
}

Actions Membership::OnLinkUp(std::uint64_t node, const std::string& addr, Millis now) {
  Actions out;
  if (node == 0 || node == options_.self_id) return out;
  auto it = members_.find(node);
  if (it == members_.end()) {
    // Its table, on its way, says its incarnation; until then it is alive at 0 (which loses to
    // anything the cluster knows of it, a removal included), and nothing is gossiped.
    Entry e;
    e.id = node;
    e.addr = addr;
    e.state_since = now;
    it = members_.emplace(node, std::move(e)).first;
    AddToProbeOrder(node);
    out.events.push_back(
        {MemberEvent::Kind::kAdded, node, addr, MemberState::kAlive, MemberState::kAlive, 0});
    out.links_changed = true;
  }
  Entry& e = it->second;
  e.linked = true;
  e.last_seen = now;
  e.verified = true;
  if (e.addr.empty()) e.addr = addr;
  for (auto& m : SyncMessages(false)) Send(node, std::move(m), out);
  return out;
}

void Membership::OnLinkDown(std::uint64_t node) {
  if (auto it = members_.find(node); it != members_.end()) it->second.linked = false;
}

Actions Membership::Join(const std::vector<std::string>& seeds, Millis now) {
  Actions out;
  seeds_ = seeds;
  next_join_ = now + options_.rejoin_interval;
  for (const std::string& seed : seeds_) {
    for (auto& m : SyncMessages(true)) SendToAddr(seed, std::move(m), out);
  }
  return out;
}

Result<Actions> Membership::RemoveMember(std::uint64_t node, Millis now) {
  if (node == 0) return Err(Code::kInvalid, "node id 0 is not a member");
  if (node == options_.self_id) {
    return Err(Code::kInvalid, "node {:016x} is this node: remove it from another node", node);
  }
  Actions out;
  auto it = members_.find(node);
  if (it == members_.end()) {
    // Unknown here: a tombstone, so that gossip of its current incarnation cannot add it.
    Entry e;
    e.id = node;
    e.state = MemberState::kRemoved;
    e.state_since = now;
    it = members_.emplace(node, std::move(e)).first;
    ++removed_count_;
    out.events.push_back(
        {MemberEvent::Kind::kAdded, node, "", MemberState::kRemoved, MemberState::kRemoved, 0});
  } else if (it->second.state != MemberState::kRemoved) {
    SetState(it->second, MemberState::kRemoved, it->second.incarnation, now, out);
  }
  Enqueue(UpdateOf(it->second));
  return out;
}

// --- Outputs ------------------------------------------------------------------------------

std::vector<PlannedLink> Membership::LinkPlan() const {
  std::vector<PlannedLink> plan;
  if (self_removed_ || options_.max_links == 0) return plan;
  std::vector<std::uint64_t> ids;
  for (const auto& [id, e] : members_) {
    if (id == options_.self_id || Eligible(e)) ids.push_back(id);  // by id: the map's order
  }
  const std::size_t n = ids.size();
  if (n <= 1) return plan;
  std::set<std::uint64_t> chosen;
  auto self_pos = [&](const std::vector<std::uint64_t>& order) {
    return static_cast<std::size_t>(std::find(order.begin(), order.end(), options_.self_id) -
                                    order.begin());
  };
  if (options_.max_links == 1) {
    // One link each: pairs along the ring (0-1, 2-3, ...). Not connected beyond two members.
    const std::size_t partner = self_pos(ids) ^ 1;
    if (partner < n) chosen.insert(ids[partner]);
  } else {
    // Cycle 0 is the ring in id order; cycle c > 0 orders the members by Mix(id ^ c-salt).
    // Each adds this node's two neighbours on it; every node computes the same cycles, so a
    // link one end plans the other end plans too.
    std::vector<std::uint64_t> order = ids;
    for (std::size_t c = 0; c < options_.max_links / 2; ++c) {
      if (c > 0) {
        const std::uint64_t salt = Mix(c);
        std::sort(order.begin(), order.end(), [salt](std::uint64_t a, std::uint64_t b) {
          const std::uint64_t ha = Mix(a ^ salt), hb = Mix(b ^ salt);
          return ha != hb ? ha < hb : a < b;
        });
      }
      const std::size_t p = self_pos(order);
      chosen.insert(order[(p + 1) % n]);
      chosen.insert(order[(p + n - 1) % n]);
    }
    chosen.erase(options_.self_id);
  }
  for (std::uint64_t id : chosen) plan.push_back({id, members_.at(id).addr});
  return plan;
}

std::vector<std::uint64_t> Membership::PlacementMembers() const {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, e] : members_) {
    if (e.state == MemberState::kAlive || e.state == MemberState::kSuspect) ids.push_back(id);
  }
  return ids;
}

std::vector<Placement::Member> Membership::WeightedPlacementMembers() const {
  std::vector<Placement::Member> out;
  for (const auto& [id, e] : members_) {
    if (e.state == MemberState::kAlive || e.state == MemberState::kSuspect) {
      out.push_back({id, e.weight});
    }
  }
  return out;
}

std::vector<MemberInfo> Membership::Members() const {
  std::vector<MemberInfo> all;
  all.reserve(members_.size());
  for (const auto& [id, e] : members_) all.push_back(*Member(id));
  return all;
}

std::optional<MemberInfo> Membership::Member(std::uint64_t node) const {
  auto it = members_.find(node);
  if (it == members_.end()) return std::nullopt;
  const Entry& e = it->second;
  MemberInfo info;
  info.node_id = e.id;
  info.addr = e.addr;
  info.state = e.state;
  info.unreachable = e.unreachable;
  info.incarnation = e.incarnation;
  info.weight = e.weight;
  info.state_since = e.state_since;
  info.last_seen = e.last_seen;
  info.linked = e.linked;
  info.self = e.id == options_.self_id;
  return info;
}

std::vector<MemberRecord> Membership::Export(Millis now) const {
  std::vector<MemberRecord> rows;
  rows.reserve(members_.size());
  for (const auto& [id, e] : members_) {
    rows.push_back({id, e.addr, e.state, e.incarnation,
                    e.last_seen ? std::max<std::int64_t>(0, (now - *e.last_seen).count()) : -1,
                    e.weight});
  }
  return rows;
}

Actions Membership::Import(const std::vector<MemberRecord>& records, Millis now) {
  Actions out;
  for (const MemberRecord& r : records) {
    if (!Valid({r.node_id, r.addr, r.state, r.incarnation, r.weight})) {
      ++ignored_;
      continue;
    }
    if (r.node_id == options_.self_id) {
      // A restart: above whatever the previous run was known by, removed or not. The weight
      // is this run's (options), whatever the previous one announced.
      incarnation_ = std::max(incarnation_, r.incarnation + 1);
      Entry& self = members_.at(options_.self_id);
      self.incarnation = incarnation_;
      if (self.addr.empty()) self.addr = r.addr;
      continue;
    }
    auto [it, inserted] = members_.try_emplace(r.node_id);
    Entry& e = it->second;
    if (!inserted && e.state == MemberState::kRemoved) --removed_count_;
    if (!inserted) suspects_.erase(r.node_id);
    e.id = r.node_id;
    e.addr = r.addr;
    e.state = r.state;
    e.incarnation = r.incarnation;
    e.weight = std::max<std::uint32_t>(r.weight, 1);
    e.unreachable = false;
    e.verified = false;   // what the cluster says now wins over the old table (see Apply)
    e.state_since = now;  // a suspicion starts over: our own downtime proves nothing
    e.last_seen.reset();
    if (r.unseen_ms >= 0) e.last_seen = now - Millis(r.unseen_ms);
    if (e.state == MemberState::kSuspect) suspects_.insert(e.id);
    if (e.state == MemberState::kRemoved) ++removed_count_;
  }
  Enqueue(UpdateOf(members_.at(options_.self_id)));
  probe_order_.clear();  // rebuilt, shuffled, at the next probe
  probe_index_ = 0;
  out.links_changed = true;
  return out;
}

Millis Membership::SuspicionTimeout() const {
  const double n = static_cast<double>(CountedMembers());
  const double scale = std::max(1.0, std::log10(std::max(n, 1.0)));
  return Millis(static_cast<std::int64_t>(options_.suspicion_mult * scale *
                                          static_cast<double>(options_.protocol_period.count())));
}

Millis Membership::SyncInterval() const {
  const double n = static_cast<double>(CountedMembers());
  const double scale = n <= 32 ? 1.0 : std::ceil(std::log2(n) - std::log2(32.0)) + 1.0;
  return Millis(
      static_cast<std::int64_t>(scale * static_cast<double>(options_.sync_interval.count())));
}

unsigned Membership::RetransmitLimit() const {
  const double n = static_cast<double>(CountedMembers());
  return std::max(1u,
                  options_.retransmit_mult * static_cast<unsigned>(std::ceil(std::log10(n + 1.0))));
}

// --- State --------------------------------------------------------------------------------

MemberUpdate Membership::UpdateOf(const Entry& e) const {
  return MemberUpdate{e.id, e.addr, e.state, e.incarnation, e.weight};
}

bool Membership::Valid(const MemberUpdate& u) const {
  return u.node_id != 0 && KnownState(u.state) && u.incarnation <= kMaxIncarnation &&
         u.addr.size() <= net::kMaxAddrSize;
}

void Membership::Apply(const MemberUpdate& u, Millis now, bool from_sync, Actions& out) {
  if (!Valid(u)) {
    ++ignored_;
    return;
  }
  if (u.node_id == options_.self_id) {
    ApplySelf(u, out);
    return;
  }
  auto it = members_.find(u.node_id);
  if (it == members_.end()) {
    Entry e;
    e.id = u.node_id;
    e.addr = u.addr;
    e.state = u.state;
    e.incarnation = u.incarnation;
    e.weight = std::max<std::uint32_t>(u.weight, 1);
    e.state_since = now;
    if (u.state == MemberState::kAlive) e.last_seen = now;
    it = members_.emplace(u.node_id, std::move(e)).first;
    if (u.state == MemberState::kSuspect) suspects_.insert(u.node_id);
    if (u.state == MemberState::kRemoved) {
      ++removed_count_;
    } else {
      AddToProbeOrder(u.node_id);
    }
    out.events.push_back(
        {MemberEvent::Kind::kAdded, u.node_id, u.addr, u.state, u.state, u.incarnation});
    out.links_changed = out.links_changed || Eligible(it->second);
    Enqueue(u);
    return;
  }
  Entry& e = it->second;
  const std::uint32_t weight = std::max<std::uint32_t>(u.weight, 1);
  if (u.incarnation == e.incarnation && weight > e.weight && e.state != MemberState::kRemoved) {
    // The member's weight at its current incarnation: it replaces the 1 assumed for a member
    // first met on a link (OnLinkUp), whatever the state this update says. Passed on.
    e.weight = weight;
    Enqueue(UpdateOf(e));
  }
  MemberState state = u.state;
  if (e.state == MemberState::kRemoved) {
    // Removed for good: only the member itself mints a higher incarnation (by restarting).
    if (u.incarnation <= e.incarnation) return;
  } else if (state == MemberState::kDown && e.verified &&
             (e.state == MemberState::kAlive ||
              (e.state == MemberState::kSuspect && !e.unreachable))) {
    // Another node's verdict before our own timers agree: suspect it, and let our timers (and
    // its refutation) decide. Keeps a node that was cut off for long from taking down members
    // everyone else can reach. (In a real failure every node's timer runs out within the
    // dissemination delay of the first.)
    state = MemberState::kSuspect;
  }
  if (from_sync && state == MemberState::kSuspect && e.state == MemberState::kAlive && e.verified &&
      u.incarnation == e.incarnation) {
    // A table sent when a link opens may hold suspicions a node made while cut off; they
    // travel only as gossip (the suspecter also tells the member itself when it probes it).
    return;
  }
  const bool newer = u.incarnation > e.incarnation ||
                     (u.incarnation == e.incarnation && Rank(state) > Rank(e.state));
  if (!newer) return;
  if (!u.addr.empty() && u.addr != e.addr) e.addr = u.addr;
  if (u.incarnation > e.incarnation) e.weight = weight;  // at the same one, the larger (above)
  if (state == MemberState::kAlive) {
    // A new incarnation: the member itself spoke, recently.
    e.last_seen = now;
    e.verified = true;
  }
  SetState(e, state, u.incarnation, now, out);
  Enqueue(UpdateOf(e));
}

void Membership::ApplySelf(const MemberUpdate& u, Actions& out) {
  Entry& self = members_.at(options_.self_id);
  if (u.state == MemberState::kRemoved) {
    if (u.incarnation >= incarnation_ && !self_removed_) {
      // An operator removed this node. It does not refute (that would undo the operator's
      // decision); it stays out until it restarts, which raises its incarnation.
      self_removed_ = true;
      incarnation_ = u.incarnation;
      self.incarnation = incarnation_;
      self.state = MemberState::kRemoved;
      probe_.reset();
      out.events.push_back({MemberEvent::Kind::kSelfRemoved, self.id, self.addr,
                            MemberState::kAlive, MemberState::kRemoved, incarnation_});
      out.links_changed = true;
    }
    return;
  }
  if (self_removed_) return;
  if ((u.state != MemberState::kAlive && u.incarnation >= incarnation_) ||
      u.incarnation > incarnation_) {
    incarnation_ = u.incarnation + 1;  // u.incarnation <= kMaxIncarnation: no overflow
    self.incarnation = incarnation_;
    out.events.push_back({MemberEvent::Kind::kRefuted, self.id, self.addr, u.state,
                          MemberState::kAlive, incarnation_});
    Enqueue(UpdateOf(self));
  } else if (u.state != MemberState::kAlive) {
    // An old suspicion still travels (the sender missed our refutation): send it again.
    Enqueue(UpdateOf(self));
  }
}

void Membership::SetState(Entry& e, MemberState state, std::uint64_t incarnation, Millis now,
                          Actions& out) {
  const MemberState old = e.state;
  const bool was_eligible = Eligible(e);
  const bool new_suspicion =
      state == MemberState::kSuspect && (old != state || incarnation != e.incarnation);
  e.incarnation = incarnation;
  e.state = state;
  if (old != state || new_suspicion) e.state_since = now;
  if (state == MemberState::kSuspect) {
    if (new_suspicion) e.unreachable = false;
    suspects_.insert(e.id);
  } else {
    e.unreachable = false;
    suspects_.erase(e.id);
  }
  if (old == MemberState::kRemoved && state != MemberState::kRemoved) {
    --removed_count_;
    AddToProbeOrder(e.id);
  } else if (old != MemberState::kRemoved && state == MemberState::kRemoved) {
    ++removed_count_;
  }
  if (old != state) {
    out.events.push_back({MemberEvent::Kind::kChanged, e.id, e.addr, old, state, incarnation});
  }
  if (was_eligible != Eligible(e)) out.links_changed = true;
}

void Membership::Enqueue(const MemberUpdate& u) {
  queue_[u.node_id] = Broadcast{u, 0, ++broadcast_order_};
}

std::vector<MemberUpdate> Membership::Piggyback(std::uint64_t to) {
  std::vector<MemberUpdate> updates;
  // A member we do not think alive hears what we think first, so it can refute at once.
  if (to != 0 && to != options_.self_id) {
    if (auto it = members_.find(to);
        it != members_.end() && it->second.state != MemberState::kAlive) {
      updates.push_back(UpdateOf(it->second));
    }
  }
  if (queue_.empty()) return updates;
  std::vector<Broadcast*> pending;
  pending.reserve(queue_.size());
  for (auto& [id, b] : queue_) {
    if (updates.empty() || id != to) pending.push_back(&b);
  }
  // Fewest transmissions first, then newest.
  const std::size_t take = std::min(pending.size(), options_.max_piggyback - updates.size());
  std::partial_sort(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(take),
                    pending.end(), [](const Broadcast* a, const Broadcast* b) {
                      return a->transmits != b->transmits ? a->transmits < b->transmits
                                                          : a->order > b->order;
                    });
  const unsigned limit = RetransmitLimit();
  std::vector<std::uint64_t> done;
  for (std::size_t i = 0; i < take; ++i) {
    Broadcast& b = *pending[i];
    updates.push_back(b.update);
    if (++b.transmits >= limit) done.push_back(b.update.node_id);
  }
  for (std::uint64_t id : done) queue_.erase(id);
  return updates;
}

void Membership::Send(std::uint64_t to, net::Message m, Actions& out) {
  Outgoing o{to, "", false, std::move(m)};
  if (auto it = members_.find(to); it != members_.end()) {
    o.addr = it->second.addr;
    o.linked = it->second.linked;
  }
  out.send.push_back(std::move(o));
}

void Membership::SendToAddr(const std::string& addr, net::Message m, Actions& out) {
  out.send.push_back(Outgoing{0, addr, false, std::move(m)});
}

std::vector<net::MemberSync> Membership::SyncMessages(bool want_reply) const {
  std::vector<net::MemberSync> msgs(1, net::MemberSync{want_reply, {}});
  for (const auto& [id, e] : members_) {
    if (msgs.back().members.size() == net::kMaxSyncMembers) {
      msgs.push_back(net::MemberSync{want_reply, {}});
    }
    msgs.back().members.push_back(UpdateOf(e));
  }
  return msgs;
}

// --- Probes -------------------------------------------------------------------------------

void Membership::StartProbe(Millis now, Actions& out) {
  std::uint64_t target = 0;
  for (std::size_t tries = 0; tries <= members_.size() && target == 0; ++tries) {
    if (probe_index_ >= probe_order_.size()) {
      probe_order_.clear();
      for (const auto& [id, e] : members_) {
        if (id != options_.self_id && e.state != MemberState::kRemoved) probe_order_.push_back(id);
      }
      std::shuffle(probe_order_.begin(), probe_order_.end(), rng_);
      probe_index_ = 0;
      if (probe_order_.empty()) return;
    }
    const std::uint64_t id = probe_order_[probe_index_++];
    auto it = members_.find(id);
    if (it != members_.end() && id != options_.self_id &&
        it->second.state != MemberState::kRemoved) {
      target = id;
    }
  }
  if (target == 0) return;
  probe_ = Probe{target, next_seq_++, now, false, false, members_.at(target).incarnation};
  Send(target, net::MemberPing{probe_->seq, Piggyback(target)}, out);
}

void Membership::SendIndirect(Actions& out) {
  const Entry& target = members_.at(probe_->target);
  // A member already down is probed directly only: asking others costs k messages a period.
  if (target.state == MemberState::kDown || options_.indirect_probes == 0) return;
  std::vector<std::uint64_t> helpers;
  for (const auto& [id, e] : members_) {
    if (id != options_.self_id && id != probe_->target && e.state == MemberState::kAlive) {
      helpers.push_back(id);
    }
  }
  const std::size_t k = std::min(options_.indirect_probes, helpers.size());
  for (std::size_t i = 0; i < k; ++i) {
    std::uniform_int_distribution<std::size_t> pick(i, helpers.size() - 1);
    std::swap(helpers[i], helpers[pick(rng_)]);
    Send(helpers[i], net::MemberPingReq{probe_->seq, target.id, target.addr, Piggyback(helpers[i])},
         out);
  }
}

void Membership::ProbeFailed(Millis now, Actions& out) {
  auto it = members_.find(probe_->target);
  if (it == members_.end() || it->second.state != MemberState::kAlive) return;
  // Not if it showed it is up since the probe started (a new incarnation, a message from it):
  // a probe lost in a partition that just healed says nothing about the member now.
  if (it->second.incarnation != probe_->incarnation ||
      (it->second.last_seen && *it->second.last_seen >= probe_->started)) {
    return;
  }
  SetState(it->second, MemberState::kSuspect, it->second.incarnation, now, out);
  Enqueue(UpdateOf(it->second));
}

void Membership::CheckSuspects(Millis now, Actions& out) {
  if (suspects_.empty()) return;
  const Millis suspicion = SuspicionTimeout();
  const Millis down = std::max(options_.down_after, suspicion);
  std::optional<bool> isolated;
  const std::vector<std::uint64_t> ids(suspects_.begin(), suspects_.end());
  for (std::uint64_t id : ids) {
    Entry& e = members_.at(id);
    if (!e.unreachable && now - e.state_since >= suspicion) {
      e.unreachable = true;
      out.events.push_back(
          {MemberEvent::Kind::kUnreachable, e.id, e.addr, e.state, e.state, e.incarnation});
      out.links_changed = true;
    }
    if (e.unreachable && now - e.state_since >= down) {
      // A node that reaches no other member cannot tell their failure from its own isolation:
      // it declares nobody down (with one other member, there is nothing to compare with).
      if (!isolated) {
        std::size_t others = 0;
        for (const auto& [oid, o] : members_) {
          if (oid != options_.self_id && o.state != MemberState::kRemoved) ++others;
        }
        isolated = others >= 2 && !AnyOtherAlive();
      }
      if (*isolated) {
        // ...and the time it spends cut off does not count: once it reaches others again,
        // the suspicion still needs the rest of down_after to go unrefuted, time enough for
        // its probes to reach the members it suspects and for them to refute.
        e.state_since = now - suspicion;
        continue;
      }
      SetState(e, MemberState::kDown, e.incarnation, now, out);
      Enqueue(UpdateOf(e));
    }
  }
}

void Membership::AddToProbeOrder(std::uint64_t id) {
  // At a random place among those not yet probed in this pass, so a new member is probed
  // within it (the one it displaces moves to the end, still in this pass).
  probe_order_.push_back(id);
  std::uniform_int_distribution<std::size_t> pick(std::min(probe_index_, probe_order_.size() - 1),
                                                  probe_order_.size() - 1);
  std::swap(probe_order_[pick(rng_)], probe_order_.back());
}

bool Membership::Eligible(const Entry& e) const {
  if (e.id == options_.self_id) return !self_removed_;
  return e.state == MemberState::kAlive || (e.state == MemberState::kSuspect && !e.unreachable);
}

bool Membership::AnyOtherAlive() const {
  for (const auto& [id, e] : members_) {
    if (id != options_.self_id && e.state == MemberState::kAlive) return true;
  }
  return false;
}

std::size_t Membership::CountedMembers() const { return members_.size() - removed_count_; }

}  // namespace foreverfs::server
