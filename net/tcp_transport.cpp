#include "net/tcp_transport.h"

#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <set>

namespace foreverfs::net {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using SslStream = asio::ssl::stream<tcp::socket>;
using asio::awaitable;
using std::chrono::milliseconds;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

// Frames before the handshake completes are tiny; refuse anything larger so a stranger cannot
// make us allocate.
constexpr std::uint32_t kMaxHandshakeFrame = 1024;
constexpr auto kBackoffMin = milliseconds(500);
constexpr auto kBackoffMax = milliseconds(30000);
// A peer that stops reading must not make us queue without bound.
constexpr std::size_t kMaxSendQueue = 64 * kMiB;

std::string Describe(const tcp::socket& s) {
  boost::system::error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return "?";
  return fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

// TLS 1.3 with an external PSK derived from the cluster key: no certificates, and (EC)DHE on
// top of the PSK (OpenSSL offers only psk_dhe_ke), so past traffic stays secret even if the key
// leaks later. The PSK's hash must match the one ciphersuite we allow.
constexpr char kPskIdentity[] = "foreverfs-cluster-v1";
constexpr unsigned char kTlsAes256GcmSha384[] = {0x13, 0x02};

// Where the PSK hangs on the SSL_CTX (Asio keeps its own callback in the app-data slot).
int PskIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

SSL_SESSION* MakePskSession(SSL* ssl) {
  auto* key =
      static_cast<const crypto::Key256*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), PskIndex()));
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kTlsAes256GcmSha384);
  SSL_SESSION* session = SSL_SESSION_new();
  if (!key || !cipher || !session ||
      !SSL_SESSION_set1_master_key(session, key->data(), key->size()) ||
      !SSL_SESSION_set_cipher(session, cipher) ||
      !SSL_SESSION_set_protocol_version(session, TLS1_3_VERSION)) {
    SSL_SESSION_free(session);
    return nullptr;
  }
  return session;
}

int UsePsk(SSL* ssl, const EVP_MD* md, const unsigned char** id, std::size_t* idlen,
           SSL_SESSION** out) {
  SSL_SESSION* session = MakePskSession(ssl);
  if (!session) return 0;
  if (md && md != SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(session))) {
    SSL_SESSION_free(session);
    *out = nullptr;
    *id = nullptr;
    *idlen = 0;
    return 1;
  }
  *out = session;
  *id = reinterpret_cast<const unsigned char*>(kPskIdentity);
  *idlen = sizeof(kPskIdentity) - 1;
  return 1;
}

int FindPsk(SSL* ssl, const unsigned char* identity, std::size_t len, SSL_SESSION** out) {
  *out = nullptr;
  if (len != sizeof(kPskIdentity) - 1 || std::memcmp(identity, kPskIdentity, len) != 0) return 1;
  *out = MakePskSession(ssl);
  return *out ? 1 : 0;
}

std::string RemoteHost(const tcp::socket& s) {
  boost::system::error_code ec;
  auto ep = s.remote_endpoint(ec);
  return ec ? std::string("?") : ep.address().to_string();
}

std::string TlsError(const boost::system::error_code& ec) {
  std::string m = ec.message();
  if (ec.category() == asio::error::get_ssl_category()) {
    m += " (the peer probably holds another cluster key, or does not speak TLS)";
  }
  return m;
}

}  // namespace

Result<HostPort> ParseHostPort(std::string_view text) {
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    return Err(Code::kInvalid, "address '{}' is not HOST:PORT or :PORT", text);
  }
  std::string host(text.substr(0, colon));
  std::string_view port_text = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  unsigned port = 0;
  if (port_text.empty() || port_text.size() > 5 ||
      !std::all_of(port_text.begin(), port_text.end(),
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return Err(Code::kInvalid, "address '{}' has no valid port", text);
  }
  for (char c : port_text) port = port * 10 + static_cast<unsigned>(c - '0');
  if (port > 65535) return Err(Code::kInvalid, "address '{}': port out of range", text);
  return HostPort{host, static_cast<std::uint16_t>(port)};
}

class TcpLink;

