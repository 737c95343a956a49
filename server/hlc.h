#pragma once
// Hybrid logical clock: wall-clock nanoseconds that never go backwards and always move past
// every version this node has seen, so a local change always wins over what it replaces.
// Thread-safe.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>

#include "base/mutex.h"
#include "net/messages.h"

namespace foreverfs::server {

class Hlc {
 public:
  Hlc(std::uint64_t node_id, std::uint64_t last_seen) : node_(node_id), last_(last_seen) {}

  // Wall-clock nanoseconds since the epoch.
  static std::uint64_t WallNs() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
  }
  model::Version Next() {
    MutexLock lock(mu_);
    last_ = std::max(last_ + 1, WallNs());
    return {last_, node_};
  }
  // True if `hlc` is at most `max_skew_ns` ahead of this machine's clock. Versions from peers
  // beyond that are refused: one near 2^64 would win over every later write for good (and
  // overflow this clock). Since every accepted version is within the skew of some wall clock,
  // the clock stays far below 2^63 (it is stored signed).
  static bool Plausible(std::uint64_t hlc, std::uint64_t max_skew_ns) {
    return hlc <= WallNs() + max_skew_ns;
  }
  void Observe(std::uint64_t hlc) {
    MutexLock lock(mu_);
    last_ = std::max(last_, hlc);
  }
  std::uint64_t node() const { return node_; }

 private:
  Mutex mu_;
  const std::uint64_t node_;
  std::uint64_t last_ GUARDED_BY(mu_);
};

}  // namespace foreverfs::server
