#!/usr/bin/env bash
# N copies, kept (issue 16): four members with --replicas 2 and no cache hold a file of
# REPAIR_MIB MiB (default 1024) as exactly two copies of every chunk; a fifth member joins and
# takes its share (the bytes moved are printed against the ideal, 1/5 of the copies); then a
# holder is killed for good (SIGKILL, data directory deleted) and the survivors copy its
# chunks until `foreverfs status` shows no under-replicated chunk anywhere (the time and the
# rate are printed against raw TCP moving the same bytes between two of the same hosts).
# Prints "# figure:" lines.
set -u
cd "$(dirname "$0")/../.."
. tests/lib/cluster.sh
trap cluster_cleanup EXIT
MIB=${REPAIR_MIB:-1024}
T=$(( 120 + MIB / 4 ))
OPTS=(--replicas 2 --cache-size 0 --rebalance-interval 1 --down-after 4)

cluster_net
for i in 1 2 3 4 5; do cluster_host "$i"; done
start() { cnode_start "$1" "${OPTS[@]}" --metrics "10.98.0.$1:9464" ${2:+--peer "$2"}; }
check "host 1 mounts" start 1
for i in 2 3 4; do check "host $i mounts" start "$i" "$(caddr 1)"; done
alive_on() { "$FF" status "$(cmnt "$1")" 2>/dev/null | grep -c ' alive' | grep -qx "$2"; }
for i in 1 2 3 4; do check "host $i lists 4 members alive" ceventually 30 alive_on "$i" 4; done

# Placement as the status of every host in $HOSTS says: "settled" once every chunk is where
# placement ranks it and nothing else is held (under-replicated 0, missing 0, nothing
# queued, no extra copy), after a pass that began after this call's argument (epoch seconds).
cat >"$CW/placement.py" <<'PY'
import json, subprocess, sys, time, urllib.request
ff, cw, mode = sys.argv[1], sys.argv[2], sys.argv[3]
hosts = sys.argv[4].split()
def status(h):
    out = subprocess.run([ff, "status", "--json", f"{cw}/m{h}"], capture_output=True, text=True, timeout=20)
    return json.loads(out.stdout)
if mode == "settled":
    since = float(sys.argv[5])
    for h in hosts:
        s = status(h)
        p = s["placement"]
        if not p["enabled"] or p["last_pass_seconds_ago"] < 0:
            sys.exit(1)
        if time.time() - p["last_pass_seconds_ago"] < since + 1:
            sys.exit(1)  # the last pass may have started before `since`
        if p["under_replicated"] or p["missing_here"] or s["backlog_chunks"] or p["extra"]:
            sys.exit(1)
elif mode == "under":
    print(sum(status(h)["placement"]["under_replicated"] for h in hosts))
elif mode == "local":
    print(" ".join(str(status(h)["local"]["bytes"]) for h in hosts))
