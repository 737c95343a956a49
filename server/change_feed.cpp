#include "server/change_feed.h"

#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "server/replication_common.h"

namespace foreverfs::server {
namespace {

namespace asio = boost::asio;
using replication::Clock;
using replication::Short;

constexpr std::size_t kFeedBatchRecords = 512;
// Encoded bytes per batch: a quarter of a frame, which any single record fits in
// (model::ValidateInode).
constexpr std::size_t kFeedBatchBytes = net::kMaxFrameSize / 4;
constexpr std::size_t kMaxQueuedBytes = 8 * kMiB;  // per link, before the feed waits
// A FeedAck follows applied batches after at most this long (one per link per interval).
constexpr auto kAckDelay = std::chrono::milliseconds(1000);
constexpr auto kNotifyDelay = std::chrono::milliseconds(2);
// Relayed confirmations: changed ones this often, all of them every kRelayFullEvery rounds
// (a relay that arrived while an earlier one still waited was ignored).
constexpr auto kRelayInterval = std::chrono::milliseconds(2000);
constexpr std::uint64_t kRelayFullEvery = 10;
constexpr std::size_t kHistory = 256;

}  // namespace

ChangeFeed::ChangeFeed(asio::io_context& io, FileServer& fs, std::shared_ptr<const PeerLinks> links,
                       std::shared_ptr<StorageWork> storage,
                       std::function<void(const InodeRecord&)> on_manifest)
    : io_(io),
      fs_(fs),
      links_(std::move(links)),
      storage_(std::move(storage)),
      on_manifest_(std::move(on_manifest)) {}

void ChangeFeed::Open(const std::shared_ptr<net::Link>& link) {
  const std::uint64_t node = link->Peer().node_id;
  // The peer may have subscribed already on this link (it counted it long-lived first).
  auto it = peers_.find(node);
  if (it == peers_.end() || it->second.link != link) peers_[node] = Peer{link};
  const std::uint64_t cursor = fs_.ns().Cursor(node);
  link->Send(net::Subscribe{cursor});
  // What we hold of its feed already, so that it can purge without waiting for a new change.
  SendAck(node, link, cursor);
  Peer& p = peers_[node];
  p.following = true;
  p.applied = p.acked = cursor;
  // Everything of its feed through our cursor is here, at or before our feed's end now.
  if (p.history.empty()) Remember(p, cursor);
  ArmRelay();
}

void ChangeFeed::Remember(Peer& p, std::uint64_t their_cursor) {
  const std::uint64_t ours = fs_.ns().LastSeq();
  if (!p.history.empty() && p.history.back().first >= their_cursor) return;
  if (p.history.size() >= kHistory) {
    // Keep every other entry (the last one too): a coarser history only confirms less.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> thin;
    for (std::size_t i = 0; i < p.history.size(); i += 2) thin.push_back(p.history[i]);
    if (thin.back() != p.history.back()) thin.push_back(p.history.back());
    p.history = std::move(thin);
  }
  p.history.emplace_back(their_cursor, ours);
}

void ChangeFeed::ArmRelay() {
  if (relay_armed_) return;
  relay_armed_ = true;
  auto timer = std::make_shared<asio::steady_timer>(io_, kRelayInterval);
  timer->async_wait([weak = weak_from_this(), timer](boost::system::error_code) {
    auto self = weak.lock();
    if (!self) return;
    self->relay_armed_ = false;
    self->RelayAcks();
    if (!self->peers_.empty()) self->ArmRelay();
  });
}

// A member M that confirmed our feed through s (directly or relayed) holds every record of
// peer P's feed that we had applied when our feed ended at or before s: P's feed through the
// cursor `c` of the last history entry at or below s. Whatever M wrote before is in our feed
// through our end now (we counted its confirmation only once we had applied it), so P counts
// the relay once its cursor in our feed reaches that.
void ChangeFeed::RelayAcks() {
  const bool full = relay_rounds_++ % kRelayFullEvery == 0;
  auto members = fs_.ns().Members();
  const std::uint64_t via_seq = fs_.ns().LastSeq();
  for (auto& [node, p] : peers_) {
    if (p.history.empty() || p.feed_broken) continue;
    const std::uint64_t cap = fs_.ns().AckCap(node);
    net::RelayedFeedAcks msg{via_seq, {}};
    for (const auto& m : members) {
      if (m.node == node) continue;
      auto it =
          std::upper_bound(p.history.begin(), p.history.end(), m.confirmed,
                           [](std::uint64_t s, const std::pair<std::uint64_t, std::uint64_t>& h) {
                             return s < h.second;
                           });
      if (it == p.history.begin()) continue;
      const std::uint64_t applied = std::min(std::prev(it)->first, cap);
      auto& last = p.relayed[m.node];
      if (applied == 0 || (!full && applied == last)) continue;
      last = applied;
      msg.acks.push_back({m.node, applied});
      if (msg.acks.size() == net::kMaxSyncMembers) break;
    }
    if (!msg.acks.empty()) p.link->Send(std::move(msg));
  }
}

void ChangeFeed::OnRelayedFeedAcks(std::uint64_t node, const net::RelayedFeedAcks& msg) {
  // Only from a peer whose feed we apply: the wait is on our cursor in it.
  if (!peers_.contains(node)) return;
  fs_.ns().RecordRelayedAcks(node, msg);
}

void ChangeFeed::Close(std::uint64_t node) { peers_.erase(node); }

void ChangeFeed::OnSubscribe(std::uint64_t node, const net::Subscribe& msg) {
  auto it = peers_.find(node);
  if (it == peers_.end()) {
    // A peer that holds this link long-lived while we do not (yet): serve it our feed.
    auto link = links_->Find(node);
    if (!link) return;
    it = peers_.emplace(node, Peer{link}).first;
  }
  Peer& p = it->second;
  if (p.subscribed && p.following && !msg.answer) {
    // A second Subscribe on a link that carried the first: the peer's end dropped this
    // link's feed state (the link turned short-lived there and back while it stayed open),
    // and with it our subscription to its feed, which nothing else would renew. Our
    // Subscribe goes as an answer, which is never answered: two ends that both took the
    // link back cannot answer each other in a loop.
    p.link->Send(net::Subscribe{fs_.ns().Cursor(node), true});
  }
  auto since = msg.since;
  if (since > fs_.ns().LastSeq()) since = 0;  // our feed restarted: send it all
  p.feed_cursor = since;
  p.subscribed = true;
  Pump(node);
}

void ChangeFeed::Pump(std::uint64_t node) {
  auto it = peers_.find(node);
  if (it == peers_.end() || !it->second.subscribed) return;
  Peer& p = it->second;
  for (;;) {
    if (p.link->QueuedBytes() > kMaxQueuedBytes) {
      SchedulePump(node);
      return;
    }
    auto changes = fs_.ns().ChangesSince(p.feed_cursor, kFeedBatchRecords, kFeedBatchBytes);
    if (!changes.ok()) {
      spdlog::error("reading the change feed for peer {}: {}", Short(node),
                    changes.status().message());
      return;
    }
    bool empty = changes->inodes.empty() && changes->dentries.empty();
    if (empty && changes->up_to == p.feed_cursor) return;
    p.feed_cursor = changes->up_to;
    p.link->Send(std::move(*changes));
    if (empty) return;
  }
}

void ChangeFeed::SchedulePump(std::uint64_t node) {
  auto& p = peers_[node];
  if (p.pump_scheduled) return;
  p.pump_scheduled = true;
  auto timer = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(20));
  timer->async_wait([self = shared_from_this(), node, timer](boost::system::error_code) {
    auto it = self->peers_.find(node);
    if (it == self->peers_.end()) return;
    it->second.pump_scheduled = false;
    self->Pump(node);
  });
}

