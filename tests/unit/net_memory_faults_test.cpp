// The in-process network's fault injection: seeded (the same calls give the same faults),
// order-preserving delays, drops that reset the link, redial, and partitions.

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "net/memory_transport.h"

namespace foreverfs::net {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

// Records what arrives: each message's request id, and a -1 for each close.
class Recorder : public LinkHandler {
 public:
  bool OnOpen(const std::shared_ptr<Link>& link) override {
    link_ = link;
    ++opens;
    return true;
  }
  void OnMessage(const std::shared_ptr<Link>&, Message&& m) override {
    if (auto* g = std::get_if<GetChunk>(&m))
      events.push_back(static_cast<std::int64_t>(g->request_id));
  }
  void OnClose(const std::shared_ptr<Link>& link, const std::string&) override {
    if (link == link_) link_.reset();
    events.push_back(-1);
  }
  std::shared_ptr<Link> link() const { return link_; }

  std::vector<std::int64_t> events;
  int opens = 0;

 private:
  std::shared_ptr<Link> link_;
};

struct Outcome {
  std::vector<std::int64_t> received;  // what b saw
  std::uint64_t dropped = 0;
  int opens = 0;
};

// a sends 1..n to b, one message per millisecond, resending over whatever link is open.
Outcome SendOverFaults(MemoryNetwork::Faults faults, int n) {
  asio::io_context io;
  MemoryNetwork net(io);
  Recorder a, b;
  net.SetFaults(faults);
  net.Connect(1, a, 2, b);
  Outcome run;
  int next = 1;
  asio::steady_timer tick(io);
  std::function<void()> step = [&] {
    if (next > n) {
      tick.expires_after(100ms);  // let delayed messages land
      tick.async_wait([&](const boost::system::error_code&) {
        run.dropped = net.Dropped();
        io.stop();
      });
      return;
    }
    if (auto link = a.link()) link->Send(GetChunk{static_cast<std::uint64_t>(next++), {}});
    tick.expires_after(1ms);
    tick.async_wait([&](const boost::system::error_code&) { step(); });
  };
  asio::post(io, step);
  io.run_for(20s);
  run.received = b.events;
  run.opens = b.opens;
  return run;
}

TEST(MemoryNetworkFaultsTest, DelaysKeepTheOrderSent) {
  Outcome r = SendOverFaults({.seed = 3, .drop = 0, .max_delay = 5ms}, 200);
  ASSERT_EQ(r.received.size(), 200u);
  for (std::size_t i = 0; i < r.received.size(); ++i)
    EXPECT_EQ(r.received[i], static_cast<std::int64_t>(i + 1));
  EXPECT_EQ(r.dropped, 0u);
}

TEST(MemoryNetworkFaultsTest, DropsResetTheLinkAndRedialReopensIt) {
  Outcome r = SendOverFaults({.seed = 11, .drop = 0.05, .max_delay = 2ms, .redial_after = 3ms}, 300);
  EXPECT_GT(r.dropped, 3u);
  EXPECT_EQ(r.opens, static_cast<int>(r.dropped) + 1);  // every reset was redialed
  // Between closes, messages arrive in order with nothing duplicated; the dropped message and
  // those sent while the link was down are missing.
  std::int64_t last = 0;
  int closes = 0, got = 0;
  for (std::int64_t e : r.received) {
    if (e == -1) {
      ++closes;
      continue;
    }
    EXPECT_GT(e, last);
    last = e;
    ++got;
  }
  EXPECT_EQ(closes, static_cast<int>(r.dropped));
  EXPECT_LT(got, 300);
  EXPECT_GT(got, 150);
}

// Five rounds: connect, send a burst of 100 messages at once; what arrives depends only on the
// seed (a drop ends the round's link: nothing after it is sent).
std::vector<std::int64_t> Bursts(std::uint64_t seed) {
  asio::io_context io;
  MemoryNetwork net(io);
  Recorder a, b;
  net.SetFaults({.seed = seed, .drop = 0.03, .max_delay = 1ms});
  for (int round = 0; round < 5; ++round) {
    net.Connect(1, a, 2, b);
    io.restart();
    io.run_for(20ms);
    asio::post(io, [&] {
      for (int i = 1; i <= 100; ++i) {
        if (auto link = a.link())
          link->Send(GetChunk{static_cast<std::uint64_t>(round * 1000 + i), {}});
      }
    });
    io.restart();
    io.run_for(50ms);
    net.Disconnect(1, 2);
    io.restart();
    io.run_for(20ms);
  }
  return b.events;
}

TEST(MemoryNetworkFaultsTest, TheSameSeedGivesTheSameFaults) {
  const auto first = Bursts(42);
  EXPECT_EQ(first, Bursts(42));
  EXPECT_NE(first, Bursts(43));
  // Some rounds lost their tail to a drop; each round's messages arrived in order.
  EXPECT_LT(std::count_if(first.begin(), first.end(), [](std::int64_t e) { return e > 0; }), 500);
  std::int64_t last = 0;
  for (std::int64_t e : first) {
    if (e < 0) continue;
    EXPECT_GT(e, last);
    last = e;
  }
}

TEST(MemoryNetworkFaultsTest, APartitionRefusesLinksUntilHealed) {
  asio::io_context io;
  MemoryNetwork net(io);
  Recorder a, b;
  net.Connect(1, a, 2, b);
  io.run_for(50ms);
  EXPECT_EQ(b.opens, 1);
  net.Partition(1, 2);
  io.restart();
  io.run_for(50ms);
  EXPECT_EQ(a.link(), nullptr);
  EXPECT_EQ(b.events, std::vector<std::int64_t>{-1});
  net.Connect(2, b, 1, a);  // either direction is refused
  io.restart();
  io.run_for(50ms);
  EXPECT_EQ(b.opens, 1);
  EXPECT_EQ(net.LinkCount(), 0u);
  net.Heal(1, 2);
  net.Connect(1, a, 2, b);
  io.restart();
  io.run_for(50ms);
  EXPECT_EQ(b.opens, 2);
  EXPECT_EQ(net.LinkCount(), 1u);
}

}  // namespace
}  // namespace foreverfs::net
