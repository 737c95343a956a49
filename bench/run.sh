#!/usr/bin/env bash
# The foreverfs benchmark: every workload on a single-node foreverfs mount and on libfuse's
# passthrough_ll example over a directory of the same disk (the cost of FUSE alone), then
# replication between two nodes in network namespaces against store-and-forward (iperf3
# between the same namespaces + a cold passthrough read), then micro benchmarks of the per-byte
# code beside `openssl speed`. Prints one table; ratios are speed ratios (>1: foreverfs faster).
#
# Usage: sudo bash bench/run.sh [SIZE_MIB]        (default 1024; about 25-30 minutes)
#        sudo BENCH_QUICK=1 bash bench/run.sh     (64 MiB, fewer files, short fio runs)
# Environment:
#   BENCH_BUILD=DIR   build directory (default build-bench; configured and built if needed)
#   BENCH_PERF=DIR    also `perf record` the foreverfs process during each of its workloads,
#                     one DIR/<workload>.data per workload (for profiles; slows foreverfs a bit;
#                     see the figures of a run without it). Read with
#                     perf report -i DIR/ff-seqwrite.data --no-children --sort sym
#   BENCH_FS_ONLY=1   only the single-mount workloads (no streaming RSS, replication, micro)
#   BENCH_ROUNDS=N    rounds of the single-mount workloads (default 3; 1 with BENCH_QUICK):
#                     each workload runs on both mounts back to back, the order alternating
#                     by round, and the table shows the median of the rounds' ratios
#   BENCH_PERF_OPTS   perf record options (default: DWARF call graphs at 499 Hz, since the
#                     libraries and a RelWithDebInfo build have no frame pointers)
#
# Method notes (why the workloads look the way they do):
# - Data are random (openssl AES-CTR keystream, generated before any timing): zeros would be
#   holes to foreverfs and identical chunks deduplicate, which would flatter it. Every source
#   file has different content, and so does every workload and every round, for the same reason.
# - Cold reads: `sync; echo 3 > /proc/sys/vm/drop_caches` first, which empties the page cache of
#   both mounts and of the disk under them.
# - fio uses buffered I/O (direct=0), 1 job, psync: that is what applications do, and both
#   filesystems then go through the same kernel FUSE page cache (neither sets keep_cache or
#   direct_io, so each open starts with an empty cache for the file). Caches are dropped before
#   each read run; over a run the cache warms equally for both. O_DIRECT is not the honest
#   default: passthrough_ll hands O_DIRECT on to ext4 (every read goes to the disk) while a
#   filesystem with its own storage format decides for itself; it is shown as an extra row.
#   randwrite ends with an fsync (end_fsync=1), inside the measured time.
# - No mass deletes between timed runs (ext4 slows down after them): every run writes into a
#   fresh directory; everything goes at the end, in the EXIT trap.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CMDLINE="sudo${BENCH_QUICK:+ BENCH_QUICK=$BENCH_QUICK}${BENCH_ROUNDS:+ BENCH_ROUNDS=$BENCH_ROUNDS}${BENCH_FS_ONLY:+ BENCH_FS_ONLY=$BENCH_FS_ONLY}${BENCH_PERF:+ BENCH_PERF=$BENCH_PERF} bash bench/run.sh $*"
[ "$(id -u)" = 0 ] || { echo "run as root (mounts, network namespaces, drop_caches)" >&2; exit 1; }

QUICK=${BENCH_QUICK:-0}
[ "$QUICK" = 0 ] && QUICK=
if [ -n "$QUICK" ]; then
  SIZE=${1:-64}; NFILES=500; NLS=1000; FIO_RT=5; BIG=256; MICRO_MIN=0.2; SPEED_S=1; NGIT=200; NCSU=10000
  ROUNDS=${BENCH_ROUNDS:-1}
else
  SIZE=${1:-1024}; NFILES=5000; NLS=10000; FIO_RT=15; BIG=4096; MICRO_MIN=1; SPEED_S=2; NGIT=2000; NCSU=100000
  ROUNDS=${BENCH_ROUNDS:-3}
