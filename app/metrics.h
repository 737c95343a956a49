#pragma once
// Prometheus metrics (text exposition format 0.0.4) and the small HTTP server that serves them
// at GET /metrics when foreverfs runs with --metrics ADDR:PORT.
//
//   foreverfs_bytes_stored                  gauge    bytes of chunk files under --data
//   foreverfs_chunks                        gauge    chunk files under --data
//   foreverfs_bytes_sent_total              counter  frame bytes sent to peers
//   foreverfs_bytes_received_total          counter  frame bytes received from peers
//   foreverfs_peers_connected               gauge
//   foreverfs_replication_backlog           gauge    chunks queued or in flight to fetch
//   foreverfs_fuse_op_duration_seconds      histogram, label op="read"|"write"|"lookup"|...
//
// Histogram and OpLatency are lock-free (relaxed atomics) so FUSE threads can record into them
// at any rate; a scrape reads them without stopping anyone (a scrape may see a count that one
// concurrent observation has not reached the sum of yet; Prometheus tolerates that).

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"

namespace foreverfs::app {

class Histogram {
 public:
  // Upper bounds in seconds, from 10 µs to 10 s.
  static constexpr std::array<double, 16> kBounds = {
      0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
      0.01,    0.025,   0.05,   0.1,     0.25,   0.5,   1,      10};

  void Observe(std::chrono::nanoseconds d);
  struct Snapshot {
    std::array<std::uint64_t, kBounds.size()> cumulative{};  // observations <= each bound
    std::uint64_t count = 0;                                 // all observations (+Inf)
    double sum_seconds = 0;
  };
  Snapshot Read() const;

 private:
  std::array<std::atomic<std::uint64_t>, kBounds.size() + 1> buckets_{};  // last: over 10 s
  std::atomic<std::uint64_t> sum_ns_{0};
};

// One histogram per FUSE operation, indexed like `names`.
class OpLatency {
 public:
  explicit OpLatency(std::vector<std::string> names);
  void Observe(std::size_t op, std::chrono::nanoseconds d) {
    if (op < histograms_.size()) histograms_[op].Observe(d);
  }
  const std::vector<std::string>& names() const { return names_; }
  const Histogram& at(std::size_t op) const { return histograms_[op]; }

 private:
  std::vector<std::string> names_;
  std::vector<Histogram> histograms_;
};

struct MetricsSnapshot {
  std::uint64_t bytes_stored = 0;
  std::uint64_t chunks = 0;
  std::uint64_t bytes_sent = 0;
  std::uint64_t bytes_received = 0;
  std::uint64_t peers_connected = 0;
  std::uint64_t replication_backlog = 0;
};

// The whole /metrics page.
std::string RenderMetrics(const MetricsSnapshot& m, const OpLatency* latency);

// Answers one HTTP request (the bytes up to the blank line): 200 with `body()` for GET /metrics,
// 404 for any other method or path, 400 if it is not an HTTP/1.x request line.
std::string HttpResponse(std::string_view request, const std::function<std::string()>& body);

// A thread with a blocking accept loop, one connection at a time, each bounded: 8 KiB of
// request and 5 s to send it.
class MetricsServer {
 public:
  ~MetricsServer();
  // Binds `addr`, HOST:PORT or :PORT (all addresses); port 0 picks one (see port()). Nothing
  // is served before Serve(), so a daemon can bind before it forks and serve after.
  static Result<std::unique_ptr<MetricsServer>> Bind(const std::string& addr,
                                                     std::function<std::string()> render);
  // Starts the thread that answers requests.
  void Serve();
  std::uint16_t port() const;
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace foreverfs::app
