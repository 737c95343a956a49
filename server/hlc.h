#pragma once
// Hybrid logical clock: wall-clock nanoseconds that never go backwards and always move past
// every version this node has seen, so a local change always wins over what it replaces.
// Thread-safe.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>

#include "net/messages.h"

namespace foreverfs::server {

class Hlc {
 public:
  Hlc(std::uint64_t node_id, std::uint64_t last_seen) : node_(node_id), last_(last_seen) {}

  net::Version Next() {
    std::lock_guard lock(mu_);
    auto wall = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                               std::chrono::system_clock::now().time_since_epoch())
                                               .count());
    last_ = std::max(last_ + 1, wall);
    return {last_, node_};
  }
  void Observe(std::uint64_t hlc) {
    std::lock_guard lock(mu_);
    last_ = std::max(last_, hlc);
  }
  std::uint64_t node() const { return node_; }

 private:
  std::mutex mu_;
  const std::uint64_t node_;
  std::uint64_t last_;
};

}  // namespace foreverfs::server
