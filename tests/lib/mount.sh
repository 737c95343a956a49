# A single foreverfs mount for integration tests that need no network namespaces. Source from
# bash as root, with M (mountpoint), D (data directory), W (work directory: the key goes there)
# and L (log file) set; FF and FUSERMOUNT are set here.
FF=${FF:-${FOREVERFS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/foreverfs}}
. "$(dirname "${BASH_SOURCE[0]}")/check.sh"
FUSERMOUNT=$(command -v fusermount3 || command -v fusermount)

mounted() { grep -q " $M fuse" /proc/mounts; }

# ffmount [foreverfs options...]: starts foreverfs in the foreground (PID is set), waits for
# the mount and prints "ok - mount", or "not ok - mount" with the log's tail and returns 1.
ffmount() {
  [ -f "$W/key" ] || "$FF" keygen "$W/key" >/dev/null
  "$FF" "$M" --listen 127.0.0.1:0 --data "$D" --key "$W/key" -f "$@" >>"$L" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do mounted && break; kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  if ! mounted; then
    echo "not ok - mount"
    tail -20 "$L" | sed 's/^/#   /'
    return 1
  fi
  echo "ok - mount"
}
