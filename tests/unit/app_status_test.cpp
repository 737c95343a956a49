// `foreverfs status` rendered from a snapshot: the text lines, the JSON object, and the merge of
// the replicator's peers with the transport's addresses.

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "app/status.h"

namespace foreverfs::app {
namespace {

using namespace std::chrono_literals;

// 2026-01-02T03:04:05Z
const auto kEpoch = std::chrono::system_clock::time_point(1767323045s);

StatusSnapshot Sample() {
  StatusSnapshot s;
  s.node_id = 0xabc;
  s.listen = "10.0.0.1:3000";
  s.data = "/var/lib/foreverfs/mnt-fs";
  s.free_bytes = 3ull << 30;
  s.total_bytes = 10ull << 30;
  s.local_chunks = 4;
  s.local_bytes = 4ull << 20;
  s.changes = 17;
  s.backlog = 2;
  s.live_files = 5;
  s.files_missing_chunks = 1;
  s.now = kEpoch + 3725s;  // 1h02m05s later
  server::PeerStatus up;
  up.node_id = 0x1234;
  up.addr = "10.0.0.2:3000";
  up.remote = "10.0.0.2:41000";
  up.outbound = true;
  up.connected = true;
  up.connected_since = kEpoch;
  up.bytes_in = 1 << 20;
  up.bytes_out = 2 << 20;
  up.changes_to_send = 3;
  up.chunks_in_flight = 1;
  up.records_received = 9;
  up.peer_seq = 8;
  server::PeerStatus gone;
  gone.remote = "10.0.0.3:50000";
  gone.last_error = "key \"proof\" failed";
  gone.last_error_at = kEpoch + 3720s;
  s.peers = {up, gone};
  return s;
}

TEST(AppStatus, Text) {
  const auto lines = RenderStatusText(Sample());
  const std::vector<std::string> want = {
      "node        0000000000000abc",
      "listening   10.0.0.1:3000",
      "data        /var/lib/foreverfs/mnt-fs (3.0 GiB free of 10.0 GiB)",
      "local       4 chunks, 4.0 MiB",
      "changes     17 (local change sequence)",
      "backlog     2 chunks to fetch",
      "files       5 live, 1 with chunks missing here",
      "peers       1 connected, 2 known",
      "  0000000000001234  10.0.0.2:3000  dialed  connected since 2026-01-02T03:04:05Z (1h02m)  "
      "in 1.0 MiB  out 2.0 MiB  backlog 3 changes to send, 1 chunks requested",
      "  ?  10.0.0.3:50000  not connected",
      "      last error: key \"proof\" failed (2026-01-02T04:06:05Z, 5s ago)",
  };
  EXPECT_EQ(lines, want);
}

TEST(AppStatus, TextCatchUpAndReplicas) {
  auto s = Sample();
  s.peers.clear();
  s.replicas = 2;
  s.catch_up = {true, 10, 4, 0, 8u << 20, 2.0};
  const auto lines = RenderStatusText(s);
  ASSERT_EQ(lines.size(), 9u);
  EXPECT_EQ(lines[6], "catch-up    4 of 10 chunks (8.0 MiB), 2.0 chunks/s, 4.0 MiB/s, 2s");
  EXPECT_EQ(lines[7],
            "files       5 live, 1 with chunks missing here (--replicas 2: this node holds only "
            "its share; see user.foreverfs.replicas per file)");
  EXPECT_EQ(lines[8], "peers       0 connected, 0 known");
}

TEST(AppStatus, Json) {
  EXPECT_EQ(
      RenderStatusJson(Sample()),
      R"({"node":"0000000000000abc","listen":"10.0.0.1:3000","data":"/var/lib/foreverfs/mnt-fs",)"
      R"("free_bytes":3221225472,"total_bytes":10737418240,"changes":17,"backlog_chunks":2,)"
      R"("replicas":0,"local":{"chunks":4,"bytes":4194304},)"
      R"("files":{"live":5,"missing_chunks_locally":1},)"
      R"("catch_up":{"running":false,"done":0,"total":0,"failed":0,"bytes":0,"seconds":0.000,)"
      R"("chunks_per_second":0.000,"bytes_per_second":0},)"
      R"("placement":{"enabled":false,"passes":0,"last_pass_seconds_ago":-1.000,)"
      R"("ranked_here":0,"missing_here":0,"primary":0,"under_replicated":0,"extra":0,)"
      R"("extra_bytes":0,"cache_limit":0,"pinned":0,"dropped":0,"dropped_bytes":0,)"
      R"("unconfirmed":0},"peers":[)"
      R"({"node":"0000000000001234","addr":"10.0.0.2:3000","remote":"10.0.0.2:41000",)"
      R"("direction":"dialed","connected":true,"connected_since":"2026-01-02T03:04:05Z",)"
      R"("connected_seconds":3725,"bytes_in":1048576,"bytes_out":2097152,)"
      R"("backlog":{"changes_to_send":3,"chunks_requested":1},"records_received":9,"peer_seq":8,)"
      R"("long_lived":true,"last_error":null},)"
      R"({"node":null,"addr":"","remote":"10.0.0.3:50000","direction":"accepted",)"
      R"("connected":false,"last_error":"key \"proof\" failed",)"
      R"("last_error_at":"2026-01-02T04:06:05Z"}],"members":[]})");
}

// The placement pass (--replicas N): ranked, missing, under-replicated, the cache; text and
// JSON.
TEST(AppStatus, Placement) {
  auto s = Sample();
  s.peers.clear();
  s.replicas = 2;
  server::PlacementStatus& p = s.placement;
  p.enabled = true;
  p.passes = 3;
  p.last_pass_seconds_ago = 4;
  p.ranked_here = 100;
  p.missing_here = 7;
  p.primary = 51;
  p.under_replicated = 5;
  p.extra = 12;
  p.extra_bytes = 12u << 20;
  p.cache_limit = 1u << 30;
  p.pinned = 2;
  p.dropped = 30;
  p.dropped_bytes = 30u << 20;
  p.unconfirmed = 1;
  const auto lines = RenderStatusText(s);
  ASSERT_EQ(lines.size(), 10u);
  EXPECT_EQ(lines[7],
            "placement   100 chunks ranked here (7 missing); first ranked for 51: 5 "
            "under-replicated (pass 4s ago)");
  EXPECT_EQ(lines[8],
            "cache       12 copies not ranked here (12.0 MiB of 1024.0 MiB cache), 2 pinned; 30 "
            "dropped (30.0 MiB); 1 over the cache wait for their ranked members");
  const auto j = RenderStatusJson(s);
  EXPECT_NE(j.find(R"("placement":{"enabled":true,"passes":3,"last_pass_seconds_ago":4.000,)"
                   R"("ranked_here":100,"missing_here":7,"primary":51,"under_replicated":5,)"
                   R"("extra":12,"extra_bytes":12582912,"cache_limit":1073741824,"pinned":2,)"
                   R"("dropped":30,"dropped_bytes":31457280,"unconfirmed":1},"peers":[])"),
            std::string::npos)
      << j;
  p.passes = 0;
  p.unconfirmed = 0;
  const auto first = RenderStatusText(s);
  EXPECT_EQ(first[7],
            "placement   100 chunks ranked here (7 missing); first ranked for 51: 5 "
            "under-replicated (no pass yet)");
  EXPECT_EQ(first[8],
            "cache       12 copies not ranked here (12.0 MiB of 1024.0 MiB cache), 2 pinned; 30 "
            "dropped (30.0 MiB)");
}

// Members: every state, the unreachable flag, never seen, this node, weights; text and JSON.
TEST(AppStatus, Members) {
  StatusSnapshot s = Sample();
  s.steady_now = std::chrono::milliseconds(100000);
  server::MemberInfo self;
  self.node_id = 0xabc;
  self.addr = "10.0.0.1:3000";
  self.self = true;
  self.incarnation = 2;
  self.weight = 16;
  server::MemberInfo suspect;
  suspect.node_id = 0x1234;
  suspect.addr = "10.0.0.2:3000";
  suspect.state = net::MemberState::kSuspect;
  suspect.unreachable = true;
  suspect.incarnation = 7;
  suspect.last_seen = std::chrono::milliseconds(40000);
  server::MemberInfo down;
  down.node_id = 0x5678;
  down.state = net::MemberState::kDown;
  s.members = {self, suspect, down};
  const std::string j = RenderStatusJson(s);
  EXPECT_NE(
      j.find(R"("members":[{"node":"0000000000000abc","addr":"10.0.0.1:3000","state":"alive",)"
             R"("unreachable":false,"incarnation":2,"weight":16,"linked":false,"self":true,)"
             R"("seen_seconds_ago":null},)"),
      std::string::npos)
      << j;
  EXPECT_NE(j.find(R"({"node":"0000000000001234","addr":"10.0.0.2:3000","state":"suspect",)"
                   R"("unreachable":true,"incarnation":7,"weight":1,"linked":false,"self":false,)"
                   R"("seen_seconds_ago":60.0})"),
            std::string::npos)
      << j;
  EXPECT_NE(j.find(R"("state":"down")"), std::string::npos) << j;
  std::string text;
  for (const auto& line : RenderStatusText(s)) text += line + "\n";
  EXPECT_NE(text.find("members     3 (1 alive, 1 down, 1 suspect)"), std::string::npos) << text;
  EXPECT_NE(text.find("0000000000000abc  10.0.0.1:3000  this node  incarnation 2  weight 16\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("0000000000001234  10.0.0.2:3000  suspect (unreachable)  incarnation 7  "
                      "weight 1  seen 1m00s ago"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("0000000000005678  -  down  incarnation 0  weight 1  not seen since start"),
            std::string::npos)
      << text;
}

TEST(AppStatus, JsonStringEscapes) {
  EXPECT_EQ(JsonString("a\"b\\c\n\x01"), R"("a\"b\\c\u000a\u0001")");
}

TEST(AppStatus, Durations) {
  EXPECT_EQ(Duration(0), "0s");
  EXPECT_EQ(Duration(59.9), "59s");
  EXPECT_EQ(Duration(60), "1m00s");
  EXPECT_EQ(Duration(3599), "59m59s");
  EXPECT_EQ(Duration(3600), "1h00m");
  EXPECT_EQ(Duration(86399), "23h59m");
  EXPECT_EQ(Duration(90000), "1d01h");
}

TEST(AppStatus, MergePeers) {
  std::vector<server::PeerStatus> rows(2);
  rows[0].node_id = 1;
  rows[0].addr = "a:1";
  rows[0].connected = true;
  rows[0].last_error = "old";
  rows[0].last_error_at = kEpoch;
  rows[1].node_id = 2;
  rows[1].addr = "b:1";
  std::vector<net::TcpTransport::AddrStatus> addrs(4);
  addrs[0].addr = "a:1";  // same address: a newer error replaces the row's
  addrs[0].last_error = "newer";
  addrs[0].last_error_at = kEpoch + 1s;
  addrs[1].addr = "elsewhere:1";  // same node id, another address: merged, older error kept
  addrs[1].node_id = 2;
  addrs[2].addr = "c:1";  // unknown: a row of its own, not connected
  addrs[2].dialing = true;
  addrs[2].last_error = "refused";
  addrs[2].last_error_at = kEpoch;
  addrs[3].addr = "a:1";  // an older error does not replace a newer one
  addrs[3].last_error = "oldest";
  addrs[3].last_error_at = kEpoch - 1s;
  const auto merged = MergePeers(rows, addrs);
  ASSERT_EQ(merged.size(), 3u);
  EXPECT_EQ(merged[0].last_error, "newer");
  EXPECT_TRUE(merged[0].connected);
  EXPECT_EQ(merged[1].addr, "b:1");
  EXPECT_EQ(merged[1].last_error, "");
  EXPECT_EQ(merged[2].addr, "c:1");
  EXPECT_TRUE(merged[2].outbound);
  EXPECT_FALSE(merged[2].connected);
  EXPECT_EQ(merged[2].last_error, "refused");
}

}  // namespace
}  // namespace foreverfs::app
