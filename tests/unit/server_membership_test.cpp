// Membership (server/membership.h): SWIM failure detection, refutation, gossip, manual removal,
// the link plan and persistence, over a simulated network whose messages go through the real
// codec (unit/membership_network.h). Deterministic: seeded randomness, simulated time.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <map>
#include <set>

#include "server/membership.h"
#include "unit/membership_network.h"

namespace foreverfs::server {
namespace {

using net::MemberState;
using testing::MembershipNetwork;
using namespace std::chrono_literals;

MembershipNetwork::Options Fast(Millis down_after = Millis(60'000)) {
  MembershipNetwork::Options o;
  o.node.protocol_period = 200ms;
  o.node.ack_timeout = 80ms;
  o.node.down_after = down_after;
  return o;
}

// Every (observer, member) state change, in order.
struct History {
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::vector<MemberState>> states;
  std::vector<std::tuple<std::uint64_t, MemberEvent, Millis>> all;
  void Attach(MembershipNetwork& net) {
    net.on_event = [this](std::uint64_t observer, const MemberEvent& e, Millis now) {
      all.emplace_back(observer, e, now);
      if (e.kind == MemberEvent::Kind::kChanged || e.kind == MemberEvent::Kind::kAdded) {
        states[{observer, e.node_id}].push_back(e.state);
      }
    };
  }
  std::string Of(std::uint64_t observer, std::uint64_t member) const {
    std::string out;
    for (const auto& [obs, e, at] : all) {
      if (obs == observer && e.node_id == member) {
        out += " " + std::to_string(at.count()) + ":" + std::to_string(static_cast<int>(e.kind)) +
               ":" + net::MemberStateName(e.state) + "@" + std::to_string(e.incarnation);
      }
    }
    return out;
  }
  int Count(std::uint64_t member, MemberState s) const {
    int n = 0;
    for (const auto& [key, v] : states) {
      if (key.second == member) n += static_cast<int>(std::count(v.begin(), v.end(), s));
    }
    return n;
  }
};

bool Connected(const std::map<std::uint64_t, std::set<std::uint64_t>>& g) {
  if (g.empty()) return true;
  std::set<std::uint64_t> seen{g.begin()->first};
  std::deque<std::uint64_t> todo{g.begin()->first};
  while (!todo.empty()) {
    std::uint64_t x = todo.front();
    todo.pop_front();
    for (std::uint64_t y : g.at(x)) {
      if (seen.insert(y).second) todo.push_back(y);
    }
  }
  return seen.size() == g.size();
}

// Largest hop count from `from` to any node (the flood of a change over the links).
std::size_t Eccentricity(const std::map<std::uint64_t, std::set<std::uint64_t>>& g,
                         std::uint64_t from) {
  std::map<std::uint64_t, std::size_t> dist{{from, 0}};
  std::deque<std::uint64_t> todo{from};
  std::size_t ecc = 0;
  while (!todo.empty()) {
    std::uint64_t x = todo.front();
    todo.pop_front();
    for (std::uint64_t y : g.at(x)) {
      if (dist.emplace(y, dist[x] + 1).second) {
        ecc = std::max(ecc, dist[y]);
        todo.push_back(y);
      }
    }
  }
  return ecc;
}

bool EveryoneKnowsEveryoneAlive(const MembershipNetwork& net) {
  for (std::uint64_t a : net.up_ids()) {
    for (std::uint64_t b : net.up_ids()) {
      if (a != b && net.StateAt(a, b) != MemberState::kAlive) return false;
    }
  }
  return true;
}

std::vector<std::uint64_t> Cluster(MembershipNetwork& net, std::size_t n) {
  std::vector<std::uint64_t> ids{net.AddNode()};
  for (std::size_t i = 1; i < n; ++i) ids.push_back(net.AddNode({ids[0]}));
  EXPECT_TRUE(net.RunUntil([&] { return EveryoneKnowsEveryoneAlive(net); }, 60s));
  return ids;
}

// --- Join and dissemination ---------------------------------------------------------------

TEST(MembershipTest, JoinThroughOneSeedReachesEveryone) {
  MembershipNetwork net(Fast());
  History h;
  h.Attach(net);
  std::vector<std::uint64_t> ids{net.AddNode()};
  for (int i = 1; i < 16; ++i) {
    ids.push_back(net.AddNode({ids[0]}));
    net.Run(100ms);
  }
  ASSERT_TRUE(net.RunUntil([&] { return EveryoneKnowsEveryoneAlive(net); }, 20s));
  for (std::uint64_t id : ids) {
    EXPECT_EQ(net.node(id).Members().size(), 16u);
    EXPECT_EQ(net.node(id).PlacementMembers().size(), 16u);
  }
  // A late joiner, through another seed, is known everywhere within a few periods.
  std::uint64_t late = net.AddNode({ids[5]});
  ASSERT_TRUE(net.RunUntil([&] { return net.AllSee(late, MemberState::kAlive); }, 10s));
  net.Run(30s);
  EXPECT_TRUE(EveryoneKnowsEveryoneAlive(net));
  EXPECT_EQ(h.Count(late, MemberState::kSuspect), 0);  // steady: nobody suspected anyone
  for (std::uint64_t id : ids) EXPECT_EQ(h.Count(id, MemberState::kSuspect), 0);
}

TEST(MembershipTest, ALoneNodeAsksItsSeedsAgain) {
  MembershipNetwork net(Fast());
  std::uint64_t a = net.AddNode();
  std::uint64_t b = net.AddNode({a});
  net.Kill(a);  // the seed is gone before b's join arrives
  net.Run(1s);
  EXPECT_FALSE(net.node(b).Member(a).has_value());
  net.Restart(a, {});
  // b asks again every rejoin_interval (10 s) while it knows nobody alive.
  ASSERT_TRUE(net.RunUntil([&] { return net.StateAt(b, a) == MemberState::kAlive; }, 11s));
  EXPECT_EQ(net.StateAt(a, b), MemberState::kAlive);
}

// --- Failure detection --------------------------------------------------------------------

TEST(MembershipTest, AKilledNodeGoesSuspectThenDownEverywhere) {
  MembershipNetwork net(Fast(60s));
  auto ids = Cluster(net, 16);
  History h;
  h.Attach(net);
  const std::uint64_t dead = ids[7];
  const Millis killed = net.now();
  net.Kill(dead);
  const Millis suspicion = net.node(ids[0]).SuspicionTimeout();
  EXPECT_EQ(suspicion, Millis(static_cast<std::int64_t>(4 * std::log10(16.0) * 200)));
  // Suspect everywhere within a pass over the members and the gossip that follows.
  ASSERT_TRUE(net.RunUntil([&] { return net.AllSee(dead, MemberState::kSuspect); }, 10s));
  const Millis all_suspect = net.now() - killed;
  EXPECT_LT(all_suspect, 10s);
  // Still in placement, and not down, until down_after.
  for (std::uint64_t id : net.up_ids()) {
    auto p = net.node(id).PlacementMembers();
    EXPECT_TRUE(std::count(p.begin(), p.end(), dead)) << id;
  }
  net.Run(50s - all_suspect);
  EXPECT_TRUE(net.AllSee(dead, MemberState::kSuspect));
  for (std::uint64_t id : net.up_ids()) {
    EXPECT_TRUE(net.node(id).Member(dead)->unreachable) << id;
  }
  ASSERT_TRUE(net.RunUntil([&] { return net.AllSee(dead, MemberState::kDown); }, 20s));
  EXPECT_GE(net.now() - killed, 60s);
  for (std::uint64_t id : net.up_ids()) {
    auto p = net.node(id).PlacementMembers();
    EXPECT_FALSE(std::count(p.begin(), p.end(), dead)) << id;
    auto plan = net.node(id).LinkPlan();
    EXPECT_TRUE(std::none_of(plan.begin(), plan.end(),
                             [&](const PlannedLink& l) { return l.node_id == dead; }));
  }
  // Nobody else was suspected on the way.
  for (std::uint64_t id : ids) {
    if (id != dead) {
      EXPECT_EQ(h.Count(id, MemberState::kSuspect), 0) << id;
    }
  }
  // It comes back (a restart): alive everywhere, with a higher incarnation.
  net.Restart(dead, {ids[0]});
  ASSERT_TRUE(net.RunUntil([&] { return net.AllSee(dead, MemberState::kAlive); }, 10s));
  EXPECT_GE(net.node(dead).Incarnation(), 1u);
}

TEST(MembershipTest, ASlowNodeRefutesAndNeverGoesDown) {
  MembershipNetwork net(Fast(20s));
  auto ids = Cluster(net, 12);
  History h;
  h.Attach(net);
  const std::uint64_t slow = ids[3];
  // Its acks take 2 x 130 ms + latency: past the ack timeout, often past the period.
  net.SetDelay(slow, 130ms);
  net.Run(120s);
  EXPECT_GT(h.Count(slow, MemberState::kSuspect), 0);  // it was suspected...
  EXPECT_GT(net.node(slow).Incarnation(), 0u);         // ...and refuted
  EXPECT_EQ(h.Count(slow, MemberState::kDown), 0);     // never down, on any node
  for (std::uint64_t id : ids) {
    if (id != slow) {
      EXPECT_EQ(h.Count(id, MemberState::kDown), 0) << id;
    }
  }
  net.SetDelay(slow, 0ms);
  ASSERT_TRUE(net.RunUntil([&] { return EveryoneKnowsEveryoneAlive(net); }, 10s));
}

TEST(MembershipTest, AShortPartitionHealsWithoutFlapping) {
  MembershipNetwork net(Fast(60s));
  auto ids = Cluster(net, 16);
  History h;
  h.Attach(net);
  std::vector<std::uint64_t> left(ids.begin(), ids.begin() + 8);
  net.Partition(left);
  net.Run(20s);
  // Each side suspects the other, and nobody is down.
  EXPECT_EQ(net.StateAt(ids[0], ids[12]), MemberState::kSuspect);
  EXPECT_EQ(net.StateAt(ids[12], ids[0]), MemberState::kSuspect);
  EXPECT_EQ(net.StateAt(ids[0], ids[1]), MemberState::kAlive);
  net.Heal();
  ASSERT_TRUE(net.RunUntil([&] { return EveryoneKnowsEveryoneAlive(net); }, 10s));
  net.Run(60s);
  EXPECT_TRUE(EveryoneKnowsEveryoneAlive(net));
  // Per observer and member: at most alive -> suspect -> alive, never down.
  for (const auto& [key, v] : h.states) {
    EXPECT_LE(v.size(), 2u) << h.Of(key.first, key.second);
    EXPECT_EQ(std::count(v.begin(), v.end(), MemberState::kDown), 0);
  }
}

TEST(MembershipTest, ALongPartitionTakesTheOtherSideDownAndBackOnce) {
  MembershipNetwork net(Fast(20s));
  auto ids = Cluster(net, 12);
  History h;
  h.Attach(net);
  std::vector<std::uint64_t> left(ids.begin(), ids.begin() + 4);
  net.Partition(left);
  net.Run(40s);
  EXPECT_EQ(net.StateAt(ids[0], ids[8]), MemberState::kDown);
  EXPECT_EQ(net.StateAt(ids[8], ids[0]), MemberState::kDown);
  net.Heal();
  // Down members are still probed, directly: the probe tells them, they refute.
  ASSERT_TRUE(net.RunUntil([&] { return EveryoneKnowsEveryoneAlive(net); }, 30s));
  net.Run(30s);
  EXPECT_TRUE(EveryoneKnowsEveryoneAlive(net));
  for (const auto& [key, v] : h.states) {
    EXPECT_LE(v.size(), 3u) << h.Of(key.first, key.second);  // suspect, down, alive
  }
}

TEST(MembershipTest, AnIsolatedNodeTakesNobodyDown) {
  MembershipNetwork net(Fast(20s));
  auto ids = Cluster(net, 8);
  History h;
  h.Attach(net);
  const std::uint64_t alone = ids[2];
  net.Partition({alone});
  net.Run(60s);
  // The others agree it is down; it cannot tell their failure from its own isolation.
  EXPECT_TRUE(net.AllSee(alone, MemberState::kDown));
  for (std::uint64_t id : ids) {
    if (id != alone) {
      EXPECT_EQ(net.StateAt(alone, id), MemberState::kSuspect);
    }
  }
  net.Heal();
  ASSERT_TRUE(net.RunUntil([&] { return EveryoneKnowsEveryoneAlive(net); }, 30s));
  // Nobody but the isolated node was ever down anywhere.
  for (std::uint64_t id : ids) {
    if (id != alone) {
      EXPECT_EQ(h.Count(id, MemberState::kDown), 0) << id;
    }
  }
}

TEST(MembershipTest, GossipOfDownDoesNotOverrideWhatANodeSawItself) {
  MembershipNetwork net(Fast());
  auto ids = Cluster(net, 4);
  const std::uint64_t member = ids[1];
  const std::uint64_t inc = net.node(ids[0]).Member(member)->incarnation;
  // A node cut off for long says the member is down; ids[0] reached it itself: suspect only.
  net.Inject(ids[2], ids[0], net::MemberAck{0, {{member, "", MemberState::kDown, inc}}});
  EXPECT_EQ(net.StateAt(ids[0], member), MemberState::kSuspect);
  ASSERT_TRUE(net.RunUntil([&] { return net.AllSee(member, MemberState::kAlive); }, 10s));
  EXPECT_GT(net.node(member).Incarnation(), inc);  // refuted
}

// --- Manual removal -----------------------------------------------------------------------

TEST(MembershipTest, ARemovedMemberStaysRemovedUntilItRestarts) {
  MembershipNetwork net(Fast());
  auto ids = Cluster(net, 10);
  const std::uint64_t gone = ids[4];
  net.Kill(gone);
  net.Run(2s);
  net.Remove(ids[0], gone);
  EXPECT_EQ(net.StateAt(ids[0], gone), MemberState::kRemoved);
  ASSERT_TRUE(net.RunUntil([&] { return net.AllSee(gone, MemberState::kRemoved); }, 10s));
  for (std::uint64_t id : net.up_ids()) {
    auto p = net.node(id).PlacementMembers();
    EXPECT_FALSE(std::count(p.begin(), p.end(), gone));
  }
  // Stale gossip of its last incarnation, alive, brings nothing back.
  const std::uint64_t inc = net.node(ids[1]).Member(gone)->incarnation;
  net.Inject(ids[2], ids[1], net::MemberAck{0, {{gone, "", MemberState::kAlive, inc}}});
  EXPECT_EQ(net.StateAt(ids[1], gone), MemberState::kRemoved);
  net.Run(30s);
  EXPECT_TRUE(net.AllSee(gone, MemberState::kRemoved));
  // Its own restart (a higher incarnation) does.
  net.Restart(gone, {ids[3]});
  ASSERT_TRUE(net.RunUntil([&] { return net.AllSee(gone, MemberState::kAlive); }, 10s));
}

TEST(MembershipTest, ARemovedLiveNodeDoesNotRefute) {
  MembershipNetwork net(Fast());
  auto ids = Cluster(net, 6);
  History h;
  h.Attach(net);
  net.Remove(ids[0], ids[5]);
  ASSERT_TRUE(net.RunUntil([&] { return net.AllSee(ids[5], MemberState::kRemoved); }, 10s));
  ASSERT_TRUE(net.RunUntil([&] { return net.node(ids[5]).self_removed(); }, 10s));
  EXPECT_TRUE(net.node(ids[5]).LinkPlan().empty());
  EXPECT_EQ(net.node(ids[5]).NextDeadline(), Millis::max());  // no timer spins
  bool told = false;
  for (const auto& [observer, e, at] : h.all) {
    told = told || (observer == ids[5] && e.kind == MemberEvent::Kind::kSelfRemoved);
  }
  EXPECT_TRUE(told);
  net.Run(30s);
  EXPECT_TRUE(net.AllSee(ids[5], MemberState::kRemoved));
  net.Restart(ids[5], {ids[1]});
  ASSERT_TRUE(net.RunUntil([&] { return net.AllSee(ids[5], MemberState::kAlive); }, 10s));
}

TEST(MembershipTest, RemoveRefusesThisNodeAndIdZero) {
  Membership m({.self_id = 5}, Millis(0));
  EXPECT_FALSE(m.RemoveMember(5, Millis(0)).ok());
  EXPECT_FALSE(m.RemoveMember(0, Millis(0)).ok());
  ASSERT_TRUE(m.RemoveMember(9, Millis(0)).ok());  // unknown: a tombstone
  EXPECT_EQ(m.Member(9)->state, MemberState::kRemoved);
  m.OnMessage(7, net::MemberSync{false, {{9, "x:1", MemberState::kAlive, 0}}}, Millis(1));
  EXPECT_EQ(m.Member(9)->state, MemberState::kRemoved);
  m.OnMessage(7, net::MemberSync{false, {{9, "x:1", MemberState::kAlive, 1}}}, Millis(2));
  EXPECT_EQ(m.Member(9)->state, MemberState::kAlive);
}

// --- Link plan ----------------------------------------------------------------------------

void ExpectGoodPlans(MembershipNetwork& net, std::size_t max_links) {
  std::size_t n = net.up_ids().size();
  std::map<std::uint64_t, std::vector<PlannedLink>> plans;
  for (std::uint64_t id : net.up_ids()) plans[id] = net.node(id).LinkPlan();
  for (const auto& [node, plan] : plans) {
    const std::uint64_t id = node;  // a lambda cannot capture a structured binding (clang 14)
    EXPECT_LE(plan.size(), max_links);
    EXPECT_GE(plan.size(), std::min<std::size_t>(n - 1, 2));
    for (const PlannedLink& l : plan) {
      ASSERT_TRUE(plans.contains(l.node_id));
      const auto& back = plans[l.node_id];  // symmetric: the other end plans it too
      EXPECT_TRUE(std::any_of(back.begin(), back.end(),
                              [&](const PlannedLink& b) { return b.node_id == id; }));
      EXPECT_EQ(l.addr, MembershipNetwork::Addr(l.node_id));
    }
  }
  auto g = net.PlanGraph();
  EXPECT_TRUE(Connected(g));
  std::size_t diameter = 0;
  for (std::uint64_t id : net.up_ids()) diameter = std::max(diameter, Eccentricity(g, id));
  // O(log n): the ring alone would be n / 2.
  EXPECT_LE(diameter, 2 + 2 * static_cast<std::size_t>(std::log2(static_cast<double>(n))));
}

TEST(MembershipTest, LinkPlanIsBoundedSymmetricAndConnected) {
  for (std::size_t n : {16u, 100u, 1000u}) {
    SCOPED_TRACE(n);
    MembershipNetwork::Options o = Fast();
    o.links = false;
    MembershipNetwork net(o);
    if (n <= 100) {
      Cluster(net, n);
    } else {
      net.AddConvergedNodes(n);
    }
    ExpectGoodPlans(net, 8);
  }
}

TEST(MembershipTest, LinkPlanRoutesAroundUnreachableMembers) {
  MembershipNetwork net(Fast());
  auto ids = Cluster(net, 30);
  for (int i = 0; i < 5; ++i) net.Kill(ids[static_cast<std::size_t>(i * 3)]);
  net.Run(10s);  // past the suspicion timeout: unreachable members leave the plan
  ExpectGoodPlans(net, 8);
  for (const auto& [a, b] : net.links()) EXPECT_TRUE(net.up(a) && net.up(b));
}

TEST(MembershipTest, LinkPlanBoundaries) {
  for (std::size_t max_links : {0u, 1u, 2u, 3u, 5u}) {
    SCOPED_TRACE(max_links);
    MembershipNetwork::Options o = Fast();
    o.node.max_links = max_links;
    MembershipNetwork net(o);
    auto ids = Cluster(net, 9);
    for (std::uint64_t id : ids) EXPECT_LE(net.node(id).LinkPlan().size(), max_links);
    if (max_links >= 2) {
      EXPECT_TRUE(Connected(net.PlanGraph()));
    }
    if (max_links == 0) {
      EXPECT_TRUE(net.links().empty());
    }
  }
  // One link each: two nodes are linked.
  MembershipNetwork::Options o = Fast();
  o.node.max_links = 1;
  MembershipNetwork two(o);
  auto ids = Cluster(two, 2);
  EXPECT_EQ(two.node(ids[0]).LinkPlan().size(), 1u);
  EXPECT_TRUE(Connected(two.PlanGraph()));
}

// --- Boundaries ---------------------------------------------------------------------------

TEST(MembershipTest, OneNodeAlone) {
  Membership m({.self_id = 1, .self_addr = "a:1"}, Millis(0));
  for (int t = 0; t < 100; ++t) {
    Actions a = m.Tick(Millis(t * 100));
    EXPECT_TRUE(a.send.empty());
    EXPECT_TRUE(a.events.empty());
  }
  EXPECT_TRUE(m.LinkPlan().empty());
  EXPECT_EQ(m.PlacementMembers(), std::vector<std::uint64_t>{1});
  ASSERT_EQ(m.Members().size(), 1u);
  EXPECT_TRUE(m.Members()[0].self);
  EXPECT_GT(m.NextDeadline(), Millis(9900));
}

TEST(MembershipTest, TwoNodesTheSurvivorTakesTheOtherDown) {
  MembershipNetwork net(Fast(10s));
  auto ids = Cluster(net, 2);
  EXPECT_EQ(net.node(ids[0]).LinkPlan().size(), 1u);
  net.Kill(ids[1]);
  ASSERT_TRUE(net.RunUntil([&] { return net.StateAt(ids[0], ids[1]) == MemberState::kDown; }, 15s));
}

TEST(MembershipTest, MalformedAndHugeUpdatesAreIgnored) {
  Membership m({.self_id = 1}, Millis(0));
  const std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
  net::MemberSync bad{false,
                      {{0, "zero:1", MemberState::kAlive, 0},
                       {2, "", static_cast<MemberState>(0), 0},
                       {3, "", static_cast<MemberState>(9), 0},
                       {4, "", MemberState::kAlive, max},
                       {5, std::string(net::kMaxAddrSize + 1, 'x'), MemberState::kAlive, 0},
                       {1, "", MemberState::kSuspect, max}}};
  Actions a = m.OnMessage(7, bad, Millis(1));
  EXPECT_EQ(m.ignored_updates(), 6u);
  EXPECT_EQ(m.Members().size(), 1u);
  EXPECT_EQ(m.Incarnation(), 0u);
  // The sender gets no reply to a sync that did not ask for one.
  EXPECT_TRUE(a.send.empty());
  // The largest valid incarnation is refuted without overflow.
  m.OnMessage(7, net::MemberAck{0, {{1, "", MemberState::kSuspect, kMaxIncarnation}}}, Millis(2));
  EXPECT_EQ(m.Incarnation(), kMaxIncarnation + 1);
  // Other message types are not membership's business.
  EXPECT_TRUE(m.OnMessage(7, net::Subscribe{3}, Millis(3)).send.empty());
  EXPECT_TRUE(m.OnMessage(7, net::Keepalive{}, Millis(3)).events.empty());
  // A ping from an unknown node is answered (on the connection it came on).
  Actions pong = m.OnMessage(0, net::MemberPing{42, {}}, Millis(4));
  ASSERT_EQ(pong.send.size(), 1u);
  auto* ack = std::get_if<net::MemberAck>(&pong.send[0].message);
  ASSERT_NE(ack, nullptr);
  EXPECT_EQ(ack->seq, 42u);
}

TEST(MembershipTest, PiggybackIsBoundedAndRetransmitsAreLimited) {
  MembershipOptions o{.self_id = 1, .max_piggyback = 1000};  // clamped to the wire bound
  Membership m(o, Millis(0));
  net::MemberSync many{false, {}};
  for (std::uint64_t i = 2; i < 300; ++i) many.members.push_back({i, "", MemberState::kAlive, 0});
  m.OnMessage(2, many, Millis(0));
  EXPECT_EQ(m.RetransmitLimit(), 4u * 3u);  // ceil(log10(299 + 1)) = 3
  std::size_t carried = 0;
  for (int i = 0; i < 100; ++i) {
    Actions a = m.OnMessage(2, net::MemberPing{static_cast<std::uint64_t>(i), {}}, Millis(i));
    auto& ack = std::get<net::MemberAck>(a.send.at(0).message);
    EXPECT_LE(ack.updates.size(), net::kMaxMemberUpdates);
    carried += ack.updates.size();
  }
  // Every update went out exactly the retransmit limit, and then no more.
  EXPECT_EQ(carried, 298u * m.RetransmitLimit());
}

// --- Weights ------------------------------------------------------------------------------

// Each node announces its own placement weight at start: every node learns every weight by
// gossip and places by it; a restart with another weight (a higher incarnation) replaces it.
TEST(MembershipTest, WeightsTravelByGossipToEveryNodeAndIntoPlacement) {
  MembershipNetwork net(Fast());
  const std::vector<std::uint32_t> weights{1, 2, 4, 8, 1, 3, 16, 1, 2, 4};
  std::map<std::uint64_t, std::uint32_t> want;
  std::vector<std::uint64_t> ids{net.AddNode({}, weights[0])};
  want[ids[0]] = weights[0];
  for (std::size_t i = 1; i < weights.size(); ++i) {
    ids.push_back(net.AddNode({ids[0]}, weights[i]));
    want[ids.back()] = weights[i];
  }
  std::vector<Placement::Member> expected;
  for (const auto& [id, w] : want) expected.push_back({id, w});  // by id, as the list is
  ASSERT_TRUE(net.RunUntil(
      [&] {
        for (std::uint64_t id : ids) {
          if (net.node(id).WeightedPlacementMembers() != expected) return false;
        }
        return true;
      },
      30s));
  for (std::uint64_t id : ids) {
    for (const MemberInfo& m : net.node(id).Members()) EXPECT_EQ(m.weight, want.at(m.node_id));
  }
  // Into placement: the weight-8 member holds about 8 times what a weight-1 member does.
  Placement p(net.node(ids[5]).WeightedPlacementMembers());
  std::map<std::uint64_t, int> count;
  for (std::uint64_t k = 0; k < 200000; ++k) ++count[p.Pick(k * 0x9e3779b97f4a7c15ull, 1).front()];
  const double ratio = static_cast<double>(count[ids[3]]) / static_cast<double>(count[ids[0]]);
  EXPECT_GT(ratio, 6.0);
  EXPECT_LT(ratio, 10.0);

  // A restart with another capacity: its new weight, at its new incarnation, everywhere.
  const std::uint64_t before = net.node(ids[3]).Incarnation();
  net.Restart(ids[3], {}, 2);
  EXPECT_GT(net.node(ids[3]).Incarnation(), before);
  ASSERT_TRUE(net.RunUntil(
      [&] {
        for (std::uint64_t id : ids) {
          if (net.node(id).Member(ids[3])->weight != 2) return false;
        }
        return true;
      },
      30s));
  for (std::uint64_t id : ids) {
    EXPECT_EQ(net.node(id).Member(ids[3])->incarnation, net.node(ids[3]).Incarnation());
  }
}

// At the member's current incarnation only a larger weight is taken: the smaller one is the 1 a
// node assumed for a member it first met on a link, which a third node may still send.
TEST(MembershipTest, AWeightAtTheSameIncarnationOnlyReplacesTheOneAssumedOnALink) {
  Membership m({.self_id = 1, .self_addr = "a:1", .weight = 4}, Millis(0));
  m.OnLinkUp(7, "b:1", Millis(1));
  EXPECT_EQ(m.Member(7)->weight, 1u);
  // Gossip (piggybacked on an ack that answers no probe).
  auto gossip = [&](std::uint64_t from, net::MemberUpdate u, Millis now) {
    return m.OnMessage(from, net::MemberAck{0, {std::move(u)}}, now);
  };
  gossip(7, {7, "b:1", MemberState::kAlive, 0, 5}, Millis(2));  // its own entry
  EXPECT_EQ(m.Member(7)->weight, 5u);
  // Passed on to others.
  Actions a = m.OnMessage(9, net::MemberPing{1, {}}, Millis(3));
  const auto& ack = std::get<net::MemberAck>(a.send.at(0).message);
  EXPECT_TRUE(std::any_of(ack.updates.begin(), ack.updates.end(), [](const net::MemberUpdate& u) {
    return u.node_id == 7 && u.weight == 5;
  }));
  gossip(8, {7, "b:1", MemberState::kAlive, 0, 1}, Millis(4));  // another node's assumption
  EXPECT_EQ(m.Member(7)->weight, 5u);
  gossip(8, {7, "b:1", MemberState::kAlive, 1, 0}, Millis(5));  // restarted; 0 counts as 1
  EXPECT_EQ(m.Member(7)->weight, 1u);
  gossip(8, {7, "b:1", MemberState::kAlive, 2, 3}, Millis(6));  // restarted again
  EXPECT_EQ(m.Member(7)->weight, 3u);
  gossip(8, {7, "b:1", MemberState::kSuspect, 2, 3}, Millis(7));
  EXPECT_EQ(m.Member(7)->state, MemberState::kSuspect);
  EXPECT_EQ(m.Member(7)->weight, 3u);
  // Nobody else sets this node's weight.
  gossip(7, {1, "a:1", MemberState::kAlive, 0, 99}, Millis(8));
  EXPECT_EQ(m.Member(1)->weight, 4u);
  EXPECT_EQ(m.WeightedPlacementMembers(), (std::vector<Placement::Member>{{1, 4}, {7, 3}}));
  // Persisted, and restored; this node's own weight is the new run's.
  const auto saved = m.Export(Millis(9));
  Membership again({.self_id = 1, .self_addr = "a:1", .weight = 6}, Millis(0));
  again.Import(saved, Millis(0));
  EXPECT_EQ(again.WeightedPlacementMembers(), (std::vector<Placement::Member>{{1, 6}, {7, 3}}));
  EXPECT_EQ(again.Member(7)->weight, 3u);
}

// --- Persistence --------------------------------------------------------------------------

TEST(MembershipTest, ExportAndImportKeepTheTableAndRaiseTheIncarnation) {
  MembershipNetwork net(Fast());
  auto ids = Cluster(net, 5);
  net.Kill(ids[4]);
  net.Remove(ids[0], ids[4]);
  net.Run(3s);
  const std::vector<MemberRecord> saved = net.node(ids[0]).Export(net.now());
  ASSERT_EQ(saved.size(), 5u);
  Membership again({.self_id = ids[0], .self_addr = "new:1"}, Millis(0));
  again.Import(saved, Millis(0));
  for (const MemberRecord& r : saved) {
    auto info = again.Member(r.node_id);
    ASSERT_TRUE(info.has_value());
    EXPECT_EQ(info->addr, r.node_id == ids[0] ? "new:1" : r.addr);
    if (r.node_id != ids[0]) {
      EXPECT_EQ(info->state, r.state);
    }
  }
  EXPECT_EQ(again.Member(ids[4])->state, MemberState::kRemoved);
  EXPECT_EQ(again.Incarnation(), net.node(ids[0]).Incarnation() + 1);
  EXPECT_EQ(again.Export(Millis(0)).size(), saved.size());
  // A restored table of live members is usable at once: placement and links.
  EXPECT_EQ(again.PlacementMembers().size(), 4u);
  EXPECT_EQ(again.LinkPlan().size(), 3u);
}

TEST(MembershipTest, TheSameSeedGivesTheSameRun) {
  auto run = [] {
    MembershipNetwork::Options o = Fast(20s);
    o.loss = 0.05;
    MembershipNetwork net(o);
    History h;
    h.Attach(net);
    auto ids = Cluster(net, 12);
    net.Kill(ids[3]);
    net.Run(40s);
    std::vector<std::tuple<std::uint64_t, std::uint64_t, int, std::int64_t>> log;
    for (const auto& [obs, e, at] : h.all) {
      log.emplace_back(obs, e.node_id, static_cast<int>(e.state), at.count());
    }
    return std::make_pair(log, net.sent.messages);
  };
  auto first = run();
  EXPECT_FALSE(first.first.empty());
  EXPECT_EQ(first, run());
}

TEST(MembershipTest, LossyNetworkStillConverges) {
  MembershipNetwork::Options o = Fast(60s);
  o.loss = 0.1;
  MembershipNetwork net(o);
  History h;
  h.Attach(net);
  auto ids = Cluster(net, 20);
  net.Kill(ids[0]);
  ASSERT_TRUE(net.RunUntil([&] { return net.AllSee(ids[0], MemberState::kSuspect); }, 20s));
  net.Run(60s);
  EXPECT_TRUE(net.AllSee(ids[0], MemberState::kDown));
  // 10% loss: false suspicions may happen, but are refuted; nobody else is down.
  for (std::size_t i = 1; i < ids.size(); ++i) EXPECT_EQ(h.Count(ids[i], MemberState::kDown), 0);
}

}  // namespace
}  // namespace foreverfs::server