fi
BUILD=${BENCH_BUILD:-build-bench}
PERF_DIR=${BENCH_PERF:-}
FS_ONLY=${BENCH_FS_ONLY:-}
[ "$FS_ONLY" = 0 ] && FS_ONLY=
PERF_OPTS=${BENCH_PERF_OPTS:---call-graph dwarf,16384 -F 499}

# --- build -------------------------------------------------------------------------------------
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFOREVERFS_TESTS=OFF >/dev/null
fi
cmake --build "$BUILD" -j"$(nproc)" --target foreverfs >/dev/null
# The micro benchmarks exist only where Google Benchmark is installed (libbenchmark-dev).
HAVE_MICRO=1
cmake --build "$BUILD" -j"$(nproc)" --target foreverfs_micro >/dev/null 2>&1 || HAVE_MICRO=
export FOREVERFS=$ROOT/$BUILD/foreverfs
MICRO=$ROOT/$BUILD/foreverfs_micro

. tests/lib/cluster.sh   # makes $CW (under /tmp) and the network-namespace helpers
PT_PID=""; PX_PID=""; IPERF_PID=""; PERF_PID=""
cleanup() {
  set +e
  [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null && wait "$PERF_PID" 2>/dev/null
  [ -n "$IPERF_PID" ] && kill "$IPERF_PID" 2>/dev/null
  if [ -n "$PT_PID" ]; then
    "$FUSERMOUNT" -u -z "$CW/pt" 2>/dev/null
    kill "$PT_PID" 2>/dev/null
  fi
  if [ -n "$PX_PID" ]; then
    "$FUSERMOUNT" -u -z "$CW/px" 2>/dev/null
    kill "$PX_PID" 2>/dev/null
  fi
  cluster_cleanup
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
calc() { echo "$*" | bc -l; }
fmt() { printf "%.${2:-2}f" "$1"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
warm() { cat "$@" >/dev/null; }
size_is() { [ "$(stat -c %s "$1" 2>/dev/null)" = "$2" ]; }
mounted_at() { ceventually "${2:-10}" cmounted "$1"; }
# Pseudo-random bytes at several hundred MB/s: the AES-CTR keystream of a random key.
random_stream() { openssl enc -aes-256-ctr -nosalt -pbkdf2 -pass "pass:$(openssl rand -hex 16)" </dev/zero 2>/dev/null || true; }
random_file() {  # random_file PATH MIB
  random_stream | head -c "$(($2 * 1048576))" >"$1"
  size_is "$1" "$(($2 * 1048576))" || { echo "could not make $1" >&2; exit 1; }
}

perf_start() {  # perf_start NAME PID[,PID...]
  [ -n "$PERF_DIR" ] || return 0
  mkdir -p "$PERF_DIR"
  # shellcheck disable=SC2086
  perf record $PERF_OPTS -q -p "$2" -o "$PERF_DIR/$1.data" >/dev/null 2>&1 &
  PERF_PID=$!
  sleep 0.5
}
perf_stop() {
  [ -n "$PERF_PID" ] || return 0
  kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true; PERF_PID=""
}

# --- machine ---------------------------------------------------------------------------------
echo "# command: $CMDLINE"
echo "# date:    $(date -u '+%Y-%m-%d %H:%M UTC'); foreverfs $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (with local changes)')"
echo "# machine: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
echo "# disk:    data directories under $CW: $(findmnt -n -o FSTYPE,SOURCE,OPTIONS -T "$CW" | awk '{print $1" on "$2" ("$3")"}')"
echo "# load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at start"
echo "# sizes:   ${SIZE} MiB files, ${NFILES} small files, ${NLS} entries for ls -l, fio ${FIO_RT} s per run, ${BIG} MiB stream for RSS, ${ROUNDS} rounds"

# --- inputs, made before any timing --------------------------------------------------------------
FIO_SRC=$CW/fio-src.bin; RSRC=$CW/repl-src.bin
# One source per round for the sequential write, as for the small files below: a round
# writing what an earlier one stored would only find its chunks there already.
for r in $(seq "$ROUNDS"); do random_file "$CW/src.$r.bin" "$SIZE"; done
random_file "$FIO_SRC" "$SIZE"
random_file "$RSRC" "$SIZE"
# make_tree ROOT N DIRS DIRFMT FILEFMT MIN MAX HEX: N files of MIN-MAX random bytes (written as hex
# text if HEX is 1) spread over DIRS directories.
make_tree() {
  python3 - "$@" <<'EOF'
import os, random, sys
root, n, dirs, dfmt, ffmt, lo, hi, hexed = sys.argv[1:9]
n, dirs, lo, hi = int(n), int(dirs), int(lo), int(hi)
for i in range(n):
    d = os.path.join(root, dfmt % (i % dirs))
    os.makedirs(d, exist_ok=True)
    data = os.urandom(random.randint(lo, hi))
    with open(os.path.join(d, ffmt % i), "wb") as f:
        f.write(data.hex().encode() if hexed == "1" else data)
EOF
}
# One tarball and one git repository per round: a round unpacking what an earlier round
# stored would find every chunk already there (deduplicated), which would flatter foreverfs.
for r in $(seq "$ROUNDS"); do
  make_tree "$CW/small.$r" "$NFILES" 50 d%02d f%05d 1024 16384 0
  tar -C "$CW/small.$r" -cf "$CW/small.$r.tar" .
  # A git repository of NGIT text files of 1-16 KiB in 20 directories, one commit, to clone.
  make_tree "$CW/gitsrc.$r" "$NGIT" 20 src%02d file%05d.c 512 8192 1
  git -C "$CW/gitsrc.$r" init -q && git -C "$CW/gitsrc.$r" add -A &&
    git -C "$CW/gitsrc.$r" -c user.name=bench -c user.email=bench@localhost commit -qm bench
done
SMALL_BYTES=$(du -sb "$CW/small.1" | cut -f1)

# --- passthrough_ll, the baseline -------------------------------------------------------------
EX=/usr/share/doc/libfuse3-dev/examples
mkdir -p "$CW/ptbuild" "$CW/pt-src" "$CW/pt"
for f in passthrough_ll.c passthrough_helpers.h; do
  if [ -f "$EX/$f" ]; then cp "$EX/$f" "$CW/ptbuild/"
  elif [ -f "$EX/$f.gz" ]; then gzip -dc "$EX/$f.gz" >"$CW/ptbuild/$f"
  else echo "missing $EX/$f (install libfuse3-dev)" >&2; exit 1; fi
done
# shellcheck disable=SC2046
gcc -O2 -Wall -o "$CW/ptbuild/passthrough_ll" "$CW/ptbuild/passthrough_ll.c" $(pkg-config --cflags --libs fuse3) 2>"$CW/ptbuild/gcc.log" ||
  { cat "$CW/ptbuild/gcc.log" >&2; exit 1; }
# Its defaults: cache=auto (entry/attr timeout 1 s, page cache dropped on open), no writeback
# cache, no xattr, multi-threaded loop, reads spliced. -o source= is the directory it mirrors.
"$CW/ptbuild/passthrough_ll" -f -o source="$CW/pt-src" "$CW/pt" 2>"$CW/ptlog" &
PT_PID=$!
mounted_at "$CW/pt" || { echo "passthrough_ll did not mount:"; cat "$CW/ptlog"; exit 1; } >&2
echo "# baseline: libfuse $(pkg-config --modversion fuse3) passthrough_ll -o source=DIR (defaults: cache=auto, timeout=1s, no writeback, no xattr, multi-threaded)"
# A reference for tar -x only: the same example with xattrs on. Without them the kernel asks
# getxattr once, gets ENOSYS and never asks again; a file system with xattrs (foreverfs) is
# asked getxattr security.capability at a file's chown and at its first write after a change of
# attributes: two more round trips per file, which this mount pays too.
mkdir -p "$CW/px-src" "$CW/px"
"$CW/ptbuild/passthrough_ll" -f -o source="$CW/px-src",xattr "$CW/px" 2>"$CW/pxlog" &
PX_PID=$!
mounted_at "$CW/px" || { echo "passthrough_ll -o xattr did not mount:"; cat "$CW/pxlog"; exit 1; } >&2
echo "# reference for tar -x: the same passthrough_ll with -o xattr"

# --- the workloads, on one mount ----------------------------------------------------------------
declare -A R  # R[fs.workload] = figure

fio_json() {  # fio_json FILE RW DIRECT [extra...] -> iops
  local file=$1 rw=$2 direct=$3; shift 3
  fio --name="$rw" --filename="$file" --rw="$rw" --bs=4k --size="${SIZE}M" --runtime="$FIO_RT" \
    --time_based --ioengine=psync --direct="$direct" --numjobs=1 --output-format=json "$@" 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print("%.0f" % (j["read"]["iops"] + j["write"]["iops"]))'
}

# The workloads, one function each: W_<name> FS MNT PID ROUND, writing into a fresh directory
# of its own per round; each stores its figure in R[FS.<key>.ROUND].
W_seqwrite() {  # sequential write of SIZE MiB from a file in the page cache, fsynced
  local fs=$1 d=$2/seq.$4 src=$CW/src.$4.bin t0 t1; mkdir "$d"; warm "$src"; drop_caches; warm "$src"
  perf_start "$fs-seqwrite" "$3"
  t0=$(now); dd if="$src" of="$d/f" bs=1M conv=fsync status=none; t1=$(now)
  perf_stop
  R[$fs.seqwrite.$4]=$(calc "$SIZE / ($t1 - $t0)")
}
W_coldread() {  # cold sequential read of the file the same round's seqwrite wrote
  local fs=$1 f=$2/seq.$4/f t0 t1; drop_caches
  perf_start "$fs-coldread" "$3"
  t0=$(now); dd if="$f" of=/dev/null bs=1M status=none; t1=$(now)
  perf_stop
  R[$fs.coldread.$4]=$(calc "$SIZE / ($t1 - $t0)")
}
W_smallfiles() {  # unpacking many small files, then sync
  local fs=$1 d=$2/tar.$4 t0 t1; mkdir "$d"; warm "$CW/small.$4.tar"
  perf_start "$fs-smallfiles" "$3"
  t0=$(now); tar -C "$d" -xf "$CW/small.$4.tar"; sync; t1=$(now)
  perf_stop
  R[$fs.smallfiles.$4]=$(calc "$t1 - $t0")
}
W_fio() {  # 4 KiB random I/O on a SIZE MiB file laid out in the first round (random content)
  local fs=$1 d=$2/fio
  if [ ! -f "$d/fio.bin" ]; then
    mkdir -p "$d"; dd if="$FIO_SRC" of="$d/fio.bin" bs=1M conv=fsync status=none
  fi
  drop_caches
  perf_start "$fs-randread" "$3"
  R[$fs.randread.$4]=$(fio_json "$d/fio.bin" randread 0)
  perf_stop
  drop_caches
  R[$fs.randread_direct.$4]=$(fio_json "$d/fio.bin" randread 1)
  drop_caches
  perf_start "$fs-randwrite" "$3"
  R[$fs.randwrite.$4]=$(fio_json "$d/fio.bin" randwrite 0 --end_fsync=1)
  perf_stop
}
W_ls() {  # ls -l of a directory of NLS entries, created before, caches dropped
  local fs=$1 d=$2/ls.$4 t0 t1; mkdir "$d"
  python3 -c 'import os,sys
for i in range(int(sys.argv[2])): open(os.path.join(sys.argv[1], "entry-%06d" % i), "w").close()' "$d" "$NLS"
  drop_caches
  perf_start "$fs-ls" "$3"
  t0=$(now); ls -l "$d" >/dev/null; t1=$(now)
  perf_stop
  R[$fs.ls.$4]=$(calc "$t1 - $t0")
}
W_git() {  # git clone of a local repository (--no-local: objects are copied as from a remote,
  # no hard links), then git status in the clone
  local fs=$1 d=$2/git.$4 t0 t1; mkdir "$d"
  perf_start "$fs-git" "$3"
  t0=$(now); git clone -q --no-local "$CW/gitsrc.$4" "$d/repo"; git -C "$d/repo" status --porcelain >/dev/null; t1=$(now)
  perf_stop
  R[$fs.git.$4]=$(calc "$t1 - $t0")
}
W_csu() {  # create, stat and unlink NCSU empty files in one directory, 5,000 at a time
  # (create them all, stat them all, unlink them all): passthrough_ll holds a descriptor for
  # every inode the kernel knows (caches are dropped first so that it forgets the earlier
  # workloads' inodes), and a sandbox may cap descriptors at 20,000 with no way to raise it.
  local fs=$1 d=$2/csu.$4 t0 t1; mkdir "$d"; drop_caches
  perf_start "$fs-csu" "$3"
  t0=$(now)
  python3 -c 'import os,sys
d, n = sys.argv[1], int(sys.argv[2])
for b in range(0, n, 5000):
    names = [os.path.join(d, "f%07d" % i) for i in range(b, min(n, b + 5000))]
    for p in names: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
    for p in names: os.stat(p)
    for p in names: os.unlink(p)' "$d" "$NCSU"
  t1=$(now)
  perf_stop
  R[$fs.csu.$4]=$(calc "$t1 - $t0")
}
WORKLOADS="seqwrite coldread smallfiles fio ls git csu"

cluster_net; cluster_host 1; cluster_host 2; cluster_host 3; cluster_host 4
cnode_start 1
FF_MNT=$(cmnt 1); FF_PID=$(cpid 1)
# Rounds, and within a round each workload on both file systems back to back, the order
# alternating by round: a slow minute of this machine (a neighbour, the host's page cache)
# then weighs on both sides of a ratio, and the median of the rounds discards an outlier.
# perf records the first round only.
PERF_KEEP=$PERF_DIR
for round in $(seq 1 "$ROUNDS"); do
  echo "# round $round of $ROUNDS..."
  [ "$round" -gt 1 ] && PERF_DIR=
  for w in $WORKLOADS; do
    extra=""; [ "$w" = smallfiles ] && extra=px
    if [ $((round % 2)) = 1 ]; then order="pt ff $extra"; else order="$extra ff pt"; fi
    for fs in $order; do
      case $fs in
        pt) "W_$w" pt "$CW/pt" "$PT_PID" "$round" ;;
        px) "W_$w" px "$CW/px" "$PX_PID" "$round" ;;
        *) "W_$w" ff "$FF_MNT" "$FF_PID" "$round" ;;
      esac
    done
  done
