// The Prometheus page (text format 0.0.4), the latency histogram, and the HTTP server's routing
// and bounds.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "app/metrics.h"

namespace foreverfs::app {
namespace {

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
  MetricsSnapshot m{1048576, 3, 1000, 2000, 2, 5};
  const std::string page = RenderMetrics(m, &lat);
  for (const char* line : {
           "# TYPE foreverfs_bytes_stored gauge\nforeverfs_bytes_stored 1048576\n",
           "# TYPE foreverfs_chunks gauge\nforeverfs_chunks 3\n",
           "# TYPE foreverfs_bytes_sent_total counter\nforeverfs_bytes_sent_total 1000\n",
           "# TYPE foreverfs_bytes_received_total counter\nforeverfs_bytes_received_total 2000\n",
           "foreverfs_peers_connected 2\n",
           "foreverfs_replication_backlog 5\n",
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

std::string Fetch(std::uint16_t port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return "connect failed";
  }
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return out;
}

TEST(AppMetricsTest, ServerAnswersOverTcpAndBoundsRequests) {
  auto server =
      MetricsServer::Bind("127.0.0.1:0", [] { return std::string("foreverfs_chunks 9\n"); });
  ASSERT_TRUE(server.ok()) << server.status().message();
  (*server)->Serve();
  const auto port = (*server)->port();
  ASSERT_NE(port, 0);
  EXPECT_TRUE(Fetch(port, "GET /metrics HTTP/1.1\r\n\r\n").ends_with("foreverfs_chunks 9\n"));
  EXPECT_TRUE(Fetch(port, "GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
  // A request that never ends is cut at 8 KiB and refused, not buffered without bound.
  EXPECT_TRUE(Fetch(port, "GET /metrics HTTP/1.1\r\nX: " + std::string(20000, 'a'))
                  .starts_with("HTTP/1.1 400"));
  EXPECT_FALSE(MetricsServer::Bind("nonsense", [] { return std::string(); }).ok());
  EXPECT_FALSE(MetricsServer::Bind("host.example:1", [] { return std::string(); }).ok());
  (*server)->Stop();
}

}  // namespace
}  // namespace foreverfs::app
