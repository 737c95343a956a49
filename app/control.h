#pragma once
// The daemon's control socket: a Unix socket in the data directory (mode 0600, so only the
// owner of the data talks to it) answering one command per connection with text lines:
//   status        node, peers, replication backlog, local usage
//   status-json   the same as one JSON object
//   scrub         verify every chunk, repair from peers; progress lines, then a summary
//   gc            one garbage-collection pass; a summary line
// `foreverfs status|scrub|gc` are its clients.

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "base/status.h"

namespace foreverfs::app {

using CommandHandler = std::function<void(const std::string& command,
                                          const std::function<void(const std::string&)>& out)>;

class ControlServer {
 public:
  ~ControlServer();
  // Binds `path` (replacing a stale socket) and serves each connection on its own thread.
  static Result<std::unique_ptr<ControlServer>> Start(const std::filesystem::path& path,
                                                      CommandHandler handler);
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Sends `command` to the socket and copies every line of the answer to `out`.
Status RunControlCommand(const std::filesystem::path& socket, const std::string& command,
                         const std::function<void(const std::string&)>& out);

}  // namespace foreverfs::app
