#pragma once
// The daemon's control socket: a Unix socket in the data directory (mode 0600, so only the owner
// of the data talks to it) answering one command per connection with text lines:
//   status        node, peers, replication backlog, local usage
//   status-json   the same as one JSON object
//   scrub         verify every chunk, repair from peers; progress lines, then a summary
//   gc            one garbage-collection pass; a summary line
// `foreverfs status|scrub|gc` are its clients.
//
// Served on the node's event loop (see app/endpoint_limits.h): a client has `read_timeout` to
// send its command, one line of at most 64 printable bytes (a longer or unprintable one is
// answered with a line starting "error:"); at most `max_connections` at once. The handler runs
// on one of `workers` threads, never on the event loop, so it may block and may wait for the
// event loop; each line it outputs is written as soon as the client takes it (it waits while
// 256 KiB are queued for a client that reads slowly; a client that is gone, or stops reading
// for `write_timeout`, has the rest dropped).

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "app/endpoint_limits.h"
#include "base/status.h"

namespace boost::asio {
class io_context;
}

namespace foreverfs::app {

using CommandHandler = std::function<void(const std::string& command,
                                          const std::function<void(const std::string&)>& out)>;

class ControlServer {
 public:
  static constexpr std::size_t kMaxCommand = 64;

  ~ControlServer();  // Stop()s
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Binds `path` (replacing a stale socket) and serves it on `io`, which must run (on one or
  // more threads) until Stop. Destroy the server before `io`.
  static Result<std::unique_ptr<ControlServer>> Start(boost::asio::io_context& io,
                                                      const std::filesystem::path& path,
                                                      CommandHandler handler,
                                                      EndpointLimits limits = DefaultLimits());
  // Four workers: a scrub and a gc (which wait for each other) leave two for status.
  static EndpointLimits DefaultLimits() {
    EndpointLimits limits;
    limits.workers = 4;
    return limits;
  }
  // Stops accepting, closes every connection (a client still sending its command, or waiting
  // for an answer, sees the connection end), removes the socket, and returns once the commands
  // already running are done; no handler runs after that. Any thread but the event loop's,
  // while the loop runs. Idempotent.
  void Stop();

 private:
  ControlServer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Sends `command` to the socket and copies every line of the answer to `out`.
Status RunControlCommand(const std::filesystem::path& socket, const std::string& command,
                         const std::function<void(const std::string&)>& out);

}  // namespace foreverfs::app
