#pragma once
// Nodes for replication tests over the in-process MemoryNetwork: each with its own directory,
// namespace, memory chunk store, FileServer and Replicator; and the helpers the tests drive
// them with. Threading as in the tests that use them: one io_context run by one thread
// carries every link and every Replicator; the test thread calls FileServer methods.

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cas/chunk_store.h"
#include "cas/testing/memory_store.h"
#include "net/memory_transport.h"
#include "server/file_server.h"
#include "server/namespace_db.h"
#include "server/replicator.h"
#include "unit/temp_dir.h"
#include "unit/test_util.h"

namespace foreverfs::test {

using server::FileServer;
using server::NamespaceDb;
using server::Replicator;
using server::ReplicatorOptions;

inline constexpr std::chrono::milliseconds kFetchTimeout{2000};
inline constexpr std::chrono::milliseconds kEventually{10000};

// Runs `fn` on the io thread and returns its result.
template <typename F>
auto OnIo(boost::asio::io_context& io, F fn) -> decltype(fn()) {
  std::packaged_task<decltype(fn())()> task(std::move(fn));
  auto done = task.get_future();
  boost::asio::post(io, [&task] { task(); });
  return done.get();
}

// Polls `pred` until it holds or the time is up.
inline bool Eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit = kEventually) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// One node: its own directory, namespace, memory chunk store, FileServer and Replicator.
struct Node {
  Node(boost::asio::io_context& io, std::string label, ReplicatorOptions options = Options())
      : name(std::move(label)) {
    auto opened = NamespaceDb::Open(dir.path() / "ns.db");
    EXPECT_TRUE(opened.ok()) << opened.status().message();
    db = std::move(*opened);
    store = cas::MakeMemoryStore();
    std::filesystem::create_directories(dir.path() / "staging");
    files = std::make_unique<FileServer>(*db, *store, cas::ChunkHasher(FixedKey()),
                                         dir.path() / "staging");
    replicator = std::make_unique<Replicator>(io, *files, options);
    files->SetRemote(replicator.get());
    files->SetOnLocalChange([r = replicator.get()] { r->NotifyLocalChange(); });
    files->SetOnPinChange([r = replicator.get()] { r->Rescan(); });
  }

  std::uint64_t id() const { return db->node_id(); }

  static ReplicatorOptions Options() {
    ReplicatorOptions o;
    o.fetch_timeout = kFetchTimeout;
    return o;
  }

  std::string name;
  TempDir dir;
  std::unique_ptr<NamespaceDb> db;
  std::unique_ptr<cas::ChunkStore> store;
  std::unique_ptr<FileServer> files;
  std::unique_ptr<Replicator> replicator;  // last: destroyed first
};

inline Status StoreBytes(FileServer& fs, std::string_view path, const Bytes& data) {
  std::size_t at = 0;
  return fs.Store(path, [&](MutableByteSpan buf) -> Result<std::size_t> {
    std::size_t n = std::min(buf.size(), data.size() - at);
    if (n > 0) std::memcpy(buf.data(), data.data() + at, n);
    at += n;
    return n;
  });
}

inline Result<Bytes> GetBytes(FileServer& fs, std::string_view path) {
  Bytes out;
  Status s = fs.Get(path, [&](ByteSpan b) {
    out.insert(out.end(), b.begin(), b.end());
    return Ok();
  });
  if (!s.ok()) return s;
  return out;
}

inline bool HasBytes(Node& n, std::string_view path, const Bytes& want) {
  auto got = GetBytes(*n.files, path);
  return got.ok() && *got == want;
}

// Nodes on one MemoryNetwork, driven by one io_context thread. Tests add nodes, link them and
// reach Replicator state through OnIo.
class ClusterFixture : public ::testing::Test {
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

  Node& AddNode(ReplicatorOptions options = Node::Options()) {
    nodes_.push_back(
        std::make_unique<Node>(io_, "node" + std::to_string(nodes_.size() + 1), options));
    Added(*nodes_.back());
    return *nodes_.back();
  }
  virtual void Added(Node&) {}

  std::size_t PeerCount(Node& n) {
    return OnIo(io_, [&] { return n.replicator->Peers().size(); });
  }

  Node& n(std::size_t i) { return *nodes_.at(i - 1); }

  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_{
      boost::asio::make_work_guard(io_)};
  std::unique_ptr<net::MemoryNetwork> network_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::thread thread_;
};

}  // namespace foreverfs::test