done
PERF_DIR=$PERF_KEEP
R[ff.rss]=$(cpeak_rss "$FF_PID")
R[pt.rss]=$(cpeak_rss "$PT_PID")
cnode_stop 1

# R[FS.key]: the median over the rounds. Q[key]: the median of the rounds' ratios (each from
# two runs a minute apart at most); QR[key]: every round's ratio.
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
declare -A Q QR
summarize() {  # summarize KEY speed|time (ratio ff/pt for a speed, pt/ff for a time)
  local k=$1 kind=$2 fs r vals ratios=()
  for fs in pt ff; do
    vals=(); for r in $(seq 1 "$ROUNDS"); do vals+=("${R[$fs.$k.$r]}"); done
    R[$fs.$k]=$(median "${vals[@]}")
  done
  for r in $(seq 1 "$ROUNDS"); do
    if [ "$kind" = speed ]; then ratios+=("$(calc "${R[ff.$k.$r]} / ${R[pt.$k.$r]}")")
    else ratios+=("$(calc "${R[pt.$k.$r]} / ${R[ff.$k.$r]}")"); fi
  done
  Q[$k]=$(median "${ratios[@]}")
  QR[$k]=$(for x in "${ratios[@]}"; do printf '%.2f ' "$x"; done)
}
for k in seqwrite coldread randread randread_direct randwrite; do summarize "$k" speed; done
# tar -x against the reference: summarized as a workload of its own whose baseline is px.
for r in $(seq 1 "$ROUNDS"); do
  R[pt.smallfiles_x.$r]=${R[px.smallfiles.$r]}; R[ff.smallfiles_x.$r]=${R[ff.smallfiles.$r]}
