#pragma once
// SyncCopies: --sync-copies W, both ways. Wait (the fsync(2) of a file, on a FUSE thread) returns
// only once the file's version is durable on W members, this node included: it asks W-1 peers
// that subscribe to our change feed to make it durable (DurableRequest), the next one when a
// peer fails or its link closes, and fails after the timeout naming the peers that did not
// confirm. OnRequest serves a peer's request: once our cursor in its feed reaches the request's
// sequence number (the record is applied here), every chunk the record names is fetched
// (8 at a time, from the asker first) and the chunk store and namespace are synced; then it
// says so (DurableReply).
//
// Threading: Wait blocks the calling thread (never the event thread); everything else runs on
// the event thread. Owns the requests in flight both ways (event thread). Held by shared_ptr:
// its timers keep it alive.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "net/transport.h"
#include "server/chunk_fetcher.h"
#include "server/file_server.h"
#include "server/peer_links.h"
#include "server/storage_work.h"

namespace foreverfs::server {

// What follows "not confirmed by:" in a failed wait: each peer asked that did not confirm (no
// answer, or why it failed), then the members never asked (those in `members` not in the three
// sets; `linked` says which have a link), the first kNamedUnasked by name and the rest counted.
// Each entry starts with a space; empty if there is none.
inline constexpr std::size_t kNamedUnasked = 8;
std::string Unconfirmed(const std::set<std::uint64_t>& confirmed,
                        const std::set<std::uint64_t>& pending,
                        const std::map<std::uint64_t, std::string>& failed,
                        const std::vector<std::uint64_t>& members,
                        const std::function<bool(std::uint64_t)>& linked);

class SyncCopies : public std::enable_shared_from_this<SyncCopies> {
 public:
  // `candidates` (event thread) lists the peers that may be asked: those that apply our feed.
  // `members` (event thread; may be empty) lists the cluster's other members, so that a
  // failure can name those that could not be asked at all.
  SyncCopies(boost::asio::io_context& io, FileServer& fs, std::shared_ptr<const PeerLinks> links,
             std::shared_ptr<ChunkFetcher> fetcher, std::shared_ptr<StorageWork> storage,
             std::function<std::vector<std::uint64_t>()> candidates,
             std::function<std::vector<std::uint64_t>()> members = {});

  // Inode `id` at `version`, in our feed through `seq`, is durable here; returns once `copies`
  // members in all hold it durably, or kIOError after `timeout`. Peers are asked in the order
  // of `preferred` (the members placement ranks for the file's chunks) first, then the other
  // candidates; a peer that has not answered after a quarter of the timeout (at most 2 s) gets
  // a hedge: one more peer is asked beside it. Blocks.
  Status Wait(InodeId id, const model::Version& version, std::uint64_t seq, std::size_t copies,
              std::chrono::milliseconds timeout, std::vector<std::uint64_t> preferred = {});

  void OnRequest(const std::shared_ptr<net::Link>& link, const net::DurableRequest& req);
  void OnReply(std::uint64_t node, const net::DurableReply& reply);
  // The peer's link closed: requests to it go to the next peer.
  void PeerClosed(std::uint64_t node);

 private:
  struct Ask;    // one Wait
  struct Serve;  // one request we serve
  struct Timer;  // an Asio steady_timer (kept out of this header)
  void Start(const std::shared_ptr<Ask>& ask);
  void AskMore(const std::shared_ptr<Ask>& ask);
  void ArmHedge(const std::shared_ptr<Ask>& ask);
  void Finish(const std::shared_ptr<Ask>& ask, Status s);
  void Step(const std::shared_ptr<Serve>& serve);
  void Answer(const std::shared_ptr<Serve>& serve, Status s);

  boost::asio::io_context& io_;
  FileServer& fs_;
  const std::shared_ptr<const PeerLinks> links_;
  const std::shared_ptr<ChunkFetcher> fetcher_;
  const std::shared_ptr<StorageWork> storage_;
  const std::function<std::vector<std::uint64_t>()> candidates_;
  const std::function<std::vector<std::uint64_t>()> members_;
  std::map<std::uint64_t, std::pair<std::shared_ptr<Ask>, std::uint64_t>>
      asked_;  // req -> ask, node
  std::uint64_t next_request_ = 1;
  std::size_t serving_ = 0;  // requests we serve now, at most kMaxServing
};

}  // namespace foreverfs::server
