#include "server/member_links.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "crypto/crypto.h"
#include "server/replication_common.h"

namespace foreverfs::server {

using replication::Short;

struct MemberLinks::Timer {
  explicit Timer(boost::asio::io_context& io) : t(io) {}
  boost::asio::steady_timer t;
};

MemberLinks::MemberLinks(boost::asio::io_context& io, NamespaceDb& ns,
                         std::shared_ptr<const PeerLinks> links, MemberLinksOptions options)
    : io_(io), ns_(ns), links_(std::move(links)), options_(options) {}

MemberLinks::~MemberLinks() = default;

MemberLinks::SteadyMs MemberLinks::Now() const {
  return std::chrono::duration_cast<SteadyMs>(std::chrono::steady_clock::now().time_since_epoch());
}

void MemberLinks::Start(const std::string& self_addr, const std::vector<std::string>& seeds,
                        Dialer dialer) {
  dialer_ = std::move(dialer);
  MembershipOptions o;
  o.self_id = ns_.node_id();
  o.self_addr = self_addr;
  o.max_links = options_.max_links;
  o.down_after = options_.down_after;
  o.protocol_period = options_.protocol_period;
  o.ack_timeout = options_.protocol_period / 2;
  o.seed = crypto::RandomU64();
  o.weight = std::clamp<std::uint32_t>(options_.weight, 1, Placement::kMaxWeight);
  const auto now = Now();
  membership_ = std::make_unique<Membership>(o, now);
  std::vector<MemberRecord> rows;
  for (const auto& m : ns_.LoadClusterMembers()) {
    rows.push_back({m.node, m.addr, static_cast<net::MemberState>(m.state), m.incarnation,
                    m.unseen_ms, m.weight});
  }
  Actions actions = membership_->Import(rows, now);
  actions.Append(membership_->Join(seeds, now));
  actions.links_changed = true;
  timer_ = std::make_unique<Timer>(io_);
  Handle(std::move(actions));
  dirty_ = true;
  Persist();
  Arm();
}

void MemberLinks::Stop() {
  if (timer_) timer_->t.cancel();
  if (membership_) {
    dirty_ = true;
    Persist();
  }
}

void MemberLinks::Arm() {
  if (!timer_ || !membership_) return;
  // At least every 200 ms: short-lived links and queued messages are swept on the same tick.
  const auto now = Now();
  auto next = std::min(membership_->NextDeadline(), now + SteadyMs(200));
  if (next < now) next = now;
  timer_->t.expires_after(next - now);
  timer_->t.async_wait([weak = weak_from_this()](boost::system::error_code ec) {
    if (ec) return;
    if (auto self = weak.lock()) self->OnTimer();
  });
}

void MemberLinks::OnTimer() {
  const auto now = Now();
  Handle(membership_->Tick(now));
  // Short-lived links idle for short_idle close; messages for unreachable addresses go.
  for (auto& [node, link] : links_->links()) {
    if (planned_.contains(node)) continue;
    auto used = last_used_.find(node);
    if (busy_ && busy_(node)) {
      last_used_[node] = now;  // a request of ours waits on it
      continue;
    }
    if (used == last_used_.end()) {
      last_used_[node] = now;
    } else if (now - used->second > options_.short_idle) {
      auto a = short_addr_.find(node);
      if (a != short_addr_.end() && short_dials_.erase(a->second) && dialer_.remove) {
        dialer_.remove(a->second, "short-lived link idle");  // closes it, no redial
      } else {
        link->Close("short-lived link idle");
      }
    }
  }
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (now - it->second.since > options_.short_idle) {
      if (short_dials_.erase(it->first) && !dialed_.contains(it->first) && dialer_.remove) {
        dialer_.remove(it->first, "could not reach it for a membership message");
      }
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
  if (dirty_ && now - last_persist_ > SteadyMs(5000)) Persist();
  Arm();
}

bool MemberLinks::Opened(const std::shared_ptr<net::Link>& link) {
  const auto& info = link->Peer();
  const std::uint64_t node = info.node_id;
  const auto now = Now();
  last_used_[node] = now;
  if (!membership_) return true;  // not started (tests without membership): every link is
  const std::string addr = PeerLinks::DialableAddr(info);
  // Messages waiting for this peer, by its advertised address.
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->first == addr || it->first == info.listen_addr) {
      for (auto& m : it->second.messages) link->Send(std::move(m));
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
  // A link we dialed for a short-lived purpose: remembered, so that closing it when idle also
  // stops the transport redialing it.
  for (const std::string& a : {addr, info.listen_addr}) {
    if (short_dials_.contains(a) && !dialed_.contains(a)) short_addr_[node] = a;
  }
  Actions actions;
  const bool planned = planned_.contains(node);
  if (planned) actions = membership_->OnLinkUp(node, addr, now);
  Handle(std::move(actions));
  return planned;
}

void MemberLinks::Closed(std::uint64_t node) {
  last_used_.erase(node);
  // A short-lived link that closed (either side) is done: the transport stops redialing it,
  // and the next probe or fetch that needs the member dials afresh.
  if (auto a = short_addr_.find(node); a != short_addr_.end()) {
    if (short_dials_.erase(a->second) && !dialed_.contains(a->second) && dialer_.remove) {
      dialer_.remove(a->second, "short-lived link closed");
    }
    short_addr_.erase(a);
  }
  if (membership_) membership_->OnLinkDown(node);
}

void MemberLinks::OnMessage(std::uint64_t from, const net::Message& m) {
  if (!membership_) return;
  Handle(membership_->OnMessage(from, m, Now()));
}

void MemberLinks::Reach(const cas::ChunkId& id, std::size_t n, std::uint64_t hint) {
  if (!membership_) return;
  auto map = PlacementMap();
  std::vector<std::uint64_t> candidates;
  if (map) candidates = map->Pick(id, n);
  if (hint != 0) candidates.push_back(hint);
  ReachNodes(candidates, fmt::format("chunk {}", cas::Hex(id)));
}

void MemberLinks::ReachNodes(const std::vector<std::uint64_t>& nodes, std::string_view why) {
  if (!membership_) return;
  const auto now = Now();
  for (std::uint64_t node : nodes) {
    if (node == membership_->self_id()) continue;
    if (links_->Find(node)) {
      last_used_[node] = now;
      continue;
    }
    auto m = membership_->Member(node);
    if (!m || m->addr.empty() || m->unreachable || dialed_.contains(m->addr)) {
      spdlog::debug("{}: not dialing member {} ({}{}{})", why, Short(node),
                    m ? m->addr : "unknown", m && m->unreachable ? ", unreachable" : "",
                    m && dialed_.contains(m->addr) ? ", planned" : "");
      continue;
    }
    auto& p = pending_[m->addr];  // swept with the queued messages if it does not connect
    if (p.messages.empty()) p.since = now;
    if (short_dials_.insert(m->addr).second && dialer_.add) {
      spdlog::debug("dialing member {} ({}) for {}", Short(node), m->addr, why);
      dialer_.add(m->addr);
    }
  }
}

Status MemberLinks::Remove(std::uint64_t node) {
  if (!membership_) return Err(Code::kInvalid, "membership has not started");
  auto actions = membership_->RemoveMember(node, Now());
  if (!actions.ok()) return actions.status();
  Handle(std::move(*actions));
  if (auto s = ns_.ForgetMember(node); !s.ok()) return s;
  dirty_ = true;
  Persist();
  return Ok();
}

void MemberLinks::Handle(Actions&& actions) {
  for (auto& out : actions.send) Send(std::move(out));
  for (const auto& e : actions.events) {
    switch (e.kind) {
      case MemberEvent::Kind::kAdded:
        spdlog::info("member {} ({}) joined, {}", Short(e.node_id), e.addr,
                     net::MemberStateName(e.state));
        if (e.state != net::MemberState::kRemoved) replication::AddMember(ns_, e.node_id);
        break;
      case MemberEvent::Kind::kChanged:
        spdlog::info("member {} ({}): {} -> {} (incarnation {})", Short(e.node_id), e.addr,
                     net::MemberStateName(e.old_state), net::MemberStateName(e.state),
                     e.incarnation);
        if (e.state == net::MemberState::kRemoved) {
          (void)ns_.ForgetMember(e.node_id);
        } else if (e.old_state == net::MemberState::kRemoved) {
          // Back after a removal (it restarted): our deletions wait for it again.
          replication::AddMember(ns_, e.node_id);
        }
        break;
      case MemberEvent::Kind::kUnreachable:
        spdlog::warn(
            "member {} ({}) has not answered for the suspicion timeout; down in {} s "
            "unless it answers",
            Short(e.node_id), e.addr,
            std::chrono::duration_cast<std::chrono::seconds>(options_.down_after).count());
        break;
      case MemberEvent::Kind::kRefuted:
        spdlog::info("refuted a suspicion of this node (incarnation {})", e.incarnation);
        break;
      case MemberEvent::Kind::kSelfRemoved:
        spdlog::warn(
            "this node was removed from the cluster by an operator; it stays out "
            "until it restarts");
        break;
    }
    dirty_ = true;
  }
  if (actions.links_changed || !actions.events.empty()) Reconcile();
  if (Publish() && placement_observer_) placement_observer_();
}

void MemberLinks::Send(Outgoing&& out) {
  if (out.to != 0) {
    if (auto link = links_->Find(out.to)) {
      last_used_[out.to] = Now();
      link->Send(std::move(out.message));
      return;
    }
  }
  if (out.addr.empty()) return;
  // No link: a short-lived one, dialed now; the message waits for it (bounded).
  auto& p = pending_[out.addr];
  if (p.messages.empty()) p.since = Now();
  if (p.messages.size() < 16) p.messages.push_back(std::move(out.message));
  if (!dialed_.contains(out.addr) && short_dials_.insert(out.addr).second && dialer_.add) {
    dialer_.add(out.addr);
  }
}

void MemberLinks::Reconcile() {
  if (!membership_) return;
  std::set<std::uint64_t> planned;
  std::map<std::string, std::uint64_t> dialed;
  for (const auto& p : membership_->LinkPlan()) {
    planned.insert(p.node_id);
    if (!p.addr.empty()) dialed[p.addr] = p.node_id;
  }
  for (const auto& [addr, node] : dialed) {
    if (!dialed_.contains(addr) && dialer_.add) {
      short_dials_.erase(addr);
      dialer_.add(addr);
    }
  }
  for (const auto& [addr, node] : dialed_) {
    if (!dialed.contains(addr) && dialer_.remove) dialer_.remove(addr, "not in the link plan");
  }
  dialed_ = std::move(dialed);
  const auto old = std::move(planned_);
  planned_ = std::move(planned);
  const auto now = Now();
  // What the links that turned long-lived send (their tables) is handled after the loop, so
  // that a plan change it causes reconciles again from the top instead of inside this one.
  Actions up;
  for (auto& [node, link] : links_->links()) {
    const bool was = old.contains(node), is = planned_.contains(node);
    if (is && !was) {
      up.Append(membership_->OnLinkUp(node, PeerLinks::DialableAddr(link->Peer()), now));
    } else if (!is && was) {
      membership_->OnLinkDown(node);
      last_used_[node] = now;
    }
    if (is != was && plan_observer_) plan_observer_(node, is);
  }
  if (!up.send.empty() || !up.events.empty() || up.links_changed) Handle(std::move(up));
}

bool MemberLinks::Publish() {
  if (!membership_) return false;
  auto members = membership_->Members();
  auto placement = membership_->WeightedPlacementMembers();
  std::shared_ptr<const Placement> map;
  {
    MutexLock lock(copy_mu_);
    if (placement == placement_copy_ && placement_map_) map = placement_map_;
  }
  const bool changed = !map;  // a new list, or new weights: a new placement
  if (changed) map = std::make_shared<const Placement>(placement);
  MutexLock lock(copy_mu_);
  members_copy_ = std::move(members);
  placement_copy_ = std::move(placement);
  placement_map_ = std::move(map);
  return changed;
}

void MemberLinks::Persist() {
  if (!membership_ || !dirty_) return;
  std::vector<NamespaceDb::ClusterMember> rows;
  for (const auto& r : membership_->Export(Now())) {
    rows.push_back({r.node_id, r.addr, static_cast<std::uint8_t>(r.state), r.incarnation,
                    r.unseen_ms, r.weight});
  }
  if (auto s = ns_.SaveClusterMembers(rows); !s.ok()) {
    spdlog::error("saving the member list: {}", s.message());
    return;
  }
  dirty_ = false;
  last_persist_ = Now();
}

std::vector<MemberInfo> MemberLinks::Members() const {
  MutexLock lock(copy_mu_);
  return members_copy_;
}

std::shared_ptr<const Placement> MemberLinks::PlacementMap() const {
  MutexLock lock(copy_mu_);
  return placement_map_;
}

std::vector<std::uint64_t> MemberLinks::PlacementMembers() const {
  std::vector<std::uint64_t> ids;
  MutexLock lock(copy_mu_);
  ids.reserve(placement_copy_.size());
  for (const auto& m : placement_copy_) ids.push_back(m.id);
  return ids;
}

}  // namespace foreverfs::server
