#pragma once
// What the replicator reports about its peers, its background chunk replication and the
// holders of a file's chunks (foreverfs status, user.foreverfs.replicas/.holders). Plain
// values, any thread.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace foreverfs::server {

struct PeerStatus {
  std::uint64_t node_id = 0;
  std::string addr;    // the address others can dial it at ("" if it does not listen)
  std::string remote;  // the address we see the connection come from / go to
  bool outbound = false;
  bool connected = false;  // false: a peer that was connected once and is gone
  // A long-lived link (its peer is in this node's link plan; the change feed runs on it), or
  // a short-lived one (a probe, a join, a fetch) that closes when idle.
  bool long_lived = true;
  std::chrono::system_clock::time_point connected_since{};  // or when it went, if gone
  std::uint64_t bytes_in = 0, bytes_out = 0;                // frame bytes on the current link
  // Backlog towards and from this peer, both cheap to know exactly: our change sequence
  // numbers not yet streamed to it (0 if it has not subscribed yet), and chunk requests to it
  // not yet answered.
  std::uint64_t changes_to_send = 0;
  bool subscribed = false;  // it applies our change feed (it may be asked for durable copies)
  std::size_t chunks_in_flight = 0;
  // Namespace records received from it on this link, and its change sequence number the last
  // batch brought us to (catch-up progress: it streams everything after our cursor first).
  std::uint64_t records_received = 0;
  std::uint64_t peer_seq = 0;
  std::string last_error;  // why its previous link closed ("" if never)
  std::chrono::system_clock::time_point last_error_at{};
};

// Background chunk replication since the queue last went from empty to non-empty.
struct CatchUpStatus {
  bool running = false;
  std::size_t total = 0;  // chunks queued in this round
  std::size_t done = 0;   // fetched and stored
  std::size_t failed = 0;
  std::uint64_t bytes = 0;
  double seconds = 0;  // since the round began (until it ended, if not running)
};

// What this node holds against what placement gives it (ChunkTrim, one pass every
// --rebalance-interval): repair and rebalancing progress, and the cache of copies not ranked
// here. Only with --replicas N (every node holds every chunk otherwise).
struct PlacementStatus {
  bool enabled = false;               // --replicas N and membership running
  std::size_t passes = 0;             // passes completed since start
  double last_pass_seconds_ago = -1;  // -1: none yet
  // Chunks of live files ranked to this node (among the N it places), and of those, the ones
  // it lacks (the background replication fetches them).
  std::size_t ranked_here = 0;
  std::size_t missing_here = 0;
  // Chunks this node is the first ranked member for ("primary"), and of those, the ones that
  // fewer than N live ranked members (this node included) confirmed holding at the last pass.
  // Summed over the nodes, the cluster's under-replicated chunks.
  std::size_t primary = 0;
  std::size_t under_replicated = 0;
  // Copies here that placement does not rank here and no pin keeps: kept as a cache of at
  // most cache_limit bytes (the most recently read first), the rest dropped once every ranked
  // member confirmed it holds the chunk.
  std::size_t extra = 0;
  std::uint64_t extra_bytes = 0;
  std::uint64_t cache_limit = 0;
  std::size_t pinned = 0;   // copies kept here by a pin, not ranked here
  std::size_t dropped = 0;  // since start
  std::uint64_t dropped_bytes = 0;
  std::size_t unconfirmed = 0;  // over the cache at the last pass, not dropped: a ranked
                                // member did not confirm (or was not reachable)
};

// Who holds every chunk of a list (user.foreverfs.replicas / .holders).
struct HolderReport {
  std::size_t chunks = 0;  // distinct non-hole chunk ids asked about
  bool local = false;      // this node holds all of them
  struct Holder {
    std::uint64_t node_id = 0;
    std::string addr;
  };
  std::vector<Holder> peers;  // connected peers that answered and hold all of them
  std::size_t asked = 0;      // connected peers asked
  std::size_t answered = 0;   // of those, the ones that answered every batch in time
};

}  // namespace foreverfs::server
