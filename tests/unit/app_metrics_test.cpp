// The Prometheus page (text format 0.0.4), the latency histogram, the HTTP server's routing and
// bounds on an event loop (deadlines, a cap, rendering off the loop, a prompt Stop), and the
// cached walk of chunks/.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include "app/metrics.h"
#include "temp_dir.h"

namespace foreverfs::app {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

TEST(AppMetricsTest, HistogramBucketsAreCumulative) {
  Histogram h;
  h.Observe(5us);    // <= 1e-05
  h.Observe(200us);  // <= 0.00025
  h.Observe(200us);
  h.Observe(3ms);  // <= 0.005
  h.Observe(20s);  // over every bound: only +Inf
  const auto s = h.Read();
  EXPECT_EQ(s.count, 5u);
  EXPECT_EQ(s.cumulative[0], 1u);                              // le 1e-05
  EXPECT_EQ(s.cumulative[2], 1u);                              // le 0.0001
  EXPECT_EQ(s.cumulative[3], 3u);                              // le 0.00025
  EXPECT_EQ(s.cumulative[7], 4u);                              // le 0.005
  EXPECT_EQ(s.cumulative[Histogram::kBounds.size() - 1], 4u);  // le 10
  EXPECT_NEAR(s.sum_seconds, 20.003405, 1e-9);
  // Exactly on a bound counts in that bucket (le is "less or equal").
  Histogram edge;
  edge.Observe(1ms);
  EXPECT_EQ(edge.Read().cumulative[5], 1u);  // le 0.001
  EXPECT_EQ(edge.Read().cumulative[4], 0u);  // le 0.0005
}

TEST(AppMetricsTest, PageHasEveryMetricInTextFormat) {
  OpLatency lat({"lookup", "read"});
  lat.Observe(1, 2ms);
  lat.Observe(1, 30ms);
  lat.Observe(7, 1ms);  // unknown op: ignored
  MetricsSnapshot m{1048576, 3, 1000, 2000, 2, 5, 120302, 4147, 18, 7};
  const std::string page = RenderMetrics(m, &lat);
  for (const char* line : {
           "# TYPE foreverfs_bytes_stored gauge\nforeverfs_bytes_stored 1048576\n",
           "# TYPE foreverfs_chunks gauge\nforeverfs_chunks 3\n",
           "# TYPE foreverfs_bytes_sent_total counter\nforeverfs_bytes_sent_total 1000\n",
           "# TYPE foreverfs_bytes_received_total counter\nforeverfs_bytes_received_total 2000\n",
           "foreverfs_peers_connected 2\n",
           "foreverfs_replication_backlog 5\n",
           "# TYPE foreverfs_fuse_requests_total counter\n",
           "foreverfs_fuse_requests_total{read=\"polling\"} 120302\n",
           "foreverfs_fuse_requests_total{read=\"after_sleep\"} 4147\n",
           "# TYPE foreverfs_fuse_reader_takeovers_total counter\n"
           "foreverfs_fuse_reader_takeovers_total 18\n",
           "# TYPE foreverfs_fuse_reader_handoffs_total counter\n"
           "foreverfs_fuse_reader_handoffs_total 7\n",
           "# TYPE foreverfs_fuse_op_duration_seconds histogram\n",
           "foreverfs_fuse_op_duration_seconds_bucket{op=\"read\",le=\"0.001\"} 0\n",
           "foreverfs_fuse_op_duration_seconds_bucket{op=\"read\",le=\"0.0025\"} 1\n",
           "foreverfs_fuse_op_duration_seconds_bucket{op=\"read\",le=\"0.05\"} 2\n",
           "foreverfs_fuse_op_duration_seconds_bucket{op=\"read\",le=\"+Inf\"} 2\n",
           "foreverfs_fuse_op_duration_seconds_sum{op=\"read\"} 0.032\n",
           "foreverfs_fuse_op_duration_seconds_count{op=\"read\"} 2\n",
           "foreverfs_fuse_op_duration_seconds_count{op=\"lookup\"} 0\n",
       }) {
    EXPECT_NE(page.find(line), std::string::npos) << line << "\nnot in:\n" << page;
  }
  // Every line is a comment or "name{labels} value"; the page ends with a newline.
  ASSERT_FALSE(page.empty());
  EXPECT_EQ(page.back(), '\n');
  std::size_t start = 0;
  while (start < page.size()) {
    auto end = page.find('\n', start);
    std::string line = page.substr(start, end - start);
    start = end + 1;
    if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) continue;
    EXPECT_TRUE(line.starts_with("foreverfs_")) << line;
    EXPECT_EQ(std::count(line.begin(), line.end(), ' '), 1) << line;
  }
  // Without latencies (no mount yet) the gauges are still there.
  EXPECT_EQ(RenderMetrics(m, nullptr).find("fuse_op"), std::string::npos);
}