struct TcpTransport::Impl : std::enable_shared_from_this<TcpTransport::Impl> {
  Impl(asio::io_context& io, TcpOptions o, LinkHandler& h)
      : io_(io), options_(std::move(o)), handler_(h), acceptor_(io), tls_(asio::ssl::context::tls) {
    SSL_CTX* c = tls_.native_handle();
    SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
    SSL_CTX_set_ciphersuites(c, "TLS_AES_256_GCM_SHA384");
    SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);
    SSL_CTX_set_ex_data(c, PskIndex(), &options_.tls_psk);
    SSL_CTX_set_psk_use_session_callback(c, UsePsk);
    SSL_CTX_set_psk_find_session_callback(c, FindPsk);
  }

  asio::io_context& io_;
  TcpOptions options_;
  LinkHandler& handler_;
  tcp::acceptor acceptor_;
  asio::ssl::context tls_;
  std::string advertised_;
  bool stopped_ = false;
  std::map<std::string, std::shared_ptr<asio::steady_timer>> dialers_;  // addr -> backoff timer
  std::map<std::string, std::uint64_t> addr_node_;                      // learned by handshakes
  std::set<std::string> self_addrs_;
  std::multiset<std::uint64_t> connected_;
  std::set<std::shared_ptr<TcpLink>> links_;
  Traffic totals_;
  // What went wrong last, per dial address and per inbound host (for `foreverfs status`).
  std::map<std::string, TcpTransport::AddrStatus> addrs_;

  // Event thread. `key` is the dial address, or the remote host of an inbound connection.
  TcpTransport::AddrStatus& Addr(const std::string& key, bool dialing) {
    auto it = addrs_.find(key);
    if (it == addrs_.end()) {
      // Inbound strangers must not grow the map without bound: forget the oldest one.
      constexpr std::size_t kMaxInbound = 256;
      if (!dialing && addrs_.size() >= kMaxInbound + dialers_.size()) {
        auto oldest = addrs_.end();
        for (auto a = addrs_.begin(); a != addrs_.end(); ++a) {
          if (!a->second.dialing &&
              (oldest == addrs_.end() || a->second.last_error_at < oldest->second.last_error_at))
            oldest = a;
        }
        if (oldest != addrs_.end()) addrs_.erase(oldest);
      }
      it = addrs_.emplace(key, TcpTransport::AddrStatus{}).first;
      it->second.addr = key;
    }
    it->second.dialing = it->second.dialing || dialing;
    return it->second;
  }
  void NoteError(const std::string& key, bool dialing, std::string error) {
    auto& a = Addr(key, dialing);
    a.last_error = std::move(error);
    a.last_error_at = std::chrono::system_clock::now();
  }
};

class TcpLink : public Link, public std::enable_shared_from_this<TcpLink> {
 public:
  TcpLink(tcp::socket socket, asio::ssl::context& tls)
      : stream_(std::move(socket), tls), signal_(stream_.get_executor()) {
    signal_.expires_at(asio::steady_timer::time_point::max());
  }

  void Send(Message m) override {
    if (closed_) return;
    if (queued_bytes_ > kMaxSendQueue) {
      spdlog::warn("peer {}: over {} MiB queued for it; disconnecting a peer that does not read",
                   peer_.remote, kMaxSendQueue / kMiB);
      Close("send queue full");
      return;
    }
    Bytes frame = EncodeFrame(m);
    queued_bytes_ += frame.size();
    queue_.push_back(std::move(frame));
    signal_.cancel_one();
  }

  void Close(std::string reason) override {
    if (closed_) return;
    closed_ = true;
    reason_ = std::move(reason);
    boost::system::error_code ec;
    stream_.lowest_layer().shutdown(tcp::socket::shutdown_both, ec);
    stream_.lowest_layer().close(ec);
    signal_.cancel();
  }

  const PeerInfo& Peer() const override { return peer_; }
  std::size_t QueuedBytes() const override { return queued_bytes_; }
  const Traffic& Counters() const override { return traffic_; }

  SslStream stream_;
  asio::steady_timer signal_;
  std::deque<Bytes> queue_;
  std::size_t queued_bytes_ = 0;
  bool closed_ = false;
  std::string reason_;
  PeerInfo peer_;
  Traffic traffic_;
  Traffic* totals_ = nullptr;  // the transport's, which outlives the link's coroutines
  void In(std::size_t n) {
    traffic_.In(n);
    if (totals_) totals_->In(n);
  }
  void Out(std::size_t n) {
    traffic_.Out(n);
    if (totals_) totals_->Out(n);
  }
};

