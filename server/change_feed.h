#pragma once
// ChangeFeed: the namespace half of replication. On every new link each side subscribes to the
// other's change feed from the cursor it persisted, so a node that was away (or is new)
// catches up, and live changes stream the same way. This class pumps our feed to every peer
// that subscribed (with backpressure on the link's send queue), applies the batches a peer
// streams to us (FileServer::ApplyRemote; applied remote changes enter our own feed, so they
// relay onwards) and acknowledges them (FeedAck, once durable), and records the acks peers send
// us, which decide when a tombstone may be purged.
//
// Threading: event thread, except NotifyLocalChange (any thread). Owns the per-peer feed state
// (cursor, subscription, progress, acks); reads the links from PeerLinks. Held by shared_ptr:
// its timers keep it alive.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "net/transport.h"
#include "server/file_server.h"
#include "server/peer_links.h"
#include "server/storage_work.h"

namespace foreverfs::server {

class ChangeFeed : public std::enable_shared_from_this<ChangeFeed> {
 public:
  // `on_manifest` is called (event thread) with every live inode record a peer's batch made
  // win here: its chunks may need fetching.
  ChangeFeed(boost::asio::io_context& io, FileServer& fs, std::shared_ptr<const PeerLinks> links,
             std::shared_ptr<StorageWork> storage,
             std::function<void(const InodeRecord&)> on_manifest);

  // PeerLinks admitted `link`: subscribe to its feed from our cursor, and tell it how far we
  // hold its feed already (so that it can purge without waiting for a new change).
  void Open(const std::shared_ptr<net::Link>& link);
  // The peer's link closed, or turned short-lived: its feed state goes, both ways. If the
  // link turns long-lived here again while it stays open, Open subscribes anew, and the peer,
  // seeing a second Subscribe on a link that carried one, subscribes to ours again
  // (OnSubscribe).
  void Close(std::uint64_t node);

  void OnSubscribe(std::uint64_t node, const net::Subscribe& msg);
  void OnChanges(std::uint64_t node, net::Changes&& changes);
  void OnFeedAck(std::uint64_t node, const net::FeedAck& ack);
  // A neighbour relays what members it knows of confirmed of our feed.
  void OnRelayedFeedAcks(std::uint64_t node, const net::RelayedFeedAcks& msg);

  // A local commit: pump it to the peers shortly (changes that follow within a few ms go in
  // the same pump). Any thread.
  void NotifyLocalChange();

  struct Progress {
    std::uint64_t changes_to_send = 0;  // our sequence numbers not streamed to it yet
    std::uint64_t records_received = 0;
    std::uint64_t peer_seq = 0;
  };
  // Peers that subscribed to our feed (they apply it), by node id. Event thread.
  std::vector<std::uint64_t> Subscribers() const;
  // The feed to and from `node` (zeros if it has no link); `last_seq` is our feed's end.
  Progress PeerProgress(std::uint64_t node, std::uint64_t last_seq) const;

 private:
  struct Peer {
    std::shared_ptr<net::Link> link;
    std::uint64_t feed_cursor = 0;
    bool subscribed = false;  // it applies our feed
    bool following = false;   // we subscribed to its feed (Open)
    bool pump_scheduled = false;
    std::uint64_t records_received = 0;
    std::uint64_t peer_seq = 0;
    std::chrono::steady_clock::time_point last_progress_log{};
    // A batch from this link failed to apply: later batches on it are ignored (they would move
    // the cursor past the failed one) until the link is replaced.
    bool feed_broken = false;
    // Its feed applied through here (our cursor, persisted), and the last value we told it.
    std::uint64_t applied = 0;
    std::uint64_t acked = 0;
    bool ack_scheduled = false;
    // Its feed through `first` had been applied here when our own feed ended at `second`
    // (ascending in both), thinned to at most kHistory entries: what a member that holds our
    // feed through s holds of its feed (RelayAcks).
    std::vector<std::pair<std::uint64_t, std::uint64_t>> history;
    std::map<std::uint64_t, std::uint64_t> relayed;  // member -> applied, as last relayed to it
  };

  void Pump(std::uint64_t node);
  void SchedulePump(std::uint64_t node);
  void PumpAll();
  // Tells the peer how far into its feed we are (FeedAck), at most once per kAckDelay.
  void ScheduleAck(std::uint64_t node, std::uint64_t applied);
  void SendAck(std::uint64_t node, const std::shared_ptr<net::Link>& link, std::uint64_t applied);
  // Every kRelayInterval: tells each peer how far the members it may have no link to hold its
  // feed, from what they confirmed of ours (net::RelayedFeedAcks).
  void RelayAcks();
  void ArmRelay();
  void Remember(Peer& p, std::uint64_t their_cursor);

  boost::asio::io_context& io_;
  FileServer& fs_;
  const std::shared_ptr<const PeerLinks> links_;
  const std::shared_ptr<StorageWork> storage_;
  const std::function<void(const InodeRecord&)> on_manifest_;
  std::map<std::uint64_t, Peer> peers_;  // event thread
  std::atomic<bool> notify_posted_{false};
  bool relay_armed_ = false;        // event thread
  std::uint64_t relay_rounds_ = 0;  // event thread
};

}  // namespace foreverfs::server
