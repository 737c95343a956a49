#!/usr/bin/env bash
# The Debian package and the mount conventions: packaging/build-deb.sh builds a .deb (in
# build-pkg/) that holds exactly the binary, man page, systemd unit, bash completion and
# example configuration, depends on fuse3 and libfuse3, installs, and then
# `mount -t fuse.foreverfs`, an fstab line (mount -T) and umount work through mount.fuse3,
# a mount that cannot succeed makes mount(8) fail, and dpkg -r removes it all. Also
# --version, --help and the man page against --help.
# Needs root (dpkg -i, mount). The package is removed at the end, even on failure.
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
FF=${FOREVERFS:-$ROOT/build/foreverfs}
W=$(mktemp -d /tmp/ffpkg.XXXXXX)
M=$W/mnt
mkdir -p "$M"
PASS=0; FAIL=0; FAILED=(); INSTALLED=; SYSLOG_PID=; DEVLOG=
FUSERMOUNT=$(command -v fusermount3 || command -v fusermount)

cleanup() {
  grep -q " $M fuse" /proc/mounts && "$FUSERMOUNT" -u -z "$M" 2>/dev/null
  for pid in $(daemon_pids); do kill -9 "$pid" 2>/dev/null; done
  [ -n "$INSTALLED" ] && dpkg -P foreverfs >/dev/null 2>&1  # also forgets a removed one
  [ -n "$SYSLOG_PID" ] && kill "$SYSLOG_PID" 2>/dev/null
  [ -n "$DEVLOG" ] && rm -f /dev/log
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
# check NAME CMD...: the command's output is shown (indented) only when it fails.
check() {
  local name=$1; shift
  if "$@" >"$W/out" 2>&1; then
    PASS=$((PASS+1)); echo "ok - $name"
  else
    FAIL=$((FAIL+1)); FAILED+=("$name"); echo "not ok - $name"
    head -20 "$W/out" | sed 's/^/#   /'
    return 1
  fi
}
finish() {
  echo "$PASS passed, $FAIL failed"
  [ $FAIL = 0 ] && exit 0
  printf 'FAILED: %s\n' "${FAILED[@]}"
  exit 1
}
# The daemons serving $M (their command line names it), found by pid for cleanup.
daemon_pids() { pgrep -f -- "foreverfs.* $M( |\$)" || true; }
mounted() { grep -q " $M fuse.foreverfs " /proc/mounts; }
gone() {  # waits up to 10 s for every process in "$@" to exit
  local pid
  for _ in $(seq 1 100); do
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && break; pid=; done
    [ -z "$pid" ] && return 0
    sleep 0.1
  done
  echo "still running: $*"; return 1
}

if [ "$(id -u)" != 0 ]; then
  echo "not ok - running as root (dpkg -i and mount need it)"; FAIL=1; FAILED+=(root); finish
fi
if [ "$(dpkg-query -W -f='${db:Status-Status}' foreverfs 2>/dev/null)" = installed ]; then
  echo "not ok - foreverfs is already installed as a package (dpkg -r foreverfs first)"
  FAIL=1; FAILED+=("no foreverfs package before the test"); finish
fi
for t in dpkg-deb cpack groff man mount.fuse3; do
  command -v "$t" >/dev/null || {
    echo "not ok - $t installed (scripts/setup.sh installs it)"; FAIL=1; FAILED+=("$t"); finish
  }
done

# --version, --help, man page.
VERSION=$(sed -n 's/^project(foreverfs VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
check "--version prints 'foreverfs $VERSION'" test "$("$FF" --version)" = "foreverfs $VERSION"
"$FF" --help >"$W/help" 2>&1
check "--help shows an fstab line" grep -q 'fstab' "$W/help"
check "--help shows mount -t fuse.foreverfs" grep -q 'mount -t fuse.foreverfs' "$W/help"
check "man page renders without warnings" \
  bash -c "groff -man -Tutf8 -ww -z packaging/foreverfs.1 2>&1 | tee /dev/stderr | wc -c | grep -qx 0"
check "man page is for version $VERSION" grep -q "^\.TH FOREVERFS 1 .*\"foreverfs $VERSION\"" packaging/foreverfs.1
man_has_help_options() {
  local opt rc=0 man
  man=$(sed 's/\\-/-/g' packaging/foreverfs.1)
  for opt in $(grep -o -- '--[a-z][a-z-]*' "$W/help" | sort -u) -f -o keygen status scrub gc; do
    grep -q -- "$opt" <<<"$man" || { echo "man page lacks $opt"; rc=1; }
  done
  for opt in $(sed -n 's/.*(\(listen=[^)]*\)).*/\1/p' "$W/help" | tr -d ' ' | tr , ' '); do
    grep -q -- "${opt%=}" <<<"$man" || { echo "man page lacks -o $opt"; rc=1; }
  done
  return $rc
}
check "man page lists every option and subcommand of --help" man_has_help_options

# The package.
SECONDS=0
if ! DEB=$(bash packaging/build-deb.sh 2>"$W/build.log"); then
  echo "not ok - packaging/build-deb.sh"; tail -30 "$W/build.log" | sed 's/^/#   /'
  FAIL=$((FAIL+1)); FAILED+=("packaging/build-deb.sh"); finish
fi
echo "# built $DEB in ${SECONDS}s"
dpkg-deb -c "$DEB" | awk '$1 !~ /^d/ {print $NF}' | sort >"$W/contents"
printf '%s\n' ./lib/systemd/system/foreverfs@.service ./usr/bin/foreverfs \
  ./usr/share/bash-completion/completions/foreverfs ./usr/share/doc/foreverfs/example.conf \
  ./usr/share/man/man1/foreverfs.1.gz | sort >"$W/expected"
check "the .deb holds exactly the expected files" diff "$W/expected" "$W/contents"
DEPENDS=$(dpkg-deb -f "$DEB" Depends)
check "Depends names fuse3 ($DEPENDS)" grep -Eq '(^|, )fuse3($|,| )' <<<"$DEPENDS"
check "Depends names libfuse3" grep -q 'libfuse3' <<<"$DEPENDS"
check "Package, Version, Section, Maintainer" test "$(dpkg-deb -f "$DEB" Package Version Section Maintainer)" = \
  "$(printf 'Package: foreverfs\nVersion: %s\nSection: admin\nMaintainer: foreverfs developers <dev@foreverfs.invalid>' "$VERSION")"

INSTALLED=1
check "dpkg -i" dpkg -i "$DEB" || finish
check "mount.fuse3 finds /usr/bin/foreverfs" \
  test "$(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v foreverfs)" = /usr/bin/foreverfs
check "installed binary is version $VERSION" test "$(/usr/bin/foreverfs --version)" = "foreverfs $VERSION"
check "man -w foreverfs" test "$(man -w foreverfs)" = /usr/share/man/man1/foreverfs.1.gz
check "man foreverfs renders" bash -c "MANWIDTH=80 man foreverfs 2>&1 | grep -q 'fuse.foreverfs'"
if command -v systemd-analyze >/dev/null; then
  check "systemd-analyze verify foreverfs@.service" \
    systemd-analyze verify /lib/systemd/system/foreverfs@.service
else
  echo "ok - systemd-analyze verify # SKIP systemd-analyze not installed"
fi
# What foreverfs@NAME.service runs with each OPTIONS= of the example (commented ones too):
# every option parses, so the run gets as far as the (missing) key file and exits 1 there
# (a command-line error exits 2 or 100+).
example_options_parse() {
  local line opts rc=0 got
  while IFS= read -r line; do
    opts=${line#*OPTIONS=}; opts=${opts#\"}; opts=${opts%\"}
    opts=$(sed -E 's/--(key|data) [^ ]+//g' <<<"$opts")  # ours instead, below
    # shellcheck disable=SC2086  # split as systemd splits $OPTIONS
    /usr/bin/foreverfs -f "$W/nomnt" $opts --key "$W/nokey" --data "$W/nodata" >"$W/parse" 2>&1
    got=$?
    if [ $got != 1 ] || ! grep -q "$W/nokey" "$W/parse"; then
      echo "exit $got for: $line"; head -3 "$W/parse"; rc=1
    fi
  done < <(grep -E '^#? *OPTIONS=' /usr/share/doc/foreverfs/example.conf)
  return $rc
}
check "the OPTIONS in example.conf parse" example_options_parse
complete_words() {  # complete_words LINE: what the completion offers at the end of LINE
  bash -c 'source /usr/share/bash-completion/completions/foreverfs || exit 1
    COMP_LINE=$1; COMP_POINT=${#1}; read -ra COMP_WORDS <<<"$1"
    [[ $1 == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _foreverfs; printf "%s\n" "${COMPREPLY[@]}"' _ "$1"
}
check "bash completion sources cleanly" bash -c 'source /usr/share/bash-completion/completions/foreverfs 2>"$1" &&
  test ! -s "$1" && complete -p foreverfs' _ "$W/source.err"
check "completing 'foreverfs --l' offers --listen" grep -qx -- --listen <(complete_words "foreverfs --l")
check "completing 'foreverfs sc' offers scrub" grep -qx scrub <(complete_words "foreverfs sc")
check "completing 'foreverfs -o ro,ke' offers key=" grep -qx ro,key= <(complete_words "foreverfs -o ro,ke")
mkdir -p "$W/dirs/alpha"; : >"$W/dirs/afile"
check "completing a MOUNTPOINT offers directories only" \
  test "$(complete_words "foreverfs $W/dirs/a")" = "$W/dirs/alpha"
check "completing --key offers files" grep -qx "$W/dirs/afile" <(complete_words "foreverfs --key $W/dirs/af")

# Logs of a daemon in the background go to syslog: listen on /dev/log if nothing does.
if [ ! -e /dev/log ] && command -v python3 >/dev/null; then
  python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/dev/log")
print("ready", flush=True)
with open(sys.argv[1], "ab", buffering=0) as f:
    while True:
        f.write(s.recv(65536) + b"\n")
' "$W/syslog" >"$W/syslog.ready" 2>&1 &
  SYSLOG_PID=$!; DEVLOG=1
  for _ in $(seq 1 50); do grep -q ready "$W/syslog.ready" 2>/dev/null && break; sleep 0.1; done
fi

# mount -t fuse.foreverfs: mount.fuse3 runs `foreverfs foreverfs MOUNTPOINT -o OPTIONS`.
check "keygen" /usr/bin/foreverfs keygen "$W/key"
OPTS="listen=127.0.0.1:0,data=$W/data,key=$W/key,log-file=$W/log,fetch-timeout=5,gc-interval=60"
check "mount -t fuse.foreverfs exits 0" mount -t fuse.foreverfs foreverfs "$M" -o "$OPTS"
check "it is mounted (in /proc/mounts)" mounted
printf 'hello from mount(8)\n' >"$M/a.txt" 2>"$W/err"
check "a file written reads back" test "$(cat "$M/a.txt" 2>&1)" = "hello from mount(8)"
check "foreverfs status on the mount" grep -q '^node' <(/usr/bin/foreverfs status "$M" 2>&1)
PIDS=$(daemon_pids)
check "one daemon serves it" test "$(wc -w <<<"$PIDS")" = 1
check "umount exits 0" umount "$M"
check "it is no longer mounted" bash -c "! grep -q ' $M fuse' /proc/mounts"
check "the daemon exits after umount" gone $PIDS
check "the daemon logged its exit" grep -q 'bye' "$W/log"

# Mounts that cannot succeed make mount(8) fail, with the daemon's reason.
mkdir -p "$W/keydir"
if mount -t fuse.foreverfs foreverfs "$M" -o "listen=127.0.0.1:0,data=$W/data,key=$W/keydir" \
    >"$W/err" 2>&1; then rc=0; else rc=$?; fi
check "mount with a directory as key fails ($rc)" test $rc != 0
check "... saying why" grep -q "key file" "$W/err"
check "... and mounts nothing" bash -c "! grep -q ' $M fuse' /proc/mounts"
if mount -t fuse.foreverfs foreverfs "$W/nope" -o "listen=127.0.0.1:0,data=$W/data,key=$W/key" \
    >"$W/err" 2>&1; then rc=0; else rc=$?; fi
check "mount on a missing mountpoint fails ($rc)" test $rc != 0
if /usr/bin/foreverfs foreverfs "$W/nope" -o "listen=127.0.0.1:0,data=$W/data,key=$W/key" \
    >"$W/err" 2>&1; then rc=0; else rc=$?; fi
check "foreverfs on a missing mountpoint exits 1 ($rc)" test $rc = 1
check "... saying why" grep -q "mountpoint $W/nope" "$W/err"
if mount -t fuse.foreverfs foreverfs "$M" -o "key=$W/key,data=$W/data,replicas=two" \
    >"$W/err" 2>&1; then rc=0; else rc=$?; fi
check "mount with a bad -o value fails ($rc)" test $rc != 0
check "... naming the option" grep -q "replicas=two" "$W/err"
check "... and mounts nothing" bash -c "! grep -q ' $M fuse' /proc/mounts"

# An /etc/fstab line, with the options mount(8) and systemd add, through mount -T FILE.
cat >"$W/fstab" <<EOF
# test fstab
foreverfs  $M  fuse.foreverfs  listen=127.0.0.1:0,data=$W/data,key=$W/key,log-level=debug,_netdev,nofail,x-systemd.automount,noatime,nodiratime  0 0
EOF
check "mount -T fstab MOUNTPOINT exits 0" mount -T "$W/fstab" "$M"
check "it is mounted, noatime" grep -q " $M fuse.foreverfs [^ ]*noatime" /proc/mounts
check "the earlier file is still there" test "$(cat "$M/a.txt" 2>&1)" = "hello from mount(8)"
PIDS=$(daemon_pids)
check "fusermount3 -u exits 0" "$FUSERMOUNT" -u "$M"
check "the daemon exits after fusermount3 -u" gone $PIDS
if [ -n "$DEVLOG" ]; then
  check "without --log-file the daemon in the background logs to syslog" \
    grep -Eq "foreverfs\[[0-9]+\]: .*bye" "$W/syslog"
else
  echo "ok - logs to syslog # SKIP /dev/log exists (a syslog daemon runs) or no python3"
fi

# Removal.
check "dpkg -r foreverfs" dpkg -r foreverfs
check "/usr/bin/foreverfs is gone" test ! -e /usr/bin/foreverfs
check "the man page and unit are gone" \
  bash -c "! test -e /usr/share/man/man1/foreverfs.1.gz && ! test -e /lib/systemd/system/foreverfs@.service"
check "dpkg -P foreverfs" dpkg -P foreverfs && INSTALLED=
finish