namespace {

// Reads one frame; `limit` bounds the length field further than the protocol does.
awaitable<Result<Message>> ReadMessage(TcpLink& link, std::uint32_t limit) {
  auto& socket = link.stream_;
  std::array<std::uint8_t, kFrameHeaderSize> header{};
  auto [ec, n] = co_await asio::async_read(socket, asio::buffer(header), kNoThrow);
  if (ec) {
    co_return Status(Code::kUnavailable,
                     ec == asio::error::eof ? std::string("connection closed") : ec.message());
  }
  auto h = DecodeFrameHeader(header);
  if (!h.ok()) co_return h.status();
  if (h->length > limit) {
    co_return Err(Code::kInvalid, "frame of {} bytes is over the {} allowed here", h->length,
                  limit);
  }
  Bytes payload(h->length - 2);
  if (!payload.empty()) {
    auto [ec2, n2] = co_await asio::async_read(socket, asio::buffer(payload), kNoThrow);
    if (ec2) co_return Status(Code::kUnavailable, ec2.message());
  }
  link.In(kFrameHeaderSize + payload.size());
  co_return DecodePayload(h->type, payload);
}

awaitable<boost::system::error_code> WriteMessage(TcpLink& link, const Message& m) {
  Bytes frame = EncodeFrame(m);
  auto [ec, n] = co_await asio::async_write(link.stream_, asio::buffer(frame), kNoThrow);
  link.Out(n);
  co_return ec;
}

awaitable<void> WriterLoop(std::shared_ptr<TcpLink> link) {
  while (!link->closed_) {
    if (link->queue_.empty()) {
      co_await link->signal_.async_wait(kNoThrow);
      continue;
    }
    // Gather what is queued into one write (bounded) to keep syscalls few.
    std::vector<asio::const_buffer> bufs;
    std::size_t count = 0, bytes = 0;
    for (auto& f : link->queue_) {
      bufs.emplace_back(asio::buffer(f));
      bytes += f.size();
      if (++count >= 64 || bytes >= 4 * kMiB) break;
    }
    auto [ec, n] = co_await asio::async_write(link->stream_, bufs, kNoThrow);
    if (ec) {
      link->Close(fmt::format("write failed: {}", ec.message()));
      co_return;
    }
    for (std::size_t i = 0; i < count; ++i) link->queue_.pop_front();
    link->queued_bytes_ -= bytes;
    link->Out(bytes);
  }
}

// TLS handshake, Hello and Auth, then read until the link closes. Returns true if the peer
// completed the handshake.
awaitable<bool> RunConnection(std::shared_ptr<TcpTransport::Impl> t, tcp::socket socket,
                              bool outbound, std::string dial_addr) {
  const std::string remote = Describe(socket);
  const std::string who = outbound ? dial_addr : remote;
  // Where status shows what went wrong: the dial address, or the host a stranger came from.
  const std::string key = outbound ? dial_addr : fmt::format("{} (inbound)", RemoteHost(socket));
  auto refuse = [&](std::string why) {
    spdlog::warn("peer {}: refused: {}", who, why);
    t->NoteError(key, outbound, "refused: " + why);
  };
  boost::system::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  socket.set_option(asio::socket_base::keep_alive(true), ignored);
  auto link = std::make_shared<TcpLink>(std::move(socket), t->tls_);
  link->totals_ = &t->totals_;
  auto& stream = link->stream_;

  // A deadline for the whole handshake: closing the socket ends whatever is pending.
  asio::steady_timer deadline(stream.get_executor());
  deadline.expires_after(milliseconds(t->options_.handshake_timeout_ms));
  deadline.async_wait([link](boost::system::error_code ec) {
    if (!ec) {
      boost::system::error_code e;
      link->stream_.lowest_layer().close(e);
    }
  });

  auto [hec] = co_await stream.async_handshake(
      outbound ? asio::ssl::stream_base::client : asio::ssl::stream_base::server, kNoThrow);
  if (hec) {
    refuse(fmt::format("TLS handshake failed: {}", TlsError(hec)));
    co_return false;
  }
  Hello mine;
  mine.node_id = t->options_.node_id;
  mine.listen_addr = t->advertised_;
  crypto::RandomBytes(mine.nonce);
  if (auto ec = co_await WriteMessage(*link, mine)) {
    spdlog::debug("peer {}: handshake write failed: {}", who, ec.message());
    t->NoteError(key, outbound, fmt::format("handshake write failed: {}", ec.message()));
    co_return false;
  }
  auto hello_msg = co_await ReadMessage(*link, kMaxHandshakeFrame);
  const Hello* hello = hello_msg.ok() ? std::get_if<Hello>(&*hello_msg) : nullptr;
  if (!hello) {
    refuse(fmt::format("no valid Hello ({})", hello_msg.ok() ? "another message came first"
                                                             : hello_msg.status().message()));
    co_return false;
  }
  if (hello->version != kProtocolVersion) {
    refuse(fmt::format("protocol version {} (we speak {})", hello->version, kProtocolVersion));
    co_return false;
  }
  if (hello->node_id == t->options_.node_id) {
    spdlog::debug("peer {}: is this node itself; not dialing it again", who);
    if (outbound) {
      t->self_addrs_.insert(dial_addr);
      t->NoteError(key, outbound, "this node itself; not dialed again");
    }
    co_return false;
  }
  if (outbound) t->Addr(key, true).node_id = hello->node_id;
  Auth auth{AuthProof(t->options_.auth_key, mine.nonce, hello->nonce, mine.node_id)};
  if (auto ec = co_await WriteMessage(*link, auth)) {
    t->NoteError(key, outbound, fmt::format("handshake write failed: {}", ec.message()));
    co_return false;
  }
  auto auth_msg = co_await ReadMessage(*link, kMaxHandshakeFrame);
  const Auth* theirs = auth_msg.ok() ? std::get_if<Auth>(&*auth_msg) : nullptr;
  const auto expected = AuthProof(t->options_.auth_key, hello->nonce, mine.nonce, hello->node_id);
  if (!theirs || theirs->proof != expected) {
    refuse("it did not prove the cluster key (wrong key file?)");
    co_return false;
  }
  deadline.cancel();
  if (t->stopped_) co_return false;

  link->peer_ = PeerInfo{hello->node_id, hello->listen_addr, remote,
                         outbound,       hello->version,     std::chrono::system_clock::now()};
  const auto info = link->peer_;
  if (outbound) {
    t->addr_node_[dial_addr] = info.node_id;
    t->Addr(key, true).connected = true;
  }
  if (!t->handler_.OnOpen(link)) {
    link->Close("refused by handler");
    if (outbound) t->Addr(key, true).connected = false;
    co_return true;
  }
  t->links_.insert(link);
  t->connected_.insert(info.node_id);
  asio::co_spawn(stream.get_executor(), WriterLoop(link), [who](std::exception_ptr e) {
    if (e) spdlog::error("peer {}: writer failed unexpectedly", who);
  });
  std::string reason = "closed";
  while (!link->closed_) {
    auto m = co_await ReadMessage(*link, kMaxFrameSize);
    if (!m.ok()) {
      reason = m.status().message();
      if (m.status().code() == Code::kInvalid) {
        spdlog::warn("peer {} ({:016x}): protocol error, disconnecting: {}", who, info.node_id,
                     reason);
      }
      break;
    }
    if (std::holds_alternative<Hello>(*m) || std::holds_alternative<Auth>(*m)) {
      reason = "handshake message after the handshake";
      spdlog::warn("peer {}: protocol error, disconnecting: {}", who, reason);
      break;
    }
    t->handler_.OnMessage(link, std::move(*m));
  }
  if (!link->reason_.empty()) reason = link->reason_;
  link->Close(reason);
  t->links_.erase(link);
  t->connected_.erase(t->connected_.find(info.node_id));
  if (outbound) {
    t->NoteError(key, true, "disconnected: " + reason);
    t->Addr(key, true).connected = false;
  }
  t->handler_.OnClose(link, reason);
  co_return true;
}

awaitable<void> ServeInbound(std::shared_ptr<TcpTransport::Impl> t, tcp::socket socket) {
  co_await RunConnection(t, std::move(socket), false, "");
}

awaitable<void> AcceptLoop(std::shared_ptr<TcpTransport::Impl> t) {
  while (!t->stopped_) {
    auto [ec, socket] = co_await t->acceptor_.async_accept(kNoThrow);
    if (ec) {
      if (t->stopped_ || ec == asio::error::operation_aborted) co_return;
      spdlog::warn("accept on {} failed: {}", t->advertised_, ec.message());
      continue;
    }
    asio::co_spawn(t->io_, ServeInbound(t, std::move(socket)), [](std::exception_ptr e) {
      if (e) spdlog::error("inbound connection failed unexpectedly");
    });
  }
}

awaitable<void> DialLoop(std::shared_ptr<TcpTransport::Impl> t, std::string addr,
                         std::shared_ptr<asio::steady_timer> timer) {
  auto backoff = kBackoffMin;
  std::string last_error;
  tcp::resolver resolver(t->io_);
  while (!t->stopped_ && !t->self_addrs_.contains(addr)) {
    auto known = t->addr_node_.find(addr);
    bool already = known != t->addr_node_.end() && t->connected_.contains(known->second);
    if (!already) {
      auto hp = ParseHostPort(addr);
      auto [rec, results] =
          co_await resolver.async_resolve(hp->host, std::to_string(hp->port), kNoThrow);
      std::string error;
      if (rec) {
        error = fmt::format("cannot resolve: {}", rec.message());
      } else {
        tcp::socket socket(t->io_);
        auto [cec, ep] = co_await asio::async_connect(socket, results, kNoThrow);
        if (cec) {
          error = cec.message();
        } else {
          bool opened = co_await RunConnection(t, std::move(socket), true, addr);
          if (opened) {
            backoff = kBackoffMin;
            last_error.clear();
          } else {
            error = "handshake failed";
          }
        }
      }
      if (!error.empty() && error != "handshake failed") t->NoteError(addr, true, error);
      if (!error.empty() && error != last_error) {
        spdlog::info("peer {}: cannot connect ({}); retrying with backoff", addr, error);
        last_error = error;
      }
    }
    if (t->stopped_) break;
    timer->expires_after(backoff);
    co_await timer->async_wait(kNoThrow);
    backoff = std::min(backoff * 2, kBackoffMax);
  }
}

}  // namespace

