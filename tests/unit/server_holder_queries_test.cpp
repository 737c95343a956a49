// HolderQueries alone, over fake links: which peers count as holding a list of chunks, from
// their HaveChunks reply bitmaps (every bit of every batch, the count asked), peers that do not
// answer in time or whose link closes, replies that are late or from the wrong peer, and the
// answers it gives to peers' own queries.
//
// Threading: one io_context on one thread carries the HolderQueries; the test thread calls
// Holders (which blocks) through std::async and reaches event-thread state only through OnIo.

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "server/holder_queries.h"
#include "server/peer_links.h"
#include "server/storage_work.h"

namespace foreverfs::server {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

// A link that records what is sent on it. Event thread.
class FakeLink : public net::Link {
 public:
  FakeLink(std::uint64_t node, std::string listen) {
    info_.node_id = node;
    info_.listen_addr = std::move(listen);
    info_.remote = "10.0.0." + std::to_string(node) + ":4000";
    info_.outbound = true;
  }
  void Send(net::Message m) override { sent.push_back(std::move(m)); }
  void Close(std::string reason) override { closed = reason; }
  const net::PeerInfo& Peer() const override { return info_; }
  std::size_t QueuedBytes() const override { return 0; }
  const net::Traffic& Counters() const override { return traffic_; }

  // The HaveChunks queries sent so far.
  std::vector<net::HaveChunks> Queries() const {
    std::vector<net::HaveChunks> out;
    for (const auto& m : sent) {
      if (auto* q = std::get_if<net::HaveChunks>(&m)) out.push_back(*q);
    }
    return out;
  }

  std::vector<net::Message> sent;
  std::string closed;

 private:
  net::PeerInfo info_;
  net::Traffic traffic_;
};

cas::ChunkId Id(std::uint8_t n) {
  cas::ChunkId id{};
  id[0] = n;
  id[1] = 0xc0;
  return id;
}

// A reply to `q` with bit i set where `has(i)`, claiming `count` ids (the query's by default).
net::HaveChunksReply Reply(const net::HaveChunks& q, const std::function<bool(std::size_t)>& has,
                           std::optional<std::uint32_t> count = std::nullopt) {
  auto r =
      net::EmptyHaveReply(q.request_id, count.value_or(static_cast<std::uint32_t>(q.ids.size())));
  for (std::size_t i = 0; i < r.count; ++i) {
    if (has(i)) r.Set(i);
  }
  return r;
}

class HolderQueriesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    thread_ = std::thread([this] { io_.run(); });
    links_ = std::make_shared<PeerLinks>(1);
    storage_ = std::make_shared<StorageWork>(io_);
    queries_ = std::make_shared<HolderQueries>(
        io_, links_, storage_, [this](const cas::ChunkId& id) { return local_.contains(id); });
    for (std::uint64_t node : {2, 3}) {
      auto link = std::make_shared<FakeLink>(node, node == 2 ? ":4000" : "");
      peers_.push_back(link);
      OnIo([&] { ASSERT_TRUE(links_->Admit(link)); });
    }
  }
  void TearDown() override {
    storage_->Stop();
    guard_.reset();
    thread_.join();
  }

  template <typename F>
  auto OnIo(F fn) -> decltype(fn()) {
    std::packaged_task<decltype(fn())()> task(std::move(fn));
    auto done = task.get_future();
    asio::post(io_, [&task] { task(); });
    return done.get();
  }

  // Waits until `link` has been sent `n` queries, and returns them.
  std::vector<net::HaveChunks> QueriesTo(FakeLink& link, std::size_t n) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    for (;;) {
      auto q = OnIo([&] { return link.Queries(); });
      if (q.size() >= n || std::chrono::steady_clock::now() > deadline) return q;
      std::this_thread::sleep_for(5ms);
    }
  }

  std::future<HolderReport> Ask(std::vector<cas::ChunkId> ids, std::chrono::milliseconds timeout) {
    return std::async(std::launch::async,
                      [this, ids, timeout] { return queries_->Holders(ids, timeout); });
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_ = asio::make_work_guard(io_);
  std::thread thread_;
  std::set<cas::ChunkId> local_;
  std::shared_ptr<PeerLinks> links_;
  std::shared_ptr<StorageWork> storage_;
  std::shared_ptr<HolderQueries> queries_;
  std::vector<std::shared_ptr<FakeLink>> peers_;  // nodes 2 and 3
};

