#!/usr/bin/env bash
# One version per read, two nodes in network namespaces: node 1 rewrites a file without pause
# (versions of 100 KiB, 700 KiB and 1300 KiB, each byte of a version the same value, so a read
# that mixes two versions shows in its bytes or its size) while node 2 reads it
#   1. through one handle, opened once: every read is the version that handle opened;
#   2. with a fresh open per read (as cat does): every read is one whole version, and newer
#      versions do arrive;
#   3. through one handle while other processes open, read and stat the file on the same node
#      (a known gap, measured: the kernel keeps one copy of a file's pages for all handles).
# Each mode makes VERSION_READS reads (1000). Figures: reads, versions written, versions seen.
# VERSIONS_DEBUG=1 prints each mixed read's length and runs of bytes.
set -u
cd "$(dirname "$0")/../.."
. tests/lib/cluster.sh
trap 'kill $WRITER 2>/dev/null; cluster_cleanup' EXIT
WRITER=
PASS=0; FAIL=0
N=${VERSION_READS:-1000}
T=20

cat >"$CW/versions.py" <<'EOF'
import os, sys, time

SIZES = (100 << 10, 700 << 10, 1300 << 10)

def version(k):
    b = 33 + k % 198          # 198 = 3 * 66: the byte value tells the size too
    return bytes([b]) * SIZES[(b - 33) % 3]

def whole(data):
    """The version number mod 198 if data is exactly one version, else None. Empty is a
    version too: the writer's open(O_TRUNC) empties the file before it writes, as on ext4,
    and a node may commit that state (another handle's close commits the shared file)."""
    if not data:
        return -1
    if data.count(data[0]) != len(data) or not 33 <= data[0] < 33 + 198:
        return None
    return data[0] - 33 if len(data) == SIZES[(data[0] - 33) % 3] else None

def describe(data):
    runs, i = [], 0
    while i < len(data) and len(runs) < 6:
        j = i
        while j < len(data) and data[j] == data[i]:
            j += 1
        runs.append(f"{data[i]}x{j - i}")
        i = j
    return f"len={len(data)} runs={' '.join(runs)}"

def write(path, stop):
    k = 1
    while not os.path.exists(stop):
        with open(path, "wb") as f:
            f.write(version(k))
        k += 1
    print(k - 1)

def read_all(fd):
    out = []
    off = 0
    while True:
        b = os.pread(fd, 1 << 21, off)
        if not b:
            return b"".join(out)
        out.append(b)
        off += len(b)

def report(mode, reads, mixed, seen, changed, first=None):
    print(f"{mode} reads={reads} mixed={mixed} versions={len(seen)} changed={changed}")

def one_handle(path, n, mode="handle"):
    fd = os.open(path, os.O_RDONLY)
    first, mixed, changed, seen = None, 0, 0, set()
    for _ in range(n):
        data = read_all(fd)
        v = whole(data)
        if v is None:
            mixed += 1
            if os.environ.get("VERSIONS_DEBUG"):
                print("mixed", describe(data), file=sys.stderr)
            continue
        seen.add(v)
        if first is None:
            first = v
        elif v != first:
            changed += 1
        time.sleep(0.002)   # let versions arrive meanwhile
    os.close(fd)
    report(mode, n, mixed, seen, changed)

def reopen(path, n):
    mixed, seen = 0, set()
    for _ in range(n):
        fd = os.open(path, os.O_RDONLY)
        data = read_all(fd)
        v = whole(data)
        os.close(fd)
        if v is None:
            mixed += 1
            if os.environ.get("VERSIONS_DEBUG"):
                print("mixed", describe(data), file=sys.stderr)
        else:
            seen.add(v)
    report("reopen", n, mixed, seen, 0)

def busy(path, stop):
    # Other processes on the same node: opens, reads, stat.
    while not os.path.exists(stop):
        os.stat(path)
        with open(path, "rb") as f:
            f.read()

if __name__ == "__main__":
    cmd, path = sys.argv[1], sys.argv[2]
    if cmd == "write":
        write(path, sys.argv[3])
    elif cmd == "handle":
        one_handle(path, int(sys.argv[3]))
    elif cmd == "reopen":
        reopen(path, int(sys.argv[3]))
    elif cmd == "busy":
        busy(path, sys.argv[3])
EOF

cluster_net; cluster_host 1; cluster_host 2
check "node 1 mounts" cnode_start 1
check "node 2 mounts, peer 1" cnode_start 2 --peer "$(caddr 1)"
A=$(cmnt 1) B=$(cmnt 2)
py() { python3 "$CW/versions.py" "$@"; }

python3 -c "import sys; sys.path.insert(0, '$CW'); import versions; open('$A/doc', 'wb').write(versions.version(0))"
arrived() { [ "$(stat -c %s "$B/doc" 2>/dev/null)" = 102400 ]; }
check "first version reaches node 2" ceventually $T arrived

start_writer() { rm -f "$CW/stop"; py write "$A/doc" "$CW/stop" >"$CW/written" & WRITER=$!; }
stop_writer() { touch "$CW/stop"; wait "$WRITER"; WRITER=; }
field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" "$2"; }

# 1. One handle, opened once.
start_writer
py handle "$B/doc" "$N" >"$CW/r1"
stop_writer
cat "$CW/r1" | sed 's/^/# /'
check "one handle: $N reads, none mixes versions" test "$(field mixed "$CW/r1")" = 0
check "one handle: every read is the version it opened" test "$(field changed "$CW/r1")" = 0
check "the writer made new versions meanwhile ($(cat "$CW/written"))" test "$(cat "$CW/written")" -gt 10
fig "one handle: $(field reads "$CW/r1") reads while node 1 wrote $(cat "$CW/written") versions: $(field mixed "$CW/r1") mixed, $(field changed "$CW/r1") of another version"

# 2. A fresh open per read.
start_writer
py reopen "$B/doc" "$N" >"$CW/r2"
stop_writer
cat "$CW/r2" | sed 's/^/# /'
check "open per read: $N reads, none mixes versions" test "$(field mixed "$CW/r2")" = 0
check "open per read: newer versions arrive (more than one seen)" test "$(field versions "$CW/r2")" -gt 1
fig "open per read: $(field reads "$CW/r2") reads while node 1 wrote $(cat "$CW/written") versions: $(field mixed "$CW/r2") mixed, $(field versions "$CW/r2") versions seen"

# 3. One handle while other processes on node 2 open, read and stat the same file.
start_writer
rm -f "$CW/stop2"; py busy "$B/doc" "$CW/stop2" & BUSY=$!
py handle "$B/doc" "$N" >"$CW/r3"
touch "$CW/stop2"; wait $BUSY
stop_writer
cat "$CW/r3" | sed 's/^/# /'
check "one handle among other readers: $N reads, none fails" test "$(field reads "$CW/r3")" = "$N"
# The kernel keeps one copy of a file's pages and one size: while two handles on one node read
# two versions, each may get the other's pages or size (README, Known gaps). Measured, not
# asserted.
echo "# finding: one handle while other processes on the same node read newer versions: $(field mixed "$CW/r3") of $(field reads "$CW/r3") reads mixed, $(field changed "$CW/r3") of another version than opened (one page cache per file)"

check "node 2 still serves" test -e "$B/doc"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