TcpTransport::TcpTransport(asio::io_context& io, TcpOptions options, LinkHandler& handler)
    : impl_(std::make_shared<Impl>(io, std::move(options), handler)) {}

TcpTransport::~TcpTransport() = default;

Status TcpTransport::Listen() {
  auto hp = ParseHostPort(impl_->options_.listen);
  if (!hp.ok()) return hp.status();
  boost::system::error_code ec;
  auto address = hp->host.empty() ? asio::ip::address(asio::ip::address_v4::any())
                                  : asio::ip::make_address(hp->host, ec);
  if (ec)
    return Err(Code::kInvalid, "--listen {}: '{}' is not an IP address", impl_->options_.listen,
               hp->host);
  tcp::endpoint ep(address, hp->port);
  auto& acc = impl_->acceptor_;
  if (acc.open(ep.protocol(), ec); ec)
    return Err(Code::kIOError, "--listen {}: {}", impl_->options_.listen, ec.message());
  acc.set_option(tcp::acceptor::reuse_address(true), ec);
  if (acc.bind(ep, ec); ec) {
    return Err(ec == asio::error::address_in_use ? Code::kExists : Code::kIOError,
               "cannot listen on {}: {}", impl_->options_.listen, ec.message());
  }
  if (acc.listen(asio::socket_base::max_listen_connections, ec); ec) {
    return Err(Code::kIOError, "cannot listen on {}: {}", impl_->options_.listen, ec.message());
  }
  const auto port = acc.local_endpoint(ec).port();  // the real one when asked for port 0
  impl_->advertised_ = hp->host.empty() ? fmt::format(":{}", port)
                       : hp->host.find(':') != std::string::npos
                           ? fmt::format("[{}]:{}", hp->host, port)
                           : fmt::format("{}:{}", hp->host, port);
  asio::co_spawn(impl_->io_, AcceptLoop(impl_), [](std::exception_ptr e) {
    if (e) spdlog::error("accept loop failed unexpectedly");
  });
  return Ok();
}

