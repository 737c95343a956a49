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
}

namespace foreverfs::server {

struct ReplicatorOptions {
  int replicas = 0;  // 0: every node holds every chunk
  std::chrono::milliseconds fetch_timeout{10000};
  std::size_t background_fetches = 8;  // chunks pulled concurrently in the background
};

struct PeerStatus {
  std::uint64_t node_id;
  std::string addr;
  bool outbound;
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
  std::vector<PeerStatus> Peers() const;
  // Chunks queued or in flight for background replication. Event thread.
  std::size_t Backlog() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace foreverfs::server
