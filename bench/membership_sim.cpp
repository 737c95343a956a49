// Membership at scale, simulated (issue 15, part 5): N nodes of server/membership in one
// process over tests/unit/membership_network.h (simulated time, 5 ms one-way latency, every
// message encoded and decoded by the real codec), with the daemon's defaults: 1 s protocol
// period, 500 ms ack timeout, k = 3 indirect probes, 8 long-lived links, down after 15 min.
// Not a timed benchmark: the figures are in simulated time and messages, so they do not
// depend on the machine. Prints one line per figure.
//
// Usage: foreverfs_membership_sim [N ...] [--down-after=SECONDS] [--seed=S]
//        (default: 16 100 1000; down after 900 s)

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "unit/membership_network.h"

using namespace foreverfs;
using namespace foreverfs::server;
using foreverfs::server::testing::MembershipNetwork;
using namespace std::chrono_literals;

namespace {

double Seconds(Millis d) { return static_cast<double>(d.count()) / 1000.0; }

struct Flood {
  std::size_t max_hops = 0;
  double mean_eccentricity = 0;
  double mean_links = 0;
  std::size_t max_links = 0;
  bool connected = true;
};

// A namespace change starting at any node, forwarded once over every long-lived link: the hops
// until it reached the last node (breadth-first search over the link graph, from every node).
Flood MeasureFlood(const std::map<std::uint64_t, std::set<std::uint64_t>>& g) {
  Flood f;
  std::size_t total_ecc = 0, total_links = 0;
  for (const auto& [from, adj] : g) {
    total_links += adj.size();
    f.max_links = std::max(f.max_links, adj.size());
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
    if (dist.size() != g.size()) f.connected = false;
    total_ecc += ecc;
    f.max_hops = std::max(f.max_hops, ecc);
  }
  f.mean_eccentricity = static_cast<double>(total_ecc) / static_cast<double>(g.size());
  f.mean_links = static_cast<double>(total_links) / static_cast<double>(g.size());
  return f;
}

void Simulate(std::size_t n, Millis down_after, std::uint64_t seed) {
  const auto wall_start = std::chrono::steady_clock::now();
  MembershipNetwork::Options o;
  o.seed = seed;
  o.node.down_after = down_after;
  const MembershipOptions defaults = o.node;
  MembershipNetwork net(o);
  std::vector<std::uint64_t> ids = net.AddConvergedNodes(n);

  // Per observer: when it first saw the watched member added, suspect, unreachable, down.
  std::uint64_t watched = 0;
  std::map<std::uint64_t, Millis> added, suspect, unreachable, down;
  net.on_event = [&](std::uint64_t observer, const MemberEvent& e, Millis now) {
    if (e.node_id != watched || observer == watched) return;
    if (e.kind == MemberEvent::Kind::kAdded) added.emplace(observer, now);
    if (e.kind == MemberEvent::Kind::kUnreachable) unreachable.emplace(observer, now);
    if (e.kind == MemberEvent::Kind::kChanged && e.state == net::MemberState::kSuspect) {
      suspect.emplace(observer, now);
    }
    if (e.kind == MemberEvent::Kind::kChanged && e.state == net::MemberState::kDown) {
      down.emplace(observer, now);
    }
  };

  const Membership& first = net.node(ids[0]);
  std::printf(
      "n=%zu params: period %lld ms, ack timeout %lld ms, k=%zu, max_links %zu, suspicion "
      "timeout %.1f s, down after %.0f s, retransmits %u, piggyback <= %zu, latency 5 ms\n",
      n, static_cast<long long>(defaults.protocol_period.count()),
      static_cast<long long>(defaults.ack_timeout.count()), defaults.indirect_probes,
      defaults.max_links, Seconds(first.SuspicionTimeout()), Seconds(defaults.down_after),
      first.RetransmitLimit(), defaults.max_piggyback);

  // Links open (each exchanging whole tables), then quiet.
  net.Run(30s);

  // Steady state: messages and bytes per node per second.
  const auto before = net.sent;
  // Long enough to hold every node's periodic table exchange (anti-entropy) once.
  const Millis steady = std::max<Millis>(60s, first.SyncInterval());
  net.Run(steady);
  const double node_seconds = static_cast<double>(n) * Seconds(steady);
  auto per = [&](net::MessageType t) {
    auto it = net.sent.by_type.find(t);
    const std::uint64_t now = it == net.sent.by_type.end() ? 0 : it->second;
    auto b = before.by_type.find(t);
    return static_cast<double>(now - (b == before.by_type.end() ? 0 : b->second)) / node_seconds;
  };
  std::printf(
      "n=%zu steady state: %.2f messages/node/s (ping %.2f, ack %.2f, ping-req %.2f, sync "
      "%.2f), %.0f bytes/node/s\n",
      n, static_cast<double>(net.sent.messages - before.messages) / node_seconds,
      per(net::MessageType::kMemberPing), per(net::MessageType::kMemberAck),
      per(net::MessageType::kMemberPingReq), per(net::MessageType::kMemberSync),
      static_cast<double>(net.sent.bytes - before.bytes) / node_seconds);

  // A namespace change floods over the long-lived links.
  Flood f = MeasureFlood(net.PlanGraph());
  std::printf(
      "n=%zu change feed over the link plan: reaches every node in %zu hops at most (mean "
      "eccentricity %.2f), %s, links per node %.2f (max %zu)\n",
      n, f.max_hops, f.mean_eccentricity, f.connected ? "connected" : "NOT CONNECTED", f.mean_links,
      f.max_links);

  // A new member joins through one seed.
  const Millis joined_at = net.now();
  watched = net.AddNode({ids[n / 2]});
  const bool all_know = net.RunUntil([&] { return added.size() == n; }, 120s);
  Millis last{0};
  for (const auto& [obs, at] : added) last = std::max(last, at - joined_at);
  std::printf(
      "n=%zu join: %severy node knew the new member after %.2f s = %.1f protocol periods "
      "(half of them after %.1f periods)\n",
      n, all_know ? "" : "NOT ", Seconds(last), Seconds(last) / Seconds(defaults.protocol_period),
      [&] {
        std::vector<Millis> t;
        for (const auto& [obs, at] : added) t.push_back(at - joined_at);
        std::sort(t.begin(), t.end());
        return t.empty() ? 0.0 : Seconds(t[t.size() / 2]) / Seconds(defaults.protocol_period);
      }());
  net.Run(30s);

  // A member dies.
  watched = ids[n / 3];
  const Millis killed_at = net.now();
  net.Kill(watched);
  const std::size_t observers = net.up_ids().size();
  net.RunUntil([&] { return down.size() == observers; }, down_after + 180s);
  auto when = [&](const std::map<std::uint64_t, Millis>& m, bool last_one) {
    if (m.empty()) return -1.0;
    Millis t = last_one ? Millis(0) : Millis::max();
    for (const auto& [obs, at] : m) t = last_one ? std::max(t, at) : std::min(t, at);
    return Seconds(t - killed_at);
  };
  std::printf(
      "n=%zu dead member: first suspect %.1f s, all suspect %.1f s (%zu/%zu), all unreachable "
      "%.1f s, first down %.1f s, all down %.1f s (%zu/%zu)\n",
      n, when(suspect, false), when(suspect, true), suspect.size(), observers,
      when(unreachable, true), when(down, false), when(down, true), down.size(), observers);
  const auto wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start);
  std::printf("n=%zu simulated %.0f s in %.1f s, %llu messages\n", n, Seconds(net.now()),
              wall.count(), static_cast<unsigned long long>(net.sent.messages));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> sizes;
  Millis down_after = 900s;
  std::uint64_t seed = 1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--down-after=", 0) == 0) {
      down_after = Millis(std::atoll(a.c_str() + 13) * 1000);
    } else if (a.rfind("--seed=", 0) == 0) {
      seed = std::strtoull(a.c_str() + 7, nullptr, 10);
    } else if (std::atoll(a.c_str()) >= 2) {
      sizes.push_back(static_cast<std::size_t>(std::atoll(a.c_str())));
    } else {
      std::fprintf(stderr, "usage: %s [N ...] [--down-after=SECONDS] [--seed=S]\n", argv[0]);
      return 2;
    }
  }
  if (sizes.empty()) sizes = {16, 100, 1000};
  for (std::size_t n : sizes) Simulate(n, down_after, seed);
  return 0;
}
