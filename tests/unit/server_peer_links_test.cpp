// PeerLinks alone, over fake links: one link per peer (of two dialed at once, the one dialed by
// the lower node id stays, as both ends decide), which link is current, and the peers that went.

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "server/peer_links.h"

namespace foreverfs::server {
namespace {

class FakeLink : public net::Link {
 public:
  FakeLink(std::uint64_t node, bool outbound, std::string listen = "") {
    info_.node_id = node;
    info_.outbound = outbound;
    info_.listen_addr = std::move(listen);
    info_.remote = "192.0.2.7:5555";
  }
  void Send(net::Message) override {}
  void Close(std::string reason) override { closed = std::move(reason); }
  const net::PeerInfo& Peer() const override { return info_; }
  std::size_t QueuedBytes() const override { return 0; }
  const net::Traffic& Counters() const override { return traffic_; }
  std::string closed;

 private:
  net::PeerInfo info_;
  net::Traffic traffic_;
};

TEST(PeerLinksTest, OfTwoLinksToOnePeerTheOneTheLowerIdDialedStays) {
  // We are node 5. To node 9 (higher), our dial wins; to node 2 (lower), its dial wins.
  PeerLinks links(5);
  auto theirs9 = std::make_shared<FakeLink>(9, false);
  auto ours9 = std::make_shared<FakeLink>(9, true);
  ASSERT_TRUE(links.Admit(theirs9));
  ASSERT_TRUE(links.Admit(ours9));  // replaces theirs
  EXPECT_FALSE(theirs9->closed.empty());
  EXPECT_FALSE(links.IsCurrent(theirs9));
  EXPECT_TRUE(links.IsCurrent(ours9));
  EXPECT_FALSE(links.Admit(std::make_shared<FakeLink>(9, false)));  // refused
  EXPECT_TRUE(links.IsCurrent(ours9));

  auto theirs2 = std::make_shared<FakeLink>(2, false);
  ASSERT_TRUE(links.Admit(theirs2));
  auto ours2 = std::make_shared<FakeLink>(2, true);
  EXPECT_FALSE(links.Admit(ours2));
  EXPECT_TRUE(theirs2->closed.empty());
  EXPECT_TRUE(links.IsCurrent(theirs2));
  EXPECT_EQ(links.size(), 2u);
  EXPECT_EQ(links.Count(), 2u);
  EXPECT_EQ(links.Find(2), theirs2);
  EXPECT_EQ(links.Find(3), nullptr);
}

TEST(PeerLinksTest, AClosedLinkGoesToTheGoneListOnlyIfCurrent) {
  PeerLinks links(1);
  auto a = std::make_shared<FakeLink>(7, true, ":4000");
  ASSERT_TRUE(links.Admit(a));
  links.Remove(std::make_shared<FakeLink>(7, true), "not the current one");
  EXPECT_TRUE(links.Contains(7));
  EXPECT_TRUE(links.gone().empty());
  links.Remove(a, "reset by peer");
  EXPECT_FALSE(links.Contains(7));
  EXPECT_EQ(links.Count(), 0u);
  ASSERT_EQ(links.gone().count(7), 1u);
  const PeerStatus& g = links.gone().at(7);
  EXPECT_EQ(g.last_error, "disconnected: reset by peer");
  EXPECT_EQ(g.addr, "192.0.2.7:4000");
  EXPECT_FALSE(g.connected);
  // The gone list keeps the last 256.
  for (std::uint64_t n = 100; n < 400; ++n) {
    auto l = std::make_shared<FakeLink>(n, true);
    ASSERT_TRUE(links.Admit(l));
    links.Remove(l, "bye");
  }
  EXPECT_EQ(links.gone().size(), 256u);
}

TEST(PeerLinksTest, DialableAddress) {
  net::PeerInfo p;
  p.remote = "10.1.2.3:6000";
  EXPECT_EQ(PeerLinks::DialableAddr(p), "");
  p.listen_addr = ":4000";
  EXPECT_EQ(PeerLinks::DialableAddr(p), "10.1.2.3:4000");
  p.listen_addr = "node.example:4000";
  EXPECT_EQ(PeerLinks::DialableAddr(p), "node.example:4000");
}

}  // namespace
}  // namespace foreverfs::server
