// Replication between FileServers through the in-process MemoryNetwork: namespace and chunks
// reach every node, catch-up after a partition, relaying to a node that knows only one peer,
// on-demand fetches, their deadline, peers that lie about chunks, and links that drop, delay and
// partition (seeded faults of the MemoryNetwork).
//
// Threading: one io_context run by one thread carries every link and every Replicator. The
// test thread calls FileServer methods (which may block on a fetch, so never on the io thread)
// and reaches Replicator state only by posting to the io thread.

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cas/chunk_store.h"
#include "cas/testing/memory_store.h"
#include "net/memory_transport.h"
#include "server/file_server.h"
#include "server/replicator.h"
#include "unit/replication_cluster.h"
#include "unit/test_util.h"

namespace foreverfs::server {
namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using test::Eventually;
using test::GetBytes;
using test::HasBytes;
using test::kFetchTimeout;
using test::Node;
using test::OnIo;
using test::StoreBytes;

using test::TempDir;

using test::FixedKey;
using test::Pattern;

cas::ChunkId IdOf(ByteSpan data) { return cas::ChunkHasher(FixedKey()).IdOf(data); }

bool Absent(Node& n, std::string_view path) {
  return n.files->Resolve(path).status().code() == Code::kNotFound;
}

// Every path under the root with its kind and, for files, its bytes.
using Tree = std::map<std::string, std::pair<InodeKind, Bytes>>;

Result<Tree> Walk(FileServer& fs) {
  Tree tree;
  std::vector<std::pair<std::string, InodeId>> todo = {{"", kRootId}};
  while (!todo.empty()) {
    auto [prefix, dir] = todo.back();
    todo.pop_back();
    auto entries = fs.ReadDir(dir);
    if (!entries.ok()) return entries.status();
    for (const auto& e : *entries) {
      std::string path = prefix + "/" + e.name;
      Bytes content;
      if (e.kind == InodeKind::kDir) {
        todo.emplace_back(path, e.id);
      } else if (e.kind == InodeKind::kFile) {
        auto got = GetBytes(fs, path);
        if (!got.ok()) return got.status();
        content = std::move(*got);
      }
      tree[path] = {e.kind, std::move(content)};
    }
  }
  return tree;
}

bool SameTree(Node& a, Node& b) {
  auto ta = Walk(*a.files);
  auto tb = Walk(*b.files);
  return ta.ok() && tb.ok() && *ta == *tb;
}

// Every chunk of every live file of `of` is in `n`'s own store.
bool HoldsAllChunks(Node& n, NamespaceDb& of) {
  bool all = true;
  Status s = of.ForEachLiveManifest([&](const InodeRecord& r) {
    for (const auto& [index, id] : r.manifest) {
      if (!n.store->Has(id)) all = false;
    }
  });
  return s.ok() && all;
}

// A peer that is not a Replicator: it can announce records and answers GetChunk as told.
class FakePeer : public net::LinkHandler {
 public:
  explicit FakePeer(std::uint64_t id) : id_(id) {}
  std::uint64_t id() const { return id_; }

  bool OnOpen(const std::shared_ptr<net::Link>& link) override {
    link_ = link;
    return true;
  }
  void OnMessage(const std::shared_ptr<net::Link>& link, net::Message&& m) override {
    if (auto* sub = std::get_if<net::Subscribe>(&m)) {
      ++subscribes;
      if (sub->answer) ++answers;
    }
    if (std::holds_alternative<net::Subscribe>(m) && announce_) {
      link->Send(*announce_);
    } else if (auto* get = std::get_if<net::GetChunk>(&m)) {
      ++get_chunks;
      if (answer) {
        answer(link, *get);
      } else {
        link->Send(net::ChunkReply{get->request_id, false, {}});
      }
    }
  }
  void OnClose(const std::shared_ptr<net::Link>&, const std::string&) override { link_.reset(); }

  // Records sent in answer to the node's Subscribe. Set before connecting.
  void Announce(net::Changes changes) { announce_ = std::move(changes); }
  // Subscribes to the node's feed from its start (as an answer if `answer`). io thread only.
  void Subscribe(bool answer = false) {
    if (link_) link_->Send(net::Subscribe{0, answer});
  }

  // io thread only.
  std::function<void(const std::shared_ptr<net::Link>&, const net::GetChunk&)> answer;
  std::atomic<int> get_chunks{0};
  std::atomic<int> subscribes{0};  // Subscribe messages received
  std::atomic<int> answers{0};     // of which sent as answers

 private:
  const std::uint64_t id_;
  std::shared_ptr<net::Link> link_;
  std::optional<net::Changes> announce_;
};

// A file "/f" whose single chunk holds `data`, as a peer would announce it.
net::Changes AnnounceFile(const Bytes& data, std::uint64_t node) {
  InodeRecord r;
  r.id = 0x1234567;
  r.kind = InodeKind::kFile;
  r.mode = 0644;
  r.size = data.size();
  r.mtime_ns = r.ctime_ns = 1;
  r.version = {1000, node};
  r.manifest = {IdOf(data)};
  DentryRecord d{kRootId, "f", r.id, {1001, node}, false};
  return net::Changes{2, {r}, {d}};
}

class ReplicationTest : public test::ClusterFixture {
 protected:
  void Connect(Node& a, Node& b) {
    network_->Connect(a.id(), *a.replicator, b.id(), *b.replicator);
  }
  void Disconnect(Node& a, Node& b) { network_->Disconnect(a.id(), b.id()); }

