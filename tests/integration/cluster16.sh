#!/usr/bin/env bash
# Sixteen hosts in network namespaces, each started with a single --peer (host 1): membership
# spreads by gossip, every host keeps at most --max-links long-lived links, a file written on
# host 1 reads identical on all 16, a host killed with SIGKILL becomes suspect and then down on
# every other host, and a 17th host joining through host 1 reads everything. Prints, as
# "# figure:" lines, the time from the end of a write on host 1 until the change is visible on
# all 16 hosts, the join time, the detection times and the links per host. Every host runs with
# --replicas 3, so most hosts hold none of a file's chunks and read them from the members ranked
# for them, over short-lived links when those are not among their long-lived ones.
set -u
cd "$(dirname "$0")/../.."
. tests/lib/cluster.sh
trap cluster_cleanup EXIT
N=${HOSTS:-16}
MAX_LINKS=${MAX_LINKS:-4}
DOWN_AFTER=${DOWN_AFTER:-12}
T=60

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

# status_json I: host I's status as JSON.
status_json() { "$FF" status --data "$CW/d$1" --json 2>/dev/null; }

# members_in I STATE COUNT: host I lists at least COUNT members (itself included) in STATE.
members_in() {
  status_json "$1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
n = sum(1 for m in s.get("members", []) if m["state"] == sys.argv[1])
sys.exit(0 if n >= int(sys.argv[2]) else 1)' "$2" "$3"
}

# member_state I ADDR: the state host I gives the member at ADDR ("" if it does not know it).
member_state() {
  status_json "$1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(next((m["state"] for m in s.get("members", []) if m["addr"] == sys.argv[1]), ""))' "$2"
}

# links I: the long-lived links host I has now (its link plan's peers that are connected).
links() {
  status_json "$1" | python3 -c '
import json, sys
print(sum(1 for p in json.load(sys.stdin)["peers"] if p["connected"] and p["long_lived"]))'
}

# connections I: every link host I has now, short-lived ones (probes, joins) included.
connections() {
  status_json "$1" | python3 -c '
import json, sys
print(sum(1 for p in json.load(sys.stdin)["peers"] if p["connected"]))'
}

# all_see STATE ADDR HOSTS...: every host listed gives ADDR the state STATE.
all_see() {
  local state=$1 addr=$2; shift 2
  local i
  for i in "$@"; do [ "$(member_state "$i" "$addr")" = "$state" ] || return 1; done
}

# all_have FILE HOSTS...: FILE (relative to the mount) exists with the size of $CW/$FILE on all.
all_have() {
  local f=$1; shift
  local want i
  want=$(stat -c %s "$CW/$f")
  for i in "$@"; do [ "$(stat -c %s "$(cmnt "$i")/$f" 2>/dev/null)" = "$want" ] || return 1; done
}

all_same() {
  local f=$1; shift
  local i
  for i in "$@"; do same "$CW/$f" "$(cmnt "$i")/$f" || return 1; done
}

hosts() { seq 1 "$N"; }

cluster_net
for i in $(seq 1 $((N + 1))); do cluster_host "$i"; done
REPLICAS=${REPLICAS:-3}
opts=(--max-links "$MAX_LINKS" --down-after "$DOWN_AFTER" --replicas "$REPLICAS")
t0=$(now)
check "host 1 mounts" cnode_start 1 "${opts[@]}"
for i in $(seq 2 "$N"); do
  check "host $i mounts with --peer host 1" cnode_start "$i" --peer "$(caddr 1)" "${opts[@]}"
done
joined() { local i; for i in $(hosts); do members_in "$i" alive "$N" || return 1; done; }
check "every host lists all $N members alive" ceventually $T joined
fig "join: $N hosts started and every one lists all $N alive after $(elapsed "$t0" "$(now)") s"

bounded() { local i; for i in $(hosts); do [ "$(links "$i")" -le "$MAX_LINKS" ] || return 1; done; }
sleep 3  # let the link plans settle
check "every host keeps at most $MAX_LINKS links" bounded
counts=$(for i in $(hosts); do links "$i"; done | tr '\n' ' ')
summary() { python3 -c '
import sys
c = [int(x) for x in sys.stdin.read().split()]
print(f"max {max(c)}, mean {sum(c) / len(c):.1f}, min {min(c)}")'; }
fig "long-lived links per host (--max-links $MAX_LINKS): $(echo "$counts" | summary)"
conns=$(for i in $(hosts); do connections "$i"; done | tr '\n' ' ')
fig "all connections per host, short-lived probe links included: $(echo "$conns" | summary)"

head -c 1048576 /dev/urandom >"$CW/one"
t1=$(now)
cp "$CW/one" "$(cmnt 1)/one"
t2=$(now)
mapfile -t H < <(hosts)
check "a file written on host 1 is listed on all $N hosts" ceventually $T all_have one "${H[@]}"
fig "change visible on all $N hosts $(elapsed "$t2" "$(now)") s after the write on host 1 ended (write took $(elapsed "$t1" "$t2") s)"
check "it reads identical on all $N hosts" ceventually $T all_same one "${H[@]}"

# Eight chunks, each held by the $REPLICAS members ranked for it: every other host reads them
# from those members, whether or not it has a long-lived link to them.
head -c $((8 * 1048576)) /dev/urandom >"$CW/eight"
cp "$CW/eight" "$(cmnt 1)/eight"
check "an 8-chunk file written on host 1 is listed on all $N hosts" ceventually $T all_have eight "${H[@]}"
t3=$(now)
check "it reads identical on all $N hosts (--replicas $REPLICAS)" ceventually $T all_same eight "${H[@]}"
fig "8 MiB file read on all $N hosts, one after another, in $(elapsed "$t3" "$(now)") s (--replicas $REPLICAS)"

# Host N dies without a word.
victim=$N
others=("${H[@]:0:$((N - 1))}")
tk=$(now)
cnode_kill "$victim"
suspected() {
  local i s
  for i in "${others[@]}"; do
    s=$(member_state "$i" "$(caddr "$victim")")
    [ "$s" = suspect ] || [ "$s" = down ] || return 1
  done
}
check "the killed host is suspect (or down) on every other host" ceventually $T suspected
fig "SIGKILL of host $victim: suspect on all $((N - 1)) others after $(elapsed "$tk" "$(now)") s"
check "the killed host is down on every other host after --down-after $DOWN_AFTER s" \
  ceventually $((DOWN_AFTER + T)) all_see down "$(caddr "$victim")" "${others[@]}"
fig "SIGKILL of host $victim: down on all $((N - 1)) others after $(elapsed "$tk" "$(now)") s (--down-after $DOWN_AFTER)"

# A newcomer joins through host 1 and reads everything.
new=$((N + 1))
check "host $new mounts with --peer host 1" cnode_start "$new" --peer "$(caddr 1)" "${opts[@]}"
check "host $new reads the file written before it joined" ceventually $T all_same one "$new"
new_bounded() { [ "$(links "$new")" -le "$MAX_LINKS" ]; }
check "host $new keeps at most $MAX_LINKS links" new_bounded
check "every host lists host $new alive" ceventually $T all_see alive "$(caddr "$new")" "${others[@]}"

for i in "${others[@]}" "$new"; do check "unmount of $i exits 0" cnode_stop "$i"; done
echo "$PASS passed, $FAIL failed"
[ $FAIL = 0 ]