TEST_F(HolderQueriesTest, APeerHoldsTheChunksOnlyIfEveryBitIsSet) {
  local_ = {Id(1), Id(2)};
  // Holes and repeats are not asked about.
  auto result = Ask({Id(1), cas::kHoleId, Id(2), Id(1), Id(3)}, 5000ms);
  auto q2 = QueriesTo(*peers_[0], 1);
  auto q3 = QueriesTo(*peers_[1], 1);
  ASSERT_EQ(q2.size(), 1u);
  ASSERT_EQ(q3.size(), 1u);
  EXPECT_EQ(q2[0].ids, (std::vector<cas::ChunkId>{Id(1), Id(2), Id(3)}));
  OnIo([&] {
    queries_->OnHaveReply(2, Reply(q2[0], [](std::size_t) { return true; }));
    queries_->OnHaveReply(3, Reply(q3[0], [](std::size_t i) { return i != 2; }));
  });
  ASSERT_EQ(result.wait_for(2s), std::future_status::ready);
  HolderReport r = result.get();
  EXPECT_EQ(r.chunks, 3u);
  EXPECT_FALSE(r.local);  // Id(3) is not here
  EXPECT_EQ(r.asked, 2u);
  EXPECT_EQ(r.answered, 2u);
  ASSERT_EQ(r.peers.size(), 1u);
  EXPECT_EQ(r.peers[0].node_id, 2u);
  EXPECT_EQ(r.peers[0].addr, "10.0.0.2:4000");  // its dialable address
}

TEST_F(HolderQueriesTest, AReplyForAnotherCountOrFromAnotherPeerDoesNotCount) {
  local_ = {Id(1)};
  auto result = Ask({Id(1), Id(2)}, 5000ms);
  auto q2 = QueriesTo(*peers_[0], 1);
  auto q3 = QueriesTo(*peers_[1], 1);
  ASSERT_EQ(q2.size(), 1u);
  ASSERT_EQ(q3.size(), 1u);
  OnIo([&] {
    // Node 3 answering node 2's request is ignored: node 2 still has to answer.
    queries_->OnHaveReply(3, Reply(q2[0], [](std::size_t) { return true; }));
    // All bits set, but for one id fewer than asked.
    queries_->OnHaveReply(2, Reply(
                                 q2[0], [](std::size_t) { return true; }, 1));
  });
  EXPECT_EQ(result.wait_for(200ms), std::future_status::timeout);  // node 3 has not answered
  OnIo([&] { queries_->OnHaveReply(3, Reply(q3[0], [](std::size_t) { return true; })); });
  ASSERT_EQ(result.wait_for(2s), std::future_status::ready);
  HolderReport r = result.get();
  EXPECT_TRUE(r.local == false);
  EXPECT_EQ(r.answered, 2u);
  ASSERT_EQ(r.peers.size(), 1u);
  EXPECT_EQ(r.peers[0].node_id, 3u);
  EXPECT_EQ(r.peers[0].addr, "10.0.0.3:4000");  // does not listen: the address we see
}

