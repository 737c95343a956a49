#pragma once
// One foreverfs node: the data directory and its lock, the namespace database, the chunk store,
// the file server, the event loop and its thread, the replicator and the TCP transport on it,
// the FUSE mount, the local endpoints (control socket, metrics) and the gc thread. It owns them
// all; app/main.cpp only parses options and runs one.
//
// Threads: Start, Daemonize, Run and Stop are called by the main thread only, in that order
// (Stop also from the destructor, and from Run once the FUSE loop returns). Run blocks for the
// life of the mount. What the threads it starts may call is in doc/threads.md.

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "app/endpoints.h"
#include "app/metrics.h"
#include "base/fd.h"
#include "cas/chunk_store.h"
#include "crypto/crypto.h"
#include "fuse/fuse_fs.h"
#include "net/tcp_transport.h"
#include "server/file_server.h"
#include "server/gc.h"
#include "server/namespace_db.h"
#include "server/replicator.h"

namespace foreverfs::app {

struct NodeConfig {
  std::string mountpoint;           // as given (what FUSE mounts)
  std::filesystem::path mount_abs;  // for the log
  std::filesystem::path data;       // absolute
  crypto::ClusterKey key;
  std::string listen = ":3000";
  std::vector<std::string> peers;
  int replicas = 0;
  std::vector<std::string> fuse_options;
  std::string metrics;  // ADDR:PORT for Prometheus, "" for none
  double fetch_timeout_s = 10;
  double gc_interval_s = 600;
  double tombstone_grace_s = 86400;
  double max_clock_skew_s = 600;
  int max_links = 8;          // long-lived links (the membership's link plan)
  double down_after_s = 900;  // an unreachable member is down (leaves placement) after this
  int sync_copies = 0;        // fsync waits for this many durable copies (0: 2 in a cluster)
  double sync_timeout_s = 30;
  // With replicas > 0: bytes of copies not ranked here kept (LRU), and the placement pass.
  std::uint64_t cache_size = std::uint64_t{1} << 30;
  // Bytes the cluster may fill here (--capacity), which sets this node's placement weight;
  // 0: the free space of `data`'s file system at start.
  std::uint64_t capacity = 0;
  double rebalance_interval_s = 30;
};

class Node {
 public:
  explicit Node(NodeConfig config);
  ~Node();  // Stop()s, then destroys the parts in reverse member order
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Creates and locks the data directory, opens the database and the store, listens for peers,
  // dials --peer addresses, binds the metrics address and mounts. Nothing runs on a thread yet
  // (so that a daemon can fork after it). An error is the message to exit with.
  Status Start();
  // fuse_daemonize, with the event loop told of the fork. After Start, before Run.
  Status Daemonize();
  // Installs the signal handlers, starts the event thread, the endpoints and the gc thread, and
  // serves the mount until it is unmounted or signalled; then Stop()s. Returns the FUSE loop's
  // status.
  Status Run();
  // Stops every thread and endpoint and unmounts. Idempotent; nothing if Run never started.
  void Stop();

  // Set if the node stopped because another process runs under its node id and has run longer
  // (this data directory is a copy): why, for the exit message.
  std::optional<std::string> StoppedAsCopy();

 private:
  void OnSameNodeId(const net::SameNodeId& s);

  const NodeConfig config_;
  // Member order is construction order, and its reverse is destruction order: each part only
  // refers to parts declared above it. Stop() first stops what runs (gc thread, endpoints,
  // FUSE, transport, event thread) from the bottom up, while every part still exists.
  UniqueFd lock_;                                          // flock of DATA/lock, held for the life
  std::unique_ptr<server::NamespaceDb> ns_;                // DATA/meta.db
  std::unique_ptr<cas::ChunkStore> store_;                 // DATA/chunks
  std::unique_ptr<server::FileServer> files_;              // DATA/staging
  std::unique_ptr<server::ChunkMaintenance> maintenance_;  // gc and scrub passes
  std::unique_ptr<ChunkUsage> usage_;                      // walks DATA/chunks on its own thread
  std::unique_ptr<OpLatency> latency_;                     // FUSE op histograms
  std::unique_ptr<fuse::FuseFs> fuse_;                     // observes latency_, reads files_
  // Another process under this node id (see OnSameNodeId); read by the transport's callback.
  std::atomic<bool> stopped_as_copy_{false};
  std::mutex copy_mu_;
  std::string copy_why_;                            // guarded by copy_mu_
  std::unique_ptr<boost::asio::io_context> io_;     // the one event loop
  std::unique_ptr<server::Replicator> replicator_;  // event-loop state
  std::unique_ptr<net::TcpTransport> transport_;    // peer listener and links, on io_
  std::unique_ptr<Endpoints> endpoints_;            // control socket and metrics, on io_
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard_;
  std::thread net_thread_;  // runs io_
  std::mutex gc_mu_;
  std::condition_variable gc_cv_;
  bool gc_stop_ = false;  // guarded by gc_mu_
  std::thread gc_thread_;
  bool running_ = false;  // Run started the threads and Stop has not stopped them
};

}  // namespace foreverfs::app
