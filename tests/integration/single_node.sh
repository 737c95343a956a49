#!/usr/bin/env bash
# One node, a real FUSE mount: the basic file operations behave as on a local disk, the
# data survives an unmount and remount, and the process exits 0 on unmount.
set -u
FF=${FOREVERFS:-$(cd "$(dirname "$0")/../.." && pwd)/build/foreverfs}
W=$(mktemp -d /tmp/ffsingle.XXXXXX)
M=$W/mnt; D=$W/data; L=$W/log
mkdir -p "$M" "$D"
PASS=0; FAIL=0; PID=
FUSERMOUNT=$(command -v fusermount3 || command -v fusermount)
cleanup() {
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
  "$FUSERMOUNT" -u -z "$M" 2>/dev/null
  [ -n "${KEEP_LOGS:-}" ] && mkdir -p "$KEEP_LOGS" && cp "$L" "$KEEP_LOGS/single_node.log" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
check() { local name=$1; shift; if "$@"; then PASS=$((PASS+1)); echo "ok - $name"; else FAIL=$((FAIL+1)); echo "not ok - $name"; fi; }
mounted() { grep -q " $M fuse" /proc/mounts; }
start() {
  "$FF" "$M" --listen 127.0.0.1:0 --data "$D" --key "$W/key" -f >>"$L" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do mounted && return 0; kill -0 $PID 2>/dev/null || break; sleep 0.1; done
  echo "# did not mount:"; tail -20 "$L" | sed 's/^/#   /'; return 1
}
stop() {
  "$FUSERMOUNT" -u "$M" || return 1
  for _ in $(seq 1 100); do kill -0 $PID 2>/dev/null || break; sleep 0.1; done
  wait $PID; local rc=$?; PID=; [ $rc = 0 ]
}

"$FF" keygen "$W/key" >/dev/null
check "keygen refuses to overwrite" bash -c "! '$FF' keygen '$W/key' 2>/dev/null"
check "key file has mode 600" test "$(stat -c %a "$W/key")" = 600
refused() { ! timeout 10 "$FF" "$M" --listen 127.0.0.1:0 --data "$D" --key "$W/key" -f "$@" >/dev/null 2>&1; }
check "-o tombstone-grace=inf is refused" refused -o tombstone-grace=inf
check "--tombstone-grace past 1e9 s is refused (it would overflow)" refused --tombstone-grace 1e10
check "-o gc-interval=nan is refused" refused -o gc-interval=nan
check "--fetch-timeout -1 is refused" refused --fetch-timeout -1
check "mount" start

printf 'hello\n' >"$M/a.txt"
check "create and read back" test "$(cat "$M/a.txt")" = hello
printf 'world\n' >>"$M/a.txt"
check "append" test "$(cat "$M/a.txt")" = "$(printf 'hello\nworld')"
truncate -s 3 "$M/a.txt"
check "truncate down" test "$(cat "$M/a.txt")" = hel
truncate -s 2000000 "$M/a.txt"
check "truncate up reads zeros" bash -c "[ \$(stat -c %s '$M/a.txt') = 2000000 ] && [ \"\$(tail -c 1999997 '$M/a.txt' | tr -d '\\0' | wc -c)\" = 0 ]"
mkdir -p "$M/d1/d2"
check "mkdir nested" test -d "$M/d1/d2"
mv "$M/a.txt" "$M/d1/d2/b.txt"
check "rename into a subdirectory" bash -c "[ ! -e '$M/a.txt' ] && [ -f '$M/d1/d2/b.txt' ]"
check "readdir lists entries" test "$(ls "$M/d1")" = d2
check "rmdir of a non-empty directory fails" bash -c "! rmdir '$M/d1/d2' 2>/dev/null"
rm "$M/d1/d2/b.txt"
check "unlink" test ! -e "$M/d1/d2/b.txt"
rmdir "$M/d1/d2"
check "rmdir" test ! -e "$M/d1/d2"
check "stat of a missing file fails" bash -c "! stat '$M/nope' 2>/dev/null"

# Random writes into a 20 MiB file, compared with the same writes on a local file.
head -c 20971520 /dev/urandom >"$W/model"
cp "$W/model" "$M/big"
check "20 MiB copy reads back identical" cmp -s "$W/model" "$M/big"
for i in $(seq 1 40); do
  off=$(( (RANDOM * 32768 + RANDOM) % 22000000 ))
  len=$(( RANDOM % 300000 + 1 ))
  head -c "$len" /dev/urandom >"$W/piece"
  dd if="$W/piece" of="$W/model" bs=1 seek="$off" conv=notrunc status=none oflag=seek_bytes 2>/dev/null || \
    dd if="$W/piece" of="$W/model" bs=1M seek="$off" oflag=seek_bytes conv=notrunc status=none
  dd if="$W/piece" of="$M/big" bs=1M seek="$off" oflag=seek_bytes conv=notrunc status=none
done
check "random writes match a local model" cmp -s "$W/model" "$M/big"
# Small reads give their segment's other pages to the kernel's cache: reads interleaved with
# writes, truncates and reopens always see the file's bytes.
check "the page cache matches a model through reads, writes and truncates" \
  python3 "$(dirname "$0")/page_cache.py" "$M" --ops "${PAGE_CACHE_OPS:-4000}"
ln -s big "$M/link"
check "symlink" test "$(readlink "$M/link")" = big

# Operations: status, scrub, garbage collection through the control socket.
check "status names the node" bash -c "'$FF' status '$M' | grep -q '^node '"
check "status --json is one object" bash -c "'$FF' status --json '$M' | python3 -c 'import json,sys; json.load(sys.stdin)'"
check "control socket is private (0600)" test "$(stat -c %a "$D/control.sock")" = 600
check "scrub checks every chunk and finds nothing wrong" bash -c "'$FF' scrub '$M' | tail -1 | grep -q 'scrub done: .* 0 corrupt, 0 missing'"
chunks_kib() { du -sk "$D/chunks" | cut -f1; }
head -c 33554432 /dev/urandom >"$M/garbage"
before=$(chunks_kib)
rm "$M/garbage"
"$FF" gc "$M" >/dev/null; "$FF" gc "$M" >/dev/null
after=$(chunks_kib)
echo "# chunks under --data: ${before} KiB with a 32 MiB file, ${after} KiB after rm and two gc passes"
check "gc gives back the space of a deleted file" test $((before - after)) -gt 30000
check "the other files are intact after gc" cmp -s "$W/model" "$M/big"

check "unmount exits 0" stop
check "remount on the same data" start
check "data survives remount" cmp -s "$W/model" "$M/big"
check "no plaintext of the file under --data" bash -c "! grep -rqa hello '$D'"
check "unmount again" stop

echo "$PASS passed, $FAIL failed"
[ $FAIL = 0 ]
