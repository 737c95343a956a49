#pragma once
// HolderQueries: who holds a list of chunks (user.foreverfs.replicas / .holders). Holders asks
// every connected peer (HaveChunks, in batches of net::kMaxHaveChunksQuery ids) and gathers the
// reply bitmaps: a peer counts as a holder only if it answered every batch in time, with the
// count asked and every bit set. A peer whose link closes, or that does not answer within the
// timeout, counts as not answering. It also answers peers' HaveChunks, off the event thread.
//
// Threading: Holders blocks the calling thread (never call it on the event thread); the On*
// methods and PeerClosed run on the event thread, which owns the queries in progress. Held by
// shared_ptr: its timers keep it alive.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "cas/chunk_store.h"
#include "net/transport.h"
#include "server/peer_links.h"
#include "server/replication_status.h"
#include "server/storage_work.h"

namespace foreverfs::server {

class HolderQueries : public std::enable_shared_from_this<HolderQueries> {
 public:
  // `has_chunk`: whether this node holds a chunk (FileServer::HasChunk); called on the
  // caller's thread and on the storage pool.
  HolderQueries(boost::asio::io_context& io, std::shared_ptr<const PeerLinks> links,
                std::shared_ptr<StorageWork> storage,
                std::function<bool(const cas::ChunkId&)> has_chunk);

  // Asks every connected peer which of `ids` it holds and waits at most `timeout` for the
  // answers. Blocks: never call on the event thread.
  HolderReport Holders(const std::vector<cas::ChunkId>& ids, std::chrono::milliseconds timeout);

  // Asks each node of `asks` (over its link: a node without one counts as not answering) which
  // of its ids it holds, and calls `done` once all answered or `timeout` passed, with one bool
  // per id for every node that answered every batch (with the count asked); nodes missing from
  // the answers did not. Event thread; `done` runs on it.
  using Answers = std::map<std::uint64_t, std::vector<bool>>;
  void Ask(std::map<std::uint64_t, std::vector<cas::ChunkId>> asks,
           std::chrono::milliseconds timeout, std::function<void(Answers)> done);

  // A peer asks which of its ids we hold: answered on `link`.
  void OnHaveChunks(const std::shared_ptr<net::Link>& link, net::HaveChunks&& q);
  void OnHaveReply(std::uint64_t node, const net::HaveChunksReply& reply);
  // A peer's link closed: the queries waiting on it count it as not answering.
  void PeerClosed(std::uint64_t node);

 private:
  struct Query;
  struct Request {
    std::shared_ptr<Query> query;
    std::uint64_t node = 0;
    std::size_t offset = 0, count = 0;
  };

  struct AskQuery;
  struct AskRequest {
    std::shared_ptr<AskQuery> query;
    std::uint64_t node = 0;
    std::size_t offset = 0, count = 0;
  };

  void Start(const std::shared_ptr<Query>& q, std::chrono::milliseconds timeout);
  void MaybeFinishAsk(const std::shared_ptr<AskQuery>& q);
  void FinishAsk(const std::shared_ptr<AskQuery>& q);
  void MaybeFinish(const std::shared_ptr<Query>& q);
  void Finish(const std::shared_ptr<Query>& q);

  boost::asio::io_context& io_;
  const std::shared_ptr<const PeerLinks> links_;
  const std::shared_ptr<StorageWork> storage_;
  const std::function<bool(const cas::ChunkId&)> has_chunk_;
  std::map<std::uint64_t, Request> requests_;  // by request id; event thread
  std::map<std::uint64_t, AskRequest> ask_requests_;  // by request id; event thread
  std::uint64_t next_request_ = 1;                    // event thread (both maps)
};

}  // namespace foreverfs::server
