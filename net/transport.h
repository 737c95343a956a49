#pragma once
// Links between nodes. A Transport delivers whole, decoded Messages between authenticated
// peers; the handshake (Hello, then Auth proving the cluster key, then Identity) happens inside
// the transport, so a LinkHandler only ever sees peers that proved the key.
//
// Threading: every LinkHandler callback runs on the transport's single event thread, and
// Link::Send / Link::Close must be called on that thread too (post to it otherwise).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "net/messages.h"

namespace foreverfs::net {

struct PeerInfo {
  std::uint64_t node_id = 0;
  std::uint64_t instance = 0;  // random per process (Identity): a restarted peer has another
  std::string listen_addr;    // what the peer says it accepts on ("host:port"), may be empty
  std::string remote;         // the address we see it at, for log lines
  bool outbound = false;      // we dialed it
  std::uint16_t version = 0;  // protocol version from its Hello (0: unknown)
  std::chrono::system_clock::time_point connected_since{};  // handshake completed
};

// Bytes of frames (header and payload, after TLS decryption: TLS records add ~2%) a link or a
// whole transport has received and sent, handshake frames included. Any thread.
struct Traffic {
  std::atomic<std::uint64_t> bytes_in{0};
  std::atomic<std::uint64_t> bytes_out{0};
  void In(std::size_t n) { bytes_in.fetch_add(n, std::memory_order_relaxed); }
  void Out(std::size_t n) { bytes_out.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t BytesIn() const { return bytes_in.load(std::memory_order_relaxed); }
  std::uint64_t BytesOut() const { return bytes_out.load(std::memory_order_relaxed); }
};

class Link {
 public:
  virtual ~Link() = default;
  // Queues a message; messages arrive in the order sent. Never blocks.
  virtual void Send(Message m) = 0;
  // Closes the link; on_close follows (once).
  virtual void Close(std::string reason) = 0;
  virtual const PeerInfo& Peer() const = 0;
  // Bytes queued but not yet written, for backpressure.
  virtual std::size_t QueuedBytes() const = 0;
  // Frame bytes received and sent on this link so far (see Traffic). Any thread.
  virtual const Traffic& Counters() const = 0;
};

class LinkHandler {
 public:
  virtual ~LinkHandler() = default;
  // A peer completed the handshake. Return false to refuse it (the link is then closed).
  virtual bool OnOpen(const std::shared_ptr<Link>& link) = 0;
  virtual void OnMessage(const std::shared_ptr<Link>& link, Message&& m) = 0;
  virtual void OnClose(const std::shared_ptr<Link>& link, const std::string& reason) = 0;
};

// The key proof both sides send after Hello (Auth), and the proof binding an Identity to the
// key and this connection, sent once the peer's Auth checked (see doc/protocol.md). `dialer` is
// the sender's role, so that a proof reflected back to its sender never passes.
crypto::Digest AuthProof(const crypto::Key256& auth_key, bool dialer,
                         const crypto::Digest& own_nonce, const crypto::Digest& peer_nonce);
crypto::Digest IdentityProof(const crypto::Key256& auth_key, bool dialer,
                             const crypto::Digest& own_nonce, const crypto::Digest& peer_nonce,
                             const Identity& id);

}  // namespace foreverfs::net
