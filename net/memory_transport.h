#pragma once
// An in-process transport for tests: links between LinkHandlers in one process, driven by one
// io_context. Every message is encoded into a frame and decoded again on delivery, so the
// wire codec is exercised exactly as over TCP; a frame that fails to decode closes the link.
// Delivery is posted to the io_context, in the order sent. Each link counts the frame bytes it
// sent and received (Link::Counters), as the TCP transport does.
//
// Threading: every LinkHandler callback runs on the io_context's thread (run it on exactly
// one thread). Connect and Disconnect may be called from any thread: they take effect on the
// event thread. Link::Send / Link::Close must be called on the event thread, as for any
// Transport. Destroy the MemoryNetwork on the event thread or after the io_context stopped
// running; links that outlive it stay closed and their Send does nothing.

#include <chrono>
#include <cstdint>
#include <memory>

#include "net/transport.h"

namespace boost::asio {
class io_context;
}

namespace foreverfs::net {

class MemoryNetwork {
 public:
  explicit MemoryNetwork(boost::asio::io_context& io);
  ~MemoryNetwork();
  MemoryNetwork(const MemoryNetwork&) = delete;
  MemoryNetwork& operator=(const MemoryNetwork&) = delete;

  // Opens a link between node_a (the dialer: outbound on its side) and node_b. On the event
  // thread, calls a.OnOpen then b.OnOpen; if either refuses, the link closes, and a side that
  // had accepted gets OnClose. Both handlers must outlive the link's callbacks.
  void Connect(std::uint64_t node_a, LinkHandler& a, std::uint64_t node_b, LinkHandler& b);
  // Closes every link between the two nodes (either direction): OnClose on both ends, once.
  void Disconnect(std::uint64_t node_a, std::uint64_t node_b);

  // Links currently open, counting each pair once. Event thread.
  std::size_t LinkCount() const;

  // Faults for links opened after the call, drawn from one seeded generator on the event
  // thread, so a test that makes the same calls in the same order sees the same faults:
  //  - every message waits a random time in [0, max_delay] before delivery, in the order sent
  //    (as on a stream);
  //  - with probability `drop` a message is lost together with its link, as when a connection
  //    resets mid-transfer: nothing after it arrives, both sides get OnClose;
  //  - a link that a fault closed is opened again after `redial_after` (zero: never), as the
  //    TCP transport redials, unless the pair is partitioned.
  struct Faults {
    std::uint64_t seed = 1;
    double drop = 0;
    std::chrono::milliseconds max_delay{0};
    std::chrono::milliseconds redial_after{0};
  };
  void SetFaults(Faults faults);
  // Cuts the pair's links and refuses to open new ones between them until Heal.
  void Partition(std::uint64_t node_a, std::uint64_t node_b);
  void Heal(std::uint64_t node_a, std::uint64_t node_b);
  // Messages lost and links closed by faults so far. Event thread.
  std::uint64_t Dropped() const;

  struct Impl;  // public so the link class in the .cpp can name it

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace foreverfs::net