void ChangeFeed::PumpAll() {
  for (auto& [node, p] : peers_) Pump(node);
}

void ChangeFeed::OnChanges(std::uint64_t node, net::Changes&& changes) {
  if (auto p = peers_.find(node); p != peers_.end()) {
    auto& peer = p->second;
    if (peer.feed_broken) return;
    const std::size_t n = changes.inodes.size() + changes.dentries.size();
    peer.records_received += n;
    peer.peer_seq = changes.up_to;
    // A long catch-up of the namespace says how far it got every 5 s.
    const auto now = Clock::now();
    if (n > 0 && now - peer.last_progress_log >= std::chrono::seconds(5)) {
      if (peer.last_progress_log != Clock::time_point{}) {
        spdlog::info("catch-up from peer {}: {} records received, at its change {}", Short(node),
                     peer.records_received, peer.peer_seq);
      }
      peer.last_progress_log = now;
    }
  }
  auto won = fs_.ApplyRemote(changes, node);
  if (!won.ok()) {
    // The cursor stayed before this batch (it moves in the same transaction). Close the link:
    // the next one subscribes from the cursor and the batch comes again.
    spdlog::error("applying changes from peer {}: {}; closing the link to receive them again",
                  Short(node), won.status().message());
    if (auto p = peers_.find(node); p != peers_.end()) {
      p->second.feed_broken = true;
      p->second.link->Close("its changes could not be applied: " + won.status().message());
    }
    return;
  }
  ScheduleAck(node, changes.up_to);
  if (auto p = peers_.find(node); p != peers_.end()) Remember(p->second, changes.up_to);
  if (won->empty()) return;
  spdlog::debug("peer {}: applied {} inode and {} entry changes", Short(node), won->inodes.size(),
                won->dentries.size());
  for (const auto& r : won->inodes) {
    if (!r.deleted) on_manifest_(r);
  }
  PumpAll();  // relay to the others
}

