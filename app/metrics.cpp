#include "app/metrics.h"

#include <spdlog/spdlog.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>

#include "app/endpoint_server.h"
#include "net/tcp_transport.h"

namespace foreverfs::app {
namespace {

namespace asio = boost::asio;

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
  out +=
      "# HELP foreverfs_fuse_requests_total FUSE requests read from the kernel, by whether "
      "the reader found them while polling or woke up for them.\n"
      "# TYPE foreverfs_fuse_requests_total counter\n";
  out +=
      fmt::format("foreverfs_fuse_requests_total{{read=\"polling\"}} {}\n", m.fuse_requests_polled);
  out += fmt::format("foreverfs_fuse_requests_total{{read=\"after_sleep\"}} {}\n",
                     m.fuse_requests_slept);
  Gauge(out, "foreverfs_fuse_reader_takeovers_total",
        "Times a slow request handler kept the next request waiting and another thread took "
        "over reading.",
        "counter", m.fuse_reader_takeovers);
  Gauge(out, "foreverfs_fuse_reader_handoffs_total",
        "Requests with another queued behind them, which woke another thread to read it.",
        "counter", m.fuse_reader_handoffs);
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

namespace {

using detail::kNoThrow;
using tcp = boost::asio::ip::tcp;
using Ep = detail::Endpoint<tcp>;
using Conn = detail::Connection<tcp>;

// The answer to a request, from the worker that renders it to the connection's coroutine.
struct Answer {
  std::mutex mu;
  std::string response;  // guarded by mu
  bool done = false;     // guarded by mu
};

asio::awaitable<void> ServeMetrics(std::shared_ptr<Ep> ep, std::shared_ptr<Conn> conn,
                                   std::function<std::string()> render) {
  const auto& limits = ep->limits();
  std::string request;
  conn->Arm(limits.read_timeout);
  auto [ec, n] = co_await asio::async_read_until(
      conn->socket(), asio::dynamic_buffer(request, MetricsServer::kMaxRequest), "\r\n\r\n",
      kNoThrow);
  conn->Disarm();
  std::string response;
  if (ec == asio::error::not_found) {
    response = HttpResponse("", render);  // 8 KiB without an end: a bad request
  } else if (ec) {
    if (conn->timed_out()) {
      spdlog::debug("metrics: a client sent no whole request within {} ms; closed it",
                    limits.read_timeout.count());
    }
    co_return;
  } else {
    request.resize(n);
    // Rendered on a worker: the page reads the store's usage and asks the event loop.
    auto answer = std::make_shared<Answer>();
    if (!ep->Post([conn, answer, render, request = std::move(request)] {
          std::string r;
          try {
            r = HttpResponse(request, render);
          } catch (const std::exception& e) {
            spdlog::error("metrics: rendering the page failed: {}", e.what());
          }
          {
            std::lock_guard lock(answer->mu);
            answer->response = std::move(r);
            answer->done = true;
          }
          conn->Wake();
        })) {
      co_return;
    }
    for (;;) {
      {
        std::lock_guard lock(answer->mu);
        if (answer->done) {
          response = std::move(answer->response);
          break;
        }
      }
      if (ep->stopping() || conn->closed()) co_return;
      co_await conn->Park();
    }
    if (response.empty()) co_return;
  }
  if (!co_await detail::WriteAll(conn, std::move(response), limits.write_timeout)) co_return;
  // Read what the client still sends (briefly, bounded) so that closing does not reset the
  // connection before it has read the answer.
  boost::system::error_code ignored;
  conn->socket().shutdown(tcp::socket::shutdown_send, ignored);
  conn->Arm(std::chrono::milliseconds(1000));
  char sink[1024];
  for (int i = 0; i < 64; ++i) {
    auto [rec, m] = co_await conn->socket().async_read_some(asio::buffer(sink), kNoThrow);
    if (rec) break;
  }
  conn->Disarm();
}

}  // namespace

struct MetricsServer::Impl {
  std::shared_ptr<Ep> endpoint;
  std::function<std::string()> render;
  std::uint16_t port = 0;
  bool serving = false;
};

Result<std::unique_ptr<MetricsServer>> MetricsServer::Bind(asio::io_context& io,
                                                           const std::string& addr,
                                                           std::function<std::string()> render,
                                                           EndpointLimits limits) {
  auto hp = net::ParseHostPort(addr);
  if (!hp.ok()) return Err(Code::kInvalid, "--metrics: {}", hp.status().message());
  boost::system::error_code ec;
  const auto ip = hp->host.empty() ? asio::ip::address(asio::ip::address_v4::any())
                                   : asio::ip::make_address(hp->host, ec);
  if (ec) return Err(Code::kInvalid, "--metrics {}: '{}' is not an IP address", addr, hp->host);
  auto ep = std::make_shared<Ep>(
      io, "metrics", limits,
      "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  auto& acceptor = ep->acceptor();
  const tcp::endpoint where(ip, hp->port);
  if (acceptor.open(where.protocol(), ec); ec) {
    return Err(Code::kIOError, "creating the metrics socket: {}", ec.message());
  }
  acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (acceptor.bind(where, ec); ec) {
    return Err(Code::kIOError, "--metrics: cannot listen on {}: {}", addr, ec.message());
  }
  if (acceptor.listen(static_cast<int>(limits.max_connections), ec); ec) {
    return Err(Code::kIOError, "listening for metrics: {}", ec.message());
  }
  const auto port = acceptor.local_endpoint(ec).port();
  std::unique_ptr<MetricsServer> server(new MetricsServer);
  server->impl_ = std::make_unique<Impl>(Impl{std::move(ep), std::move(render), port, false});
  return server;
}

void MetricsServer::Serve() {
  if (!impl_->endpoint || impl_->serving) return;
  impl_->serving = true;
  impl_->endpoint->Start([render = impl_->render](std::shared_ptr<Ep> e, std::shared_ptr<Conn> c) {
    return ServeMetrics(std::move(e), std::move(c), render);
  });
}

std::uint16_t MetricsServer::port() const { return impl_->port; }

void MetricsServer::Stop() {
  if (!impl_ || !impl_->endpoint) return;
  impl_->endpoint->Stop();
  impl_->endpoint.reset();
}

MetricsServer::~MetricsServer() { Stop(); }

ChunkUsage::ChunkUsage(std::filesystem::path dir, std::chrono::milliseconds max_age,
                       std::function<cas::ChunkStore::Packed()> packed)
    : dir_(std::move(dir)), max_age_(max_age), packed_(std::move(packed)) {}

ChunkUsage::~ChunkUsage() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

ChunkUsage::Figure ChunkUsage::Get(std::chrono::milliseconds wait) {
  std::unique_lock lock(mu_);
  if (figure_.at != std::chrono::steady_clock::time_point{} &&
      std::chrono::steady_clock::now() - figure_.at <= max_age_) {
    return figure_;
  }
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
  if (requested_ == completed_) {  // none running: ask for one
    ++requested_;
    cv_.notify_all();
  }
  const auto want = requested_;
  cv_.wait_for(lock, wait, [&] { return completed_ >= want || stop_; });
  return figure_;
}

void ChunkUsage::Loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || requested_ > completed_; });
    if (stop_) return;
    const auto target = requested_;
    lock.unlock();
    const Figure f = Walk();
    lock.lock();
    figure_ = f;
    completed_ = target;
    cv_.notify_all();
  }
}

ChunkUsage::Figure ChunkUsage::Walk() const {
  Figure f;
  f.at = std::chrono::steady_clock::now();
  std::error_code ec;
  for (std::filesystem::recursive_directory_iterator it(dir_, ec), end; !ec && it != end && !stop_;
       it.increment(ec)) {
    if (it.depth() == 0 && it->path().filename() == "tmp") {
      it.disable_recursion_pending();
      continue;
    }
    // The shard directories, and the store's files (`layout`, the small-blob database, counted
    // by `packed_` instead).
    if (it.depth() == 0) continue;
    std::error_code fec;
    if (it->is_regular_file(fec)) {
      ++f.chunks;
      f.bytes += it->file_size(fec);
    }
  }
  if (packed_) {
    const cas::ChunkStore::Packed p = packed_();
    f.chunks += p.chunks;
    f.bytes += p.bytes;
  }
  return f;
}

}  // namespace foreverfs::app