done
for k in smallfiles smallfiles_x ls git csu; do summarize "$k" time; done

if [ -z "$FS_ONLY" ]; then
# Peak RSS of a fresh process while one BIG MiB file streams in (random, never in memory whole).
echo "# streaming ${BIG} MiB into a fresh foreverfs process..."
cnode_start 2
perf_start ff-bigwrite "$(cpid 2)"
t0=$(now)
random_stream | head -c "$((BIG * 1048576))" | dd of="$(cmnt 2)/big.bin" bs=1M iflag=fullblock conv=fsync status=none
t1=$(now)
perf_stop
R[ff.bigrss]=$(cpeak_rss "$(cpid 2)")
R[ff.bigwrite]=$(calc "$BIG / ($t1 - $t0)")
cnode_stop 2

# --- replication ------------------------------------------------------------------------------
echo "# replication between two network namespaces..."
cnode_start 3
cnode_start 4 --peer "$(caddr 3)"
echo ready >"$(cmnt 3)/ready"
ceventually 60 test -f "$(cmnt 4)/ready" || { echo "the nodes did not connect" >&2; exit 1; }
warm "$RSRC"
perf_start ff-replication "$(cpid 3),$(cpid 4)"
dd if="$RSRC" of="$(cmnt 3)/r.bin" bs=1M conv=fsync status=none
t0=$(now)
want=$((SIZE * 1048576))
ceventually 600 size_is "$(cmnt 4)/r.bin" "$want" ||
  { echo "the file never reached node 4" >&2; exit 1; }
