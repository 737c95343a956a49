#pragma once
// Replicator: keeps this node's namespace and chunks in step with its peers.
//
// - Namespace: on every new link each side subscribes to the other's change feed from the
//   cursor it persisted, so a node that was away (or is new) catches up, and live changes
//   stream the same way. Applied remote changes enter our own feed, so they relay onwards.
// - Chunks: when a manifest arrives that this node should hold (every node by default;
//   the top --replicas N of a rendezvous hash otherwise), its missing chunks are pulled in the
//   background. A read of a missing chunk pulls it on demand. Every chunk received is verified
//   against its id before it is stored.
//
// Threading: LinkHandler methods run on the event thread; Fetch blocks the calling thread
// (never call it on the event thread); NotifyLocalChange may be called from any thread.

#include <chrono>
#include <functional>
#include <memory>

#include "net/transport.h"
#include "server/file_server.h"

namespace boost::asio {
class io_context;
class thread_pool;
}  // namespace boost::asio

namespace foreverfs::server {

struct ReplicatorOptions {
  int replicas = 0;  // 0: every node holds every chunk
  std::chrono::milliseconds fetch_timeout{10000};
  std::size_t background_fetches = 8;  // chunks pulled concurrently in the background
};

struct PeerStatus {
  std::uint64_t node_id = 0;
  std::string addr;    // the address others can dial it at ("" if it does not listen)
  std::string remote;  // the address we see the connection come from / go to
  bool outbound = false;
  bool connected = false;  // false: a peer that was connected once and is gone
  std::chrono::system_clock::time_point connected_since{};  // or when it went, if gone
  std::uint64_t bytes_in = 0, bytes_out = 0;                // frame bytes on the current link
  // Backlog towards and from this peer, both cheap to know exactly: our change sequence
  // numbers not yet streamed to it (0 if it has not subscribed yet), and chunk requests to it
  // not yet answered.
  std::uint64_t changes_to_send = 0;
  std::size_t chunks_in_flight = 0;
  // Namespace records received from it on this link, and its change sequence number the last
  // batch brought us to (catch-up progress: it streams everything after our cursor first).
  std::uint64_t records_received = 0;
  std::uint64_t peer_seq = 0;
  std::string last_error;  // why its previous link closed ("" if never)
  std::chrono::system_clock::time_point last_error_at{};
};

// Background chunk replication since the queue last went from empty to non-empty.
struct CatchUpStatus {
  bool running = false;
  std::size_t total = 0;  // chunks queued in this round
  std::size_t done = 0;   // fetched and stored
  std::size_t failed = 0;
  std::uint64_t bytes = 0;
  double seconds = 0;  // since the round began (until it ended, if not running)
};

// Who holds every chunk of a list (user.foreverfs.replicas / .holders).
struct HolderReport {
  std::size_t chunks = 0;  // distinct non-hole chunk ids asked about
  bool local = false;      // this node holds all of them
  struct Holder {
    std::uint64_t node_id = 0;
    std::string addr;
  };
  std::vector<Holder> peers;  // connected peers that answered and hold all of them
  std::size_t asked = 0;      // connected peers asked
  std::size_t answered = 0;   // of those, the ones that answered every batch in time
};

class Replicator : public net::LinkHandler, public RemoteChunks {
 public:
  Replicator(boost::asio::io_context& io, FileServer& fs, ReplicatorOptions options);
  ~Replicator() override;

  bool OnOpen(const std::shared_ptr<net::Link>& link) override;
  void OnMessage(const std::shared_ptr<net::Link>& link, net::Message&& m) override;
  void OnClose(const std::shared_ptr<net::Link>& link, const std::string& reason) override;

  Result<Bytes> Fetch(const cas::ChunkId& id) override;
  void NotifyLocalChange();
  // Where learned peer addresses go (the transport's AddPeer). Event thread.
  void SetDialer(std::function<void(const std::string&)> dial);
  // Event thread.
  // Connected peers; with include_gone, also the ones whose link closed (the last 256).
  std::vector<PeerStatus> Peers(bool include_gone = false) const;
  // Chunks queued or in flight for background replication. Event thread.
  std::size_t Backlog() const;
  // Connected peers. Any thread.
  std::size_t PeerCount() const;
  // The current round of background chunk replication. Event thread.
  CatchUpStatus CatchUp() const;
  // Asks every connected peer which of `ids` it holds (HaveChunks, in batches) and waits at most
  // `timeout` for the answers; a peer that does not answer in time counts as not holding
  // them. Blocks: never call on the event thread.
  HolderReport Holders(const std::vector<cas::ChunkId>& ids, std::chrono::milliseconds timeout);

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
  std::unique_ptr<boost::asio::thread_pool> storage_;  // see Impl::storage_
};

}  // namespace foreverfs::server
