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
#include <unordered_map>

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

namespace {

using SteadyClock = std::chrono::steady_clock;

// Accept errors that leave the listening socket readable (a pending connection we cannot take):
// retrying at once would spin, so the accept loop pauses, 100 ms doubling to 1 s.
constexpr auto kAcceptPauseMin = milliseconds(100);
constexpr auto kAcceptPauseMax = milliseconds(1000);
// Lines about strangers (refused, evicted, failed or timed-out inbound handshakes): the first
// at once, then at most one summary per window.
constexpr auto kStrangerLogWindow = std::chrono::seconds(10);
// Admission state kept per remote host; hosts with nothing in progress are forgotten first.
constexpr std::size_t kMaxHosts = 4096;

double Seconds(SteadyClock::duration d) { return std::chrono::duration<double>(d).count(); }

// The unit of the per-host limits: an IPv4 address, or the /64 of an IPv6 address (one host
// usually holds a whole /64, so per-address limits would not bind it).
std::string HostKey(const asio::ip::address& a) {
  if (a.is_v6()) {
    const auto v6 = a.to_v6();
    if (v6.is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, v6).to_string();
    auto bytes = v6.to_bytes();
    std::fill(bytes.begin() + 8, bytes.end(), 0);
    return asio::ip::address_v6(bytes).to_string() + "/64";
  }
  return a.to_string();
}

struct Counters {
  std::atomic<std::uint64_t> in_progress{0};
  std::atomic<std::uint64_t> refused_host_busy{0};
  std::atomic<std::uint64_t> refused_host_rate{0};
  std::atomic<std::uint64_t> evicted{0};
  std::atomic<std::uint64_t> handshake_timeouts{0};
  std::atomic<std::uint64_t> handshake_failures{0};
  std::atomic<std::uint64_t> accept_errors{0};
  std::atomic<std::uint64_t> links_timed_out{0};
  std::atomic<std::uint64_t> links_replaced{0};
  std::atomic<std::uint64_t> keepalives_sent{0};
  std::atomic<std::uint64_t> same_node_id{0};
};

// A connect attempt and its deadline, shared with the timer's handler.
struct Connect {
  explicit Connect(asio::io_context& io) : socket(io) {}
  tcp::socket socket;
  bool timed_out = false;
};

void Bump(std::atomic<std::uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }
std::uint64_t Load(const std::atomic<std::uint64_t>& c) {
  return c.load(std::memory_order_relaxed);
}

}  // namespace

struct TcpTransport::Impl : std::enable_shared_from_this<TcpTransport::Impl> {
  Impl(asio::io_context& io, TcpOptions o, LinkHandler& h)
      : io_(io),
        options_(std::move(o)),
        handler_(h),
        acceptor_(io),
        tls_(asio::ssl::context::tls),
        accept_pause_(io),
        log_timer_(io) {
    while (options_.instance == 0) options_.instance = crypto::RandomU64();
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
  const SteadyClock::time_point started_ = SteadyClock::now();  // Identity.uptime_ms
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
  Counters stats_;
  // What went wrong last, per dial address and per inbound host (for `foreverfs status`).
  std::map<std::string, TcpTransport::AddrStatus> addrs_;

  // Handshakes in progress (both directions), oldest first; inbound ones are admitted by
  // AdmitInbound and capped by BeginHandshake.
  std::map<std::uint64_t, std::shared_ptr<TcpLink>> handshakes_;
  std::uint64_t next_handshake_ = 0;
  int inbound_handshakes_ = 0;
  struct HostState {
    int in_progress = 0;  // inbound handshakes from this host
    double tokens = 0;    // new connections it may still open (token bucket)
    SteadyClock::time_point refilled{};
  };
  std::unordered_map<std::string, HostState> hosts_;
  std::set<std::shared_ptr<Connect>> connecting_;  // dials before the handshake

  asio::steady_timer accept_pause_;
  // Stranger lines held back (see NoteStranger): count per kind, and the last line.
  asio::steady_timer log_timer_;
  bool log_armed_ = false;
  SteadyClock::time_point log_quiet_until_{};
  std::map<std::string, std::uint64_t> log_counts_;
  std::string log_last_;

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

  // All on the event thread; defined below TcpLink.
  bool AdmitInbound(const std::string& host, const std::string& remote);
  void BeginHandshake(const std::shared_ptr<TcpLink>& link);
  void EndHandshake(TcpLink& link);
  void NoteStranger(const std::string& kind, std::string line);
  void ReplaceHalfOpen(const TcpLink& fresh);
  void FinishLink(const std::shared_ptr<TcpLink>& link, const std::string& reason);
};

class TcpLink : public Link, public std::enable_shared_from_this<TcpLink> {
 public:
  TcpLink(tcp::socket socket, asio::ssl::context& tls)
      : remote_(Describe(socket)),
        stream_(std::move(socket), tls),
        signal_(stream_.get_executor()),
        watchdog_(stream_.get_executor()) {
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
    watchdog_.cancel();
  }

