#pragma once
// Small helpers the replicator's parts share (server/replicator.h and the classes it owns):
// how a node id is logged, the rendezvous score that orders peers to ask for a chunk, placement, and recording a
// node as a member. Pure functions; any thread.

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cstdint>
#include <string>
#include <vector>

#include "cas/chunk_store.h"
#include "server/namespace_db.h"
#include "server/placement.h"

namespace foreverfs::server::replication {

using Clock = std::chrono::steady_clock;

inline std::string Short(std::uint64_t node) { return fmt::format("{:016x}", node); }

// Rendezvous score of a node for a chunk: highest wins.
inline std::uint64_t Score(std::uint64_t node, const cas::ChunkId& id) {
  std::uint64_t h = 1469598103934665603ull ^ node;
  for (auto b : id) h = (h ^ b) * 1099511628211ull;
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  return h ^ (h >> 32);
}

// The `n` members of `members` (equal weights) that hold `id` by placement (Placement), in pick
// order; all of them when there are no more than `n`. Builds the placement each call: for a
// handful of members, or tests; the daemon keeps one built per member list (MemberLinks).
inline std::vector<std::uint64_t> Ranked(const std::vector<std::uint64_t>& members,
                                         const cas::ChunkId& id, std::size_t n) {
  std::vector<Placement::Member> m;
  m.reserve(members.size());
  for (std::uint64_t node : members) m.push_back({node, 1});
  return Placement(m).Pick(id, n);
}

// A member from now on: no tombstone is purged before it confirms it holds it (README,
// "Tombstones"). Failures are logged.
inline void AddMember(NamespaceDb& ns, std::uint64_t node) {
  if (auto s = ns.AddMember(node); !s.ok()) {
    spdlog::error("recording node {} as a member: {}", Short(node), s.message());
  }
}

}  // namespace foreverfs::server::replication
