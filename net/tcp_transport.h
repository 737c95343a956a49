#pragma once
// TCP transport, TLS 1.3 with a pre-shared key derived from the cluster key (see
// doc/protocol.md): accepts on the listen address, dials every added peer and keeps redialing
// with exponential backoff (0.5 s doubling to 30 s) while the link is down. Each connection has
// one reader and one writer coroutine; frames over the protocol's bounds, unknown types and
// failed handshakes close the connection with a log line naming the peer.
//
// Every network wait has a deadline: connecting (connect_timeout_ms), the whole handshake
// (handshake_timeout_ms), and on an established link a read deadline (read_timeout_ms without
// receiving a byte, or without progress on a write, closes it) kept alive by Keepalive frames
// sent after keepalive_interval_ms without sending. A newer link from a node whose existing link
// has gone quiet (half-open) replaces that link; see doc/protocol.md, "Liveness".
//
// Strangers on the port: inbound connections are admitted before any TLS work by
//  - a per-host cap on handshakes in progress (host = IPv4 address or IPv6 /64) and a per-host
//    token bucket of new connections; a connection over either is closed at once;
//  - a cap on inbound handshakes in progress over all hosts; at the cap the oldest handshake
//    that has not sent a single byte (else the oldest one) is closed to make room, so a flood of
//    silent connections cannot lock out a peer whose handshake makes progress.
// Each of these is counted (Stats) and logged at most once per 10 s (one summary line), never
// once per connection. Accept errors (EMFILE, ENFILE, ENOBUFS, ENOMEM) pause accepting, 100 ms
// doubling to 1 s, with one log line when it starts and one when accepting works again.
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "net/transport.h"

namespace boost::asio {
class io_context;
}

namespace foreverfs::net {

// A peer that says it is this node (same node id) but is another process (another instance):
// a copy of this node's data directory runs elsewhere. `peer_is_older` says which of the two
// processes has run longer (both ends decide alike: the uptimes both sent).
struct SameNodeId {
  std::string remote;       // where the other process is
  std::string listen_addr;  // what it says it accepts on
  std::uint64_t node_id = 0;
  std::uint64_t peer_instance = 0;
  bool peer_is_older = false;
};

struct TcpOptions {
  std::uint64_t node_id = 0;
  // Random per process, sent in Identity; 0: the transport draws one.
  std::uint64_t instance = 0;
  // Called on the event thread when a handshake meets another process with our node id (the
  // link is refused either way). Unset: only logged.
  std::function<void(const SameNodeId&)> on_same_node_id;
  std::string listen;         // "host:port" or ":port" (all addresses)
  crypto::Key256 auth_key{};  // derived from the cluster key, for the Auth proof
  crypto::Key256 tls_psk{};   // derived from the cluster key, the TLS 1.3 external PSK
  int handshake_timeout_ms = 5000;
  int connect_timeout_ms = 10000;
  // Inbound handshakes in progress, over all hosts and per host (see the top of this file).
  int max_handshakes = 64;
  int max_handshakes_per_host = 8;
  // New inbound connections per host: a burst of this many, then this many per second.
  int host_connect_burst = 32;
  double host_connects_per_s = 8;
  // Established links: send a Keepalive after this long without sending anything; close a link
  // that received nothing (or whose write made no progress) for read_timeout_ms.
  int keepalive_interval_ms = 5000;
  int read_timeout_ms = 15000;
};

// What the transport did about strangers and dead links, since start. A snapshot.
struct TcpStats {
  std::uint64_t handshakes_in_progress = 0;  // inbound, now
  std::uint64_t refused_host_busy = 0;       // closed at once: its host had too many in progress
  std::uint64_t refused_host_rate = 0;       // closed at once: its host connected too often
  std::uint64_t evicted = 0;                 // closed to make room under max_handshakes
  std::uint64_t handshake_timeouts = 0;      // handshakes (either direction) over the deadline
  std::uint64_t handshake_failures = 0;      // refused: TLS failed, no Hello, bad version or proof
  std::uint64_t same_node_id = 0;            // refused: another process with our node id, or
                                             // with the id of a peer already linked
  std::uint64_t accept_errors = 0;           // accept(2) failed (EMFILE and the like)
  std::uint64_t links_timed_out = 0;         // established links closed by the read deadline
  std::uint64_t links_replaced = 0;          // half-open links replaced by a newer one
  std::uint64_t keepalives_sent = 0;
};

// Splits "host:port" / ":port" / "[v6]:port"; kInvalid naming the text otherwise.
struct HostPort {
  std::string host;
  std::uint16_t port = 0;
};
Result<HostPort> ParseHostPort(std::string_view text);

class TcpTransport {
 public:
  TcpTransport(boost::asio::io_context& io, TcpOptions options, LinkHandler& handler);
  ~TcpTransport();
  TcpTransport(const TcpTransport&) = delete;
  TcpTransport& operator=(const TcpTransport&) = delete;

  // Binds and starts accepting. kExists if the port is taken, naming the address.
  Status Listen();
  // The address peers should dial to reach us ("" until Listen succeeded).
  std::string AdvertisedAddr() const;
  // Keeps a connection to `addr` up from now on. Call on the event thread. Idempotent.
  void AddPeer(const std::string& addr);
  // Stops keeping a connection to `addr` up: no more dials, and a link we dialed to it closes
  // with `reason` (on_close follows). Links the peer dialed to us stay. Event thread.
  void RemovePeer(const std::string& addr, const std::string& reason);
  // Whether a dialer for this address exists.
  bool HasPeer(const std::string& addr) const;
  // What this transport knows of each dial address (configured with --peer or learned) and of
  // each host that connected to us and failed the handshake (key "HOST (inbound)", the 256
  // most recent). Event thread.
  struct AddrStatus {
    std::string addr;
    std::uint64_t node_id = 0;  // learned by a handshake, 0 if none got that far
    bool dialing = false;       // we keep a connection to it up
    bool connected = false;     // a link we dialed is up
    std::string last_error;     // the last handshake failure, dial error or disconnect reason
    std::chrono::system_clock::time_point last_error_at{};
  };
  std::vector<AddrStatus> Addresses() const;
  // Frame bytes received and sent on every connection since start. Any thread.
  const Traffic& Totals() const;
  // Counters of refused, evicted and timed-out connections (see TcpStats). Any thread.
  TcpStats Stats() const;
  // This process's instance (TcpOptions::instance, or the one drawn).
  std::uint64_t Instance() const;
  // Stops accepting and dialing and closes every connection. Call on the event thread.
  void Stop();

  struct Impl;  // public so the connection coroutines in the .cpp can name it

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace foreverfs::net
