#include "server/replicator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "server/change_feed.h"
#include "server/chunk_fetcher.h"
#include "server/chunk_replication.h"
#include "server/chunk_trim.h"
#include "server/holder_queries.h"
#include "server/member_links.h"
#include "server/peer_gossip.h"
#include "server/peer_links.h"
#include "server/replication_common.h"
#include "server/storage_work.h"
#include "server/sync_copies.h"

namespace foreverfs::server {

using replication::Short;

Replicator::Replicator(boost::asio::io_context& io, FileServer& fs, ReplicatorOptions options)
    : io_(io),
      fs_(fs),
      links_(std::make_shared<PeerLinks>(fs.node_id())),
      storage_(std::make_shared<StorageWork>(io)),
      fetcher_(std::make_shared<ChunkFetcher>(io, fs, links_, storage_, options.fetch_timeout)),
      replication_(std::make_shared<ChunkReplication>(io, fs, links_, fetcher_, options.replicas,
                                                      options.background_fetches,
                                                      options.fetch_timeout)),
      feed_(std::make_shared<ChangeFeed>(
          io, fs, links_, storage_,
          [r = replication_](const InodeRecord& rec) { r->EnqueueManifest(rec); })),
      holders_(std::make_shared<HolderQueries>(
          io, links_, storage_, [&fs](const cas::ChunkId& id) { return fs.HasChunk(id); })),
      gossip_(std::make_unique<PeerGossip>(fs.ns(), links_)),
      members_(std::make_shared<MemberLinks>(
          io, fs.ns(), links_,
          MemberLinksOptions{options.max_links, options.down_after, options.probe_period,
                             options.short_idle, options.weight})),
      sync_copies_(std::make_shared<SyncCopies>(
          io, fs, links_, fetcher_, storage_, [f = feed_] { return f->Subscribers(); },
          [w = std::weak_ptr<MemberLinks>(members_)] {
            std::vector<std::uint64_t> others;
            if (auto m = w.lock()) {
              for (const MemberInfo& i : m->Members()) {
                if (!i.self && i.state != net::MemberState::kRemoved) others.push_back(i.node_id);
              }
            }
            return others;
          })),
      trim_(std::make_shared<ChunkTrim>(
          io, fs, storage_, links_, holders_,
          [w = std::weak_ptr<MemberLinks>(members_)]() -> std::shared_ptr<const Placement> {
            auto m = w.lock();
            return m ? m->PlacementMap() : nullptr;
          },
          ChunkTrimOptions{options.replicas, options.cache_size, options.rebalance_interval,
                           options.settle, options.fetch_timeout})),
      copies_(options.sync_copies),
      replicas_(options.replicas),
      sync_timeout_(options.sync_timeout) {
  // Chunks whose holders we have no link to: short-lived links to the members ranked for them.
  const std::size_t reach = options.replicas > 0 ? static_cast<std::size_t>(options.replicas) : 3;
  // Weak both ways: the fetcher and the membership refer to each other (a cycle of
  // shared_ptrs would keep both alive for ever).
  fetcher_->SetReach({[w = std::weak_ptr<MemberLinks>(members_), reach](const cas::ChunkId& id,
                                                                        std::uint64_t hint) {
                        if (auto m = w.lock()) m->Reach(id, reach, hint);
                      },
                      [w = std::weak_ptr<MemberLinks>(members_)](std::uint64_t node) {
                        if (auto m = w.lock()) m->Touch(node);
                      }});
  // A member joined, went down or was removed: chunks now ranked to this node are fetched
  // (repair, rebalancing).
  members_->SetBusy([w = std::weak_ptr<ChunkFetcher>(fetcher_)](std::uint64_t node) {
    auto f = w.lock();
    return f && f->InFlightTo(node) > 0;
  });
  members_->SetPlacementObserver(
      [w = std::weak_ptr<ChunkReplication>(replication_), t = std::weak_ptr<ChunkTrim>(trim_)] {
        if (auto r = w.lock()) r->ScanMissing();
        if (auto trim = t.lock()) trim->PlacementChanged();
      });
  trim_->SetReach(
      [w = std::weak_ptr<MemberLinks>(members_)](const std::vector<std::uint64_t>& nodes) {
        if (auto m = w.lock()) m->ReachNodes(nodes, "a placement pass");
      });
  members_->SetPlanObserver([this](std::uint64_t node, bool planned) {
    // A link turned long-lived (the feed starts on it) or short-lived (it stops; the link
    // closes when idle).
    if (!planned) {
      feed_->Close(node);
      return;
    }
    if (auto link = links_->Find(node)) {
      replication::AddMember(fs_.ns(), node);
      feed_->Open(link);
      replication_->ScanMissing();
    }
  });
}

Replicator::~Replicator() {
  trim_->Stop();
  storage_->Stop();
  // Requests still waiting hold callbacks that hold the parts (the parts hold the fetcher):
  // drop them, so that nothing keeps the parts alive once the event loop is gone.
  fetcher_->Drop();
}

bool Replicator::OnOpen(const std::shared_ptr<net::Link>& link) {
  if (!links_->Admit(link)) return false;
  const auto& info = link->Peer();
  spdlog::info("peer {} ({}) connected", info.remote, Short(info.node_id));
  fetcher_->PeerOpened();
  const bool long_lived = members_->Opened(link);
  if (!membership_started_) gossip_->Opened(link);
  if (!long_lived) return true;  // short-lived: membership messages and fetches only
  // A member from now on: no tombstone is purged before it confirms it holds it.
  replication::AddMember(fs_.ns(), info.node_id);
  feed_->Open(link);
  replication_->ScanMissing();
  return true;
}

void Replicator::OnMessage(const std::shared_ptr<net::Link>& link, net::Message&& m) {
  if (!links_->IsCurrent(link)) return;
  const std::uint64_t node = link->Peer().node_id;
  members_->Touch(node);  // a short-lived link stays open while it carries anything
  std::visit(
      [&](auto&& msg) {
        using T = std::decay_t<decltype(msg)>;
        if constexpr (std::is_same_v<T, net::Subscribe>) {
          feed_->OnSubscribe(node, msg);
        } else if constexpr (std::is_same_v<T, net::Changes>) {
          feed_->OnChanges(node, std::move(msg));
        } else if constexpr (std::is_same_v<T, net::FeedAck>) {
          feed_->OnFeedAck(node, msg);
        } else if constexpr (std::is_same_v<T, net::RelayedFeedAcks>) {
          feed_->OnRelayedFeedAcks(node, msg);
        } else if constexpr (std::is_same_v<T, net::DurableRequest>) {
          sync_copies_->OnRequest(link, msg);
        } else if constexpr (std::is_same_v<T, net::DurableReply>) {
          sync_copies_->OnReply(node, msg);
        } else if constexpr (std::is_same_v<T, net::GetChunk>) {
          fetcher_->OnGetChunk(link, msg);
        } else if constexpr (std::is_same_v<T, net::ChunkReply>) {
          fetcher_->OnChunkReply(node, std::move(msg));
        } else if constexpr (std::is_same_v<T, net::HaveChunks>) {
          holders_->OnHaveChunks(link, std::move(msg));
        } else if constexpr (std::is_same_v<T, net::HaveChunksReply>) {
          holders_->OnHaveReply(node, msg);
        } else if constexpr (std::is_same_v<T, net::Peers>) {
          if (!membership_started_) gossip_->OnPeers(msg);
        } else if constexpr (std::is_same_v<T, net::MemberPing> ||
                             std::is_same_v<T, net::MemberAck> ||
                             std::is_same_v<T, net::MemberPingReq> ||
                             std::is_same_v<T, net::MemberSync>) {
          members_->OnMessage(node, msg);
        }
      },
      std::move(m));
}

void Replicator::OnClose(const std::shared_ptr<net::Link>& link, const std::string& reason) {
  if (!links_->IsCurrent(link)) return;
  const auto& info = link->Peer();
  const std::uint64_t node = info.node_id;
  spdlog::info("peer {} ({}) disconnected: {}", info.remote, Short(node), reason);
  links_->Remove(link, reason);
  members_->Closed(node);
  // Holder queries waiting on that peer count it as not answering.
  holders_->PeerClosed(node);
  feed_->Close(node);
  // Requests in flight to that peer go to the next one.
  fetcher_->PeerClosed(node);
  sync_copies_->PeerClosed(node);
}

Result<Bytes> Replicator::Fetch(const cas::ChunkId& id) { return fetcher_->Fetch(id); }

Status Replicator::MakeDurable(InodeId id, const model::Version& version, std::uint64_t seq) {
  std::size_t copies = copies_;
  if (copies == 0) {
    // Two when the cluster has two members or more (a member away counts: its copy is what
    // fsync promises), else one.
    const std::size_t members =
        membership_started_ ? members_->PlacementMembers().size() : links_->Count() + 1;
    copies = members >= 2 ? 2 : 1;
  }
  if (copies <= 1) return Ok();
  return sync_copies_->Wait(id, version, seq, copies, sync_timeout_, DurablePreference(id, copies));
}

std::vector<std::uint64_t> Replicator::DurablePreference(InodeId id, std::size_t copies) {
  // The members placement ranks for the file's chunks (its first 64), most chunks first: their
  // durable copy is one placement keeps. Without membership, no preference.
  auto map = membership_started_ ? members_->PlacementMap() : nullptr;
  if (!map || map->size() == 0) return {};
  auto rec = fs_.ns().GetInode(id);
  if (!rec.ok()) return {};
  const std::size_t n = replicas_ > 0 ? static_cast<std::size_t>(replicas_) : copies;
  std::map<std::uint64_t, std::size_t> count;
  std::size_t seen = 0;
  for (const auto& [index, chunk] : rec->manifest) {
    if (++seen > 64) break;
    for (std::uint64_t node : map->Pick(chunk, n)) ++count[node];
  }
  count.erase(fs_.node_id());
  std::vector<std::pair<std::uint64_t, std::size_t>> ranked(count.begin(), count.end());
  std::stable_sort(ranked.begin(), ranked.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<std::uint64_t> out;
  for (const auto& r : ranked) out.push_back(r.first);
  return out;
}

void Replicator::NotifyLocalChange() { feed_->NotifyLocalChange(); }

void Replicator::Rescan() {
  boost::asio::post(io_, [r = replication_] { r->ScanMissing(); });
}

void Replicator::SetDialer(std::function<void(const std::string&)> dial) {
  gossip_->SetDialer(std::move(dial));
}

void Replicator::StartMembership(const std::string& self_addr,
                                 const std::vector<std::string>& seeds, Dialer dialer) {
  membership_started_ = true;
  replication_->SetPlacement([w = std::weak_ptr<MemberLinks>(members_)] {
    auto m = w.lock();
    return m ? m->PlacementMap() : nullptr;
  });
  members_->Start(self_addr, seeds, std::move(dialer));
  trim_->Start();
}

void Replicator::StopMembership() {
  trim_->Stop();
  members_->Stop();
}

PlacementStatus Replicator::PlacementState() const { return trim_->Status(); }

void Replicator::RunPlacementPass() { trim_->RunPass(); }

Status Replicator::RemoveMember(std::uint64_t node) { return members_->Remove(node); }

std::vector<MemberInfo> Replicator::Members() const { return members_->Members(); }

std::vector<PeerStatus> Replicator::Peers(bool include_gone) const {
  std::vector<PeerStatus> out;
  const std::uint64_t last_seq = fs_.ns().LastSeq();
  const auto subscribers = feed_->Subscribers();
  for (auto& [node, link] : links_->links()) {
    const auto& info = link->Peer();
    PeerStatus s;
    s.node_id = node;
    s.addr = PeerLinks::DialableAddr(info);
    s.remote = info.remote;
    s.outbound = info.outbound;
    s.connected = true;
    s.long_lived = !membership_started_ || members_->Planned(node);
    s.connected_since = info.connected_since;
    s.bytes_in = link->Counters().BytesIn();
    s.bytes_out = link->Counters().BytesOut();
    const auto feed = feed_->PeerProgress(node, last_seq);
    s.changes_to_send = feed.changes_to_send;
    s.subscribed = std::find(subscribers.begin(), subscribers.end(), node) != subscribers.end();
    s.chunks_in_flight = fetcher_->InFlightTo(node);
    s.records_received = feed.records_received;
    s.peer_seq = feed.peer_seq;
    if (auto g = links_->gone().find(node); g != links_->gone().end()) {
      s.last_error = g->second.last_error;
      s.last_error_at = g->second.last_error_at;
    }
    out.push_back(std::move(s));
  }
  if (include_gone) {
    for (auto& [node, g] : links_->gone()) {
      if (!links_->Contains(node)) out.push_back(g);
    }
  }
  return out;
}

std::size_t Replicator::PeerCount() const { return links_->Count(); }

CatchUpStatus Replicator::CatchUp() const { return replication_->CatchUp(); }

HolderReport Replicator::Holders(const std::vector<cas::ChunkId>& ids,
                                 std::chrono::milliseconds timeout) {
  return holders_->Holders(ids, timeout);
}

std::size_t Replicator::Backlog() const { return replication_->Backlog(); }

}  // namespace foreverfs::server