  const PeerInfo& Peer() const override { return peer_; }
  std::size_t QueuedBytes() const override { return queued_bytes_; }
  const Traffic& Counters() const override { return traffic_; }

  const std::string remote_;  // "address:port", for log lines
  SslStream stream_;
  asio::steady_timer signal_;    // wakes the writer (Send, Close, keepalive interval)
  asio::steady_timer watchdog_;  // the read and write deadline of an established link
  std::deque<Bytes> queue_;
  std::size_t queued_bytes_ = 0;
  bool closed_ = false;
  bool finished_ = false;  // the transport forgot it and told the handler (FinishLink)
  std::string reason_;
  std::string dial_addr_;  // outbound: the address dialed
  PeerInfo peer_;
  Traffic traffic_;
  Traffic* totals_ = nullptr;  // the transport's, which outlives the link's coroutines

  // Liveness: when a byte last arrived, when the last write ended, and while a write is in
  // flight when it last made progress.
  SteadyClock::time_point last_rx_ = SteadyClock::now();
  SteadyClock::time_point last_tx_ = last_rx_;
  SteadyClock::time_point write_progress_ = last_rx_;
  bool writing_ = false;

  // Handshake bookkeeping (Impl::BeginHandshake / EndHandshake).
  std::uint64_t handshake_seq_ = 0;  // in Impl::handshakes_ while non-zero
  bool inbound_ = false;
  bool heard_ = false;  // inbound: a first byte arrived
  std::string host_;    // inbound: HostKey of the remote address
  enum class Abort { kNone, kTimeout, kEvicted, kStopped };
  Abort abort_ = Abort::kNone;  // why the transport closed it during the handshake

