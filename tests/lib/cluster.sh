# Helpers for tests and benchmarks that run several foreverfs nodes, each in its own network
# namespace on one bridge (10.98.0.i). Source from bash as root; call cluster_cleanup on exit.
FF=${FOREVERFS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/foreverfs}
. "$(dirname "${BASH_SOURCE[0]}")/check.sh"
CP=fc$(( $$ % 100000 ))
CW=$(mktemp -d /tmp/ffcluster.XXXXXX)
CHOSTS=()
FUSERMOUNT=$(command -v fusermount3 || command -v fusermount)

cluster_cleanup() {
  local i
  for i in "${CHOSTS[@]}"; do
    [ -f "$CW/pid$i" ] && kill -9 "$(cat "$CW/pid$i")" 2>/dev/null
    "$FUSERMOUNT" -u -z "$CW/m$i" 2>/dev/null
    ip netns del "${CP}h$i" 2>/dev/null
  done
  ip netns del "${CP}hub" 2>/dev/null
  [ -n "${KEEP_LOGS:-}" ] && mkdir -p "$KEEP_LOGS" && cp "$CW"/log* "$KEEP_LOGS"/ 2>/dev/null
  rm -rf "$CW"
}

cluster_net() {
  ip netns add "${CP}hub" && ip -n "${CP}hub" link add br0 type bridge && ip -n "${CP}hub" link set br0 up
}

cluster_host() {
  local i=$1
  ip netns add "${CP}h$i"
  ip link add "${CP}v$i" type veth peer name eth0 netns "${CP}h$i"
  ip link set "${CP}v$i" netns "${CP}hub"
  ip -n "${CP}hub" link set "${CP}v$i" master br0 up
  ip -n "${CP}h$i" addr add "10.98.0.$i/24" dev eth0
  ip -n "${CP}h$i" link set eth0 up
  ip -n "${CP}h$i" link set lo up
  mkdir -p "$CW/m$i" "$CW/d$i"
  CHOSTS+=("$i")
}

caddr() { echo "10.98.0.$1:3000"; }
cmnt() { echo "$CW/m$1"; }
cpid() { cat "$CW/pid$1"; }
cin() { local i=$1; shift; nsenter --net="/run/netns/${CP}h$i" "$@"; }
cmounted() { grep -q " $1 fuse" /proc/mounts; }

# cnode_start I [options]: foreground node on host I; waits for the mount.
cnode_start() {
  local i=$1; shift
  [ -f "$CW/key" ] || "$FF" keygen "$CW/key" >/dev/null
  # nsenter execs foreverfs, so $! is the foreverfs process itself.
  nsenter --net="/run/netns/${CP}h$i" "$FF" "$CW/m$i" --listen "$(caddr "$i")" --data "$CW/d$i" --key "$CW/key" -f "$@" \
    >>"$CW/log$i" 2>&1 &
  echo $! >"$CW/pid$i"
  for _ in $(seq 1 100); do
    cmounted "$CW/m$i" && return 0
    kill -0 "$(cpid "$i")" 2>/dev/null || break
    sleep 0.1
  done
  echo "# host $i did not mount:"; tail -20 "$CW/log$i" | sed 's/^/#   /'; return 1
}

cnode_stop() {
  local i=$1 pid rc
  pid=$(cpid "$i")
  "$FUSERMOUNT" -u "$CW/m$i" || return 1
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  wait "$pid"; rc=$?
  [ "$rc" = 0 ]
}

cnode_kill() { kill -9 "$(cpid "$1")" 2>/dev/null; wait "$(cpid "$1")" 2>/dev/null; "$FUSERMOUNT" -u -z "$CW/m$1" 2>/dev/null; true; }
clink_down() { ip -n "${CP}hub" link set "${CP}v$1" down; }
clink_up() { ip -n "${CP}hub" link set "${CP}v$1" up; }
# Peak resident set of a process, in MiB.
cpeak_rss() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

ceventually() {
  local end=$(( $(date +%s) + $1 )); shift
  while :; do
    "$@" >/dev/null 2>&1 && return 0
    [ "$(date +%s)" -ge "$end" ] && return 1
    sleep 0.2
  done
}