std::string TcpTransport::AdvertisedAddr() const { return impl_->advertised_; }

void TcpTransport::AddPeer(const std::string& addr) {
  if (impl_->stopped_ || impl_->dialers_.contains(addr)) return;
  if (!ParseHostPort(addr).ok()) {
    spdlog::warn("ignoring peer address '{}': not HOST:PORT", addr);
    return;
  }
  auto timer = std::make_shared<asio::steady_timer>(impl_->io_);
  impl_->dialers_[addr] = timer;
  impl_->Addr(addr, true);
  asio::co_spawn(impl_->io_, DialLoop(impl_, addr, timer), [addr](std::exception_ptr e) {
    if (e) spdlog::error("dialer for {} failed unexpectedly", addr);
  });
}

bool TcpTransport::HasPeer(const std::string& addr) const { return impl_->dialers_.contains(addr); }

std::vector<TcpTransport::AddrStatus> TcpTransport::Addresses() const {
  std::vector<AddrStatus> out;
  for (const auto& [key, a] : impl_->addrs_) out.push_back(a);
  return out;
}

const Traffic& TcpTransport::Totals() const { return impl_->totals_; }

void TcpTransport::Stop() {
  impl_->stopped_ = true;
  boost::system::error_code ec;
  impl_->acceptor_.close(ec);
  for (auto& [addr, timer] : impl_->dialers_) timer->cancel();
  auto links = impl_->links_;
  for (auto& l : links) l->Close("shutting down");
}

}  // namespace foreverfs::net
