#!/usr/bin/env bash
# Core figures, measured in one run on this machine:
#  - cp of a SIZE_MIB file into a single-node mount, against cp to a directory on the same disk;
#  - time from the end of that cp until a second node (another network namespace) reads the
#    file byte-identical, over TLS, against sending the same bytes over raw TCP between the
#    same two namespaces;
#  - peak RSS of each foreverfs process.
# Usage: sudo bench/core.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-1024}
. tests/lib/cluster.sh
trap cluster_cleanup EXIT
cluster_net; cluster_host 1; cluster_host 2

src=$CW/src.bin
head -c $((SIZE * 1048576)) /dev/urandom >"$src"
sync
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }

# Baseline: the same copy onto the local disk.
t0=$(now); cp "$src" "$CW/local.bin"; sync; t1=$(now)
base=$(secs "$t0" "$t1")


cnode_start 1
t0=$(now); cp "$src" "$(cmnt 1)/file.bin"; t1=$(now)
cp_s=$(secs "$t0" "$t1")

cnode_start 2 --peer "$(caddr 1)"
t2=$(now)
ceventually 600 cmp -s "$src" "$(cmnt 2)/file.bin"
t3=$(now)
rep_s=$(secs "$t2" "$t3")

rss1=$(cpeak_rss "$(cpid 1)"); rss2=$(cpeak_rss "$(cpid 2)")

# Baseline for replication: the same bytes over raw TCP between the same two namespaces.
cin 2 python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.98.0.2", 5999)); s.listen(1); c, _ = s.accept()
buf = bytearray(1 << 20)
while c.recv_into(buf): pass
' &
rx=$!
sleep 0.5
t4=$(now)
cin 1 python3 -c '
import socket, sys
c = socket.create_connection(("10.98.0.2", 5999))
with open(sys.argv[1], "rb") as f: c.sendfile(f)
c.close()
' "$src"
wait $rx
t5=$(now)
tcp_s=$(secs "$t4" "$t5")
cnode_stop 2; cnode_stop 1
mbps() { echo "$SIZE / $1" | bc -l | xargs printf '%.0f'; }
printf '%-52s %10s %10s %8s\n' "workload (${SIZE} MiB)" "foreverfs" "baseline" "ratio"
printf '%-52s %9ss %9ss %7.2fx\n' "cp into a single-node mount (baseline: local disk + sync)" "$cp_s" "$base" "$(echo "$base / $cp_s" | bc -l)"
printf '%-52s %9ss %9ss %7.2fx\n' "node 2 joins, reads it identical (baseline: raw TCP)" "$rep_s" "$tcp_s" "$(echo "$tcp_s / $rep_s" | bc -l)"
printf '%-52s %10s\n' "throughput cp / replication (MiB/s)" "$(mbps "$cp_s") / $(mbps "$rep_s")"
printf '%-52s %10s\n' "peak RSS node 1 / node 2 (MiB)" "$rss1 / $rss2"