  // Three nodes, fully connected, with every link up.
  void MakeMesh() {
    Node& a = AddNode();
    Node& b = AddNode();
    Node& c = AddNode();
    Connect(a, b);
    Connect(b, c);
    Connect(a, c);
    ASSERT_TRUE(
        Eventually([&] { return PeerCount(a) == 2 && PeerCount(b) == 2 && PeerCount(c) == 2; }));
  }
};

TEST_F(ReplicationTest, StoredFileReachesEveryNode) {
  MakeMesh();
  const Bytes data = Pattern(3 * kMiB, 1);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/big", data).ok());
  EXPECT_TRUE(Eventually([&] { return HasBytes(n(2), "/big", data); }));
  EXPECT_TRUE(Eventually([&] { return HasBytes(n(3), "/big", data); }));
  // Background replication copies the chunks themselves, not only the namespace.
  EXPECT_TRUE(
      Eventually([&] { return HoldsAllChunks(n(2), *n(1).db) && HoldsAllChunks(n(3), *n(1).db); }));
  EXPECT_EQ(n(2).files->Resolve("/big")->rec.id, n(1).files->Resolve("/big")->rec.id);

  // A change made on another node flows back.
  const Bytes edited = Pattern(kMiB + 5, 2);
  ASSERT_TRUE(StoreBytes(*n(3).files, "/big", edited).ok());
  EXPECT_TRUE(
      Eventually([&] { return HasBytes(n(1), "/big", edited) && HasBytes(n(2), "/big", edited); }));
}

TEST_F(ReplicationTest, RenameAndRemovePropagate) {
  MakeMesh();
  const Bytes data = Pattern(100'000, 3);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/a", data).ok());
  ASSERT_TRUE(n(1).files->Mkdir(kRootId, "d", 0755, 0, 0).ok());
  ASSERT_TRUE(Eventually([&] { return HasBytes(n(2), "/a", data) && HasBytes(n(3), "/a", data); }));
  ASSERT_TRUE(Eventually([&] { return n(2).files->Resolve("/d").ok(); }));

  // Rename on node 2, into the directory node 1 made.
  auto d = n(2).files->Resolve("/d");
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(n(2).files->Rename(kRootId, "a", d->rec.id, "b", 0).ok());
  for (std::size_t i : {1, 3}) {
    EXPECT_TRUE(Eventually([&] { return Absent(n(i), "/a") && HasBytes(n(i), "/d/b", data); }))
        << n(i).name;
  }

  // Remove on node 3.
  ASSERT_TRUE(n(3).files->Remove("/d/b").ok());
  ASSERT_TRUE(n(3).files->Remove("/d").ok());
  for (std::size_t i : {1, 2}) {
    EXPECT_TRUE(Eventually([&] { return Absent(n(i), "/d/b") && Absent(n(i), "/d"); }))
        << n(i).name;
  }
  EXPECT_TRUE(n(1).files->ReadDir(kRootId)->empty());
}

TEST_F(ReplicationTest, MissingChunkIsFetchedOnRead) {
  MakeMesh();
  const Bytes data = Pattern(2 * kMiB + 7, 4);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/f", data).ok());
  ASSERT_TRUE(Eventually([&] { return HoldsAllChunks(n(3), *n(1).db); }));

  // Node 3 loses a chunk (as after a disk problem); reading pulls it back from a peer.
  const auto manifest = n(3).files->Resolve("/f")->rec.manifest;
  ASSERT_EQ(manifest.size(), 3u);
  ASSERT_TRUE(n(3).store->Remove(manifest[1]).ok());
  ASSERT_FALSE(n(3).files->HasChunk(manifest[1]));
  auto got = GetBytes(*n(3).files, "/f");
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_TRUE(*got == data);
  EXPECT_TRUE(n(3).files->HasChunk(manifest[1])) << "a fetched chunk is kept";

  // Even when only one peer has it.
  ASSERT_TRUE(n(2).store->Remove(manifest[0]).ok());
  ASSERT_TRUE(n(3).store->Remove(manifest[0]).ok());
  auto direct = n(3).files->LoadChunk(manifest[0]);
  ASSERT_TRUE(direct.ok()) << direct.status().message();
  EXPECT_TRUE(std::equal(direct->begin(), direct->end(), data.begin()));
}

TEST_F(ReplicationTest, DisconnectedNodeCatchesUp) {
  MakeMesh();
  ASSERT_TRUE(StoreBytes(*n(1).files, "/old", Pattern(1000, 5)).ok());
  ASSERT_TRUE(StoreBytes(*n(1).files, "/x", Pattern(2000, 6)).ok());
  ASSERT_TRUE(Eventually([&] { return SameTree(n(1), n(3)); }));

  Disconnect(n(3), n(1));
  Disconnect(n(3), n(2));
  ASSERT_TRUE(Eventually([&] { return PeerCount(n(3)) == 0 && PeerCount(n(1)) == 1; }));

  const Bytes fresh = Pattern(kMiB + 1, 7);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/new", fresh).ok());
  ASSERT_TRUE(n(1).files->Remove("/old").ok());
  ASSERT_TRUE(n(1).files->Rename(kRootId, "x", kRootId, "y", 0).ok());
  ASSERT_TRUE(Eventually([&] { return SameTree(n(1), n(2)); }));
  std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(Absent(n(3), "/new"));
  EXPECT_TRUE(n(3).files->Resolve("/old").ok());

  Connect(n(1), n(3));
  EXPECT_TRUE(Eventually([&] { return SameTree(n(1), n(3)); }));
  EXPECT_TRUE(Absent(n(3), "/old"));
  EXPECT_TRUE(Absent(n(3), "/x"));
  EXPECT_TRUE(HasBytes(n(3), "/y", Pattern(2000, 6)));
  EXPECT_TRUE(HasBytes(n(3), "/new", fresh));

  // And it also catches up on what happens while it is linked to one node only.
  ASSERT_TRUE(n(2).files->Mkdir(kRootId, "from2", 0755, 0, 0).ok());
  EXPECT_TRUE(Eventually([&] { return n(3).files->Resolve("/from2").ok(); }));
}

TEST_F(ReplicationTest, NewNodeLinkedToOnePeerGetsEverything) {
  MakeMesh();
  ASSERT_TRUE(n(1).files->Mkdir(kRootId, "dir", 0755, 0, 0).ok());
  ASSERT_TRUE(StoreBytes(*n(1).files, "/dir/a", Pattern(3 * kMiB, 8)).ok());
  ASSERT_TRUE(StoreBytes(*n(3).files, "/b", Pattern(10, 9)).ok());
  ASSERT_TRUE(n(1).files->Symlink(kRootId, "ln", "dir/a", 0, 0).ok());
  ASSERT_TRUE(StoreBytes(*n(2).files, "/gone", Pattern(10, 10)).ok());
  ASSERT_TRUE(Eventually([&] { return Absent(n(1), "/gone") == false; }));
  ASSERT_TRUE(n(1).files->Remove("/gone").ok());
  ASSERT_TRUE(Eventually([&] { return SameTree(n(1), n(2)) && SameTree(n(1), n(3)); }));
  ASSERT_TRUE(Eventually([&] { return HoldsAllChunks(n(2), *n(2).db); }));

  Node& fresh = AddNode();
  Connect(fresh, n(2));
  EXPECT_TRUE(Eventually([&] { return SameTree(n(1), fresh); }));
  EXPECT_TRUE(Absent(fresh, "/gone"));
  auto ln = fresh.files->Resolve("/ln");
  ASSERT_TRUE(ln.ok());
  EXPECT_EQ(*fresh.files->ReadLink(ln->rec.id), "dir/a");
  EXPECT_TRUE(Eventually([&] { return HoldsAllChunks(fresh, *fresh.db); }));
  // It relays in the other direction too.
  ASSERT_TRUE(StoreBytes(*fresh.files, "/from4", Pattern(5, 11)).ok());
  EXPECT_TRUE(Eventually([&] { return HasBytes(n(1), "/from4", Pattern(5, 11)); }));
}

TEST_F(ReplicationTest, BackgroundReplicationRetriesAChunkThatWasUnavailable) {
  Node& a = AddNode();
  Node& b = AddNode();
  Connect(a, b);
  const Bytes data = Pattern(kMiB + 10, 17);
  ASSERT_TRUE(StoreBytes(*a.files, "/f", data).ok());
  ASSERT_TRUE(Eventually([&] { return HoldsAllChunks(b, *a.db); }));
  // b loses a chunk while it cannot reach a.
  Disconnect(a, b);
  ASSERT_TRUE(Eventually([&] { return PeerCount(b) == 0; }));
  const auto lost = b.files->Resolve("/f")->rec.manifest[1];
  ASSERT_TRUE(b.store->Remove(lost).ok());

  // c only knows b: its background attempt for that chunk fails.
  Node& c = AddNode();
  Connect(c, b);
  ASSERT_TRUE(Eventually([&] { return c.files->Resolve("/f").ok(); }));
  ASSERT_TRUE(Eventually([&] { return OnIo(io_, [&] { return c.replicator->Backlog(); }) == 0; },
                         kFetchTimeout + 5s));
  EXPECT_FALSE(c.store->Has(lost));

  // a comes back and b heals; c, whose links did not change, must not stay without it for good.
  Connect(a, b);
  ASSERT_TRUE(Eventually([&] { return b.store->Has(lost); }));
  EXPECT_TRUE(Eventually([&] { return c.store->Has(lost); }))
      << "a chunk that failed to replicate once is never tried again";
}

TEST_F(ReplicationTest, ChunkNoPeerHasFailsWithinTheFetchTimeout) {
  MakeMesh();
  const Bytes data = Pattern(5000, 12);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/f", data).ok());
  ASSERT_TRUE(
      Eventually([&] { return HoldsAllChunks(n(2), *n(1).db) && HoldsAllChunks(n(3), *n(1).db); }));
  const auto chunk = n(1).files->Resolve("/f")->rec.manifest[0];
  for (std::size_t i = 1; i <= 3; ++i) ASSERT_TRUE(n(i).store->Remove(chunk).ok());

  const auto start = Clock::now();
  auto got = GetBytes(*n(2).files, "/f");
  const auto took = Clock::now() - start;
  ASSERT_FALSE(got.ok());
  EXPECT_TRUE(got.status().code() == Code::kUnavailable || got.status().code() == Code::kTimedOut)
      << got.status().message();
  EXPECT_LT(took, kFetchTimeout + 3s);
}

TEST_F(ReplicationTest, ChunkFetchWithNoPeersAtAllFails) {
  Node& alone = AddNode();
  const auto start = Clock::now();
  auto r = alone.files->LoadChunk(IdOf(AsBytes("nowhere")));
  EXPECT_FALSE(r.ok());
  EXPECT_LT(Clock::now() - start, kFetchTimeout + 3s);
}

TEST_F(ReplicationTest, ChunkWhoseBytesDoNotMatchItsIdIsRejected) {
  Node& node = AddNode();
  FakePeer liar(0xbad);
  const Bytes data = Pattern(4000, 13);
  liar.Announce(AnnounceFile(data, liar.id()));
  liar.answer = [](const std::shared_ptr<net::Link>& link, const net::GetChunk& g) {
    link->Send(net::ChunkReply{g.request_id, true, Pattern(4000, 14)});
  };
  network_->Connect(node.id(), *node.replicator, liar.id(), liar);
  ASSERT_TRUE(Eventually([&] { return node.files->Resolve("/f").ok(); }));

  auto got = GetBytes(*node.files, "/f");
  EXPECT_FALSE(got.ok()) << "accepted a chunk that does not match its id";
  EXPECT_GE(liar.get_chunks.load(), 1);
  EXPECT_FALSE(node.files->HasChunk(IdOf(data)));

  // Once the peer tells the truth the same read works (after the half second in which a
  // chunk that just failed fails at once).
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  OnIo(io_, [&] {
    liar.answer = [data](const std::shared_ptr<net::Link>& link, const net::GetChunk& g) {
      link->Send(net::ChunkReply{g.request_id, true, data});
    };
    return 0;
  });
  got = GetBytes(*node.files, "/f");
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_TRUE(*got == data);
  EXPECT_TRUE(node.files->HasChunk(IdOf(data)));
  network_->Disconnect(node.id(), liar.id());
  ASSERT_TRUE(Eventually([&] { return PeerCount(node) == 0; }));
}

TEST_F(ReplicationTest, FetchCompletesWhileAnUpdateOfTheSameFileArrives) {
  // The read holds the file while it waits for the chunk; the event thread must still be
  // able to deliver that chunk even though an update of the same file arrives first.
  Node& node = AddNode();
  FakePeer peer(0x5eed);
  const Bytes data = Pattern(4000, 15);
  net::Changes initial = AnnounceFile(data, peer.id());
  peer.Announce(initial);
  peer.answer = [&, data, initial](const std::shared_ptr<net::Link>& link, const net::GetChunk& g) {
    net::Changes touch = initial;
    touch.up_to = 3;
    touch.inodes[0].mtime_ns = 2;
    touch.inodes[0].version.hlc += 10;
    touch.dentries.clear();
    link->Send(touch);
    link->Send(net::ChunkReply{g.request_id, true, data});
  };
  network_->Connect(node.id(), *node.replicator, peer.id(), peer);
  ASSERT_TRUE(Eventually([&] { return node.files->Resolve("/f").ok(); }));
  // Keep the file open so the update is delivered to the open file's state.
  const InodeId file = node.files->Resolve("/f")->rec.id;
  auto h = node.files->Open(file, O_RDONLY);
  ASSERT_TRUE(h.ok());

  const auto start = Clock::now();
  Bytes buf(10'000);
  auto n = node.files->Read(*h, 0, buf);
  const auto took = Clock::now() - start;
  ASSERT_TRUE(n.ok()) << n.status().message();
  buf.resize(*n);
  EXPECT_TRUE(buf == data);
  EXPECT_LT(took, kFetchTimeout) << "the read waited for its own deadline";
  EXPECT_TRUE(Eventually([&] { return node.files->GetAttr(file)->rec.mtime_ns == 2; }));
  node.files->Release(*h);
}

// The end of a link that dropped its feed state (the link turned short-lived in its plan)
// and took the link back while it stayed open subscribes a second time on that link; its
// state held our subscription to its feed, which it has forgotten, so the node subscribes
// again. A first Subscribe is not answered so.
TEST_F(ReplicationTest, ASecondSubscribeOnTheSameLinkIsAnsweredWithOurs) {
  Node& node = AddNode();
  FakePeer peer(0x5b5b);
  network_->Connect(node.id(), *node.replicator, peer.id(), peer);
  ASSERT_TRUE(Eventually([&] { return peer.subscribes.load() == 1; })) << "the node's own";
  const auto serves = [&] {
    return OnIo(io_, [&] {
      for (const auto& p : node.replicator->Peers()) {
        if (p.node_id == peer.id()) return p.subscribed;
      }
      return false;
    });
  };
  EXPECT_FALSE(serves());
  OnIo(io_, [&] {
    peer.Subscribe();
    return 0;
  });
  ASSERT_TRUE(Eventually(serves));
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(peer.subscribes.load(), 1) << "a first Subscribe is not answered with one";
  OnIo(io_, [&] {
    peer.Subscribe();
    return 0;
  });
  EXPECT_TRUE(Eventually([&] { return peer.subscribes.load() == 2; }));
  EXPECT_EQ(peer.answers.load(), 1);
  // A Subscribe sent as an answer is never answered (two ends that both took the link back
  // would otherwise answer each other without end).
  for (int i = 0; i < 3; ++i) {
    OnIo(io_, [&] {
      peer.Subscribe(true);
      return 0;
    });
  }
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(peer.subscribes.load(), 2);
  EXPECT_TRUE(serves());
  network_->Disconnect(node.id(), peer.id());
  ASSERT_TRUE(Eventually([&] { return PeerCount(node) == 0; }));
}

TEST_F(ReplicationTest, DuplicateLinksCollapseToOne) {
  Node& a = AddNode();
  Node& b = AddNode();
  Connect(a, b);
  Connect(b, a);
  Connect(a, b);
  ASSERT_TRUE(Eventually([&] { return PeerCount(a) == 1 && PeerCount(b) == 1; }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(PeerCount(a), 1u);
  EXPECT_EQ(PeerCount(b), 1u);
  EXPECT_EQ(OnIo(io_, [&] { return network_->LinkCount(); }), 1u);
  const Bytes data = Pattern(1234, 16);
  ASSERT_TRUE(StoreBytes(*a.files, "/f", data).ok());
  EXPECT_TRUE(Eventually([&] { return HasBytes(b, "/f", data); }));
}

TEST_F(ReplicationTest, ConcurrentWritersOnDifferentNodesConverge) {
  MakeMesh();
  // Every node writes its own files and one shared name at once; all end identical.
  std::vector<std::thread> writers;
  for (std::size_t i = 1; i <= 3; ++i) {
    writers.emplace_back([&, i] {
      for (int k = 0; k < 5; ++k) {
        auto path = "/n" + std::to_string(i) + "_" + std::to_string(k);
        EXPECT_TRUE(StoreBytes(*n(i).files, path,
                               Pattern(1000 + k, static_cast<std::uint32_t>(i * 100 + k)))
                        .ok());
        EXPECT_TRUE(
            StoreBytes(*n(i).files, "/shared", Pattern(500, static_cast<std::uint32_t>(i))).ok());
      }
    });
  }
  for (auto& t : writers) t.join();
  EXPECT_TRUE(Eventually([&] { return SameTree(n(1), n(2)) && SameTree(n(1), n(3)); }));
  auto tree = Walk(*n(1).files);
  ASSERT_TRUE(tree.ok());
  // 15 own files, "shared", and every concurrent version of "shared" that lost kept beside it
  // as "shared.conflict-...": no write is lost.
  std::size_t own = 0, shared = 0, copies = 0;
  for (const auto& [path, bytes] : *tree) {
    if (path == "/shared") {
      ++shared;
    } else if (path.rfind("/shared.conflict-", 0) == 0) {
      ++copies;
    } else {
      ++own;
    }
  }
  EXPECT_EQ(own, 15u);
  EXPECT_EQ(shared, 1u);
  EXPECT_GE(copies, 1u);
}

// Links that lose messages (each loss resets the link, which redials), delay them, and a
// partition with writers on both sides: every node ends with the same tree, nothing written is
// lost, and the concurrent versions of one name are all kept. Seeded: the same faults each run.
TEST_F(ReplicationTest, NodesConvergeOverLossyDelayedLinksAndAPartition) {
  network_->SetFaults({.seed = 7,
                       .drop = 0.01,
                       .max_delay = std::chrono::milliseconds(3),
                       .redial_after = std::chrono::milliseconds(20)});
  MakeMesh();
  std::map<std::string, Bytes> written;
  auto write = [&](std::size_t node, const std::string& path, std::size_t size,
                   std::uint32_t seed) {
    written[path] = Pattern(size, seed);
    EXPECT_TRUE(StoreBytes(*n(node).files, path, written[path]).ok()) << path;
  };
  for (std::size_t i = 1; i <= 3; ++i) {
    for (std::uint32_t k = 0; k < 3; ++k) {
      write(i, "/n" + std::to_string(i) + "_" + std::to_string(k), kMiB + k * 300'000, i * 10 + k);
    }
  }
  ASSERT_TRUE(StoreBytes(*n(1).files, "/shared", Pattern(100, 1)).ok());
  EXPECT_TRUE(Eventually([&] { return HasBytes(n(3), "/shared", Pattern(100, 1)); }, 30s));

  // Node 3 is cut off from both others; both sides keep working.
  network_->Partition(n(1).id(), n(3).id());
  network_->Partition(n(2).id(), n(3).id());
  ASSERT_TRUE(Eventually([&] { return PeerCount(n(3)) == 0; }, 30s));
  ASSERT_TRUE(StoreBytes(*n(1).files, "/shared", Pattern(2 * kMiB, 2)).ok());
  ASSERT_TRUE(StoreBytes(*n(3).files, "/shared", Pattern(kMiB / 2, 3)).ok());
  write(2, "/during_a", 700'000, 4);
  write(3, "/during_b", 900'000, 5);
  EXPECT_TRUE(HasBytes(n(3), "/during_b", written["/during_b"]));
  EXPECT_TRUE(Eventually([&] { return HasBytes(n(1), "/during_a", written["/during_a"]); }, 30s));

  network_->Heal(n(1).id(), n(3).id());
  network_->Heal(n(2).id(), n(3).id());
  Connect(n(1), n(3));
  Connect(n(2), n(3));
  EXPECT_TRUE(Eventually([&] { return SameTree(n(1), n(2)) && SameTree(n(1), n(3)); }, 60s));
  auto tree = Walk(*n(2).files);
  ASSERT_TRUE(tree.ok());
  for (const auto& [path, bytes] : written) {
    auto it = tree->find(path);
    ASSERT_NE(it, tree->end()) << path;
    EXPECT_TRUE(it->second.second == bytes) << path;
  }
  // Both versions of /shared written during the partition survive: one under the name, the
  // other as a conflict copy.
  std::vector<Bytes> versions;
  for (const auto& [path, entry] : *tree) {
    if (path == "/shared" || path.rfind("/shared.conflict-", 0) == 0)
      versions.push_back(entry.second);
  }
  auto has = [&](const Bytes& b) {
    return std::find(versions.begin(), versions.end(), b) != versions.end();
  };
  EXPECT_TRUE(has(Pattern(2 * kMiB, 2)));
  EXPECT_TRUE(has(Pattern(kMiB / 2, 3)));
  EXPECT_GT(OnIo(io_, [&] { return network_->Dropped(); }), 0u) << "no fault was injected";
}

// --- Observability: who holds a file's chunks, per-peer counters, catch-up progress ----------

TEST_F(ReplicationTest, HoldersNamesThePeersWithEveryChunk) {
  MakeMesh();
  const Bytes data = Pattern(3 * kMiB, 7);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/held", data).ok());
  ASSERT_TRUE(
      Eventually([&] { return HoldsAllChunks(n(2), *n(1).db) && HoldsAllChunks(n(3), *n(1).db); }));
  const auto manifest = n(1).files->Resolve("/held")->rec.manifest.Ids();
  ASSERT_EQ(manifest.size(), 3u);

  HolderReport r = n(1).replicator->Holders(manifest, 2000ms);
  EXPECT_EQ(r.chunks, 3u);
  EXPECT_TRUE(r.local);
  EXPECT_EQ(r.asked, 2u);
  EXPECT_EQ(r.answered, 2u);
  std::set<std::uint64_t> holders;
  for (const auto& h : r.peers) holders.insert(h.node_id);
  EXPECT_EQ(holders, (std::set<std::uint64_t>{n(2).id(), n(3).id()}));

  // Node 3 loses one chunk: it no longer holds every chunk; node 1 still does.
  ASSERT_TRUE(n(3).store->Remove(manifest[1]).ok());
  r = n(2).replicator->Holders(manifest, 2000ms);
  EXPECT_TRUE(r.local);
  ASSERT_EQ(r.peers.size(), 1u);
  EXPECT_EQ(r.peers[0].node_id, n(1).id());
  EXPECT_FALSE(n(3).replicator->Holders(manifest, 2000ms).local);
}

TEST_F(ReplicationTest, PeersReportBytesConnectedSinceAndWhyALinkWent) {
  Node& a = AddNode();
  Node& b = AddNode();
  const auto before = std::chrono::system_clock::now();
  Connect(a, b);
  ASSERT_TRUE(Eventually([&] { return PeerCount(a) == 1 && PeerCount(b) == 1; }));
  const Bytes data = Pattern(2 * kMiB, 8);
  ASSERT_TRUE(StoreBytes(*a.files, "/f", data).ok());
  ASSERT_TRUE(Eventually([&] { return HoldsAllChunks(b, *a.db); }));
  // A chunk is on disk (stored by the storage pool) a moment before the event thread counts it.
  ASSERT_TRUE(
      Eventually([&] { return OnIo(io_, [&] { return b.replicator->CatchUp(); }).done == 2; }));

  auto peers = OnIo(io_, [&] { return a.replicator->Peers(); });
  ASSERT_EQ(peers.size(), 1u);
  EXPECT_EQ(peers[0].node_id, b.id());
  EXPECT_TRUE(peers[0].connected);
  EXPECT_GE(peers[0].connected_since, before);
  EXPECT_GT(peers[0].bytes_out, 2 * kMiB);  // the chunks went out
  EXPECT_GT(peers[0].bytes_in, 0u);
  auto b_view = OnIo(io_, [&] { return b.replicator->Peers(); });
  ASSERT_EQ(b_view.size(), 1u);
  EXPECT_GT(b_view[0].bytes_in, 2 * kMiB);
  EXPECT_GT(b_view[0].records_received, 0u);
  auto round = OnIo(io_, [&] { return b.replicator->CatchUp(); });
  EXPECT_EQ(round.done, 2u);
  EXPECT_EQ(round.total, 2u);
  EXPECT_EQ(round.bytes, 2 * kMiB);
  EXPECT_EQ(a.replicator->PeerCount(), 1u);

  Disconnect(a, b);
  ASSERT_TRUE(Eventually([&] { return PeerCount(a) == 0; }));
  EXPECT_TRUE(OnIo(io_, [&] { return a.replicator->Peers(); }).empty());
  auto gone = OnIo(io_, [&] { return a.replicator->Peers(/*include_gone=*/true); });
  ASSERT_EQ(gone.size(), 1u);
  EXPECT_FALSE(gone[0].connected);
  EXPECT_EQ(gone[0].last_error, "disconnected: disconnected");
}

// --- A batch that fails to apply is never skipped (issue 13.4) ------------------------------
//
// The receiving node's namespace fails the apply of one batch (as SQLITE_FULL would, through
// NamespaceDb's test hook); every apply attempt is logged with the records it carried. The
// guarantee checked after every successful apply: the cursor it stores covers only changes that
// were applied, i.e. every record of the sender's feed up to that cursor is among the records
// applied so far. Then, with the fault cleared, the node converges to everything the sender has.

// A record of a feed, by identity and version ("i:<id>@<version>" or "d:<parent>/<name>@...").
std::string KeyOf(const InodeRecord& r) {
  return fmt::format("i:{:x}@{:x}.{:x}", r.id, r.version.hlc, r.version.node);
}
std::string KeyOf(const DentryRecord& d) {
  return fmt::format("d:{:x}/{}@{:x}.{:x}", d.parent, d.name, d.version.hlc, d.version.node);
}

// What one apply attempt of a batch from the watched peer carried, and whether it committed.
struct ApplyAttempt {
  std::uint64_t up_to = 0;
  std::vector<std::string> keys;
  bool failed = false;
};

// Fails the apply of batches from one peer as told, and logs every attempt. Thread-safe: the
// hook runs on the io thread, the test reads on its own.
class FeedFault {
 public:
  // Attach to `db`, watching batches from `peer`: once `fail_after` batches applied, the next
  // `failures` attempts fail (a full disk), whatever their batch.
  FeedFault(NamespaceDb& db, std::uint64_t peer, std::size_t fail_after, int failures)
      : db_(db), fail_after_(fail_after), failures_left_(failures) {
    db_.SetApplyFaultForTest(
        [this, peer](const ChangeSet& cs, std::uint64_t from, std::uint64_t up_to) -> Status {
          if (from != peer) return Ok();
          std::lock_guard lock(mu_);
          ApplyAttempt a;
          a.up_to = up_to;
          for (const auto& r : cs.inodes) a.keys.push_back(KeyOf(r));
          for (const auto& d : cs.dentries) a.keys.push_back(KeyOf(d));
          if (applied_ == fail_after_ && failures_left_ > 0) {
            --failures_left_;
            a.failed = true;
            log_.push_back(std::move(a));
            return Err(Code::kNoSpace, "metadata database: database or disk is full (injected)");
          }
          ++applied_;
          log_.push_back(std::move(a));
          return Ok();
        });
  }
  ~FeedFault() { db_.SetApplyFaultForTest({}); }

  void Clear() {
    std::lock_guard lock(mu_);
    failures_left_ = 0;
  }
  std::vector<ApplyAttempt> Log() {
    std::lock_guard lock(mu_);
    return log_;
  }
  int Failed() {
    std::lock_guard lock(mu_);
    return static_cast<int>(
        std::count_if(log_.begin(), log_.end(), [](const ApplyAttempt& a) { return a.failed; }));
  }

 private:
  NamespaceDb& db_;
  std::mutex mu_;
  const std::size_t fail_after_;
  int failures_left_;
  std::size_t applied_ = 0;
  std::vector<ApplyAttempt> log_;
};

// A feed as (sequence number, record key), in order.
using FeedMap = std::vector<std::pair<std::uint64_t, std::string>>;

// Every record of `db`'s own feed with its sequence number (one record per call).
FeedMap FeedOf(NamespaceDb& db) {
  FeedMap feed;
  for (std::uint64_t at = 0;;) {
    auto c = db.ChangesSince(at, 1, net::kMaxFrameSize);
    EXPECT_TRUE(c.ok());
    if (!c.ok() || (c->inodes.empty() && c->dentries.empty())) return feed;
    feed.emplace_back(c->up_to, c->inodes.empty() ? KeyOf(c->dentries[0]) : KeyOf(c->inodes[0]));
    at = c->up_to;
  }
}

// The guarantee, attempt by attempt: a committed batch moves the cursor to its up_to only when
// every record of the feed up to there has been applied, and the cursor never goes back.
::testing::AssertionResult NeverSkipped(const FeedMap& feed, const std::vector<ApplyAttempt>& log) {
  std::set<std::string> applied;
  std::uint64_t cursor = 0;
  for (std::size_t i = 0; i < log.size(); ++i) {
    if (log[i].failed) continue;
    applied.insert(log[i].keys.begin(), log[i].keys.end());
    if (log[i].up_to < cursor) {
      return ::testing::AssertionFailure() << "attempt " << i << " moved the cursor back from "
                                           << cursor << " to " << log[i].up_to;
    }
    cursor = log[i].up_to;
    for (const auto& [seq, key] : feed) {
      if (seq > cursor) break;
      if (!applied.contains(key)) {
        return ::testing::AssertionFailure()
               << "attempt " << i << " moved the cursor to " << cursor << " past change " << seq
               << " (" << key << "), which was never applied";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// The first failed attempt, and the cursor the last committed attempt before it left.
std::pair<std::size_t, std::uint64_t> FirstFailure(const std::vector<ApplyAttempt>& log) {
  std::uint64_t before = 0;
  for (std::size_t i = 0; i < log.size(); ++i) {
    if (log[i].failed) return {i, before};
    before = log[i].up_to;
  }
  return {log.size(), before};
}

// A real node's feed of ~3,000 records (6 batches of 512): the apply of batch 4 fails, twice
// (the first retry over a new link fails too). The cursor stays at batch 3's end through both
// failures, nothing after the failure is applied, and once the disk has room again the node gets
// everything, with every change of the feed applied before the cursor passes it.
TEST_F(ReplicationTest, FailedBatchIsNeverSkipped) {
  Node& a = AddNode();
  Node& b = AddNode();
  for (int i = 0; i < 1500; ++i) {
    ASSERT_TRUE(a.files->Mkdir(kRootId, "d" + std::to_string(i), 0755, 0, 0).ok());
  }
  for (int i = 0; i < 1500; i += 3) {
    ASSERT_TRUE(a.files->Rmdir(kRootId, "d" + std::to_string(i)).ok());  // tombstones too
  }
  const FeedMap feed = FeedOf(*a.db);
  ASSERT_GT(feed.size(), 5u * 512);  // batches after the failing one
  FeedFault fault(*b.db, a.id(), /*fail_after=*/3, /*failures=*/2);

  Connect(a, b);
  ASSERT_TRUE(Eventually([&] { return fault.Failed() == 1 && PeerCount(b) == 0; }))
      << "the failed batch did not close the link";
  std::this_thread::sleep_for(200ms);  // anything still in flight would arrive now
  auto [failed_at, before] = FirstFailure(fault.Log());
  ASSERT_EQ(failed_at, 3u);
  EXPECT_EQ(fault.Log().size(), 4u) << "batches after the failed one were applied";
  EXPECT_EQ(b.db->Cursor(a.id()), before);
  EXPECT_GT(before, 0u);
  EXPECT_FALSE(SameTree(a, b));

  // A new link brings the same batch again; it fails again; the cursor still does not move.
  Connect(a, b);
  ASSERT_TRUE(Eventually([&] { return fault.Failed() == 2 && PeerCount(b) == 0; }));
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(fault.Log().size(), 5u);
  EXPECT_EQ(fault.Log()[4].up_to, fault.Log()[3].up_to) << "not the same batch again";
  EXPECT_EQ(b.db->Cursor(a.id()), before);

  // The disk has room again.
  fault.Clear();
  Connect(a, b);
  ASSERT_TRUE(Eventually([&] { return b.db->Cursor(a.id()) == feed.back().first; }));
  EXPECT_TRUE(Eventually([&] { return SameTree(a, b); }));
  EXPECT_TRUE(NeverSkipped(feed, fault.Log()));
  std::set<std::string> applied;
  for (const auto& at : fault.Log()) {
    if (!at.failed) applied.insert(at.keys.begin(), at.keys.end());
  }
  for (const auto& [seq, key] : feed) EXPECT_TRUE(applied.contains(key)) << "lost: " << key;
}

// A peer serving a scripted feed: fixed batches (some may carry no record), each with its
// up_to. On Subscribe{since} it sends every batch after `since`, which must be a batch boundary
// (the receiver's cursor only ever takes those values).
class ScriptedFeed : public net::LinkHandler {
 public:
  ScriptedFeed(std::uint64_t id, std::vector<net::Changes> batches)
      : id_(id), batches_(std::move(batches)) {}
  std::uint64_t id() const { return id_; }
  bool OnOpen(const std::shared_ptr<net::Link>&) override { return true; }
  void OnMessage(const std::shared_ptr<net::Link>& link, net::Message&& m) override {
    auto* sub = std::get_if<net::Subscribe>(&m);
    if (!sub) return;
    std::lock_guard lock(mu_);
    subscribed_from_.push_back(sub->since);
    bool boundary = sub->since == 0;
    for (const auto& b : batches_) {
      if (b.up_to == sub->since) boundary = true;
      if (b.up_to > sub->since) link->Send(b);
    }
    if (!boundary) off_boundary_ = true;
  }
  void OnClose(const std::shared_ptr<net::Link>&, const std::string&) override {}

  std::vector<std::uint64_t> SubscribedFrom() {
    std::lock_guard lock(mu_);
    return subscribed_from_;
  }
  bool OffBoundary() {
    std::lock_guard lock(mu_);
    return off_boundary_;
  }
  FeedMap Feed() const {
    FeedMap feed;
    for (const auto& b : batches_) {
      // Records of a batch take the sequence numbers just below its up_to.
      std::uint64_t seq = b.up_to - b.inodes.size() - b.dentries.size();
      for (const auto& r : b.inodes) feed.emplace_back(++seq, KeyOf(r));
      for (const auto& d : b.dentries) feed.emplace_back(++seq, KeyOf(d));
    }
    return feed;
  }

 private:
  const std::uint64_t id_;
  const std::vector<net::Changes> batches_;
  std::mutex mu_;
  std::vector<std::uint64_t> subscribed_from_;
  bool off_boundary_ = false;
};

// Five batches of a peer's feed: files f0..f3 in batches 0, 1, 3 and 4, and batch 2 carrying
// no record, only a later up_to (a sender's sequence numbers can run ahead of its records: after
// a restart, or records replaced by newer changes).
std::vector<net::Changes> ScriptedBatches(std::uint64_t node) {
  std::vector<net::Changes> out;
  std::uint64_t seq = 0;
  int file = 0;
  for (int batch = 0; batch < 5; ++batch) {
    net::Changes c;
    if (batch == 2) {
      seq += 10;  // a gap: numbers whose records were replaced
    } else {
      for (int k = 0; k < 3; ++k, ++file) {
        InodeRecord r;
        r.id = 0x100 + static_cast<InodeId>(file);
        r.kind = InodeKind::kFile;
        r.mode = 0644;
        r.version = {1000 + static_cast<std::uint64_t>(file) * 2, node};
        DentryRecord d{kRootId, "f" + std::to_string(file), r.id, {r.version.hlc + 1, node}, false};
        c.inodes.push_back(r);
        c.dentries.push_back(d);
        seq += 2;
      }
    }
    c.up_to = seq;
    out.push_back(std::move(c));
  }
  return out;
}

class FailedBatchBoundaryTest : public ReplicationTest,
                                public ::testing::WithParamInterface<std::size_t> {};

// The failing batch is the first, the empty one, or the last of the feed.
TEST_P(FailedBatchBoundaryTest, CursorStaysBeforeItUntilItApplies) {
  const std::size_t k = GetParam();
  Node& node = AddNode();
  ScriptedFeed peer(0xfeed, ScriptedBatches(0xfeed));
  const auto batches = ScriptedBatches(0xfeed);
  const std::uint64_t before = k == 0 ? 0 : batches[k - 1].up_to;
  FeedFault fault(*node.db, peer.id(), /*fail_after=*/k, /*failures=*/1);

  network_->Connect(node.id(), *node.replicator, peer.id(), peer);
  ASSERT_TRUE(Eventually([&] { return fault.Failed() == 1 && PeerCount(node) == 0; }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(fault.Log().size(), k + 1) << "batches after the failed one were applied";
  EXPECT_EQ(fault.Log().back().up_to, batches[k].up_to);
  EXPECT_EQ(node.db->Cursor(peer.id()), before);
  if (!batches[k].inodes.empty()) {
    EXPECT_FALSE(node.db->GetInodeOrTombstone(batches[k].inodes[0].id).ok());
  }

  network_->Connect(node.id(), *node.replicator, peer.id(), peer);
  ASSERT_TRUE(Eventually([&] { return node.db->Cursor(peer.id()) == batches.back().up_to; }));
  EXPECT_EQ(peer.SubscribedFrom(), (std::vector<std::uint64_t>{0, before}));
  EXPECT_FALSE(peer.OffBoundary());
  EXPECT_TRUE(NeverSkipped(peer.Feed(), fault.Log()));
  for (int f = 0; f < 12; ++f) {
    EXPECT_TRUE(node.files->Resolve("/f" + std::to_string(f)).ok()) << "lost: f" << f;
  }
  network_->Disconnect(node.id(), peer.id());
  ASSERT_TRUE(Eventually([&] { return PeerCount(node) == 0; }));
}

std::string BatchName(const ::testing::TestParamInfo<std::size_t>& info) {
  return info.param == 0 ? "First" : info.param == 2 ? "Empty" : "Last";
}

INSTANTIATE_TEST_SUITE_P(FirstEmptyLast, FailedBatchBoundaryTest,
                         ::testing::Values(std::size_t{0}, std::size_t{2}, std::size_t{4}),
                         BatchName);

// A transport may hand over frames it had already read when the link was closed (the memory
// transport and TcpTransport stop at once; this one does not). Batches that arrive on a link
// after one of its batches failed must be ignored, not applied past the failed one.
class LingeringLink : public net::Link {
 public:
  explicit LingeringLink(std::uint64_t peer)
      : info_{peer, 0, "mem:peer", "mem:peer", true, net::kProtocolVersion, {}} {}
  void Send(net::Message m) override { sent.push_back(std::move(m)); }
  void Close(std::string reason) override { closed = reason; }
  const net::PeerInfo& Peer() const override { return info_; }
  std::size_t QueuedBytes() const override { return 0; }
  const net::Traffic& Counters() const override { return traffic_; }

  std::vector<net::Message> sent;
  std::optional<std::string> closed;

 private:
  net::PeerInfo info_;
  net::Traffic traffic_;
};

TEST_F(ReplicationTest, BatchesArrivingAfterAFailedOneOnTheSameLinkAreIgnored) {
  Node& node = AddNode();
  const std::uint64_t peer = 0xfeed;
  const auto batches = ScriptedBatches(peer);
  FeedFault fault(*node.db, peer, /*fail_after=*/1, /*failures=*/1);
  auto first = std::make_shared<LingeringLink>(peer);
  OnIo(io_, [&] {
    EXPECT_TRUE(node.replicator->OnOpen(first));
    for (const auto& b : batches) node.replicator->OnMessage(first, net::Message(b));
    return 0;
  });
  EXPECT_TRUE(first->closed.has_value()) << "a failed batch must close its link";
  EXPECT_EQ(fault.Log().size(), 2u) << "batches after the failed one were applied";
  EXPECT_EQ(node.db->Cursor(peer), batches[0].up_to);
  EXPECT_FALSE(node.files->Resolve("/f9").ok());

  auto second = std::make_shared<LingeringLink>(peer);
  std::optional<std::uint64_t> since;
  OnIo(io_, [&] {
    node.replicator->OnClose(first, *first->closed);
    EXPECT_TRUE(node.replicator->OnOpen(second));
    for (const auto& m : second->sent) {
      if (auto* s = std::get_if<net::Subscribe>(&m)) since = s->since;
    }
    for (const auto& b : batches) {
      if (since && b.up_to > *since) node.replicator->OnMessage(second, net::Message(b));
    }
    return 0;
  });
  EXPECT_EQ(since, batches[0].up_to);
  EXPECT_FALSE(second->closed.has_value());
  EXPECT_EQ(node.db->Cursor(peer), batches.back().up_to);
  EXPECT_TRUE(NeverSkipped(ScriptedFeed(peer, batches).Feed(), fault.Log()));
  for (int f = 0; f < 12; ++f) {
    EXPECT_TRUE(node.files->Resolve("/f" + std::to_string(f)).ok()) << "lost: f" << f;
  }
  OnIo(io_, [&] {
    node.replicator->OnClose(second, "test over");
    return 0;
  });
}

// --- Tombstones are purged once every member holds them (issue 13.12) -----------------------

bool HasRecord(Node& n, InodeId id) { return n.db->GetInodeOrTombstone(id).ok(); }

// A file is deleted while one node is away and still holds it live: no node purges the
// tombstones while that node has not confirmed them (it would keep the file for good, and bring
// it back to everyone on its next change of it). It comes back, the file goes there too, and
// then the tombstones go everywhere; nothing comes back, not even a tombstone.
TEST_F(ReplicationTest, TombstonesGoOnlyOnceEveryMemberHoldsThemAndNothingComesBack) {
  MakeMesh();
  const Bytes data = Pattern(5000, 21);
  ASSERT_TRUE(StoreBytes(*n(1).files, "/f", data).ok());
  ASSERT_TRUE(Eventually([&] { return SameTree(n(1), n(2)) && SameTree(n(1), n(3)); }));
  const InodeId id = n(1).files->Resolve("/f")->rec.id;
  Disconnect(n(3), n(1));
  Disconnect(n(3), n(2));
  ASSERT_TRUE(Eventually([&] { return PeerCount(n(3)) == 0 && PeerCount(n(1)) == 1; }));

  ASSERT_TRUE(n(1).files->Remove("/f").ok());
  ASSERT_TRUE(Eventually([&] { return Absent(n(2), "/f"); }));
  std::this_thread::sleep_for(1500ms);  // nodes 1 and 2 have confirmed each other's feeds
  for (std::size_t i : {1, 2}) {
    auto st = n(i).files->PurgeTombstones(0ns);
    ASSERT_TRUE(st.ok()) << st.status().message();
    EXPECT_EQ(st->inodes + st->dentries, 0u) << n(i).name;
    EXPECT_GE(st->waiting, 2u) << n(i).name;
    ASSERT_TRUE(st->slowest.has_value());
    EXPECT_EQ(st->slowest->node, n(3).id()) << n(i).name;
    EXPECT_TRUE(HasRecord(n(i), id)) << n(i).name;
  }
  EXPECT_TRUE(HasBytes(n(3), "/f", data));

  // It comes back: the deletion reaches it, and then every node purges.
  Connect(n(1), n(3));
  Connect(n(2), n(3));
  ASSERT_TRUE(Eventually([&] { return Absent(n(3), "/f"); }));
  EXPECT_TRUE(Eventually([&] {
    bool gone = true;
    for (std::size_t i = 1; i <= 3; ++i) {
      EXPECT_TRUE(n(i).files->PurgeTombstones(0ns).ok());
      gone = gone && !HasRecord(n(i), id);
    }
    return gone;
  })) << "the tombstones were never purged";
  std::this_thread::sleep_for(1500ms);
  for (std::size_t i = 1; i <= 3; ++i) {
    EXPECT_TRUE(Absent(n(i), "/f")) << n(i).name;
    EXPECT_FALSE(HasRecord(n(i), id)) << n(i).name << ": a record came back";
  }
  // New links replay every feed from its cursor: still nothing.
  Disconnect(n(1), n(3));
  ASSERT_TRUE(Eventually([&] { return PeerCount(n(3)) == 1; }));
  Connect(n(1), n(3));
  ASSERT_TRUE(Eventually([&] { return PeerCount(n(3)) == 2; }));
  std::this_thread::sleep_for(500ms);
  EXPECT_TRUE(SameTree(n(1), n(2)) && SameTree(n(1), n(3)));
  for (std::size_t i = 1; i <= 3; ++i) EXPECT_FALSE(HasRecord(n(i), id)) << n(i).name;
}

// A node that only a peer links with holds what we delete too (relayed to it): the peer names it
// (Peers), which makes it a member, and our tombstones wait until it confirms them itself.
TEST_F(ReplicationTest, ANodeAPeerNamesHoldsBackPurgingUntilItConfirms) {
  Node& a = AddNode();
  Node& b = AddNode();
  Node& c = AddNode();
  Connect(a, b);
  ASSERT_TRUE(Eventually([&] { return PeerCount(a) == 1; }));
  Connect(b, c);
  auto member = [&](Node& of, Node& who) {
    for (const auto& m : of.db->Members()) {
      if (m.node == who.id()) return true;
    }
    return false;
  };
  ASSERT_TRUE(Eventually([&] { return member(a, c); })) << "b did not name c to a";
  ASSERT_TRUE(StoreBytes(*a.files, "/g", Pattern(100, 22)).ok());
  ASSERT_TRUE(Eventually([&] { return c.files->Resolve("/g").ok(); }));
  const InodeId id = a.files->Resolve("/g")->rec.id;
  ASSERT_TRUE(a.files->Remove("/g").ok());
  ASSERT_TRUE(Eventually([&] { return Absent(c, "/g"); }));
  std::this_thread::sleep_for(1500ms);
  auto st = a.files->PurgeTombstones(0ns);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->inodes + st->dentries, 0u);
  ASSERT_TRUE(st->slowest.has_value());
  EXPECT_EQ(st->slowest->node, c.id());
  EXPECT_TRUE(HasRecord(a, id));

  Connect(a, c);
  EXPECT_TRUE(Eventually([&] {
    EXPECT_TRUE(a.files->PurgeTombstones(0ns).ok());
    return !HasRecord(a, id);
  }));
}

// --sync-copies (default: two in a cluster): fsync returns only once another node holds the
// file's record and every chunk, synced. Checked the moment fsync returns, without waiting.
TEST_F(ReplicationTest, FsyncReturnsOnceAnotherNodeHoldsTheFile) {
  MakeMesh();
  const Bytes data = Pattern(3 * kMiB + 11, 31);
  auto c = n(1).files->Create(kRootId, "f", 0644, 0, 0, O_RDWR | O_CREAT);
  ASSERT_TRUE(c.ok()) << c.status().message();
  ASSERT_TRUE(n(1).files->Write(c->handle, 0, data).ok());
  ASSERT_TRUE(n(1).files->Fsync(c->handle).ok());
  auto rec = n(1).db->GetInode(c->attr.rec.id);
  ASSERT_TRUE(rec.ok());
  ASSERT_EQ(rec->manifest.size(), 4u);
  auto holds = [&](Node& x) {
    auto r = x.db->GetInode(rec->id);
    if (!r.ok() || r->version != rec->version) return false;
    for (const auto& [index, id] : rec->manifest) {
      if (!x.store->Has(id)) return false;
    }
    return true;
  };
  EXPECT_TRUE(holds(n(2)) || holds(n(3)));
  n(1).files->Release(c->handle);
}

// With fewer nodes than --sync-copies, fsync fails (EIO) after --sync-timeout and says how many
// confirmed; once enough nodes are there it succeeds. A file deleted before its fsync asks
// nobody.
TEST_F(ReplicationTest, FsyncFailsWhenTooFewNodesConfirmAndSucceedsOnceThereAreEnough) {
  ReplicatorOptions o = Node::Options();
  o.sync_copies = 3;
  o.sync_timeout = 700ms;
  Node& a = AddNode(o);
  Node& b = AddNode(o);
  Connect(a, b);
  ASSERT_TRUE(Eventually([&] { return PeerCount(a) == 1 && PeerCount(b) == 1; }));
  auto c = a.files->Create(kRootId, "f", 0644, 0, 0, O_RDWR | O_CREAT);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(a.files->Write(c->handle, 0, Pattern(5000, 1)).ok());
  const auto t0 = Clock::now();
  Status s = a.files->Fsync(c->handle);
  EXPECT_EQ(s.code(), Code::kIOError);
  EXPECT_THAT(s.message(), ::testing::HasSubstr("durable on 2 of 3 members"));
  EXPECT_GE(Clock::now() - t0, 700ms);

  Node& third = AddNode(o);
  Connect(a, third);
  Connect(b, third);
  ASSERT_TRUE(Eventually([&] { return PeerCount(a) == 2 && PeerCount(third) == 2; }));
  ASSERT_TRUE(a.files->Write(c->handle, 5000, Pattern(5000, 2)).ok());
  s = a.files->Fsync(c->handle);
  EXPECT_TRUE(s.ok()) << s.message();
  a.files->Release(c->handle);
}

// user.foreverfs.pin: with one copy of each chunk (--replicas 1), a node holds only the chunks
// ranked to it; pinning a directory there fetches every chunk of the files below it. The pin
// is this node's own: it does not travel, and reads back 1 on the directory only.
TEST_F(ReplicationTest, PinningADirectoryFetchesEveryChunkBelowIt) {
  ReplicatorOptions o = Node::Options();
  o.replicas = 1;
  Node& a = AddNode(o);
  Node& b = AddNode(o);
  Node& c = AddNode(o);
  Connect(a, b);
  Connect(a, c);
  Connect(b, c);
  ASSERT_TRUE(Eventually([&] { return PeerCount(a) == 2 && PeerCount(c) == 2; }));
  ASSERT_TRUE(a.files->Mkdir(kRootId, "d", 0755, 0, 0).ok());
  const Bytes data = Pattern(9 * kMiB, 41);
  ASSERT_TRUE(StoreBytes(*a.files, "/d/f", data).ok());
  ASSERT_TRUE(Eventually([&] {
    auto r = c.files->Resolve("/d/f");
    return r.ok() && r->rec.size == data.size();
  }));
  const auto rec = c.files->Resolve("/d/f")->rec;
  ASSERT_EQ(rec.manifest.size(), 9u);
  auto held = [&] {
    std::size_t n = 0;
    for (const auto& [index, id] : rec.manifest) n += c.store->Has(id) ? 1 : 0;
    return n;
  };
  std::this_thread::sleep_for(500ms);
  ASSERT_LT(held(), rec.manifest.size())
      << "node 3 should hold only its ranked chunks, holds " << held();

  const InodeId dir = c.files->Resolve("/d")->rec.id;
  EXPECT_EQ(c.files->SetPin(dir, AsBytes("2")).code(), Code::kInvalid);
  ASSERT_TRUE(c.files->SetPin(dir, AsBytes("1\n")).ok());
  EXPECT_TRUE(Eventually([&] { return held() == rec.manifest.size(); }))
      << held() << " of " << rec.manifest.size();
  const Bytes one{'1'}, zero{'0'};
  EXPECT_EQ(*c.files->GetPin(dir), one);
  EXPECT_EQ(*c.files->GetPin(rec.id), zero);
  EXPECT_EQ(*b.files->GetPin(b.files->Resolve("/d")->rec.id), zero);
  ASSERT_TRUE(c.files->SetPin(dir, AsBytes("0")).ok());
  EXPECT_EQ(*c.files->GetPin(dir), zero);
  EXPECT_EQ(c.files->SetPin(0x7fffffff, AsBytes("1")).code(), Code::kNotFound);
}

}  // namespace
}  // namespace foreverfs::server
