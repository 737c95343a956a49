// Replication between FileServers through the in-process MemoryNetwork: namespace and chunks
// reach every node, catch-up after a partition, relaying to a node that knows only one peer,
// on-demand fetches, their deadline, peers that lie about chunks, and links that drop, delay and
// partition (seeded faults of the MemoryNetwork).
//
// Threading: one io_context run by one thread carries every link and every Replicator. The
// test thread calls FileServer methods (which may block on a fetch, so never on the io thread)
// and reaches Replicator state only by posting to the io thread.

#include <fcntl.h>
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
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cas/chunk_store.h"
#include "net/memory_transport.h"
#include "server/file_server.h"
#include "server/replicator.h"
#include "unit/temp_dir.h"

namespace foreverfs::server {
namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kFetchTimeout = 2s;
constexpr auto kEventually = 10s;

using test::TempDir;

Bytes Pattern(std::size_t size, std::uint32_t seed) {
  Bytes b(size);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : b) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<std::uint8_t>(x >> 24);
  }
  return b;
}

crypto::Key256 FixedKey() {
  crypto::Key256 k;
  k.fill(0x5a);
  return k;
}

cas::ChunkId IdOf(ByteSpan data) { return cas::ChunkHasher(FixedKey()).IdOf(data); }

// Runs `fn` on the io thread and returns its result.
template <typename F>
auto OnIo(asio::io_context& io, F fn) -> decltype(fn()) {
  std::packaged_task<decltype(fn())()> task(std::move(fn));
  auto done = task.get_future();
  asio::post(io, [&task] { task(); });
  return done.get();
}

// Polls `pred` until it holds or the time is up.
bool Eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit = kEventually) {
  const auto deadline = Clock::now() + limit;
  for (;;) {
    if (pred()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
}

// One node: its own directory, namespace, memory chunk store, FileServer and Replicator.
struct Node {
  Node(asio::io_context& io, std::string label) : name(std::move(label)) {
    auto opened = NamespaceDb::Open(dir.path() / "ns.db");
    EXPECT_TRUE(opened.ok()) << opened.status().message();
    db = std::move(*opened);
    store = cas::MakeMemoryStore();
    fs::create_directories(dir.path() / "staging");
    files = std::make_unique<FileServer>(*db, *store, cas::ChunkHasher(FixedKey()),
                                         dir.path() / "staging");
    ReplicatorOptions options;
    options.fetch_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(kFetchTimeout);
    replicator = std::make_unique<Replicator>(io, *files, options);
    files->SetRemote(replicator.get());
    files->SetOnLocalChange([r = replicator.get()] { r->NotifyLocalChange(); });
  }

  std::uint64_t id() const { return db->node_id(); }

  std::string name;
  TempDir dir;
  std::unique_ptr<NamespaceDb> db;
  std::unique_ptr<cas::ChunkStore> store;
  std::unique_ptr<FileServer> files;
  std::unique_ptr<Replicator> replicator;  // last: destroyed first
};

Status StoreBytes(FileServer& fs, std::string_view path, const Bytes& data) {
  std::size_t at = 0;
  return fs.Store(path, [&](MutableByteSpan buf) -> Result<std::size_t> {
    std::size_t n = std::min(buf.size(), data.size() - at);
    if (n > 0) std::memcpy(buf.data(), data.data() + at, n);
    at += n;
    return n;
  });
}

Result<Bytes> GetBytes(FileServer& fs, std::string_view path) {
  Bytes out;
  Status s = fs.Get(path, [&](ByteSpan b) {
    out.insert(out.end(), b.begin(), b.end());
    return Ok();
  });
  if (!s.ok()) return s;
  return out;
}

bool HasBytes(Node& n, std::string_view path, const Bytes& want) {
  auto got = GetBytes(*n.files, path);
  return got.ok() && *got == want;
}

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

  // io thread only.
  std::function<void(const std::shared_ptr<net::Link>&, const net::GetChunk&)> answer;
  std::atomic<int> get_chunks{0};

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

class ReplicationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spdlog::set_level(spdlog::level::err);
    network_ = std::make_unique<net::MemoryNetwork>(io_);
    thread_ = std::thread([this] { io_.run(); });
  }

  void TearDown() override {
    work_.reset();
    io_.stop();
    thread_.join();
    network_.reset();
    nodes_.clear();
  }

  Node& AddNode() {
    nodes_.push_back(std::make_unique<Node>(io_, "node" + std::to_string(nodes_.size() + 1)));
    return *nodes_.back();
  }

  void Connect(Node& a, Node& b) {
    network_->Connect(a.id(), *a.replicator, b.id(), *b.replicator);
  }
  void Disconnect(Node& a, Node& b) { network_->Disconnect(a.id(), b.id()); }

  std::size_t PeerCount(Node& n) {
    return OnIo(io_, [&] { return n.replicator->Peers().size(); });
  }

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

  Node& n(std::size_t i) { return *nodes_.at(i - 1); }

  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_{
      asio::make_work_guard(io_)};
  std::unique_ptr<net::MemoryNetwork> network_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::thread thread_;
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

}  // namespace
}  // namespace foreverfs::server
