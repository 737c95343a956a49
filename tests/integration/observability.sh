#!/usr/bin/env bash
# Observability of a running cluster (issue 7): per-peer status with byte counters, connection
# times and last errors (also for a node holding the wrong key), catch-up progress in the log,
# Prometheus metrics over HTTP, and the replica xattrs user.foreverfs.replicas / .holders.
set -u
cd "$(dirname "$0")/../.."
. tests/lib/cluster.sh
trap cluster_cleanup EXIT
PASS=0; FAIL=0
T=20
for tool in curl jq getfattr setfattr; do
  command -v $tool >/dev/null || { echo "# $tool is missing (scripts/setup.sh installs it)"; exit 1; }
done

cluster_net; cluster_host 1; cluster_host 2; cluster_host 3
M1=10.98.0.1:9464 M2=10.98.0.2:9464
check "node 1 mounts with --metrics" cnode_start 1 --metrics $M1
check "node 2 mounts with -o metrics=" cnode_start 2 --peer "$(caddr 1)" -o metrics=$M2
A=$(cmnt 1) B=$(cmnt 2)

status() { "$FF" status "$(cmnt "$1")" --json; }
metrics() { cin "$1" curl -s --max-time 5 "http://$2/metrics"; }
metric() { metrics "$1" "$2" | awk -v n="$3" '$1 == n {print $2}'; }
node_id() { status "$1" | jq -r .node; }
connected_to() { [ "$(status "$1" | jq '[.peers[] | select(.connected)] | length')" = "$2" ]; }
check "nodes 1 and 2 connect" ceventually $T connected_to 1 1
ID1=$(node_id 1) ID2=$(node_id 2)

head -c $((20 * 1048576 + 5)) /dev/urandom >"$CW/f20"
cp "$CW/f20" "$A/f20"
check "20 MiB file written on 1 reads identical on 2" ceventually $T same "$CW/f20" "$B/f20"
settled() { [ "$(status 2 | jq '.backlog_chunks + .files.missing_chunks_locally')" = 0 ]; }
check "node 2 holds every chunk (backlog and missing files 0 in status)" ceventually $T settled
check "catch-up progress is in the log of node 2" grep -q "catch-up done: 21 of 21 chunks" "$CW/log2"

# --- status ------------------------------------------------------------------------------
S1=$(status 1)
echo "# status 1: $S1"
peer_ok() {
  echo "$S1" | jq -e --arg id "$ID2" '.peers[] | select(.node == $id and .connected)
    | (.bytes_in > 0 and .bytes_out > 20000000 and (.connected_since | test("^[0-9-]+T[0-9:]+Z$"))
       and .connected_seconds >= 0 and .backlog.changes_to_send >= 0)' >/dev/null
}
check "status --json of 1: node 2 with bytes in/out and connected since" peer_ok
usage_ok() { [ "$(status 1 | jq '.local.chunks >= 21 and .local.bytes > 20000000')" = true ]; }
check "status --json: local usage counts the chunks (a walk at most 2 s old)" ceventually 5 usage_ok
check "status (text) shows the peer with its traffic" \
  bash -c "'$FF' status '$A' | grep -E '^  $ID2 .*connected since .*UTC|Z.* in .* MiB  out .* MiB'"

# --- metrics -----------------------------------------------------------------------------
check "metrics of 1: bytes sent > 20 MiB" test "$(metric 1 $M1 foreverfs_bytes_sent_total)" -gt 20000000
check "metrics of 1: bytes received > 0" test "$(metric 1 $M1 foreverfs_bytes_received_total)" -gt 0
check "metrics of 2: bytes received > 20 MiB" test "$(metric 2 $M2 foreverfs_bytes_received_total)" -gt 20000000
check "metrics of 1: one peer connected" test "$(metric 1 $M1 foreverfs_peers_connected)" = 1
chunks_ok() { [ "$(metric 2 $M2 foreverfs_chunks)" -ge 21 ] && [ "$(metric 2 $M2 foreverfs_bytes_stored)" -gt 20000000 ]; }
check "metrics of 2: chunks and bytes stored" ceventually 5 chunks_ok
check "metrics of 2: replication backlog 0" test "$(metric 2 $M2 foreverfs_replication_backlog)" = 0
check "metrics of 1: write latency histogram counted the cp" \
  test "$(metric 1 $M1 'foreverfs_fuse_op_duration_seconds_count{op="write"}')" -gt 0
# The requests of 500 writes, counted by the daemon's op metrics.
op_count() { local v; v=$(metric 1 $M1 "foreverfs_fuse_op_duration_seconds_count{op=\"$1\"}"); echo "${v:-0}"; }
head -c 1048576 /dev/urandom >"$A/kp"
g0=$(op_count getxattr) w0=$(op_count write)
python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
for i in range(500): os.pwrite(fd, b"k" * 4096, (i * 8192) % 1048576)
os.close(fd)' "$A/kp"
g1=$(op_count getxattr) w1=$(op_count write)
echo "# 500 writes of 4 KiB: $((w1 - w0)) write and $((g1 - g0)) getxattr requests"
check "500 writes: 500 write requests" test $((w1 - w0)) -ge 500
# With FUSE_HANDLE_KILLPRIV_V2 (fuse/kernel_io.h) the kernel stops asking getxattr
# security.capability before each write: one request per write, not two.
check "500 writes: at most 2 getxattr requests (FUSE_HANDLE_KILLPRIV_V2)" test $((g1 - g0)) -le 2
check "metrics: text format 0.0.4 content type" \
  bash -c "nsenter --net=/run/netns/${CP}h1 curl -s -D - -o /dev/null http://$M1/metrics | grep -qi 'content-type: text/plain; version=0.0.4'"
