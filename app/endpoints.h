#pragma once
// What a node's two local endpoints answer and the servers themselves: the control socket
// (DATA/control.sock: status, status-json, scrub, gc; see app/control.h) and the Prometheus page
// (--metrics; see app/metrics.h). Both are served on the node's one event loop, beside the peer
// listener; their handlers run on the endpoint servers' worker threads, never on the event
// loop, and reach the event loop's state (replicator, transport) by posting to it.
//
// Threads: Endpoints is owned by app::Node and driven from the main thread: BindMetrics before
// the event loop runs (and before a daemon forks), Start once it runs, Stop while it still runs
// (any thread but the event loop's), destruction after it stopped and before the io_context
// goes. Handle and RenderMetricsPage run on endpoint workers (any thread but the event loop's).
// PurgeTombstones runs on the gc thread and on control workers.

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>

#include "app/control.h"
#include "fuse/request_reader.h"
#include "app/metrics.h"
#include "app/status.h"
#include "net/tcp_transport.h"
#include "server/file_server.h"
#include "server/gc.h"
#include "server/replicator.h"

namespace foreverfs::app {

// Runs `fn` on the event thread and waits for it. Never on the event thread.
template <typename T>
T OnEventThread(boost::asio::io_context& io, std::function<T()> fn) {
  std::promise<T> p;
  auto f = p.get_future();
  boost::asio::post(io, [&] { p.set_value(fn()); });
  return f.get();
}

// The same, giving up after `limit` (a metrics scrape must not hang on a busy event thread).
template <typename T>
std::optional<T> TryOnEventThread(boost::asio::io_context& io, std::function<T()> fn,
                                  std::chrono::milliseconds limit) {
  auto p = std::make_shared<std::promise<T>>();
  auto f = p->get_future();
  boost::asio::post(io, [p, fn = std::move(fn)] { p->set_value(fn()); });
  if (f.wait_for(limit) != std::future_status::ready) return std::nullopt;
  return f.get();
}

// Purges the tombstones every member holds and that are older than the grace period (part of
// every gc pass); returns the line for the log or the gc command.
std::string PurgeTombstones(server::FileServer& files, std::chrono::nanoseconds grace);

// The parts of a node the endpoints read; all outlive the Endpoints.
struct NodeParts {
  server::FileServer& files;
  server::Replicator& replicator;
  net::TcpTransport& transport;
  boost::asio::io_context& io;
  server::ChunkMaintenance& maintenance;
  ChunkUsage& usage;  // DATA/chunks, walked off the event loop
  OpLatency& latency;
  std::filesystem::path data;
  std::string listen;  // the address peers dial this node at
  int replicas = 0;
  std::chrono::nanoseconds tombstone_grace{0};
  // How the FUSE workers took requests; empty where there is no mount (tests).
  std::function<fuse::RequestReader::Counters()> reader_counters;
};

class Endpoints {
 public:
  explicit Endpoints(NodeParts parts) : p_(std::move(parts)) {}
  ~Endpoints();  // the control server, then the metrics server
  Endpoints(const Endpoints&) = delete;
  Endpoints& operator=(const Endpoints&) = delete;

  // Binds the metrics address (nothing is served yet). Errors are the message to exit with.
  Status BindMetrics(const std::string& addr);
  // Serves metrics (if bound) and the control socket at DATA/control.sock (a failure to bind it
  // is a warning: the node runs without). The event loop must run.
  void Start();
  // Stops the control server, then the metrics server; returns when no handler runs.
  void Stop();

  // One control command (see app/control.h): lines to `out`.
  void Handle(const std::string& command, const std::function<void(const std::string&)>& out);
  // What `foreverfs status` shows, gathered now (waits for the event thread).
  StatusSnapshot CollectStatus();
  // The /metrics page: waits at most 1 s for a walk of chunks/ (otherwise it shows the previous
  // one) and 1 s for the event loop.
  std::string RenderMetricsPage();

 private:
  NodeParts p_;
  std::string metrics_addr_;
  std::unique_ptr<MetricsServer> metrics_;
  std::unique_ptr<ControlServer> control_;  // after metrics_: destroyed first
};

}  // namespace foreverfs::app
