#!/usr/bin/env bash
# Tombstones are purged (issue 13.12) on a single-node mount: 10,000 files created and deleted
# leave 20,000 tombstone records in meta.db; `foreverfs gc` with --tombstone-grace 0 purges them
# (no member: a single node), and a mount with the default grace of a day keeps them. The pages
# freed are reused (SQLite does not shrink the file; a copy is vacuumed to show what is left).
# Prints the record counts and sizes of meta.db as a `# figure:` line. Needs root and sqlite3.
set -u
cd "$(dirname "$0")/../.."
N=${TOMBSTONE_FILES:-10000}
W=$(mktemp -d /tmp/fftomb.XXXXXX)
M=$W/mnt D=$W/data L=$W/log
mkdir -p "$M" "$D"
. tests/lib/mount.sh
PASS=0; FAIL=0; PID=
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; "$FUSERMOUNT" -u -z "$M" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
unmount() { "$FUSERMOUNT" -u "$M"; wait "$PID"; PID=; }
# The daemon holds meta.db's lock: count while it is unmounted.
records() { sqlite3 "$D/meta.db" "SELECT (SELECT count(*) FROM inodes) + (SELECT count(*) FROM dentries)"; }
tombstones() { sqlite3 "$D/meta.db" "SELECT (SELECT count(*) FROM inodes WHERE deleted = 1) + (SELECT count(*) FROM dentries WHERE deleted = 1)"; }
names() { sqlite3 "$D/meta.db" "SELECT count(*) FROM dentries WHERE name LIKE 'deleted-file-%'"; }
size_kib() { du -k "$D/meta.db" | cut -f1; }
churn() {
  python3 - "$M" "$N" "$1" <<'PY'
import os, sys
d, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for i in range(n):
    p = os.path.join(d, "deleted-file-%s-%06d" % (tag, i))
    os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
    os.unlink(p)
PY
}

ffmount || exit 1
echo keep >"$M/keep"
churn a
unmount
r0=$(records) t0=$(tombstones) s0=$(size_kib)
check "$N create+delete leave $((2 * N)) tombstones" [ "$t0" -eq $((2 * N)) ]
check "the deleted names are in meta.db" [ "$(names)" -eq "$N" ]

# Default grace (a day): a gc pass keeps them.
ffmount || exit 1
"$FF" gc "$M" >"$W/gc1"
unmount
check "with the default grace, gc keeps them" [ "$(tombstones)" -eq "$t0" ]

ffmount --tombstone-grace 0 || exit 1
"$FF" gc "$M" >"$W/gc2"
check "gc says what it purged" grep -q "tombstones: $N inode and $N entry records purged" "$W/gc2"
check "the live file is still there" [ "$(cat "$M/keep")" = keep ]
unmount
r1=$(records) t1=$(tombstones) s1=$(size_kib)
cp "$D/meta.db" "$W/vacuumed.db" && sqlite3 "$W/vacuumed.db" VACUUM
v1=$(du -k "$W/vacuumed.db" | cut -f1)
check "no tombstone left" [ "$t1" -eq 0 ]
check "no deleted name left in meta.db" [ "$(names)" -eq 0 ]

# Another round: the pages freed are reused.
ffmount --tombstone-grace 0 || exit 1
churn b
"$FF" gc "$M" >/dev/null
unmount
r2=$(records) t2=$(tombstones) s2=$(size_kib)
check "second round purged too" [ "$t2" -eq 0 ]
check "the file did not grow by the second round's size" [ "$s2" -le $((s0 + s0 / 10)) ]
echo "# figure: $N create+delete: meta.db $r0 records ($t0 tombstones), $s0 KiB;" \
  "after gc (grace 0): $r1 records ($t1 tombstones), $s1 KiB ($v1 KiB once vacuumed);" \
  "after another $N and gc: $r2 records, $s2 KiB"
echo "# $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