  void In(std::size_t n) {
    traffic_.In(n);
    if (totals_) totals_->In(n);
  }
  void Out(std::size_t n) {
    traffic_.Out(n);
    if (totals_) totals_->Out(n);
  }
};

bool TcpTransport::Impl::AdmitInbound(const std::string& host, const std::string& remote) {
  const auto now = SteadyClock::now();
  const double burst = std::max(1, options_.host_connect_burst);
  auto full = [&](const HostState& h) {
    return h.tokens + Seconds(now - h.refilled) * options_.host_connects_per_s >= burst;
  };
  if (hosts_.size() >= kMaxHosts && !hosts_.contains(host)) {
    std::erase_if(hosts_,
                  [&](const auto& e) { return e.second.in_progress == 0 && full(e.second); });
    if (hosts_.size() >= kMaxHosts) {
      std::erase_if(hosts_, [](const auto& e) { return e.second.in_progress == 0; });
    }
  }
  auto [it, fresh] = hosts_.try_emplace(host);
  HostState& h = it->second;
  h.tokens =
      fresh ? burst
            : std::min(burst, h.tokens + Seconds(now - h.refilled) * options_.host_connects_per_s);
  h.refilled = now;
  if (h.in_progress >= options_.max_handshakes_per_host) {
    Bump(stats_.refused_host_busy);
    NoteStranger(fmt::format("over {} handshakes in progress from one host",
                             options_.max_handshakes_per_host),
                 fmt::format("peer {}: refused at once: {} handshakes already in progress from {}",
                             remote, h.in_progress, host));
    return false;
  }
  if (h.tokens < 1) {
    Bump(stats_.refused_host_rate);
    NoteStranger(fmt::format("over {} new connections per second from one host",
                             options_.host_connects_per_s),
                 fmt::format("peer {}: refused at once: {} connects too often", remote, host));
    return false;
  }
  h.tokens -= 1;
  return true;
}

void TcpTransport::Impl::BeginHandshake(const std::shared_ptr<TcpLink>& link) {
  if (link->inbound_) {
    // At the cap, close the oldest inbound handshake that has not sent a byte, else the oldest:
    // a legitimate peer sends its TLS ClientHello at once and finishes in a few round trips, so
    // a flood must outpace that to lock it out, instead of merely holding every slot.
    while (inbound_handshakes_ >= std::max(1, options_.max_handshakes)) {
      std::shared_ptr<TcpLink> victim;
      for (const auto& [seq, l] : handshakes_) {
        if (l->inbound_ && !l->heard_) {
          victim = l;
          break;
        }
      }
      for (auto it = handshakes_.begin(); !victim && it != handshakes_.end(); ++it) {
        if (it->second->inbound_) victim = it->second;
      }
      if (!victim) break;
      victim->abort_ = TcpLink::Abort::kEvicted;
      EndHandshake(*victim);
      victim->Close("evicted");
      Bump(stats_.evicted);
      NoteStranger(
          fmt::format("closed to stay under {} handshakes in progress", options_.max_handshakes),
          fmt::format("peer {}: handshake closed ({}) to make room: {} inbound handshakes in "
                      "progress, the most allowed",
                      victim->remote_, victim->heard_ ? "the oldest" : "it sent nothing",
                      options_.max_handshakes));
    }
  }
  link->handshake_seq_ = ++next_handshake_;
  handshakes_.emplace(link->handshake_seq_, link);
  if (link->inbound_) {
    ++inbound_handshakes_;
    ++hosts_[link->host_].in_progress;
    Bump(stats_.in_progress);
  }
}

void TcpTransport::Impl::EndHandshake(TcpLink& link) {
  if (link.handshake_seq_ == 0) return;
  handshakes_.erase(link.handshake_seq_);
  link.handshake_seq_ = 0;
  if (!link.inbound_) return;
  --inbound_handshakes_;
  stats_.in_progress.fetch_sub(1, std::memory_order_relaxed);
  auto h = hosts_.find(link.host_);
  if (h != hosts_.end() && h->second.in_progress > 0) --h->second.in_progress;
}

namespace {

// Logs what NoteStranger held back, one line, when the window closes.
awaitable<void> FlushStrangerLog(std::shared_ptr<TcpTransport::Impl> t) {
  co_await t->log_timer_.async_wait(kNoThrow);
  t->log_armed_ = false;
  if (t->log_counts_.empty()) co_return;
  std::uint64_t total = 0;
  std::string kinds;
  for (const auto& [kind, n] : t->log_counts_) {
    total += n;
    kinds += fmt::format("{}{} {}", kinds.empty() ? "" : ", ", n, kind);
  }
  spdlog::warn("{} more inbound connections refused or failed in the last {} s ({}); the last: {}",
               total, kStrangerLogWindow.count(), kinds, t->log_last_);
  t->log_counts_.clear();
  t->log_last_.clear();
  t->log_quiet_until_ = SteadyClock::now() + kStrangerLogWindow;
}

}  // namespace

void TcpTransport::Impl::NoteStranger(const std::string& kind, std::string line) {
  const auto now = SteadyClock::now();
  if (stopped_ || (log_counts_.empty() && now >= log_quiet_until_)) {
    spdlog::warn("{}", line);
    log_quiet_until_ = now + kStrangerLogWindow;
    return;
  }
  ++log_counts_[kind];
  log_last_ = std::move(line);
  if (log_armed_) return;
  log_armed_ = true;
  log_timer_.expires_at(std::max(log_quiet_until_, now));
  asio::co_spawn(io_, FlushStrangerLog(shared_from_this()), [](std::exception_ptr e) {
    if (e) spdlog::error("stranger log flush failed unexpectedly");
  });
}

void TcpTransport::Impl::ReplaceHalfOpen(const TcpLink& fresh) {
  // A live peer sends at least one frame per keepalive interval; an existing link silent for
  // longer than 1.5 intervals is half-open (its peer restarted or lost power), so the newer
  // link replaces it. A link that is not silent is left to the handler (two links dialed at
  // once: both ends must choose alike, which "newest wins" cannot promise).
  const auto now = SteadyClock::now();
  const auto stale = milliseconds(std::max(1, options_.keepalive_interval_ms)) * 3 / 2;
  std::vector<std::shared_ptr<TcpLink>> old;
  for (const auto& l : links_) {
    if (l->peer_.node_id == fresh.peer_.node_id && !l->finished_ && now - l->last_rx_ >= stale) {
      old.push_back(l);
    }
  }
  for (const auto& l : old) {
    std::string reason = fmt::format(
        "replaced by a newer link from {} (nothing received on this one for {:.1f} s: half-open)",
        fresh.remote_, Seconds(now - l->last_rx_));
    spdlog::warn("peer {} ({:016x}): {}", l->peer_.remote, l->peer_.node_id, reason);
    Bump(stats_.links_replaced);
    l->Close(reason);
    FinishLink(l, reason);  // now: the handler must see this close before the new link's open
  }
}

void TcpTransport::Impl::FinishLink(const std::shared_ptr<TcpLink>& link,
                                    const std::string& reason) {
  if (link->finished_) return;
  link->finished_ = true;
  links_.erase(link);
  if (auto c = connected_.find(link->peer_.node_id); c != connected_.end()) connected_.erase(c);
  if (link->peer_.outbound) {
    NoteError(link->dial_addr_, true, "disconnected: " + reason);
    Addr(link->dial_addr_, true).connected = false;
  }
  handler_.OnClose(link, reason);
}

namespace {

// Completion conditions that record progress: called before each read_some / write_some with the
// bytes moved so far.
struct ReadProgress {
  TcpLink* link;
  std::size_t operator()(const boost::system::error_code& ec, std::size_t n) const {
    if (n > 0) link->last_rx_ = SteadyClock::now();
    return ec ? 0 : 65536;
  }
};
struct WriteProgress {
  TcpLink* link;
  std::size_t operator()(const boost::system::error_code& ec, std::size_t n) const {
    if (n > 0) link->write_progress_ = SteadyClock::now();
    return ec ? 0 : 65536;
  }
};

// Reads one frame; `limit` bounds the length field further than the protocol does.
awaitable<Result<Message>> ReadMessage(TcpLink& link, std::uint32_t limit) {
  auto& socket = link.stream_;
  std::array<std::uint8_t, kFrameHeaderSize> header{};
  auto [ec, n] =
      co_await asio::async_read(socket, asio::buffer(header), ReadProgress{&link}, kNoThrow);
  if (ec) {
    co_return Status(Code::kUnavailable,
                     ec == asio::error::eof ? std::string("connection closed") : ec.message());
  }
  link.last_rx_ = SteadyClock::now();
  auto h = DecodeFrameHeader(header);
  if (!h.ok()) co_return h.status();
  if (h->length > limit) {
    co_return Err(Code::kInvalid, "frame of {} bytes is over the {} allowed here", h->length,
                  limit);
  }
  Bytes payload(h->length - 2);
  if (!payload.empty()) {
    auto [ec2, n2] =
        co_await asio::async_read(socket, asio::buffer(payload), ReadProgress{&link}, kNoThrow);
    if (ec2) co_return Status(Code::kUnavailable, ec2.message());
    link.last_rx_ = SteadyClock::now();
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

awaitable<void> WriterLoop(std::shared_ptr<TcpTransport::Impl> t, std::shared_ptr<TcpLink> link) {
  const auto interval = milliseconds(std::max(1, t->options_.keepalive_interval_ms));
  while (!link->closed_) {
    if (link->queue_.empty()) {
      const auto idle = SteadyClock::now() - link->last_tx_;
      if (idle >= interval) {
        link->Send(Keepalive{});
        Bump(t->stats_.keepalives_sent);
        continue;
      }
      // Send() and Close() cancel this wait; otherwise it ends when a keepalive is due.
      link->signal_.expires_after(interval - idle);
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
    link->writing_ = true;
    link->write_progress_ = SteadyClock::now();
    auto [ec, n] =
        co_await asio::async_write(link->stream_, bufs, WriteProgress{link.get()}, kNoThrow);
    link->writing_ = false;
    if (ec) {
      link->Close(fmt::format("write failed: {}", ec.message()));
      co_return;
    }
    link->last_tx_ = SteadyClock::now();
    for (std::size_t i = 0; i < count; ++i) link->queue_.pop_front();
    link->queued_bytes_ -= bytes;
    link->Out(bytes);
  }
}

// Closes an established link that received nothing, or whose write made no progress, for the
// read timeout: a peer that lost power leaves a link TCP alone considers alive for hours.
awaitable<void> Watchdog(std::shared_ptr<TcpTransport::Impl> t, std::shared_ptr<TcpLink> link) {
  const auto timeout = milliseconds(std::max(1, t->options_.read_timeout_ms));
  while (!link->closed_) {
    const auto now = SteadyClock::now();
    const bool write_stalled = link->writing_ && now - link->write_progress_ >= timeout;
    const bool read_stalled = now - link->last_rx_ >= timeout;
    // If our own event thread was the one that stalled (a long handler), the peer's frames wait
    // unread in the kernel: the peer is there, we were slow.
    boost::system::error_code aec;
    if (read_stalled && link->stream_.lowest_layer().available(aec) > 0) {
      link->last_rx_ = now;
      continue;
    }
    if (write_stalled || read_stalled) {
      std::string reason =
          write_stalled ? fmt::format("no write progress for {:.1f} s: the peer stopped reading",
                                      Seconds(now - link->write_progress_))
                        : fmt::format(
                              "nothing received for {:.1f} s: the peer is gone or the link is "
                              "half-open",
                              Seconds(now - link->last_rx_));
      spdlog::warn("peer {} ({:016x}): closing the link: {}", link->peer_.remote,
                   link->peer_.node_id, reason);
      Bump(t->stats_.links_timed_out);
      link->Close(std::move(reason));
      co_return;
    }
    auto next = link->last_rx_ + timeout;
    if (link->writing_) next = std::min(next, link->write_progress_ + timeout);
    link->watchdog_.expires_at(next);
    co_await link->watchdog_.async_wait(kNoThrow);
  }
}

void LogEscaped(const char* what, const std::string& who, std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    spdlog::error("{} {} failed unexpectedly: {}", what, who, x.what());
  } catch (...) {
    spdlog::error("{} {} failed unexpectedly", what, who);
  }
}

// TLS handshake, Hello and Auth, then read until the link closes. Returns true if the peer
// completed the handshake. `link` is registered with BeginHandshake.
awaitable<bool> RunConnection(std::shared_ptr<TcpTransport::Impl> t, std::shared_ptr<TcpLink> link,
                              bool outbound, std::string dial_addr) {
  const std::string remote = link->remote_;
  const std::string who = outbound ? dial_addr : remote;
  // Where status shows what went wrong: the dial address, or the host a stranger came from.
  const std::string key =
      outbound ? dial_addr : fmt::format("{} (inbound)", RemoteHost(link->stream_.next_layer()));
  // Every way the handshake can fail ends here: counted, remembered for status, and logged (a
  // line per dial attempt, which backs off; strangers' lines are rate-limited).
  auto fail = [&](std::string why) {
    t->EndHandshake(*link);
    const auto abort = link->abort_;
    if (abort == TcpLink::Abort::kEvicted || abort == TcpLink::Abort::kStopped) return;
    if (abort == TcpLink::Abort::kTimeout) {
      why = fmt::format("handshake timed out after {} ms", t->options_.handshake_timeout_ms);
    } else {
      Bump(t->stats_.handshake_failures);
    }
    t->NoteError(key, outbound, "refused: " + why);
    if (outbound) {
      spdlog::warn("peer {}: refused: {}", who, why);
    } else {
      t->NoteStranger(abort == TcpLink::Abort::kTimeout ? "timed out" : "refused in the handshake",
                      fmt::format("peer {}: refused: {}", who, why));
    }
  };
  boost::system::error_code ignored;
  link->stream_.next_layer().set_option(tcp::no_delay(true), ignored);
  link->stream_.next_layer().set_option(asio::socket_base::keep_alive(true), ignored);
  link->totals_ = &t->totals_;
  link->dial_addr_ = dial_addr;
  auto& stream = link->stream_;

  // A deadline for the whole handshake: closing the socket ends whatever is pending.
  asio::steady_timer deadline(stream.get_executor());
  deadline.expires_after(milliseconds(t->options_.handshake_timeout_ms));
  deadline.async_wait([t, link](boost::system::error_code ec) {
    if (ec || link->handshake_seq_ == 0 || link->closed_) return;
    link->abort_ = TcpLink::Abort::kTimeout;
    Bump(t->stats_.handshake_timeouts);
    link->Close("handshake timed out");
  });

  if (!outbound) {
    // A legitimate peer sends its ClientHello at once; until a byte arrives this connection is
    // the first to go when the handshake cap is reached.
    auto [wec] = co_await stream.next_layer().async_wait(tcp::socket::wait_read, kNoThrow);
    if (!wec) link->heard_ = true;  // on error the TLS handshake fails at once, below
  }
  auto [hec] = co_await stream.async_handshake(
      outbound ? asio::ssl::stream_base::client : asio::ssl::stream_base::server, kNoThrow);
  if (hec) {
    fail(fmt::format("TLS handshake failed: {}", TlsError(hec)));
    co_return false;
  }
  // Hello, then Auth: nothing in either says who this node is. Only once the peer's Auth
  // proved the cluster key does Identity (node id, instance, listen address) leave.
  Hello mine;
  crypto::RandomBytes(mine.nonce);
  if (auto ec = co_await WriteMessage(*link, mine)) {
    fail(fmt::format("handshake write failed: {}", ec.message()));
    co_return false;
  }
  auto hello_msg = co_await ReadMessage(*link, kMaxHandshakeFrame);
  const Hello* hello = hello_msg.ok() ? std::get_if<Hello>(&*hello_msg) : nullptr;
  if (!hello) {
    fail(fmt::format("no valid Hello ({})",
                     hello_msg.ok() ? "another message came first" : hello_msg.status().message()));
    co_return false;
  }
  if (hello->version != kProtocolVersion) {
    fail(
        fmt::format("it speaks protocol version {}, this node {}: run the same foreverfs "
                    "release on every node",
                    hello->version, kProtocolVersion));
    co_return false;
  }
  if (hello->nonce == mine.nonce) {  // our own Hello reflected back
    fail("its Hello carries our own nonce (a reflected handshake)");
    co_return false;
  }
  const auto& key_auth = t->options_.auth_key;
  if (auto ec = co_await WriteMessage(
          *link, Auth{AuthProof(key_auth, outbound, mine.nonce, hello->nonce)})) {
    fail(fmt::format("handshake write failed: {}", ec.message()));
    co_return false;
  }
  auto auth_msg = co_await ReadMessage(*link, kMaxHandshakeFrame);
  const Auth* theirs = auth_msg.ok() ? std::get_if<Auth>(&*auth_msg) : nullptr;
  if (!theirs || theirs->proof != AuthProof(key_auth, !outbound, hello->nonce, mine.nonce)) {
    fail("it did not prove the cluster key (wrong key file?)");
    co_return false;
  }
  Identity me;
  me.node_id = t->options_.node_id;
  me.instance = t->options_.instance;
  me.uptime_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<milliseconds>(SteadyClock::now() - t->started_).count());
  me.listen_addr = t->advertised_;
  me.proof = IdentityProof(key_auth, outbound, mine.nonce, hello->nonce, me);
  if (auto ec = co_await WriteMessage(*link, me)) {
    fail(fmt::format("handshake write failed: {}", ec.message()));
    co_return false;
  }
  auto id_msg = co_await ReadMessage(*link, kMaxHandshakeFrame);
  const Identity* id = id_msg.ok() ? std::get_if<Identity>(&*id_msg) : nullptr;
  if (!id) {
    fail(fmt::format("no valid Identity ({})",
                     id_msg.ok() ? "another message came" : id_msg.status().message()));
    co_return false;
  }
  if (id->proof != IdentityProof(key_auth, !outbound, hello->nonce, mine.nonce, *id)) {
    fail("its Identity does not carry a valid proof of the cluster key");
    co_return false;
  }
  if (id->node_id == t->options_.node_id) {
    t->EndHandshake(*link);
    if (id->instance == me.instance) {
      spdlog::debug("peer {}: is this node itself; not dialing it again", who);
      if (outbound) {
        t->self_addrs_.insert(dial_addr);
        t->NoteError(key, outbound, "this node itself; not dialed again");
      }
      co_return false;
    }
    // Another process with our node id: a copy of this node's data directory (a VM snapshot,
    // a disk copy). Never linked: the two would never exchange their changes, and their
    // concurrent writes would not be seen as conflicts.
    Bump(t->stats_.same_node_id);
    SameNodeId same{remote, id->listen_addr, id->node_id, id->instance,
                    id->uptime_ms > me.uptime_ms ||
                        (id->uptime_ms == me.uptime_ms && id->instance < me.instance)};
    const std::string why = fmt::format(
        "it is another process with this node's id {:016x} (its address {}, running {} than "
        "this one): one of the two data directories is a copy of the other",
        id->node_id, id->listen_addr.empty() ? remote : id->listen_addr,
        same.peer_is_older ? "longer" : "for less time");
    spdlog::error("peer {}: refused: {}", who, why);
    t->NoteError(key, outbound, "refused: " + why);
    if (t->options_.on_same_node_id) {
      try {
        t->options_.on_same_node_id(same);
      } catch (const std::exception& x) {
        spdlog::error("handling a duplicate node id failed: {}", x.what());
      }
    }
    co_return false;
  }
  if (outbound) t->Addr(key, true).node_id = id->node_id;
  deadline.cancel();
  t->EndHandshake(*link);
  if (t->stopped_ || link->closed_) co_return false;

  link->peer_ = PeerInfo{id->node_id,
                         id->instance,
                         id->listen_addr,
                         remote,
                         outbound,
                         hello->version,
                         std::chrono::system_clock::now()};
  const auto info = link->peer_;
  link->last_rx_ = link->last_tx_ = SteadyClock::now();
  t->ReplaceHalfOpen(*link);
  // A link from another process that claims the node id of a peer linked and alive (not
  // half-open: ReplaceHalfOpen took those): two processes share that id. Refused, not merged.
  for (const auto& l : t->links_) {
    if (l->finished_ || l->peer_.node_id != info.node_id || l->peer_.instance == info.instance) {
      continue;
    }
    Bump(t->stats_.same_node_id);
    const std::string why = fmt::format(
        "it says it is node {:016x}, but the peer at {} already is, as another process that is "
        "alive: two nodes share one node id (a copied data directory?)",
        info.node_id, l->peer_.remote);
    spdlog::error("peer {}: refused: {}", who, why);
    t->NoteError(key, outbound, "refused: " + why);
    link->Close("refused: " + why);
    co_return false;  // a dialer backs off
  }
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
  asio::co_spawn(stream.get_executor(), WriterLoop(t, link),
                 [who](std::exception_ptr e) { LogEscaped("writer of peer", who, e); });
  asio::co_spawn(stream.get_executor(), Watchdog(t, link),
                 [who](std::exception_ptr e) { LogEscaped("watchdog of peer", who, e); });
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
    if (std::holds_alternative<Keepalive>(*m)) continue;  // last_rx_ is all it is for
    if (std::holds_alternative<Hello>(*m) || std::holds_alternative<Auth>(*m) ||
        std::holds_alternative<Identity>(*m)) {
      reason = "handshake message after the handshake";
      spdlog::warn("peer {}: protocol error, disconnecting: {}", who, reason);
      break;
    }
    t->handler_.OnMessage(link, std::move(*m));
  }
  if (!link->reason_.empty()) reason = link->reason_;
  link->Close(reason);
  t->FinishLink(link, reason);
  co_return true;
}

awaitable<void> ServeInbound(std::shared_ptr<TcpTransport::Impl> t, std::shared_ptr<TcpLink> link) {
  co_await RunConnection(t, std::move(link), false, "");
}

bool IsResourceError(const boost::system::error_code& ec) {
  if (ec.category() != boost::system::system_category()) return false;
  const int e = ec.value();
  return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

awaitable<void> AcceptLoop(std::shared_ptr<TcpTransport::Impl> t) {
  auto pause = kAcceptPauseMin;
  std::uint64_t failures = 0;
  auto last_line = SteadyClock::time_point{};
  while (!t->stopped_) {
    auto [ec, socket] = co_await t->acceptor_.async_accept(kNoThrow);
    if (t->stopped_ || ec == asio::error::operation_aborted) co_return;
    if (ec) {
      // The pending connection stays in the backlog, so an immediate retry fails the same way:
      // pause (100 ms doubling to 1 s) until it works, with a line now and then, not per try.
      Bump(t->stats_.accept_errors);
      const auto now = SteadyClock::now();
      if (failures++ == 0 || now - last_line >= kStrangerLogWindow) {
        spdlog::warn(
            "accept on {} failed{}: {}{}; pausing accepts ({} ms doubling to {} ms) "
            "until it works again",
            t->advertised_,
            failures > 1 ? fmt::format(" ({} times so far)", failures) : std::string(),
            ec.message(), IsResourceError(ec) ? " (out of file descriptors or memory)" : "",
            kAcceptPauseMin.count(), kAcceptPauseMax.count());
        last_line = now;
      }
      t->accept_pause_.expires_after(pause);
      co_await t->accept_pause_.async_wait(kNoThrow);
      pause = std::min(pause * 2, kAcceptPauseMax);
      continue;
    }
    if (failures > 0) {
      spdlog::info("accepting on {} again after {} failed accepts", t->advertised_, failures);
      failures = 0;
      pause = kAcceptPauseMin;
    }
    boost::system::error_code rec;
    const auto ep = socket.remote_endpoint(rec);
    if (rec) continue;  // already gone
    const std::string host = HostKey(ep.address());
    if (!t->AdmitInbound(host, fmt::format("{}:{}", ep.address().to_string(), ep.port()))) {
      // Reset rather than close politely: nothing of it lingers in FIN_WAIT.
      socket.set_option(asio::socket_base::linger(true, 0), rec);
      socket.close(rec);
      continue;
    }
    auto link = std::make_shared<TcpLink>(std::move(socket), t->tls_);
    link->inbound_ = true;
    link->host_ = host;
    t->BeginHandshake(link);
    const std::string who = link->remote_;
    asio::co_spawn(t->io_, ServeInbound(t, std::move(link)),
                   [who](std::exception_ptr e) { LogEscaped("inbound connection", who, e); });
  }
}

awaitable<void> DialLoop(std::shared_ptr<TcpTransport::Impl> t, std::string addr,
                         std::shared_ptr<asio::steady_timer> timer) {
  auto backoff = kBackoffMin;
  std::string last_error;
  tcp::resolver resolver(t->io_);
  // Runs until Stop, until the address turns out to be our own, or until RemovePeer drops this
  // dialer (a later AddPeer of the same address starts a new one with a new timer).
  auto mine = [&] {
    auto it = t->dialers_.find(addr);
    return it != t->dialers_.end() && it->second == timer;
  };
  while (!t->stopped_ && !t->self_addrs_.contains(addr) && mine()) {
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
        auto attempt = std::make_shared<Connect>(t->io_);
        asio::steady_timer deadline(t->io_);
        deadline.expires_after(milliseconds(t->options_.connect_timeout_ms));
        deadline.async_wait([attempt](boost::system::error_code ec) {
          if (ec) return;
          attempt->timed_out = true;
          boost::system::error_code ignored;
          attempt->socket.close(ignored);
        });
        t->connecting_.insert(attempt);
        auto [cec, ep] = co_await asio::async_connect(attempt->socket, results, kNoThrow);
        t->connecting_.erase(attempt);
        deadline.cancel();
        if (attempt->timed_out) {
          error = fmt::format("connect timed out after {} ms", t->options_.connect_timeout_ms);
        } else if (cec) {
          error = cec.message();
        } else if (!t->stopped_) {
          auto link = std::make_shared<TcpLink>(std::move(attempt->socket), t->tls_);
          t->BeginHandshake(link);
          bool opened = co_await RunConnection(t, std::move(link), true, addr);
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
    if (t->stopped_ || !mine()) break;
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
  asio::co_spawn(impl_->io_, AcceptLoop(impl_),
                 [](std::exception_ptr e) { LogEscaped("accept loop", "", e); });
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
  asio::co_spawn(impl_->io_, DialLoop(impl_, addr, timer),
                 [addr](std::exception_ptr e) { LogEscaped("dialer for", addr, e); });
}

bool TcpTransport::HasPeer(const std::string& addr) const { return impl_->dialers_.contains(addr); }

void TcpTransport::RemovePeer(const std::string& addr, const std::string& reason) {
  auto it = impl_->dialers_.find(addr);
  if (it == impl_->dialers_.end()) return;
  it->second->cancel();
  impl_->dialers_.erase(it);
  if (auto a = impl_->addrs_.find(addr); a != impl_->addrs_.end()) a->second.dialing = false;
  auto links = impl_->links_;
  for (const auto& l : links) {
    if (l->dial_addr_ == addr) l->Close(reason);
  }
}

std::vector<TcpTransport::AddrStatus> TcpTransport::Addresses() const {
  std::vector<AddrStatus> out;
  for (const auto& [key, a] : impl_->addrs_) out.push_back(a);
  return out;
}

const Traffic& TcpTransport::Totals() const { return impl_->totals_; }

TcpStats TcpTransport::Stats() const {
  const auto& c = impl_->stats_;
  TcpStats s;
  s.handshakes_in_progress = Load(c.in_progress);
  s.refused_host_busy = Load(c.refused_host_busy);
  s.refused_host_rate = Load(c.refused_host_rate);
  s.evicted = Load(c.evicted);
  s.handshake_timeouts = Load(c.handshake_timeouts);
  s.handshake_failures = Load(c.handshake_failures);
  s.accept_errors = Load(c.accept_errors);
  s.links_timed_out = Load(c.links_timed_out);
  s.links_replaced = Load(c.links_replaced);
  s.keepalives_sent = Load(c.keepalives_sent);
  s.same_node_id = Load(c.same_node_id);
  return s;
}

std::uint64_t TcpTransport::Instance() const { return impl_->options_.instance; }

void TcpTransport::Stop() {
  auto& t = *impl_;
  t.stopped_ = true;
  boost::system::error_code ec;
  t.acceptor_.close(ec);
  t.accept_pause_.cancel();
  t.log_timer_.cancel();
  for (auto& [addr, timer] : t.dialers_) timer->cancel();
  for (const auto& c : t.connecting_) c->socket.close(ec);
  auto handshakes = t.handshakes_;
  for (auto& [seq, l] : handshakes) {
    l->abort_ = TcpLink::Abort::kStopped;
    t.EndHandshake(*l);
    l->Close("shutting down");
  }
  auto links = t.links_;
  for (auto& l : links) l->Close("shutting down");
}

}  // namespace foreverfs::net