ceventually 600 cmp -s "$RSRC" "$(cmnt 4)/r.bin" || { echo "node 4 never read it identical" >&2; exit 1; }
t1=$(now)
perf_stop
R[ff.repl]=$(calc "$t1 - $t0")
R[ff.replrss]="$(cpeak_rss "$(cpid 3)") / $(cpeak_rss "$(cpid 4)")"
cnode_stop 4; cnode_stop 3

# Store-and-forward: the same bytes over TCP between the same two namespaces, then a cold read.
cin 4 iperf3 -s -1 -B 10.98.0.4 -p 5201 >/dev/null 2>&1 &
IPERF_PID=$!
iperf_secs=""
for _ in $(seq 1 50); do
  iperf_secs=$(cin 3 iperf3 -c 10.98.0.4 -p 5201 -n "${SIZE}M" -J 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["seconds"])' 2>/dev/null) && break
  sleep 0.2
done
[ -n "$iperf_secs" ] || { echo "iperf3 failed" >&2; exit 1; }
wait "$IPERF_PID" 2>/dev/null || true; IPERF_PID=""
pt_read_s=$(calc "$SIZE / ${R[pt.coldread]}")
R[pt.repl]=$(calc "$iperf_secs + $pt_read_s")
fi

# --- micro benchmarks ----------------------------------------------------------------------------
[ -n "$FS_ONLY" ] && HAVE_MICRO=
if [ -n "$HAVE_MICRO" ]; then
  echo "# micro benchmarks..."
  "$MICRO" --benchmark_min_time="$MICRO_MIN" --benchmark_out="$CW/micro.json" --benchmark_out_format=json >"$CW/micro.txt" 2>&1
  ossl() {  # ossl ALG -> bytes/s at 1 MiB
    openssl speed -evp "$1" -bytes 1048576 -seconds "$SPEED_S" 2>/dev/null |
      awk 'END {v=$NF; sub(/k$/, "", v); printf "%.0f", v * 1000}'
  }
  OSSL_SHA=$(ossl sha256); OSSL_GCM=$(ossl aes-256-gcm); OSSL_CTR=$(ossl aes-256-ctr)