TEST_F(HolderQueriesTest, EveryBatchMustBeAnsweredInTime) {
  std::vector<cas::ChunkId> ids;
  for (std::uint32_t i = 0; i < net::kMaxHaveChunksQuery + 10; ++i) {
    cas::ChunkId id{};
    std::memcpy(id.data(), &i, sizeof i);
    id[31] = 1;
    ids.push_back(id);
  }
  const auto start = std::chrono::steady_clock::now();
  auto result = Ask(ids, 500ms);
  auto q2 = QueriesTo(*peers_[0], 2);
  auto q3 = QueriesTo(*peers_[1], 2);
  ASSERT_EQ(q2.size(), 2u);
  ASSERT_EQ(q3.size(), 2u);
  EXPECT_EQ(q2[0].ids.size(), net::kMaxHaveChunksQuery);
  EXPECT_EQ(q2[1].ids.size(), 10u);
  OnIo([&] {
    auto all = [](std::size_t) { return true; };
    queries_->OnHaveReply(2, Reply(q2[0], all));
    queries_->OnHaveReply(2, Reply(q2[1], all));
    queries_->OnHaveReply(3, Reply(q3[0], all));  // and never the second batch
  });
  ASSERT_EQ(result.wait_for(3s), std::future_status::ready);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 450ms);  // waited for node 3
  HolderReport r = result.get();
  EXPECT_EQ(r.chunks, ids.size());
  EXPECT_EQ(r.asked, 2u);
  EXPECT_EQ(r.answered, 1u);
  ASSERT_EQ(r.peers.size(), 1u);
  EXPECT_EQ(r.peers[0].node_id, 2u);
  // A reply after the query finished is ignored.
  OnIo([&] { queries_->OnHaveReply(3, Reply(q3[1], [](std::size_t) { return true; })); });
}

TEST_F(HolderQueriesTest, APeerWhoseLinkClosesCountsAsNotAnsweringAtOnce) {
  auto result = Ask({Id(1)}, 10000ms);
  auto q2 = QueriesTo(*peers_[0], 1);
  ASSERT_EQ(q2.size(), 1u);
  ASSERT_EQ(QueriesTo(*peers_[1], 1).size(), 1u);
  OnIo([&] { queries_->OnHaveReply(2, Reply(q2[0], [](std::size_t) { return true; })); });
  EXPECT_EQ(result.wait_for(100ms), std::future_status::timeout);
  OnIo([&] {
    links_->Remove(peers_[1], "gone");
    queries_->PeerClosed(3);
  });
  ASSERT_EQ(result.wait_for(2s), std::future_status::ready);  // not the 10 s timeout
  HolderReport r = result.get();
  EXPECT_EQ(r.asked, 2u);
  EXPECT_EQ(r.answered, 1u);
  ASSERT_EQ(r.peers.size(), 1u);
  EXPECT_EQ(r.peers[0].node_id, 2u);
}

TEST_F(HolderQueriesTest, NoPeersMeansOnlyTheLocalAnswer) {
  OnIo([&] {
    for (auto& p : peers_) links_->Remove(p, "gone");
  });
  local_ = {Id(7)};
  auto result = Ask({Id(7)}, 5000ms);
  ASSERT_EQ(result.wait_for(2s), std::future_status::ready);
  HolderReport r = result.get();
  EXPECT_TRUE(r.local);
  EXPECT_EQ(r.asked, 0u);
  EXPECT_TRUE(r.peers.empty());
}

TEST_F(HolderQueriesTest, AnswersAPeersQueryFromTheLocalStore) {
  local_ = {Id(1), Id(3)};
  OnIo([&] { queries_->OnHaveChunks(peers_[0], net::HaveChunks{42, {Id(1), Id(2), Id(3)}}); });
  std::optional<net::HaveChunksReply> reply;
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!reply && std::chrono::steady_clock::now() < deadline) {
    OnIo([&] {
      for (const auto& m : peers_[0]->sent) {
        if (auto* r = std::get_if<net::HaveChunksReply>(&m)) reply = *r;
      }
    });
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->request_id, 42u);
  EXPECT_EQ(reply->count, 3u);
  EXPECT_TRUE(reply->Has(0));
  EXPECT_FALSE(reply->Has(1));
  EXPECT_TRUE(reply->Has(2));
}

}  // namespace
}  // namespace foreverfs::server
