#pragma once
// Small helpers the replicator's parts share (server/replicator.h and the classes it owns):
// how a node id is logged, the rendezvous score that ranks nodes for a chunk, and recording a
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

// The `n` members of `members` that rank highest for `id` (all of them when there are no more
// than `n`), best first.
inline std::vector<std::uint64_t> Ranked(std::vector<std::uint64_t> members,
                                         const cas::ChunkId& id, std::size_t n) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> scores;
  scores.reserve(members.size());
  for (std::uint64_t node : members) scores.emplace_back(Score(node, id), node);
  const std::size_t k = std::min(n, scores.size());
  std::partial_sort(scores.begin(), scores.begin() + static_cast<std::ptrdiff_t>(k), scores.end(),
                    std::greater<>());
  std::vector<std::uint64_t> out;
  out.reserve(k);
  for (std::size_t i = 0; i < k; ++i) out.push_back(scores[i].second);
  return out;
}

// A member from now on: no tombstone is purged before it confirms it holds it (README,
// "Tombstones"). Failures are logged.
inline void AddMember(NamespaceDb& ns, std::uint64_t node) {
  if (auto s = ns.AddMember(node); !s.ok()) {
    spdlog::error("recording node {} as a member: {}", Short(node), s.message());
  }
}

}  // namespace foreverfs::server::replication