fi

# --- report ----------------------------------------------------------------------------------------
echo
mib() { calc "$1 / 1048576"; }
row() {  # row LABEL FF PT RATIO GOAL(min ratio or "-") [ROUND RATIOS]
  local verdict="-"
  if [ "$5" != "-" ]; then
    if [ "$(calc "$4 >= $5")" = 1 ]; then verdict="ok (>=${5}x)"; else verdict="SHORT (goal ${5}x)"; fi
  fi
  printf '%-46s %14s %14s %7sx  %-18s %s\n' "$1" "$2" "$3" "$(fmt "$4")" "$verdict" "${6:+rounds: $6}"
}
printf '%-46s %14s %14s %8s  %s\n' "workload" "foreverfs" "passthrough" "ratio" "goal"
printf '%s\n' "------------------------------------------------------------------------------------------------"
row "sequential write ${SIZE} MiB, dd conv=fsync" "$(fmt "${R[ff.seqwrite]}" 0) MiB/s" "$(fmt "${R[pt.seqwrite]}" 0) MiB/s" \
  "${Q[seqwrite]}" 0.9 "${QR[seqwrite]}"
row "cold sequential read ${SIZE} MiB" "$(fmt "${R[ff.coldread]}" 0) MiB/s" "$(fmt "${R[pt.coldread]}" 0) MiB/s" \
  "${Q[coldread]}" 0.8 "${QR[coldread]}"