TEST(AppMetricsTest, OnlyGetMetricsIsServed) {
  auto body = [] { return std::string("x 1\n"); };
  std::string ok = HttpResponse("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", body);
  EXPECT_TRUE(ok.starts_with("HTTP/1.1 200 OK\r\n")) << ok;
  EXPECT_NE(ok.find("Content-Type: text/plain; version=0.0.4"), std::string::npos);
  EXPECT_NE(ok.find("Content-Length: 4\r\n"), std::string::npos);
  EXPECT_TRUE(ok.ends_with("\r\n\r\nx 1\n"));
  EXPECT_TRUE(HttpResponse("GET /metrics?x=1 HTTP/1.0\r\n\r\n", body).starts_with("HTTP/1.1 200"));
  EXPECT_TRUE(HttpResponse("GET / HTTP/1.1\r\n\r\n", body).starts_with("HTTP/1.1 404"));
  EXPECT_TRUE(HttpResponse("GET /metricsx HTTP/1.1\r\n\r\n", body).starts_with("HTTP/1.1 404"));
  EXPECT_TRUE(HttpResponse("POST /metrics HTTP/1.1\r\n\r\n", body).starts_with("HTTP/1.1 404"));
  EXPECT_TRUE(HttpResponse("garbage", body).starts_with("HTTP/1.1 400"));
  EXPECT_TRUE(HttpResponse("", body).starts_with("HTTP/1.1 400"));
}

// An event loop on a thread of its own, as in the daemon.
class Loop {
 public:
  Loop() : guard_(asio::make_work_guard(io_)), thread_([this] { io_.run(); }) {}
  ~Loop() {
    guard_.reset();
    io_.stop();
    thread_.join();
  }
  asio::io_context& io() { return io_; }
  std::thread::id id() const { return thread_.get_id(); }

 private:
  asio::io_context io_{1};
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread thread_;
};

