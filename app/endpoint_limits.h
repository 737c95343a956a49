#pragma once
// The bounds every local endpoint (the control socket, the metrics HTTP endpoint) keeps. Both
// are served on the node's event loop, the io_context that carries the peers, so that a client
// costs a coroutine, not a thread; what a request does that may block runs on a few worker
// threads of the endpoint's own.

#include <chrono>
#include <cstddef>

namespace foreverfs::app {

struct EndpointLimits {
  // A client that has not sent its whole request by then is closed without an answer.
  std::chrono::milliseconds read_timeout{5000};
  // A client that takes longer than this to take one write of the answer is closed.
  std::chrono::milliseconds write_timeout{10000};
  // Connections open at once; one more is answered "busy" and closed at once.
  std::size_t max_connections = 32;
  // Threads that run the requests (status walks, scrub, gc, rendering the metrics page).
  std::size_t workers = 2;
};

}  // namespace foreverfs::app
