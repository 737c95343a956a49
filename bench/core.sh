#!/usr/bin/env bash
# Core figures, measured in one run on this machine:
#  - cp of a SIZE_MIB file into a single-node mount, against cp to a directory on the same disk;
#  - time from the end of that cp until a second node (another network namespace) reads the
#    file byte-identical;
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
cnode_stop 2; cnode_stop 1
mbps() { echo "$SIZE / $1" | bc -l | xargs printf '%.0f'; }
printf '%-52s %10s %10s %8s\n' "workload (${SIZE} MiB)" "foreverfs" "baseline" "ratio"
printf '%-52s %9ss %9ss %7.2fx\n' "cp into a single-node mount (baseline: local disk + sync)" "$cp_s" "$base" "$(echo "$base / $cp_s" | bc -l)"
printf '%-52s %9ss %10s %8s\n' "node 2 joins, reads it byte-identical" "$rep_s" "-" "-"
printf '%-52s %10s\n' "throughput cp / replication (MiB/s)" "$(mbps "$cp_s") / $(mbps "$rep_s")"
printf '%-52s %10s\n' "peak RSS node 1 / node 2 (MiB)" "$rss1 / $rss2"
