#pragma once
// Replicator: keeps this node's namespace and chunks in step with its peers. The transport's
// LinkHandler; a thin façade over the parts that do the work, each in its own file:
//
// - PeerLinks (peer_links.h): which link is which peer, one link per peer, the peers that went.
//   Replicator alone changes it, on a link's open and close; the parts below read it.
// - ChangeFeed (change_feed.h): the namespace. On every new link each side subscribes to the
//   other's change feed from the cursor it persisted, so a node that was away (or is new)
//   catches up, and live changes stream the same way; applied remote changes enter our own
//   feed, so they relay onwards. Acks decide when tombstones may go.
// - ChunkFetcher (chunk_fetcher.h): a chunk on demand (a read of a missing chunk), and serving
//   ours to peers. Every chunk received is verified against its id before it is stored.
// - ChunkReplication (chunk_replication.h): when a manifest arrives that this node should hold
//   (every node by default; the top --replicas N of a rendezvous hash otherwise), its missing
//   chunks are pulled in the background.
// - HolderQueries (holder_queries.h): which peers hold a file's chunks (HaveChunks).
// - MemberLinks (member_links.h): the cluster membership (SWIM gossip on the links), the
//   long-lived links of its link plan (at most --max-links), short-lived links for probes and
//   joins, and the members placement ranks. Until it is started (unit tests), PeerGossip
//   (peer_gossip.h) passes peers' addresses on so that every node links with every other.
// - StorageWork (storage_work.h): the disk work of all of them, off the event thread.
//
// Threading: LinkHandler methods run on the event thread; Fetch and Holders block the calling
// thread (never call them on the event thread); NotifyLocalChange and PeerCount may be called
// from any thread; the rest as marked. The parts live as long as their pending timers: the
// destructor joins the storage pool, after which their disk work runs inline.

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>

#include "net/transport.h"
#include "server/file_server.h"
#include "server/replication_status.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace foreverfs::server {

class ChangeFeed;
class ChunkFetcher;
class ChunkReplication;
class ChunkTrim;
class HolderQueries;
class PeerGossip;
class MemberLinks;
struct Dialer;
struct MemberInfo;
class PeerLinks;
class StorageWork;
class SyncCopies;

struct ReplicatorOptions {
  int replicas = 0;  // 0: every node holds every chunk
  std::chrono::milliseconds fetch_timeout{10000};
  std::size_t background_fetches = 8;  // chunks pulled concurrently in the background
  std::size_t max_links = 8;           // long-lived links (membership's link plan)
  std::chrono::milliseconds down_after{15 * 60 * 1000};
  std::chrono::milliseconds probe_period{1000};  // membership's protocol period
  std::chrono::milliseconds short_idle{3000};    // a short-lived link idle this long closes
  // fsync(2) returns once the file is durable on this many members (0: 2 when the cluster has
  // two or more members, else 1), or fails with EIO after sync_timeout.
  std::size_t sync_copies = 0;
  std::chrono::milliseconds sync_timeout{30000};
  // With replicas > 0 (ChunkTrim): bytes of copies not ranked here kept as a cache, the most
  // recently read first; a pass over what this node holds this often; no copy dropped within
  // `settle` of a change of the placement members.
  std::uint64_t cache_size = std::uint64_t{1} << 30;
  std::chrono::milliseconds rebalance_interval{30000};
  std::chrono::milliseconds settle{10000};
  std::uint32_t weight = 1;  // this node's placement weight (--capacity), announced to members
};

class Replicator : public net::LinkHandler, public RemoteChunks {
 public:
  Replicator(boost::asio::io_context& io, FileServer& fs, ReplicatorOptions options);
  ~Replicator() override;

  // Admits the link (PeerLinks), then: the peer becomes a member, gossip, subscription, and a
  // scan for chunks to fetch. Dispatches messages by type to the part that handles them.
  bool OnOpen(const std::shared_ptr<net::Link>& link) override;
  void OnMessage(const std::shared_ptr<net::Link>& link, net::Message&& m) override;
  void OnClose(const std::shared_ptr<net::Link>& link, const std::string& reason) override;

  Result<Bytes> Fetch(const cas::ChunkId& id) override;
  Status MakeDurable(InodeId id, const model::Version& version, std::uint64_t seq) override;
  void NotifyLocalChange();
  // Look for chunks to fetch again (a pin changed). Any thread.
  void Rescan();
  // Where learned peer addresses go (the transport's AddPeer) while membership does not run.
  // Event thread.
  void SetDialer(std::function<void(const std::string&)> dial);
  // Starts the membership: joins through `seeds` (--peer), and from then on the transport
  // dials only the link plan (and short-lived links). Event thread.
  void StartMembership(const std::string& self_addr, const std::vector<std::string>& seeds,
                       Dialer dialer);
  // Persists the member list; the timer stops. Event thread.
  void StopMembership();
  // `foreverfs node remove ID`. Event thread.
  Status RemoveMember(std::uint64_t node);
  // Every member, this node included (empty before StartMembership). Any thread.
  std::vector<MemberInfo> Members() const;
  // Event thread.
  // Connected peers; with include_gone, also the ones whose link closed (the last 256).
  std::vector<PeerStatus> Peers(bool include_gone = false) const;
  // What this node holds against what placement gives it (repair, rebalancing, cache).
  // Event thread.
  PlacementStatus PlacementState() const;
  // Runs a placement pass now (tests; `foreverfs` has no command for it). Event thread.
  void RunPlacementPass();
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

 private:
  boost::asio::io_context& io_;
  FileServer& fs_;
  std::shared_ptr<PeerLinks> links_;
  std::shared_ptr<StorageWork> storage_;
  std::shared_ptr<ChunkFetcher> fetcher_;
  std::shared_ptr<ChunkReplication> replication_;
  std::shared_ptr<ChangeFeed> feed_;
  std::shared_ptr<HolderQueries> holders_;
  std::unique_ptr<PeerGossip> gossip_;
  std::shared_ptr<MemberLinks> members_;
  std::shared_ptr<SyncCopies> sync_copies_;
  std::shared_ptr<ChunkTrim> trim_;
  // The members to ask first for a durable copy of `id` (MakeDurable).
  std::vector<std::uint64_t> DurablePreference(InodeId id, std::size_t copies);

  const std::size_t copies_;
  const int replicas_;
  const std::chrono::milliseconds sync_timeout_;
  std::atomic<bool> membership_started_{false};
};

}  // namespace foreverfs::server