row "tar -x ${NFILES} files of 1-16 KiB, sync" "$(fmt "${R[ff.smallfiles]}") s" "$(fmt "${R[pt.smallfiles]}") s" \
  "${Q[smallfiles]}" 0.8 "${QR[smallfiles]}"
row "  the same against passthrough_ll -o xattr" "$(fmt "${R[ff.smallfiles_x]}") s" "$(fmt "${R[pt.smallfiles_x]}") s" \
  "${Q[smallfiles_x]}" - "${QR[smallfiles_x]}"
row "fio 4 KiB randread, cold, buffered" "$(fmt "${R[ff.randread]}" 0) IOPS" "$(fmt "${R[pt.randread]}" 0) IOPS" \
  "${Q[randread]}" 0.8 "${QR[randread]}"
row "fio 4 KiB randread, O_DIRECT (for reference)" "$(fmt "${R[ff.randread_direct]}" 0) IOPS" "$(fmt "${R[pt.randread_direct]}" 0) IOPS" \
  "${Q[randread_direct]}" - "${QR[randread_direct]}"
row "fio 4 KiB randwrite, buffered, end_fsync" "$(fmt "${R[ff.randwrite]}" 0) IOPS" "$(fmt "${R[pt.randwrite]}" 0) IOPS" \
  "${Q[randwrite]}" 0.6 "${QR[randwrite]}"
row "ls -l of ${NLS} entries, cold" "$(fmt "${R[ff.ls]}") s" "$(fmt "${R[pt.ls]}") s" \
  "${Q[ls]}" 0.8 "${QR[ls]}"
row "git clone of ${NGIT} files, then git status" "$(fmt "${R[ff.git]}") s" "$(fmt "${R[pt.git]}") s" \
  "${Q[git]}" 0.5 "${QR[git]}"
row "create+stat+unlink ${NCSU} empty files, 1 dir" "$(fmt "${R[ff.csu]}") s" "$(fmt "${R[pt.csu]}") s" \
  "${Q[csu]}" 0.5 "${QR[csu]}"
