#!/usr/bin/env bash
# Several nodes, each with a real FUSE mount in its own network namespace: replication through
# a relay, learning peers from peers, directory renames, a partition that heals, and a node
# killed with -9 that restarts and catches up.
set -u
cd "$(dirname "$0")/../.."
. tests/lib/cluster.sh
trap cluster_cleanup EXIT
PASS=0; FAIL=0
gone() { [ ! -e "$1" ]; }
T=20

cluster_net; cluster_host 1; cluster_host 2; cluster_host 3
check "node 1 mounts" cnode_start 1
check "node 2 mounts, peer 1" cnode_start 2 --peer "$(caddr 1)"
check "node 3 mounts, peer 2 only" cnode_start 3 --peer "$(caddr 2)"
A=$(cmnt 1) B=$(cmnt 2) C=$(cmnt 3)

head -c 31457291 /dev/urandom >"$CW/f30"
cp "$CW/f30" "$A/f30"
check "30 MiB file written on 1 reads identical on 3 (through 2)" ceventually $T same "$CW/f30" "$C/f30"

mkdir -p "$B/d/e"; echo one >"$B/d/e/one"; echo two >"$B/d/two"
check "tree made on 2 appears on 1" ceventually $T same "$B/d/e/one" "$A/d/e/one"
mv "$B/d" "$B/d2"
check "directory rename on 2: subtree under the new name on 3" ceventually $T same "$B/d2/e/one" "$C/d2/e/one"
check "directory rename on 2: old name gone on 1" ceventually $T gone "$A/d"

# A partition: node 3 is cut off, changes happen on 1, the link comes back.
clink_down 3
echo "while cut off" >"$CW/cut"
cp "$CW/cut" "$A/cut.txt"
rm "$A/d2/two"
echo "made on 3 while cut off" >"$C/island.txt"
sleep 2
clink_up 3
check "after the partition heals, 3 sees the file written on 1" ceventually $T same "$CW/cut" "$C/cut.txt"
check "after the partition heals, 3 sees the delete made on 1" ceventually $T gone "$C/d2/two"
check "after the partition heals, 1 sees the file written on 3" ceventually $T same "$C/island.txt" "$A/island.txt"

# kill -9 of node 2: node 3 learned about node 1 from it, so it stays in the cluster.
cnode_kill 2
echo "written while 2 is dead" >"$CW/dead"
cp "$CW/dead" "$A/dead.txt"
check "3 still gets changes from 1 after its only --peer died" ceventually $T same "$CW/dead" "$C/dead.txt"
check "node 2 restarts after kill -9" cnode_start 2 --peer "$(caddr 1)"
check "2 catches up on what was written while it was dead" ceventually $T same "$CW/dead" "$B/dead.txt"
check "2 still reads the 30 MiB file" ceventually $T same "$CW/f30" "$B/f30"

head -c 100 /dev/urandom >"$CW/short"
cp "$CW/short" "$C/f30"
check "overwrite on 3 with a shorter file is seen on 1" ceventually $T same "$CW/short" "$A/f30"

for i in 3 2 1; do check "unmount of $i exits 0" cnode_stop $i; done
echo "$PASS passed, $FAIL failed"
[ $FAIL = 0 ]