int Connect(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Everything the server sends until it closes; "timeout" if it has not within `limit`.
std::string ReadToEnd(int fd, std::chrono::milliseconds limit = 3s) {
  std::string out;
  const auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return "timeout";
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

std::string Fetch(std::uint16_t port, const std::string& request) {
  int fd = Connect(port);
  if (fd < 0) return "connect failed";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string out = ReadToEnd(fd);
  ::close(fd);
  return out;
}

TEST(AppMetricsTest, ServerAnswersOverTcpAndBoundsRequests) {
  Loop loop;
  auto server = MetricsServer::Bind(loop.io(), "127.0.0.1:0",
                                    [] { return std::string("foreverfs_chunks 9\n"); });
  ASSERT_TRUE(server.ok()) << server.status().message();
  (*server)->Serve();
  const auto port = (*server)->port();
  ASSERT_NE(port, 0);
  EXPECT_TRUE(Fetch(port, "GET /metrics HTTP/1.1\r\n\r\n").ends_with("foreverfs_chunks 9\n"));
  EXPECT_TRUE(Fetch(port, "GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
  // A request that never ends is cut at 8 KiB and refused, not buffered without bound.
  EXPECT_TRUE(Fetch(port, "GET /metrics HTTP/1.1\r\nX: " + std::string(20000, 'a'))
                  .starts_with("HTTP/1.1 400"));
  EXPECT_TRUE(Fetch(port, "garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
  EXPECT_TRUE(Fetch(port, std::string("\0\xff\r\n\r\n", 6)).starts_with("HTTP/1.1 400"));
  // Still serving after all that.
  EXPECT_TRUE(Fetch(port, "GET /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));
  EXPECT_FALSE(MetricsServer::Bind(loop.io(), "nonsense", [] { return std::string(); }).ok());
  EXPECT_FALSE(MetricsServer::Bind(loop.io(), "host.example:1", [] { return std::string(); }).ok());
  (*server)->Stop();
}

TEST(AppMetricsTest, StalledClientDoesNotDelayAnother) {
  Loop loop;
  EndpointLimits limits;
  limits.read_timeout = 1500ms;
  auto server = MetricsServer::Bind(
      loop.io(), "127.0.0.1:0", [] { return std::string("foreverfs_chunks 1\n"); }, limits);
  ASSERT_TRUE(server.ok()) << server.status().message();
  (*server)->Serve();
  const auto port = (*server)->port();
  // One client sends half a request and stalls; another is answered meanwhile, at once.
  int stalled = Connect(port);
  ASSERT_GE(stalled, 0);
  ::send(stalled, "GET /metr", 9, MSG_NOSIGNAL);
  std::this_thread::sleep_for(50ms);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(Fetch(port, "GET /metrics HTTP/1.1\r\n\r\n").ends_with("foreverfs_chunks 1\n"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 500ms);
  // The stalled one is closed at its deadline, without an answer.
  EXPECT_EQ(ReadToEnd(stalled), "");
  EXPECT_GE(std::chrono::steady_clock::now() - start, 1200ms);
  ::close(stalled);
  (*server)->Stop();
}

TEST(AppMetricsTest, TwoScrapesAtOnceAreRenderedTogetherOffTheEventLoop) {
  Loop loop;
  std::atomic<bool> on_loop{false};
  auto server = MetricsServer::Bind(loop.io(), "127.0.0.1:0", [&] {
    on_loop = on_loop || std::this_thread::get_id() == loop.id();
    // A page may wait for the event loop (the daemon asks it for the backlog).
    std::promise<int> p;
    asio::post(loop.io(), [&] { p.set_value(5); });
    auto f = p.get_future();
    const bool answered = f.wait_for(1s) == std::future_status::ready;
    std::this_thread::sleep_for(400ms);
    return fmt::format("foreverfs_replication_backlog {}\n", answered ? f.get() : -1);
  });
  ASSERT_TRUE(server.ok()) << server.status().message();
  (*server)->Serve();
  const auto port = (*server)->port();
  const auto start = std::chrono::steady_clock::now();
  auto a =
      std::async(std::launch::async, [&] { return Fetch(port, "GET /metrics HTTP/1.1\r\n\r\n"); });
  auto b =
      std::async(std::launch::async, [&] { return Fetch(port, "GET /metrics HTTP/1.1\r\n\r\n"); });
  EXPECT_TRUE(a.get().ends_with("foreverfs_replication_backlog 5\n"));
  EXPECT_TRUE(b.get().ends_with("foreverfs_replication_backlog 5\n"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 750ms);  // one after the other: 800 ms
  EXPECT_FALSE(on_loop.load());
  (*server)->Stop();
}

TEST(AppMetricsTest, SilentClientDoesNotBlockStopAndTheCapHolds) {
  Loop loop;
  EndpointLimits limits;  // 5 s to send a request
  limits.max_connections = 2;
  auto server = MetricsServer::Bind(
      loop.io(), "127.0.0.1:0", [] { return std::string("x 1\n"); }, limits);
  ASSERT_TRUE(server.ok()) << server.status().message();
  (*server)->Serve();
  const auto port = (*server)->port();
  int silent[2] = {Connect(port), Connect(port)};
  std::this_thread::sleep_for(100ms);
  // A third connection is answered 503 at once.
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(Fetch(port, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  // Stop does not wait for the two that send nothing; they see their connection end.
  auto stopped = std::async(std::launch::async, [&] { (*server)->Stop(); });
  const bool prompt = stopped.wait_for(1s) == std::future_status::ready;
  EXPECT_TRUE(prompt) << "Stop waited for clients that send nothing";
  stopped.wait();
  for (int fd : silent) {
    EXPECT_EQ(ReadToEnd(fd, 1s), "");
    ::close(fd);
  }
  EXPECT_EQ(Fetch(port, "GET /metrics HTTP/1.1\r\n\r\n"), "connect failed");
}

TEST(AppMetricsTest, StopBeforeServeClosesTheSocket) {
  Loop loop;
  auto server = MetricsServer::Bind(loop.io(), "127.0.0.1:0", [] { return std::string(); });
  ASSERT_TRUE(server.ok()) << server.status().message();
  const auto port = (*server)->port();
  (*server)->Stop();
  EXPECT_EQ(Fetch(port, "GET /metrics HTTP/1.1\r\n\r\n"), "connect failed");
}

TEST(AppMetricsTest, ChunkUsageWalksOffThePathAndCachesForMaxAge) {
  test::TempDir dir;
  const auto chunks = dir.path() / "chunks";
  auto put = [&](const std::filesystem::path& rel, std::size_t size) {
    std::filesystem::create_directories((chunks / rel).parent_path());
    std::ofstream(chunks / rel) << std::string(size, 'c');
  };
  put("ab/abcd01", 100);
  put("ab/abce02", 50);
  put("tmp/partial", 1000);  // a chunk being written is not counted
  put("layout", 20);         // nor the store's layout file
  ChunkUsage usage(chunks, 300ms);
  auto first = usage.Get(5s);
  EXPECT_EQ(first.chunks, 2u);
  EXPECT_EQ(first.bytes, 150u);
  put("01/010203", 10);
  auto cached = usage.Get(5s);  // younger than 300 ms: no walk
  EXPECT_EQ(cached.chunks, 2u);
  EXPECT_EQ(cached.at, first.at);
  std::this_thread::sleep_for(350ms);
  auto fresh = usage.Get(5s);
  EXPECT_EQ(fresh.chunks, 3u);
  EXPECT_EQ(fresh.bytes, 160u);
  EXPECT_GT(fresh.at, first.at);
  // Many callers at once share walks rather than each doing one.
  std::vector<std::thread> callers;
  std::atomic<int> right{0};
  for (int i = 0; i < 8; ++i) {
    callers.emplace_back([&] { right += usage.Get(5s).chunks == 3; });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(right.load(), 8);
  // A missing directory is zero, not an error.
  ChunkUsage none(dir.path() / "nothing");
  EXPECT_EQ(none.Get(5s).chunks, 0u);
  // What the store keeps packed (small blobs as rows of one database) is added to the walk.
  put("small.db", 4096);  // the database file itself is not a chunk
  ChunkUsage with_rows(chunks, 300ms, [] { return cas::ChunkStore::Packed{7, 7000}; });
  const auto all = with_rows.Get(5s);
  EXPECT_EQ(all.chunks, 3u + 7u);
  EXPECT_EQ(all.bytes, 160u + 7000u);
}

}  // namespace
}  // namespace foreverfs::app
