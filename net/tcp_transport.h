#pragma once
// TCP transport, TLS 1.3 with a pre-shared key derived from the cluster key (see
// doc/protocol.md): accepts on the listen address, dials every added peer and keeps redialing
// with exponential backoff (0.5 s doubling to 30 s) while the link is down. Each connection has
// one reader and one writer coroutine; frames over the protocol's bounds, unknown types and
// failed handshakes close the connection with a log line naming the peer.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "net/transport.h"

namespace boost::asio {
class io_context;
}

namespace foreverfs::net {

struct TcpOptions {
  std::uint64_t node_id = 0;
  std::string listen;         // "host:port" or ":port" (all addresses)
  crypto::Key256 auth_key{};  // derived from the cluster key, for the Auth proof
  crypto::Key256 tls_psk{};   // derived from the cluster key, the TLS 1.3 external PSK
  int handshake_timeout_ms = 5000;
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
  // Stops accepting and dialing and closes every connection. Call on the event thread.
  void Stop();

  struct Impl;  // public so the connection coroutines in the .cpp can name it

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace foreverfs::net
