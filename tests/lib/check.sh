# The check helpers every integration script uses. Source from bash; cluster.sh and mount.sh
# source it. Prints one "ok - NAME" / "not ok - NAME" line per check; measured values as
# "# figure: ..." lines.
PASS=0; FAIL=0
check() { local name=$1; shift; if "$@"; then PASS=$((PASS+1)); echo "ok - $name"; else FAIL=$((FAIL+1)); echo "not ok - $name"; fi; }
same() { cmp -s "$1" "$2"; }
fig() { echo "# figure: $*"; }
