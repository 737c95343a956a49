#!/usr/bin/env bash
# Two nodes in network namespaces: sparse files of any size up to 16 TiB cost what they hold and
# never stop replication; holes are reported by SEEK_HOLE/SEEK_DATA and made by fallocate -p;
# device nodes, sockets and FIFOs are stored, replicated, renamed, linked and removed as on ext4.
set -u
cd "$(dirname "$0")/../.."
. tests/lib/cluster.sh
trap cluster_cleanup EXIT
PASS=0; FAIL=0
gone() { [ ! -e "$1" ] && [ ! -L "$1" ]; }
statf() { stat -c "$1" "$2" 2>/dev/null; }
same_stat() { [ "$(statf "$1" "$2")" = "$(statf "$1" "$3")" ] && [ -n "$(statf "$1" "$2")" ]; }
alive() { kill -0 "$(cpid "$1")" 2>/dev/null && stat "$(cmnt "$1")" >/dev/null; }
T=20

cluster_net; cluster_host 1; cluster_host 2
check "node 1 mounts" cnode_start 1
check "node 2 mounts, peer 1" cnode_start 2 --peer "$(caddr 1)"
A=$(cmnt 1) B=$(cmnt 2)

# Sizes at and past the limit (ext4's 16 TiB).
check "truncate -s 16T succeeds" truncate -s 16T "$A/big16t"
efbig() { local out; out=$(truncate -s "$1" "$A/efbig" 2>&1); [[ $out == *"File too large"* ]]; }
check "truncate -s 16T+1 gives EFBIG" efbig 17592186044417
check "truncate -s 999999999999999 gives EFBIG" efbig 999999999999999
check "truncate -s 2^63-1 gives EFBIG" efbig 9223372036854775807
check "the daemon survives" alive 1

# One large sparse file, then a small one: both arrive (the feed never wedges).
truncate -s 600G "$A/vm.img"
printf 'data in the middle' | dd of="$A/vm.img" bs=1 seek=$((300 << 30)) conv=notrunc status=none
echo after >"$A/after"
check "a 600 GiB sparse file does not stop replication" ceventually $T same "$A/after" "$B/after"
check "the sparse file has its size on node 2" ceventually $T same_stat %s "$A/vm.img" "$B/vm.img"
check "the 16 TiB file has its size on node 2" ceventually $T same_stat %s "$A/big16t" "$B/big16t"
mid() { [ "$(dd if="$1" bs=1 skip=$((300 << 30)) count=18 status=none)" = "data in the middle" ]; }
check "its data reads on node 2" ceventually $T mid "$B/vm.img"
blocks_small() { [ "$(statf %b "$1")" -le 4096 ]; }
check "the 600 GiB file takes at most 2 MiB (st_blocks)" blocks_small "$B/vm.img"
meta=$(du -k "$CW/d1/meta.db" | cut -f1)
echo "# figure: meta.db with a 600 GiB and a 16 TiB sparse file: ${meta} KiB"
holes() {
  python3 - "$1" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
d = os.lseek(fd, 0, os.SEEK_DATA)
h = os.lseek(fd, d, os.SEEK_HOLE)
assert d == 300 << 30, d
assert h == (300 << 30) + (1 << 20), h
assert os.lseek(fd, 0, os.SEEK_HOLE) == 0
try:
    os.lseek(fd, h, os.SEEK_DATA)
    sys.exit(1)
except OSError as e:
    assert e.errno == 6  # ENXIO: no data after the last chunk
PY
}
check "SEEK_DATA/SEEK_HOLE report the hole on node 2" ceventually $T holes "$B/vm.img"
head -c $((4 << 20)) /dev/urandom >"$CW/four"
cp "$CW/four" "$A/punched"
fallocate -p -o $((1 << 20)) -l $((2 << 20)) "$A/punched"
python3 - "$CW/four" <<'PY'
import sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(1 << 20); f.write(bytes(2 << 20))
PY
check "fallocate -p punches a hole (reads zeros)" same "$CW/four" "$A/punched"
check "the punched file replicates" ceventually $T same "$CW/four" "$B/punched"
check "the punched file holds two chunks" ceventually $T blocks_small "$B/punched"

# Every file type.
mknod "$A/blk" b 8 1
mknod "$A/chr" c 1 3
mkfifo "$A/fifo"
python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])" "$A/sock"
for n in blk chr fifo sock; do
  check "$n: type, mode and device number on node 2" ceventually $T same_stat "%F %a %t:%T" "$A/$n" "$B/$n"
done
check "a device is a device on node 2" test -b "$B/blk" -a -c "$B/chr" -a -p "$B/fifo" -a -S "$B/sock"
mv "$B/blk" "$B/blk2"; ln "$B/chr" "$B/chr.link"; rm "$B/sock"
check "rename of a device on 2 shows on 1" ceventually $T same_stat "%F %t:%T" "$B/blk2" "$A/blk2"
check "hard link of a device on 2 shows on 1" ceventually $T same_stat "%F %h %t:%T" "$B/chr.link" "$A/chr.link"
check "removing a socket on 2 shows on 1" ceventually $T gone "$A/sock"
check "both daemons still serve" alive 1
check "both daemons still serve (2)" alive 2

echo "# $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
