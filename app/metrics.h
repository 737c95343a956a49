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
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "app/endpoint_limits.h"
#include "base/status.h"
#include "cas/chunk_store.h"

namespace boost::asio {
class io_context;
}

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
  // How FUSE requests were taken from the kernel (fuse/request_reader.h).
  std::uint64_t fuse_requests_polled = 0;
  std::uint64_t fuse_requests_slept = 0;
  std::uint64_t fuse_reader_takeovers = 0;
  std::uint64_t fuse_reader_handoffs = 0;
};

// The whole /metrics page.
std::string RenderMetrics(const MetricsSnapshot& m, const OpLatency* latency);

// Answers one HTTP request (the bytes up to the blank line): 200 with `body()` for GET /metrics,
// 404 for any other method or path, 400 if it is not an HTTP/1.x request line.
std::string HttpResponse(std::string_view request, const std::function<std::string()>& body);

// The HTTP endpoint, served on the node's event loop (see app/endpoint_limits.h): a client has
// `read_timeout` to send its request (8 KiB at most: a longer one is answered 400), at most
// `max_connections` at once (one more gets 503), and the page is rendered on one of `workers`
// threads, never on the event loop, so `render` may block briefly (and may wait for the loop).
class MetricsServer {
 public:
  static constexpr std::size_t kMaxRequest = 8192;

  ~MetricsServer();  // Stop()s
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Binds `addr`, HOST:PORT or :PORT (all addresses); port 0 picks one (see port()). Nothing
  // is served before Serve(), so a daemon can bind before it forks and serve after (with
  // io_context::notify_fork). Destroy the server before `io`.
  static Result<std::unique_ptr<MetricsServer>> Bind(boost::asio::io_context& io,
                                                     const std::string& addr,
                                                     std::function<std::string()> render,
                                                     EndpointLimits limits = {});
  // Starts answering requests on `io` (which must run until Stop) and the render threads.
  void Serve();
  std::uint16_t port() const;
  // Stops accepting, closes every connection and returns once the pages being rendered are
  // done. Any thread but the event loop's, while the loop runs (or before Serve). Idempotent.
  void Stop();

 private:
  MetricsServer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Chunk files and their bytes under a store's chunk directory (its tmp/ left out), plus what
// `packed` says the store keeps inside a shared file (small blobs: cas::ChunkStore::PackedUsage),
// by walking it on a thread of its own, so that neither the event loop nor a request pays for a
// walk of a large store more than it chooses to. Get(wait) returns the last walk if it is at most
// `max_age` old; otherwise it asks for a new walk and waits for it at most `wait`, then returns
// the newest figure there is (the previous walk if the new one is not done; zeros before the
// first). Thread-safe. The thread starts with the first Get (so after a daemon's fork) and stops
// with the object.
class ChunkUsage {
 public:
  struct Figure {
    std::uint64_t chunks = 0;
    std::uint64_t bytes = 0;
    std::chrono::steady_clock::time_point at{};  // when the walk began; {} before the first
  };

  explicit ChunkUsage(std::filesystem::path dir,
                      std::chrono::milliseconds max_age = std::chrono::seconds(2),
                      std::function<cas::ChunkStore::Packed()> packed = {});
  ~ChunkUsage();
  ChunkUsage(const ChunkUsage&) = delete;
  ChunkUsage& operator=(const ChunkUsage&) = delete;

  Figure Get(std::chrono::milliseconds wait);

 private:
  void Loop();
  Figure Walk() const;

  const std::filesystem::path dir_;
  const std::chrono::milliseconds max_age_;
  const std::function<cas::ChunkStore::Packed()> packed_;  // called on the walking thread
  std::mutex mu_;
  std::condition_variable cv_;
  Figure figure_;                // guarded by mu_
  std::uint64_t requested_ = 0;  // guarded by mu_: walks asked for
  std::uint64_t completed_ = 0;  // guarded by mu_: the walk asked for as number N is done
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace foreverfs::app