elif mode == "received":
    total = 0
    for h in hosts:
        text = urllib.request.urlopen(f"http://10.98.0.{h}:9464/metrics", timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith("foreverfs_bytes_received_total"):
                total += int(float(line.split()[-1]))
    print(total)
PY
placement() { cin 1 python3 "$CW/placement.py" "$FF" "$CW" "$@"; }
settled() { placement settled "$1" "$2"; }
mib() { python3 -c "print(f'{$1 / 1048576:.1f}')"; }

head -c $((MIB * 1048576)) /dev/urandom >"$CW/src"
check "a $MIB MiB file is written and fsync'd on host 1" \
  dd if="$CW/src" of="$(cmnt 1)/f" bs=1M conv=fsync status=none
t=$(date +%s)
check "four hosts hold exactly the copies placement ranks to them" \
  ceventually "$T" settled "1 2 3 4" "$t"
sleep 3  # status's local usage figure is up to 2 s old
read -r -a before <<<"$(placement local "1 2 3 4")"
total=0; max=0
for b in "${before[@]}"; do total=$((total + b)); [ "$b" -gt "$max" ] && max=$b; done
check "two copies in all ($(mib $total) MiB for a $MIB MiB file)" \
  python3 -c "import sys; sys.exit(0 if abs($total - 2 * $MIB * 1048576) <= 8 * 1048576 else 1)"
fig "disk use per member, 4 members, --replicas 2, $MIB MiB: $(for b in "${before[@]}"; do printf '%s ' "$(mib "$b")"; done)MiB; max/mean $(python3 -c "print(f'{$max * 4 / $total:.3f}')")"

# A fifth member joins: the chunks now ranked to it move to it, the others drop theirs.
r0=$(placement received "1 2 3 4")
t=$(date +%s)
check "host 5 mounts" start 5 "$(caddr 1)"
for i in 1 2 3 4 5; do check "host $i lists 5 members alive" ceventually 30 alive_on "$i" 5; done
check "five hosts hold exactly the copies placement ranks to them (copies not ranked go)" \
  ceventually "$T" settled "1 2 3 4 5" "$t"
moved=$(( $(placement received "1 2 3 4 5") - r0 ))
sleep 3
read -r -a after <<<"$(placement local "1 2 3 4 5")"
fig "bytes moved when a fifth member joins: $(mib $moved) MiB; ideal 1/5 of the $(mib $total) MiB of copies = $(mib $((total / 5))) MiB; ratio $(python3 -c "print(f'{$moved * 5 / $total:.2f}')")"
fig "disk use per member after the join: $(for b in "${after[@]}"; do printf '%s ' "$(mib "$b")"; done)MiB"

# A holder dies for good: its copies are made again from the others.
victim=2
survivors="1 3 4 5"
lost=${after[$((victim - 1))]}
r1=$(placement received "$survivors")
cnode_kill $victim
rm -rf "$CW/d$victim"
k=$(date +%s.%N)
down_on() { "$FF" status "$(cmnt "$1")" 2>/dev/null | grep -q "^  [0-9a-f]*  10.98.0.$victim:3000  down"; }
for i in $survivors; do check "host $i sees host $victim down" ceventually 60 down_on "$i"; done
d=$(date +%s.%N)
under_some() { [ "$(placement under "$survivors")" -gt 0 ]; }
under_none() { [ "$(placement under "$survivors")" = 0 ] && settled "$survivors" "${d%.*}"; }
check "under-replicated goes to 0 on every survivor" ceventually "$T" under_none
e=$(date +%s.%N)
repaired=$(( $(placement received "$survivors") - r1 ))
# The repair as the survivors' logs tell it: from the first "-> down" of the victim to the end
# of the last catch-up round after it, and the MiB those rounds fetched.
read -r first last secs rounds_mib <<<"$(python3 - "$CW" "$victim" $survivors <<'PY'
import datetime, re, sys
cw, victim, hosts = sys.argv[1], sys.argv[2], sys.argv[3:]
def ts(line):
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
downs, dones = [], []
for h in hosts:
    for line in open(f"{cw}/log{h}", errors="replace"):
        if f"(10.98.0.{victim}:3000): " in line and line.rstrip().find("-> down") > 0:
            downs.append(ts(line))
        m = re.search(r"catch-up done: \d+ of \d+ chunks fetched \(([0-9.]+) MiB\)", line)
        if m:
            dones.append((ts(line), float(m.group(1))))
first = min(downs)
after = [(t, mib) for t, mib in dones if t >= first]
last = max([t for t, _ in after], default=first)
print(f"{first:.3f} {last:.3f} {last - first:.2f} {sum(m for _, m in after):.1f}")
PY
)"
check "the survivors fetched the victim's copies again (${rounds_mib} MiB, it held $(mib "$lost") MiB)" \
  python3 -c "import sys; sys.exit(0 if $rounds_mib >= $(mib "$lost") * 0.95 else 1)"
fig "holder killed: the first survivor saw it down $(python3 -c "print(f'{$first - $k:.1f}')") s after the kill (--down-after 4); its $(mib "$lost") MiB copied again in $secs s (first down to last catch-up round done), ${rounds_mib} MiB fetched, $(python3 -c "print(f'{$rounds_mib / max($secs, 0.001):.1f}')") MiB/s; status showed 0 under-replicated everywhere $(python3 -c "print(f'{$e - $first:.1f}')") s after the first down (passes every 1 s); $(mib "$repaired") MiB received in all"

# Raw TCP between two of the hosts, the same bytes, for the ratio.
cat >"$CW/raw.py" <<'PY'
import socket, sys, time
mode, n = sys.argv[1], int(sys.argv[2])
if mode == "recv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.98.0.1", 3999)); s.listen(1); c, _ = s.accept(); got = 0
    while got < n:
        b = c.recv(1 << 20)
        if not b: break
        got += len(b)
    c.sendall(b"k"); c.close()
else:
    c = socket.create_connection(("10.98.0.1", 3999)); buf = bytes(1 << 20); left = n
    t = time.monotonic()
    while left > 0:
        k = min(left, len(buf)); c.sendall(buf[:k]); left -= k
    c.recv(1); print(f"{time.monotonic() - t:.3f}")
PY
bytes=$(python3 -c "print(int($rounds_mib * 1048576))")
cin 1 python3 "$CW/raw.py" recv "$bytes" &
receiver=$!
sleep 0.5
raw=$(cin 3 python3 "$CW/raw.py" send "$bytes")
wait "$receiver"
fig "raw TCP, the same ${rounds_mib} MiB host 3 -> host 1 in one stream: $raw s; repair time / raw TCP time: $(python3 -c "print(f'{$secs / max($raw, 0.001):.1f}')")x"

for i in $survivors; do check "host $i reads the file identical" same "$CW/src" "$(cmnt "$i")/f"; done
for i in $survivors; do check "unmount of $i exits 0" cnode_stop "$i"; done
echo "$PASS passed, $FAIL failed"
[ $FAIL = 0 ]