check "metrics: any other path is 404" \
  test "$(cin 1 curl -s -o /dev/null -w '%{http_code}' http://$M1/)" = 404

# --- replica xattrs ----------------------------------------------------------------------
xattr() { getfattr --only-values -n "$2" "$1" 2>/dev/null; }
check "replicas of the file on node 1 is 2" test "$(xattr "$A/f20" user.foreverfs.replicas)" = 2
check "replicas of the file on node 2 is 2" test "$(xattr "$B/f20" user.foreverfs.replicas)" = 2
H=$(xattr "$A/f20" user.foreverfs.holders); echo "# holders on 1: $H"
check "holders name both node ids, with addresses" \
  bash -c "[[ '$H' == *$ID1@10.98.0.1:3000* && '$H' == *$ID2@10.98.0.2:3000* ]]"
check "the replica names are not listed by getfattr -d" \
  bash -c "! getfattr -d -m - '$A/f20' 2>/dev/null | grep -q foreverfs"
check "user.foreverfs.replicas is read-only" bash -c "! setfattr -n user.foreverfs.replicas -v 9 '$A/f20' 2>/dev/null"
mkdir "$A/dir"
check "a directory has no replica count" bash -c "! getfattr -n user.foreverfs.replicas '$A/dir' 2>/dev/null"
check "ls and stat still answer at once" bash -c "timeout 1 ls -l '$A' >/dev/null && timeout 1 stat '$A/f20' >/dev/null"

# --- a node with another key: refused, and the reason is in status on both sides -----------
"$FF" keygen "$CW/otherkey" >/dev/null
check "node 3 (another key) mounts" cnode_start 3 --peer "$(caddr 1)" -o key="$CW/otherkey"
refused_in_1() { status 1 | jq -e '.peers[] | select(.connected | not) | select(.addr | startswith("10.98.0.3"))
  | select(.last_error | test("refused"))' >/dev/null; }
check "status of 1 shows the wrong-key node with its last error" ceventually $T refused_in_1
refused_in_3() { status 3 | jq -e --arg a "$(caddr 1)" '.peers[] | select(.addr == $a and (.connected | not))
  | select(.last_error | test("refused|TLS"))' >/dev/null; }
check "status of 3 shows node 1 as refused, not connected" ceventually $T refused_in_3
check "the wrong-key node does not count as a holder" test "$(xattr "$A/f20" user.foreverfs.replicas)" = 2

# --- a peer goes away ----------------------------------------------------------------------
check "unmount of 2 exits 0" cnode_stop 2
gone_in_1() { status 1 | jq -e --arg id "$ID2" '.peers[] | select(.node == $id and (.connected | not))
  | select(.last_error | test("disconnected|refused|connect"))' >/dev/null; }
check "status of 1 keeps node 2 with why it went" ceventually $T gone_in_1
check "with node 2 gone, replicas on 1 is 1" test "$(xattr "$A/f20" user.foreverfs.replicas)" = 1
check "metrics of 1: no peer connected" ceventually $T test "$(metric 1 $M1 foreverfs_peers_connected)" = 0

# --- the local endpoints (issue 13, item 11) -------------------------------------------------
tasks() { ls "/proc/$(cpid 1)/task" | wc -l; }
maps() { wc -l <"/proc/$(cpid 1)/maps"; }
"$FF" status "$A" >/dev/null
T0=$(tasks) P0=$(maps)
for _ in $(seq 1 300); do "$FF" status "$A" >/dev/null || break; done
echo "# node 1 after 300 status calls: threads $T0 -> $(tasks), memory maps $P0 -> $(maps)"
check "300 status calls leave the threads of node 1 as they were" test "$(tasks)" -le "$T0"
check "300 status calls leave its memory maps bounded" test "$(maps)" -le $((P0 + 50))
# Clients that connect and send nothing: one on the control socket, one on the metrics port.
hold() { python3 -c 'import socket, sys, time
a = sys.argv[1]
s = socket.socket(socket.AF_UNIX) if a.startswith("/") else socket.socket()
s.connect(a if a.startswith("/") else (a.split(":")[0], int(a.split(":")[1])))
time.sleep(60)' "$1"; }
hold "$(cd "$CW/d1" && pwd)/control.sock" & H1=$!
cin 1 bash -c "$(declare -f hold); hold $M1" & H2=$!
sleep 0.3
quick_metrics() { timeout 2 nsenter --net=/run/netns/${CP}h1 curl -s --max-time 2 "http://$M1/metrics" | grep -q '^foreverfs_chunks '; }
check "metrics answer at once while a client sends nothing" quick_metrics
check "status answers at once while a client sends nothing" bash -c "timeout 2 '$FF' status '$A' >/dev/null"
stop_promptly() {
  local pid; pid=$(cpid 1)
  "$FUSERMOUNT" -u "$(cmnt 1)" || return 1
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid"; return $?; }
    sleep 0.1
  done
  return 1
}
check "unmount of 3 exits 0" cnode_stop 3
check "unmount of 1 exits 0 within 3 s though both clients still send nothing" stop_promptly
kill $H1 $H2 2>/dev/null; wait $H1 $H2 2>/dev/null
echo "$PASS passed, $FAIL failed"
[ $FAIL = 0 ]
