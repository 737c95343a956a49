#!/usr/bin/env bash
# The main job: installs and builds foreverfs, then starts a local cluster of three nodes on
# this machine (ports 3001-3003 on 127.0.0.1), each with its own real FUSE mount, writes a file
# on node 1 and reads it back on nodes 2 and 3. The mounts stay up; it prints how to use and
# stop them. Needs root or a user allowed to use /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
FF=$PWD/build/foreverfs
DEMO=${FOREVERFS_DEMO_DIR:-/tmp/foreverfs-demo}
FUSERMOUNT=$(command -v fusermount3 || command -v fusermount)

# Stop a previous demo if one is still up.
for i in 1 2 3; do
  grep -q " $DEMO/mnt$i fuse" /proc/mounts && "$FUSERMOUNT" -u "$DEMO/mnt$i" || true
done
sleep 0.5
rm -rf "$DEMO"
mkdir -p "$DEMO"
"$FF" keygen "$DEMO/cluster.key"

for i in 1 2 3; do
  mkdir -p "$DEMO/mnt$i" "$DEMO/data$i"
  peers=()
  for j in $(seq 1 $((i - 1))); do peers+=(--peer "127.0.0.1:300$j"); done
  # Without -f the daemon detaches once its mount is ready.
  "$FF" "$DEMO/mnt$i" --listen "127.0.0.1:300$i" --data "$DEMO/data$i" --key "$DEMO/cluster.key" \
    --log-file "$DEMO/node$i.log" "${peers[@]}"
  echo "node $i: mounted $DEMO/mnt$i (listening on 127.0.0.1:300$i, log $DEMO/node$i.log)"
done

head -c 50000000 /dev/urandom >"$DEMO/film.bin"
echo
echo "\$ cp $DEMO/film.bin $DEMO/mnt1/            # on node 1"
time cp "$DEMO/film.bin" "$DEMO/mnt1/"
for i in 2 3; do
  for _ in $(seq 1 100); do cmp -s "$DEMO/film.bin" "$DEMO/mnt$i/film.bin" 2>/dev/null && break; sleep 0.2; done
  if cmp -s "$DEMO/film.bin" "$DEMO/mnt$i/film.bin"; then
    echo "node $i reads film.bin: identical bytes ($(stat -c %s "$DEMO/mnt$i/film.bin") bytes)"
  else
    echo "node $i does not read film.bin identically; see $DEMO/node$i.log" >&2
    exit 1
  fi
done
echo "hello from node 1" >"$DEMO/mnt1/hello.txt"
sleep 1
echo "\$ cat $DEMO/mnt3/hello.txt                  # on node 3"
cat "$DEMO/mnt3/hello.txt"
cat <<MSG

The cluster is up. Try:
  ls -l $DEMO/mnt1 $DEMO/mnt2 $DEMO/mnt3
  echo hi > $DEMO/mnt2/note.txt; cat $DEMO/mnt3/note.txt
Stop it:
  for i in 1 2 3; do $FUSERMOUNT -u $DEMO/mnt\$i; done
MSG
