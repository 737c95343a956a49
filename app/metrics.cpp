#include "app/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "base/fd.h"
#include "net/tcp_transport.h"

namespace foreverfs::app {
namespace {

constexpr std::size_t kMaxRequest = 8192;
constexpr int kRequestTimeoutMs = 5000;

void Gauge(std::string& out, const char* name, const char* help, const char* type,
           std::uint64_t value) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
}

// Prometheus floats: plain decimal, shortest form that reads back the same.
std::string Float(double v) { return fmt::format("{}", v); }

}  // namespace

void Histogram::Observe(std::chrono::nanoseconds d) {
  const double s = std::chrono::duration<double>(d).count();
  std::size_t i = 0;
  while (i < kBounds.size() && s > kBounds[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(static_cast<std::uint64_t>(d.count() > 0 ? d.count() : 0),
                    std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  std::uint64_t running = 0;
  for (std::size_t i = 0; i < kBounds.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  s.count = running + buckets_[kBounds.size()].load(std::memory_order_relaxed);
  s.sum_seconds = static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
  return s;
}

OpLatency::OpLatency(std::vector<std::string> names)
    : names_(std::move(names)), histograms_(names_.size()) {}

std::string RenderMetrics(const MetricsSnapshot& m, const OpLatency* latency) {
  std::string out;
  Gauge(out, "foreverfs_bytes_stored", "Bytes of chunk files in the local store.", "gauge",
        m.bytes_stored);
  Gauge(out, "foreverfs_chunks", "Chunks in the local store.", "gauge", m.chunks);
  Gauge(out, "foreverfs_bytes_sent_total", "Bytes of protocol frames sent to peers.", "counter",
        m.bytes_sent);
  Gauge(out, "foreverfs_bytes_received_total", "Bytes of protocol frames received from peers.",
        "counter", m.bytes_received);
  Gauge(out, "foreverfs_peers_connected", "Peers with an authenticated link.", "gauge",
        m.peers_connected);
  Gauge(out, "foreverfs_replication_backlog", "Chunks queued or in flight to fetch from peers.",
        "gauge", m.replication_backlog);
  if (latency) {
    constexpr const char* kName = "foreverfs_fuse_op_duration_seconds";
    out += fmt::format("# HELP {} Time the FUSE request handler took, by operation.\n", kName);
    out += fmt::format("# TYPE {} histogram\n", kName);
    for (std::size_t op = 0; op < latency->names().size(); ++op) {
      const auto& name = latency->names()[op];
      const auto s = latency->at(op).Read();
      for (std::size_t i = 0; i < Histogram::kBounds.size(); ++i) {
        out += fmt::format("{}_bucket{{op=\"{}\",le=\"{}\"}} {}\n", kName, name,
                           Float(Histogram::kBounds[i]), s.cumulative[i]);
      }
      out += fmt::format("{}_bucket{{op=\"{}\",le=\"+Inf\"}} {}\n", kName, name, s.count);
      out += fmt::format("{}_sum{{op=\"{}\"}} {}\n", kName, name, Float(s.sum_seconds));
      out += fmt::format("{}_count{{op=\"{}\"}} {}\n", kName, name, s.count);
    }
  }
  return out;
}

std::string HttpResponse(std::string_view request, const std::function<std::string()>& body) {
  auto reply = [](std::string_view status, std::string_view type, const std::string& content) {
    return fmt::format(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        status, type, content.size(), content);
  };
  const auto line_end = request.find("\r\n");
  const std::string_view line = request.substr(0, line_end);
  const auto sp1 = line.find(' ');
  const auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || !line.substr(sp2 + 1).starts_with("HTTP/1.")) {
    return reply("400 Bad Request", "text/plain; charset=utf-8", "bad request\n");
  }
  const std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  target = target.substr(0, target.find('?'));
  if (method != "GET" || target != "/metrics") {
    return reply("404 Not Found", "text/plain; charset=utf-8", "only GET /metrics is here\n");
  }
  return reply("200 OK", "text/plain; version=0.0.4; charset=utf-8", body());
}

struct MetricsServer::Impl {
  UniqueFd listener;
  std::uint16_t port = 0;
  std::function<std::string()> render;
  std::atomic<bool> stopping{false};
  std::thread thread;

  void Serve(int raw) {
    UniqueFd fd(raw);
    std::string request;
    char buf[1024];
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(kRequestTimeoutMs);
    while (request.find("\r\n\r\n") == std::string::npos) {
      if (request.size() >= kMaxRequest) {
        request.clear();  // too large: answered as a bad request
        break;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{fd.get(), POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return;
      ssize_t n = ::recv(fd.get(), buf, std::min(sizeof buf, kMaxRequest - request.size()), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      request.append(buf, static_cast<std::size_t>(n));
    }
    std::string response = HttpResponse(request, render);
    std::string_view rest(response);
    while (!rest.empty()) {
      ssize_t n = ::send(fd.get(), rest.data(), rest.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      rest.remove_prefix(static_cast<std::size_t>(n));
    }
    // Read what the client still sends (briefly, bounded) so that closing does not reset the
    // connection before it has read the answer.
    ::shutdown(fd.get(), SHUT_WR);
    for (int i = 0; i < 64; ++i) {
      pollfd p{fd.get(), POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0 || ::recv(fd.get(), buf, sizeof buf, 0) <= 0) break;
    }
  }

  void Loop() {
    while (!stopping) {
      pollfd p{listener.get(), POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      int fd = ::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) Serve(fd);
    }
  }
};

Result<std::unique_ptr<MetricsServer>> MetricsServer::Bind(const std::string& addr,
                                                           std::function<std::string()> render) {
  auto hp = net::ParseHostPort(addr);
  if (!hp.ok()) return Err(Code::kInvalid, "--metrics: {}", hp.status().message());
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_INET;
  if (hp->host.empty() || hp->host.find(':') == std::string::npos) {
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    in->sin_family = AF_INET;
    in->sin_port = htons(hp->port);
    if (hp->host.empty()) {
      in->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (::inet_pton(AF_INET, hp->host.c_str(), &in->sin_addr) != 1) {
      return Err(Code::kInvalid, "--metrics {}: '{}' is not an IP address", addr, hp->host);
    }
    len = sizeof(sockaddr_in);
  } else {
    family = AF_INET6;
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(hp->port);
    if (::inet_pton(AF_INET6, hp->host.c_str(), &in6->sin6_addr) != 1) {
      return Err(Code::kInvalid, "--metrics {}: '{}' is not an IP address", addr, hp->host);
    }
    len = sizeof(sockaddr_in6);
  }
  UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, "creating the metrics socket");
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&ss), len) != 0) {
    return ErrnoStatus(errno, fmt::format("--metrics: cannot listen on {}", addr));
  }
  if (::listen(fd.get(), 16) != 0) return ErrnoStatus(errno, "listening for metrics");
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &blen);
  std::unique_ptr<MetricsServer> server(new MetricsServer);
  server->impl_ = std::make_unique<Impl>();
  auto& im = *server->impl_;
  im.port = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                    : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  im.listener = std::move(fd);
  im.render = std::move(render);
  return server;
}

void MetricsServer::Serve() {
  if (!impl_->thread.joinable()) impl_->thread = std::thread([p = impl_.get()] { p->Loop(); });
}

std::uint16_t MetricsServer::port() const { return impl_->port; }

void MetricsServer::Stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  if (impl_->thread.joinable()) impl_->thread.join();
}

MetricsServer::~MetricsServer() { Stop(); }

}  // namespace foreverfs::app
