// Membership in the Replicator (MemberLinks) over the in-process MemoryNetwork: nodes join
// through one seed, keep at most --max-links long-lived links, and reach the members that hold
// a chunk over short-lived links when none of their long-lived peers has it.
//
// Threading as in server_replication_test.cpp: one io_context thread carries every link and
// every Replicator; the dialers the membership calls run on it too.

#include <fcntl.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "net/memory_transport.h"
#include "server/member_links.h"
#include "server/membership.h"
#include "server/replication_common.h"
#include "unit/replication_cluster.h"

namespace foreverfs::server {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using test::Eventually;
using test::GetBytes;
using test::Node;
using test::OnIo;
using test::Pattern;
using test::StoreBytes;

std::string Addr(const Node& n) { return "mem:" + std::to_string(n.id()); }

class MembershipClusterTest : public test::ClusterFixture {
 protected:
  void TearDown() override {
    OnIo(io_, [&] {
      for (auto& n : nodes_) n->replicator->StopMembership();
      return 0;
    });
    ClusterFixture::TearDown();
  }

  void Added(Node& node) override { by_addr_[Addr(node)] = &node; }

  // Options for a membership test: `links` long-lived links each, a probe every `probe`,
  // short-lived links closed after `short_idle`.
  static ReplicatorOptions Small(std::size_t links, std::chrono::milliseconds probe,
                                 std::chrono::milliseconds short_idle) {
    ReplicatorOptions o = Node::Options();
    o.max_links = links;
    o.probe_period = probe;
    o.short_idle = short_idle;
    return o;
  }

  // What the TCP transport's AddPeer/RemovePeer do, over the MemoryNetwork: a link to an
  // address stays while either side wants it. Event thread.
  Dialer DialerFor(Node& n) {
    return Dialer{[this, &n](const std::string& addr) {
                    auto it = by_addr_.find(addr);
                    if (it == by_addr_.end() || it->second == &n) return;
                    Node& peer = *it->second;
                    wants_[n.id()].insert(peer.id());
                    network_->Connect(n.id(), *n.replicator, peer.id(), *peer.replicator);
                  },
                  [this, &n](const std::string& addr, const std::string&) {
                    auto it = by_addr_.find(addr);
                    if (it == by_addr_.end()) return;
                    Node& peer = *it->second;
                    wants_[n.id()].erase(peer.id());
                    if (!wants_[peer.id()].contains(n.id()))
                      network_->Disconnect(n.id(), peer.id());
                  }};
  }

  // Starts every node's membership with the first node as its only seed.
  void StartAll() {
    for (auto& n : nodes_) {
      std::vector<std::string> seeds;
      if (n != nodes_.front()) seeds.push_back(Addr(*nodes_.front()));
      OnIo(io_, [&] {
        n->replicator->StartMembership(Addr(*n), seeds, DialerFor(*n));
        return 0;
      });
    }
  }

  // `count` nodes with options `o`, their membership started: true once every node knows every
  // node as alive (within 30 s).
  bool StartCluster(int count, const ReplicatorOptions& o) {
    for (int i = 0; i < count; ++i) AddNode(o);
    StartAll();
    return Eventually([&] { return AllKnowAll(); }, 30s);
  }

  // Every node knows every node as alive.
  bool AllKnowAll() {
    return OnIo(io_, [&] {
      for (auto& n : nodes_) {
        std::size_t alive = 0;
        for (const auto& m : n->replicator->Members()) {
          alive += m.state == net::MemberState::kAlive ? 1 : 0;
        }
        if (alive != nodes_.size()) return false;
      }
      return true;
    });
  }

  std::size_t LongLived(Node& n) {
    return OnIo(io_, [&] {
      std::size_t k = 0;
      for (const auto& p : n.replicator->Peers()) k += p.long_lived ? 1 : 0;
      return k;
    });
  }