// It purges a tombstone only once every member confirmed it.
void ChangeFeed::ScheduleAck(std::uint64_t node, std::uint64_t applied) {
  auto it = peers_.find(node);
  if (it == peers_.end()) return;
  Peer& p = it->second;
  p.applied = applied;
  if (p.ack_scheduled || p.applied == p.acked) return;
  p.ack_scheduled = true;
  auto timer = std::make_shared<asio::steady_timer>(io_, kAckDelay);
  timer->async_wait(
      [self = shared_from_this(), node, link = p.link, timer](boost::system::error_code) {
        auto it = self->peers_.find(node);
        if (it == self->peers_.end() || it->second.link != link) return;
        Peer& p = it->second;
        p.ack_scheduled = false;
        if (p.feed_broken || p.applied == p.acked) return;
        p.acked = p.applied;
        self->SendAck(node, link, p.applied);
      });
}

// An ack goes out only once what it confirms is on disk (the namespace commits without
// waiting for the disk): a member that loses its last commits to a power cut must not have
// confirmed them, or their tombstones would be purged while it still holds the live records.
// It never confirms past a batch that held a record this node refused (AckCap).
void ChangeFeed::SendAck(std::uint64_t node, const std::shared_ptr<net::Link>& link,
                         std::uint64_t applied) {
  storage_->Run(
      [self = shared_from_this()] { return self->fs_.ns().Sync(); },
      [self = shared_from_this(), node, link, applied](Status synced) {
        if (!synced.ok()) {
          spdlog::warn("not confirming peer {}'s changes: {}", Short(node), synced.message());
          return;
        }
        auto it = self->peers_.find(node);
        if (it == self->peers_.end() || it->second.link != link) return;
        link->Send(
            net::FeedAck{std::min(applied, self->fs_.ns().AckCap(node)), self->fs_.ns().LastSeq()});
      });
}

void ChangeFeed::OnFeedAck(std::uint64_t node, const net::FeedAck& ack) {
  if (auto s = fs_.ns().RecordAck(node, ack.applied, ack.own_seq); !s.ok()) {
    spdlog::error("recording how far peer {} is in our changes: {}", Short(node), s.message());
  }
}

void ChangeFeed::NotifyLocalChange() {
  // With no peer connected there is no one to tell: a peer that connects later subscribes
  // from its cursor and gets the change then.
  if (links_->Count() == 0) return;
  if (notify_posted_.exchange(true)) return;
  // Changes that follow within kNotifyDelay go out in the same pump: a tar of small files
  // commits every few hundred microseconds, and waking the event thread for each costs more
  // than the change.
  auto timer = std::make_shared<asio::steady_timer>(io_, kNotifyDelay);
  timer->async_wait([self = shared_from_this(), timer](boost::system::error_code) {
    self->notify_posted_ = false;
    self->PumpAll();
  });
}

std::vector<std::uint64_t> ChangeFeed::Subscribers() const {
  std::vector<std::uint64_t> out;
  for (const auto& [node, p] : peers_) {
    if (p.subscribed && !p.feed_broken) out.push_back(node);
  }
  return out;
}

ChangeFeed::Progress ChangeFeed::PeerProgress(std::uint64_t node, std::uint64_t last_seq) const {
  Progress out;
  auto it = peers_.find(node);
  if (it == peers_.end()) return out;
  const Peer& p = it->second;
  out.changes_to_send = p.subscribed && last_seq > p.feed_cursor ? last_seq - p.feed_cursor : 0;
  out.records_received = p.records_received;
  out.peer_seq = p.peer_seq;
  return out;
}

}  // namespace foreverfs::server