ok_rss() { [ "$(calc "$1 <= 64")" = 1 ] && echo "ok (<=64 MiB)" || echo "SHORT (goal <=64 MiB)"; }
printf '%-46s %14s %14s %8s  %s\n' "peak RSS through all of the above" "${R[ff.rss]} MiB" "${R[pt.rss]} MiB" "" "$(ok_rss "${R[ff.rss]}")"
if [ -z "$FS_ONLY" ]; then
row "replication ${SIZE} MiB: end of write -> identical" "$(fmt "${R[ff.repl]}") s" "$(fmt "${R[pt.repl]}") s" \
  "$(calc "${R[pt.repl]} / ${R[ff.repl]}")" 0.8
printf '  %s\n' "(baseline: store-and-forward = iperf3 between the same namespaces $(fmt "$iperf_secs") s + passthrough cold read $(fmt "$pt_read_s") s)"
printf '%-46s %14s %14s %8s  %s\n' "peak RSS, fresh process, ${BIG} MiB written" "${R[ff.bigrss]} MiB" "" "" "$(ok_rss "${R[ff.bigrss]}")"
printf '%-46s %14s\n' "  (that write: $(fmt "${R[ff.bigwrite]}" 0) MiB/s incl. generating it)" ""
printf '%-46s %14s\n' "peak RSS, replication sender / receiver" "${R[ff.replrss]} MiB"
fi

echo
if [ -n "$FS_ONLY" ]; then
  :
elif [ -z "$HAVE_MICRO" ]; then
  echo "micro benchmarks: skipped ($BUILD/foreverfs_micro did not build; is libbenchmark-dev installed?)"
else
echo "micro benchmarks (1 MiB buffers; Google Benchmark, then openssl speed on this machine)"
python3 - "$CW/micro.json" "$OSSL_SHA" "$OSSL_GCM" "$OSSL_CTR" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
sha, gcm, ctr = (float(x) for x in sys.argv[2:5])
ref = {"BM_Sha256": ("sha256", sha), "BM_ChunkId": ("sha256", sha),
       "BM_AeadSeal": ("aes-256-gcm", gcm), "BM_AeadOpen": ("aes-256-gcm", gcm),
       "BM_CtrXor": ("aes-256-ctr", ctr)}
what = {"BM_Sha256": "SHA-256 (crypto::Sha256::Of)",
        "BM_ChunkId": "chunk id, HMAC-SHA-256 (cas::MakeHasher)",
        "BM_AeadSeal": "AES-256-GCM seal (crypto::Aead)",
        "BM_AeadOpen": "AES-256-GCM open (crypto::Aead)",
        "BM_CtrXor": "AES-256-CTR (crypto::CtrXor)",
        "BM_StorePut": "id + chunk store put, memory (hash, seal)",
        "BM_StoreGet": "chunk store get, memory (open)",
        "BM_EncodeChunkFrame": "net::EncodeFrame, 1 MiB ChunkReply",
        "BM_DecodeChunkFrame": "net::DecodePayload, 1 MiB ChunkReply"}
print("%-46s %14s %14s %8s" % ("operation", "foreverfs", "openssl speed", "ratio"))
for b in j["benchmarks"]:
    name, bps = b["name"], b.get("bytes_per_second", 0)
    if name == "BM_NamespaceCommit":
        print("%-46s %10.1f us" % ("namespace commit, SQLite on /var/tmp (per commit)",
                                   b["real_time"] / 1e3 if b.get("time_unit") == "ns" else b["real_time"]))
        continue
    r = ref.get(name)
    if r:
        print("%-46s %10.0f MB/s %10.0f MB/s %7.2fx" % (what.get(name, name), bps / 1e6, r[1] / 1e6, bps / r[1]))
    else:
        print("%-46s %10.0f MB/s" % (what.get(name, name), bps / 1e6))
EOF
echo "  (openssl speed -evp {sha256,aes-256-gcm,aes-256-ctr} -bytes 1048576 -seconds $SPEED_S; MB = 10^6 bytes)"
fi
echo
echo "# load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at the end; other work on this machine makes figures noisy"