  // Stops `victim`'s membership and partitions it from every other node, as if it died; the
  // ids of the others.
  std::vector<std::uint64_t> CutOff(Node& victim) {
    OnIo(io_, [&] {
      victim.replicator->StopMembership();
      return 0;
    });
    std::vector<std::uint64_t> alive;
    for (auto& node : nodes_) {
      if (node.get() == &victim) continue;
      alive.push_back(node->id());
      network_->Partition(victim.id(), node->id());
    }
    return alive;
  }

  std::vector<std::uint64_t> Ids() const {
    std::vector<std::uint64_t> ids;
    for (const auto& n : nodes_) ids.push_back(n->id());
    return ids;
  }

  std::map<std::string, Node*> by_addr_;                    // event thread after start
  std::map<std::uint64_t, std::set<std::uint64_t>> wants_;  // event thread
};

// Sixteen nodes, two long-lived links each, one copy of every chunk: the member ranked for a
// chunk pulls it from the writer, and every other node reads it from that member, though
// neither is in general linked with the other. Short-lived links close after 100 ms idle and
// probes are rare, so a read that waited for a probe link to the holder would time out.
TEST_F(MembershipClusterTest, ChunksComeFromRankedMembersWithoutALongLivedLink) {
  ReplicatorOptions o = Small(2, 300ms, 100ms);
  o.replicas = 1;
  o.fetch_timeout = 1500ms;
  ASSERT_TRUE(StartCluster(16, o));
  for (auto& node : nodes_) EXPECT_LE(LongLived(*node), 2u) << node->name;

  const Bytes data = Pattern(12 * kMiB + 5, 9);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/f", data).ok());
  auto rec = n(1).files->Resolve("/f");
  ASSERT_TRUE(rec.ok());
  const auto ids = Ids();
  std::map<std::uint64_t, Node*> by_id;
  for (auto& node : nodes_) by_id[node->id()] = node.get();
  // Each chunk reaches the member ranked for it (pulled from the writer, hinted by the
  // manifest's content clock).
  for (const auto& entry : rec->rec.manifest) {
    const cas::ChunkId id = entry.id;
    Node& holder = *by_id.at(replication::Ranked(ids, id, 1).front());
    EXPECT_TRUE(Eventually([&] { return holder.store->Has(id); })) << "chunk " << entry.index;
  }
  // Node 1 keeps its copies (nothing drops unranked chunks yet); hide them so that reads
  // must come from the ranked members.
  for (const auto& [index, id] : rec->rec.manifest) {
    if (replication::Ranked(ids, id, 1).front() != n(1).id()) {
      ASSERT_TRUE(n(1).store->Remove(id).ok());
    }
  }
  for (std::size_t i = 2; i <= nodes_.size(); ++i) {
    ASSERT_TRUE(Eventually([&] { return n(i).files->Resolve("/f").ok(); })) << n(i).name;
    auto got = GetBytes(*n(i).files, "/f");
    std::string where;
    for (const auto& [index, id] : rec->rec.manifest) {
      const auto h = replication::Ranked(ids, id, 1).front();
      where += fmt::format(" {}:{}:{:016x}{}", index, cas::Hex(id).substr(0, 8), h,
                           by_id.at(h)->store->Has(id) ? "" : "(lacks it)");
    }
    ASSERT_TRUE(got.ok()) << n(i).name << " " << std::hex << n(i).id() << ": "
                          << got.status().message() << where;
    EXPECT_TRUE(*got == data) << n(i).name;
  }
  for (auto& node : nodes_) EXPECT_LE(LongLived(*node), 2u) << node->name;
}

// Eight nodes, two long-lived links each: a node confirms our feed only to its neighbours, so
// without relayed confirmations the tombstones of a deletion would wait for ever on every node
// with a member it has no link to. Neighbours relay what the others confirmed
// (RelayedFeedAcks), and every node purges them; nothing comes back.
TEST_F(MembershipClusterTest, TombstonesArePurgedEverywhereOverBoundedLinks) {
  const ReplicatorOptions o = Small(2, 300ms, 100ms);
  ASSERT_TRUE(StartCluster(8, o));

  std::vector<InodeId> ids;
  for (int f = 0; f < 5; ++f) {
    const std::string path = "/f" + std::to_string(f);
    ASSERT_TRUE(StoreBytes(*n(1).files, path, Pattern(1000, f)).ok());
    ids.push_back(n(1).files->Resolve(path)->rec.id);
  }
  // Every file's content (not only its name) is everywhere before the deletes: a delete that
  // has not seen a write keeps that write as a conflict copy, by design, and the root would not
  // end empty.
  for (auto& node : nodes_) {
    ASSERT_TRUE(Eventually([&] {
      for (int f = 0; f < 5; ++f) {
        auto a = node->files->Resolve("/f" + std::to_string(f));
        if (!a.ok() || a->rec.size != 1000) return false;
      }
      return true;
    })) << node->name;
  }
  for (int f = 0; f < 5; ++f) ASSERT_TRUE(n(2).files->Remove("/f" + std::to_string(f)).ok());
  for (auto& node : nodes_) {
    ASSERT_TRUE(Eventually([&] {
      return node->files->Resolve("/f0").status().code() == Code::kNotFound &&
             node->files->Resolve("/f4").status().code() == Code::kNotFound;
    })) << node->name;
  }
  auto purged = [&](Node& node) {
    auto st = node.files->PurgeTombstones(0ns);
    EXPECT_TRUE(st.ok()) << st.status().message();
    for (InodeId id : ids) {
      if (node.db->GetInodeOrTombstone(id).ok()) return false;
    }
    return true;
  };
  for (auto& node : nodes_) {
    EXPECT_TRUE(Eventually([&] { return purged(*node); }, 60s))
        << node->name << ": tombstones never purged";
  }
  std::this_thread::sleep_for(1s);
  for (auto& node : nodes_) {
    for (InodeId id : ids) {
      EXPECT_FALSE(node->db->GetInodeOrTombstone(id).ok()) << node->name << ": a record came back";
    }
    EXPECT_TRUE(node->files->ReadDir(kRootId)->empty()) << node->name;
  }
}

// Links turn short-lived and long-lived again as members join and the plan of bounded links
// changes. Once it settles, every link both ends hold long-lived carries the feed both ways:
// each end applies the other's feed. (The case of one end alone dropping a link's feed state
// and taking the link back is ReplicationTest.ASecondSubscribeOnTheSameLinkIsAnsweredWithOurs.)
TEST_F(MembershipClusterTest, EveryLongLivedLinkCarriesTheFeedBothWaysAfterPlanChanges) {
  // Short-lived links stay open long (10 s idle), so that a link the plan drops and takes back
  // is still the same link.
  const ReplicatorOptions o = Small(2, 100ms, 10s);
  ASSERT_TRUE(StartCluster(4, o));
  for (int i = 0; i < 4; ++i) {
    Node& added = AddNode(o);
    OnIo(io_, [&] {
      added.replicator->StartMembership(Addr(added), {Addr(*nodes_.front())}, DialerFor(added));
      return 0;
    });
    ASSERT_TRUE(Eventually([&] { return AllKnowAll(); }, 30s));
  }
  // Node -> (peer -> {long-lived here, the peer applies our feed}).
  using View = std::map<std::uint64_t, std::map<std::uint64_t, std::pair<bool, bool>>>;
  auto view = [&] {
    return OnIo(io_, [&] {
      View v;
      for (auto& node : nodes_) {
        for (const auto& p : node->replicator->Peers()) {
          if (p.connected) v[node->id()][p.node_id] = {p.long_lived, p.subscribed};
        }
      }
      return v;
    });
  };
  std::string missing;
  const bool settled = Eventually(
      [&] {
        const View v = view();
        missing.clear();
        for (const auto& [node, peers] : v) {
          for (const auto& [peer, state] : peers) {
            auto back = v.find(peer);
            const bool both = state.first && back != v.end() && back->second.contains(node) &&
                              back->second.at(node).first;
            if (both && !state.second)
              missing += fmt::format(" {:x} not following {:x};", peer, node);
          }
        }
        return missing.empty();
      },
      20s);
  EXPECT_TRUE(settled) << missing;
}

// fsync with more --sync-copies than members reachable fails naming each member that did not
// confirm, also one this node has no link to at all (before, the message said only "none
// connected" once the links to the others were gone).
TEST_F(MembershipClusterTest, AFailedFsyncNamesTheMemberItCouldNotAsk) {
  ReplicatorOptions o = Small(4, 200ms, 300ms);
  o.sync_copies = 3;
  o.sync_timeout = 800ms;
  ASSERT_TRUE(StartCluster(3, o));
  CutOff(n(3));
  ASSERT_TRUE(Eventually([&] { return PeerCount(n(1)) == 1; }, 20s));
  auto c = n(1).files->Create(kRootId, "f", 0644, 0, 0, O_RDWR | O_CREAT);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(n(1).files->Write(c->handle, 0, Pattern(5000, 3)).ok());
  Status s = n(1).files->Fsync(c->handle);
  EXPECT_EQ(s.code(), Code::kIOError);
  EXPECT_THAT(s.message(), ::testing::HasSubstr("durable on 2 of 3 members"));
  EXPECT_THAT(s.message(), ::testing::HasSubstr(fmt::format("{:016x} (not connected)", n(3).id())));
  EXPECT_THAT(s.message(), ::testing::Not(::testing::HasSubstr(fmt::format("{:016x}", n(2).id()))));
  n(1).files->Release(c->handle);
}

// Repair: a member that holds chunks (--replicas 2) goes away for good. Once it is down, each of
// its chunks is ranked to another member, which fetches it: every chunk is back on two live
// members.
TEST_F(MembershipClusterTest, ChunksOfAMemberThatWentDownAreCopiedToTheNextRanked) {
  ReplicatorOptions o = Small(2, 200ms, 300ms);
  o.replicas = 2;
  o.down_after = 1s;
  ASSERT_TRUE(StartCluster(6, o));
  const Bytes data = Pattern(10 * kMiB, 17);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/f", data).ok());
  const auto manifest = n(1).files->Resolve("/f")->rec.manifest;
  std::map<std::uint64_t, Node*> by_id;
  for (auto& node : nodes_) by_id[node->id()] = node.get();
  auto on_ranked = [&](const std::vector<std::uint64_t>& ids) {
    for (const auto& [index, id] : manifest) {
      for (std::uint64_t h : replication::Ranked(ids, id, 2)) {
        if (!by_id.at(h)->store->Has(id)) return false;
      }
    }
    return true;
  };
  ASSERT_TRUE(Eventually([&] { return on_ranked(Ids()); }, 20s));

  // The victim: the member (not the writer) ranked for the most chunks.
  std::map<std::uint64_t, int> load;
  for (const auto& [index, id] : manifest) {
    for (std::uint64_t h : replication::Ranked(Ids(), id, 2)) ++load[h];
  }
  load.erase(n(1).id());
  Node* victim = by_id.at(std::max_element(load.begin(), load.end(), [](auto& a, auto& b) {
                            return a.second < b.second;
                          })->first);
  ASSERT_GT(load[victim->id()], 0);
  const std::vector<std::uint64_t> alive = CutOff(*victim);
  auto down_everywhere = [&] {
    return OnIo(io_, [&] {
      for (auto& node : nodes_) {
        if (node.get() == victim) continue;
        for (const auto& m : node->replicator->Members()) {
          if (m.node_id == victim->id() && m.state != net::MemberState::kDown) return false;
        }
      }
      return true;
    });
  };
  ASSERT_TRUE(Eventually(down_everywhere, 30s));
  EXPECT_TRUE(Eventually([&] { return on_ranked(alive); }, 20s))
      << "chunks of the member that went down are not back on two live members";
}

// Placement passes (ChunkTrim) for the tests below: every 100 ms, no settle time.
ReplicatorOptions Trimming(std::uint64_t cache_size) {
  ReplicatorOptions o = Node::Options();
  o.max_links = 8;
  o.probe_period = std::chrono::milliseconds(200);
  o.replicas = 2;
  o.cache_size = cache_size;
  o.rebalance_interval = std::chrono::milliseconds(100);
  o.settle = std::chrono::milliseconds(0);
  return o;
}

class PlacementPassTest : public MembershipClusterTest {
 protected:
  // Copies of `id` across the nodes' stores.
  std::size_t Copies(const cas::ChunkId& id) {
    std::size_t k = 0;
    for (auto& node : nodes_) k += node->store->Has(id) ? 1 : 0;
    return k;
  }
  bool OnRankedOnly(const model::ChunkMap& manifest) {
    for (const auto& [index, id] : manifest) {
      if (Copies(id) != 2) return false;
      for (std::uint64_t h : replication::Ranked(Ids(), id, 2)) {
        if (!ById(h).store->Has(id)) return false;
      }
    }
    return true;
  }
  Node& ById(std::uint64_t id) {
    for (auto& node : nodes_) {
      if (node->id() == id) return *node;
    }
    throw std::out_of_range("no such node");
  }
  bool Ranked(Node& node, const cas::ChunkId& id) {
    auto r = replication::Ranked(Ids(), id, 2);
    return std::find(r.begin(), r.end(), node.id()) != r.end();
  }
  PlacementStatus State(Node& node) {
    return OnIo(io_, [&] { return node.replicator->PlacementState(); });
  }
  // Waits for two whole passes on every node to begin and end after this call.
  bool TwoPasses() {
    std::vector<std::size_t> start;
    for (auto& node : nodes_) start.push_back(State(*node).passes);
    return Eventually(
        [&] {
          for (std::size_t i = 0; i < nodes_.size(); ++i) {
            if (State(*nodes_[i]).passes < start[i] + 2) return false;
          }
          return true;
        },
        40s);
  }
};

// Copies a node holds that placement does not rank there (the writer's, the reader's) go once
// both ranked members confirm theirs: every chunk ends on exactly its two ranked members, and
// every node still reads the file (fetching on demand what it dropped).
TEST_F(PlacementPassTest, CopiesNotRankedHereGoOnceTheRankedMembersHoldThem) {
  for (int i = 0; i < 5; ++i) AddNode(Trimming(0));
  StartAll();
  ASSERT_TRUE(Eventually([&] { return AllKnowAll(); }, 30s));
  const Bytes data = Pattern(12 * kMiB, 23);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/f", data).ok());
  const auto manifest = n(1).files->Resolve("/f")->rec.manifest;
  ASSERT_EQ(manifest.size(), 12u);
  EXPECT_TRUE(Eventually([&] { return OnRankedOnly(manifest); }, 20s))
      << "copies not ranked on their holder were not dropped";
  std::size_t dropped = 0;
  for (auto& node : nodes_) dropped += State(*node).dropped;
  EXPECT_GT(dropped, 0u);
  // Every node reads it; the copies readers fetched go again.
  for (auto& node : nodes_) EXPECT_TRUE(test::HasBytes(*node, "/f", data)) << node->name;
  EXPECT_TRUE(Eventually([&] { return OnRankedOnly(manifest); }, 20s));
  for (auto& node : nodes_) {
    auto s = State(*node);
    EXPECT_TRUE(s.enabled);
    EXPECT_EQ(s.under_replicated, 0u) << node->name;
    EXPECT_EQ(s.missing_here, 0u) << node->name;
  }
}

// A node whose cache holds 3 MiB keeps the three chunks not ranked to it it read last, drops
// the others, and reads a dropped one again by fetching it.
TEST_F(PlacementPassTest, TheCacheKeepsTheMostRecentlyReadCopies) {
  for (int i = 0; i < 4; ++i) AddNode(Trimming(0));
  AddNode(Trimming(3 * kMiB));
  StartAll();
  ASSERT_TRUE(Eventually([&] { return AllKnowAll(); }, 30s));
  // 24 chunks, about 14 of them not ranked on node 5 (with 12, fewer than 4 in 1.5% of runs).
  const Bytes data = Pattern(24 * kMiB, 29);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/f", data).ok());
  const auto manifest = n(1).files->Resolve("/f")->rec.manifest;
  ASSERT_TRUE(Eventually([&] { return OnRankedOnly(manifest); }, 20s));
  Node& cache = n(5);
  // Read chunk by chunk, in order: the last three not ranked here are the cache.
  std::vector<cas::ChunkId> order;
  for (const auto& [index, id] : manifest) {
    Bytes part(kMiB);
    ASSERT_TRUE(cache.files->ReadChunk(id, 0, MutableByteSpan(part.data(), part.size())).ok());
    if (!Ranked(cache, id)) order.push_back(id);
  }
  ASSERT_GE(order.size(), 4u);
  std::set<cas::ChunkId> keep(order.end() - 3, order.end());
  auto cached_right = [&] {
    for (const auto& id : order) {
      if (cache.store->Has(id) != keep.contains(id)) return false;
    }
    return true;
  };
  EXPECT_TRUE(Eventually(cached_right, 20s)) << "the cache does not hold the last 3 chunks read";
  EXPECT_TRUE(TwoPasses());
  EXPECT_TRUE(cached_right());
  auto s = State(cache);
  EXPECT_EQ(s.extra, 3u);
  EXPECT_EQ(s.extra_bytes, 3 * kMiB);
  EXPECT_EQ(s.cache_limit, 3 * kMiB);
  // A dropped chunk reads again (fetched), and is now the most recently read.
  const cas::ChunkId again = order.front();
  ASSERT_FALSE(cache.store->Has(again));
  std::size_t at = 0;
  for (const auto& [index, id] : manifest) {
    if (id == again) at = index * kMiB;
  }
  Bytes part(kMiB);
  ASSERT_TRUE(cache.files->ReadChunk(again, 0, MutableByteSpan(part.data(), part.size())).ok());
  EXPECT_TRUE(std::equal(part.begin(), part.end(), data.begin() + static_cast<std::ptrdiff_t>(at)));
  EXPECT_TRUE(cache.store->Has(again));
  EXPECT_TRUE(TwoPasses());
  EXPECT_TRUE(cache.store->Has(again)) << "the chunk just read was evicted";
  std::size_t held = 0;
  for (const auto& id : order) held += cache.store->Has(id) ? 1 : 0;
  EXPECT_EQ(held, 3u);
}

// A pinned file keeps every chunk on a node with no cache; unpinned, they go.
TEST_F(PlacementPassTest, PinnedChunksStayWhateverTheirRank) {
  for (int i = 0; i < 5; ++i) AddNode(Trimming(0));
  StartAll();
  ASSERT_TRUE(Eventually([&] { return AllKnowAll(); }, 30s));
  const Bytes data = Pattern(8 * kMiB, 31);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/f", data).ok());
  const auto manifest = n(1).files->Resolve("/f")->rec.manifest;
  ASSERT_TRUE(Eventually([&] { return OnRankedOnly(manifest); }, 20s));
  Node& pin = n(4);
  auto attr = pin.files->Resolve("/f");
  ASSERT_TRUE(attr.ok());
  const Bytes one{'1'}, zero{'0'};
  ASSERT_TRUE(pin.files->SetPin(attr->rec.id, one).ok());
  auto all_here = [&] {
    for (const auto& [index, id] : manifest) {
      if (!pin.store->Has(id)) return false;
    }
    return true;
  };
  ASSERT_TRUE(Eventually(all_here, 20s)) << "the pin did not fetch the chunks";
  EXPECT_TRUE(TwoPasses());
  EXPECT_TRUE(all_here()) << "a pinned chunk was dropped";
  std::size_t not_ranked = 0;
  for (const auto& [index, id] : manifest) not_ranked += Ranked(pin, id) ? 0 : 1;
  EXPECT_EQ(State(pin).pinned, not_ranked);
  ASSERT_TRUE(pin.files->SetPin(attr->rec.id, zero).ok());
  EXPECT_TRUE(Eventually([&] { return OnRankedOnly(manifest); }, 20s))
      << "unpinned chunks not ranked here stayed";
}

// The under-replicated count: 0 once the copies are placed; above 0 while a holder is away
// (suspect: still placed, does not confirm); 0 again once it is down and the next ranked
// members copied its chunks.
TEST_F(PlacementPassTest, UnderReplicatedCountGoesToZeroAfterRepair) {
  ReplicatorOptions o = Trimming(std::uint64_t{1} << 40);
  o.down_after = 3s;
  ASSERT_TRUE(StartCluster(5, o));
  const Bytes data = Pattern(10 * kMiB, 37);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/f", data).ok());
  const auto manifest = n(1).files->Resolve("/f")->rec.manifest;
  auto under = [&](Node* skip) {
    std::size_t u = 0, primary = 0;
    for (auto& node : nodes_) {
      if (node.get() == skip) continue;
      auto s = State(*node);
      u += s.under_replicated;
      primary += s.primary;
    }
    return std::make_pair(u, primary);
  };
  ASSERT_TRUE(Eventually(
      [&] {
        auto [u, primary] = under(nullptr);
        return u == 0 && primary == manifest.size();
      },
      20s))
      << "under-replicated " << under(nullptr).first;
  // The victim: not the writer, and second-ranked for some chunk, so that the chunk's first
  // ranked member (alive) counts it while the victim is away. (A chunk whose first-ranked member
  // is away is counted by nobody until that member is down and placement moves on.)
  Node* victim = nullptr;
  for (std::size_t i = 2; i <= 5 && !victim; ++i) {
    for (const auto& [index, id] : manifest) {
      if (replication::Ranked(Ids(), id, 2).back() == n(i).id()) victim = &n(i);
    }
  }
  ASSERT_NE(victim, nullptr);
  const std::vector<std::uint64_t> alive = CutOff(*victim);
  EXPECT_TRUE(Eventually([&] { return under(victim).first > 0; }, 20s))
      << "no chunk counted under-replicated while a holder is away";
  EXPECT_TRUE(Eventually([&] { return under(victim).first == 0; }, 30s))
      << "still under-replicated after repair: " << under(victim).first;
  for (const auto& [index, id] : manifest) {
    for (std::uint64_t h : replication::Ranked(alive, id, 2)) {
      EXPECT_TRUE(ById(h).store->Has(id));
    }
  }
}

// A ranked member that cannot be reached does not confirm: the writer keeps its copy of the
// chunks ranked there, so no chunk has fewer than two copies on the nodes that can be reached
// (but those ranked on the writer and on the member away: nothing could copy them).
TEST_F(PlacementPassTest, ACopyStaysWhileARankedMemberHasNotConfirmed) {
  for (int i = 0; i < 5; ++i) AddNode(Trimming(0));
  StartAll();
  ASSERT_TRUE(Eventually([&] { return AllKnowAll(); }, 30s));
  Node& away = n(5);
  for (std::size_t i = 1; i <= 4; ++i) network_->Partition(away.id(), n(i).id());
  // 32 chunks: some are ranked on `away` and not on the writer in all but ~1e-5 of runs.
  const Bytes data = Pattern(32 * kMiB, 41);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/f", data).ok());
  const auto manifest = n(1).files->Resolve("/f")->rec.manifest;
  std::vector<cas::ChunkId> kept;  // ranked on `away`, not on the writer
  for (const auto& [index, id] : manifest) {
    if (Ranked(away, id) && !Ranked(n(1), id)) kept.push_back(id);
  }
  ASSERT_FALSE(kept.empty());
  EXPECT_TRUE(TwoPasses());
  EXPECT_TRUE(TwoPasses());
  for (const auto& [index, id] : manifest) {
    std::size_t reachable = 0;
    for (std::size_t i = 1; i <= 4; ++i) reachable += n(i).store->Has(id) ? 1 : 0;
    const std::size_t want = Ranked(away, id) && Ranked(n(1), id) ? 1 : 2;
    EXPECT_GE(reachable, want) << "chunk " << index << " fell below " << want << " copies";
  }
  for (const auto& id : kept) EXPECT_TRUE(n(1).store->Has(id));
  EXPECT_GT(State(n(1)).unconfirmed, 0u);
}

// With two long-lived links each, most ranked members are not linked with the node that asks:
// the pass reaches them over short-lived links, so copies still go and nothing counts as
// under-replicated once placed.
TEST_F(PlacementPassTest, RankedMembersWithoutALinkAreReachedToConfirm) {
  ReplicatorOptions o = Trimming(0);
  o.max_links = 2;
  o.probe_period = std::chrono::milliseconds(3000);  // few probe links
  o.short_idle = std::chrono::milliseconds(200);
  ASSERT_TRUE(StartCluster(8, o));
  const Bytes data = Pattern(16 * kMiB, 43);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/f", data).ok());
  const auto manifest = n(1).files->Resolve("/f")->rec.manifest;
  EXPECT_TRUE(Eventually([&] { return OnRankedOnly(manifest); }, 40s))
      << "copies not ranked on their holder were not dropped over bounded links";
  auto none_under = [&] {
    std::size_t primary = 0;
    for (auto& node : nodes_) {
      auto s = State(*node);
      if (s.under_replicated != 0) return false;
      primary += s.primary;
    }
    return primary == manifest.size();
  };
  EXPECT_TRUE(Eventually(none_under, 40s));
}

// fsync asks the member placement ranks for the file's chunk for the durable copy (not the
// first peer by id): right after fsync returns, that member holds the chunk and the lowest-id
// peer that applies node 1's feed, which is not ranked for it, does not.
TEST_F(PlacementPassTest, FsyncAsksTheRankedMemberForTheDurableCopy) {
  ReplicatorOptions o = Trimming(std::uint64_t{1} << 40);
  o.replicas = 1;
  o.sync_copies = 2;
  ASSERT_TRUE(StartCluster(5, o));
  // Only peers that apply node 1's feed are asked for durable copies: the test picks a chunk
  // ranked on one of them that is not the lowest-id one.
  std::set<std::uint64_t> subscribed;
  ASSERT_TRUE(Eventually(
      [&] {
        subscribed = OnIo(io_, [&] {
          std::set<std::uint64_t> s;
          for (const auto& p : n(1).replicator->Peers()) {
            if (p.subscribed) s.insert(p.node_id);
          }
          return s;
        });
        return subscribed.size() >= 3;
      },
      20s));
  const std::uint64_t lowest = *subscribed.begin();
  const cas::ChunkHasher hasher(test::FixedKey());
  Bytes data;
  std::uint64_t ranked = 0;
  for (std::uint8_t seed = 1; seed < 200 && ranked == 0; ++seed) {
    data = Pattern(kMiB, seed);
    const auto holder = replication::Ranked(Ids(), hasher.IdOf(data), 1).front();
    if (holder != lowest && subscribed.contains(holder)) ranked = holder;
  }
  ASSERT_NE(ranked, 0u);
  const cas::ChunkId chunk = hasher.IdOf(data);
  auto c = n(1).files->Create(kRootId, "f", 0644, 0, 0, O_RDWR | O_CREAT);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(n(1).files->Write(c->handle, 0, data).ok());
  ASSERT_TRUE(n(1).files->Fsync(c->handle).ok());
  EXPECT_TRUE(ById(ranked).store->Has(chunk)) << "the ranked member was not asked";
  EXPECT_FALSE(ById(lowest).store->Has(chunk)) << "the lowest-id peer was asked";
  n(1).files->Release(c->handle);
}

}  // namespace
}  // namespace foreverfs::server
