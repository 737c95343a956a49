#pragma once
// ChunkFetcher: chunks on demand, both ways. Fetch pulls one chunk from the peers (best
// rendezvous score first, the next one when a peer does not have it, lies about it or does not
// answer within 5 s), verifies it against its id and stores it (FileServer::StoreChunk), all
// within the fetch timeout; it serves the reads of a missing chunk (FileServer::LoadChunk) and
// the background replication (ChunkReplication). It also serves our chunks to peers that ask
// (GetChunk), read off the event thread.
//
// Threading: Start and the On* methods run on the event thread; Fetch blocks the calling
// thread (never call it on the event thread). Owns the requests in
// flight (event thread) and the list of chunks that recently could not be fetched (failed_mu_,
// a leaf lock). Held by shared_ptr: its timers keep it alive.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "base/mutex.h"
#include "net/transport.h"
#include "server/file_server.h"
#include "server/peer_links.h"
#include "server/storage_work.h"

namespace foreverfs::server {

class ChunkFetcher : public std::enable_shared_from_this<ChunkFetcher> {
 public:
  using Callback = std::function<void(Result<Bytes>)>;

  ChunkFetcher(boost::asio::io_context& io, FileServer& fs, std::shared_ptr<const PeerLinks> links,
               std::shared_ptr<StorageWork> storage, std::chrono::milliseconds fetch_timeout);

  // Fetches `id` and calls `done` (on the event thread) with its bytes once verified and
  // stored, or with the reason it could not within the fetch timeout. `hint`, if not 0, is a
  // node likely to hold it (the one that wrote the file's version), reached like the members
  // ranked for it. Event thread.
  void Start(const cas::ChunkId& id, Callback done, std::uint64_t hint = 0);
  // Start, waited for. A chunk nobody could serve a moment ago fails at once. Blocks: never
  // call on the event thread.
  Result<Bytes> Fetch(const cas::ChunkId& id);

  void OnChunkReply(std::uint64_t node, net::ChunkReply&& reply);
  // A peer asks for one of our chunks: read off the event thread, answered on `link`.
  void OnGetChunk(const std::shared_ptr<net::Link>& link, const net::GetChunk& req);

  // A peer connected: it may have what nobody had; the fetches waiting for a peer try again
  // now. Event thread.
  void PeerOpened();
  // A peer's link closed (PeerLinks no longer has it): requests in flight to it go to the next
  // peer.
  void PeerClosed(std::uint64_t node);
  // Requests to `node` not answered yet.
  std::size_t InFlightTo(std::uint64_t node) const;
  // Forgets every request in flight and waiting, without calling back: the event loop is
  // gone (Replicator's destructor).
  void Drop();

  // With bounded links the members that hold a chunk may not be linked with us. `reach` is
  // called (event thread) when no linked peer is left to ask for `id`: it opens short-lived
  // links to the members ranked for it, which the next try (every 200 ms) asks. `used` is
  // called with every peer a request goes to, so that a short-lived link stays open while it
  // serves. Either may be empty. Event thread, before the first Start.
  struct Reach {
    std::function<void(const cas::ChunkId& id, std::uint64_t hint)> reach;
    std::function<void(std::uint64_t node)> used;
  };
  void SetReach(Reach reach) { reach_ = std::move(reach); }

 private:
  struct Job {
    cas::ChunkId id;
    std::chrono::steady_clock::time_point deadline;
    std::vector<std::uint64_t> tried;
    Callback done;
    std::uint64_t hint = 0;
  };
  struct Timer;  // a steady_timer (Asio stays out of this header)
  struct Pending {
    std::shared_ptr<Job> job;
    std::uint64_t node;
    std::shared_ptr<Timer> timer;
  };

  void TryNext(const std::shared_ptr<Job>& job);

  boost::asio::io_context& io_;
  FileServer& fs_;
  const std::shared_ptr<const PeerLinks> links_;
  const std::shared_ptr<StorageWork> storage_;
  const std::chrono::milliseconds fetch_timeout_;
  Reach reach_;                                // event thread
  std::map<std::uint64_t, Pending> pending_;   // by request id; event thread
  std::uint64_t next_request_ = 1;             // event thread
  std::vector<std::shared_ptr<Job>> waiting_;  // jobs with nobody left to ask; event thread
  // Chunks a blocking Fetch could not get, and when (any thread; guarded).
  Mutex failed_mu_;
  std::map<cas::ChunkId, std::chrono::steady_clock::time_point> failed_ GUARDED_BY(failed_mu_);
};

}  // namespace foreverfs::server
