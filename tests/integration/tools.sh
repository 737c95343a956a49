#!/usr/bin/env bash
# Real tools on foreverfs. On one node: git (init, commit, clone out of and into the mount,
# fsck), rsync -a in and out, a tar round trip, sqlite3 (rollback journal and WAL), make
# building and running a C program, cp -a keeping modes and mtimes. Then two nodes in network
# namespaces: a tree copied into node 1 (files, modes, mtimes, symlinks, hard links) shows up
# identical on node 2.
# Needs: git rsync sqlite3 make gcc (cc), tar, diff, and root for the network namespaces.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
FF=${FOREVERFS:-$ROOT/build/foreverfs}
W=$(mktemp -d /tmp/fftools.XXXXXX)
M=$W/mnt; D=$W/data; L=$W/log
mkdir -p "$M" "$D"
PASS=0; FAIL=0; PID=
FUSERMOUNT=$(command -v fusermount3 || command -v fusermount)
umask 022
export HOME=$W/home GIT_CONFIG_NOSYSTEM=1 LC_ALL=C TZ=UTC
mkdir -p "$HOME"
git config --global user.name "foreverfs test"
git config --global user.email "test@foreverfs.invalid"
git config --global init.defaultBranch main
git config --global safe.directory '*'

cleanup() {
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
  "$FUSERMOUNT" -u -z "$M" 2>/dev/null
  [ "$(type -t cluster_cleanup)" = function ] && cluster_cleanup
  rm -rf "$W"
}
trap cleanup EXIT
# check NAME CMD...: runs in this shell; the command's output is shown (indented) only when
# it fails. Returns the command's status.
check() {
  local name=$1; shift
  if "$@" >"$W/out" 2>&1; then
    PASS=$((PASS+1)); echo "ok - $name"
  else
    FAIL=$((FAIL+1)); echo "not ok - $name"
    [ "$1" = ceventually ] && { shift 2; "$@" >"$W/out" 2>&1; }
    head -${CHECK_LINES:-15} "$W/out" | sed 's/^/#   /'
    return 1
  fi
}
missing=()
for t in git rsync sqlite3 make cc tar diff; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "not ok - tools installed (missing: ${missing[*]}; apt-get install git rsync sqlite3 make gcc)"
  echo "0 passed, 1 failed"; exit 1
fi

mounted() { grep -q " $M fuse" /proc/mounts; }
start() {
  "$FF" "$M" --listen 127.0.0.1:0 --data "$D" --key "$W/key" -f >>"$L" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do mounted && return 0; kill -0 $PID 2>/dev/null || break; sleep 0.1; done
  echo "# did not mount:"; tail -20 "$L" | sed 's/^/#   /'; return 1
}
stop() {
  "$FUSERMOUNT" -u "$M" || return 1
  for _ in $(seq 1 100); do kill -0 $PID 2>/dev/null || break; sleep 0.1; done
  wait $PID; local rc=$?; PID=; [ $rc = 0 ]
}

# A tree: nested directories with unusual modes, files from empty to 2.5 MiB (a few MiB in
# all), an executable, symlinks (relative, into a subdirectory, dangling), fixed mtimes.
# With "links" it also gets hard links.
make_tree() {
  local t=$1 i
  mkdir -p "$t/a/b/c" "$t/empty" "$t/private" "$t/sp ace"
  printf 'top\n' >"$t/top.txt"
  : >"$t/a/empty-file"
  head -c 2621440 /dev/urandom >"$t/a/big.bin"
  head -c 1048577 /dev/urandom >"$t/a/b/mib-plus-one"
  head -c 700000 /dev/zero >"$t/a/b/zeros"
  for i in $(seq 1 40); do head -c $(( i * 997 )) /dev/urandom >"$t/a/b/c/f$i"; done
  printf '#!/bin/sh\necho run\n' >"$t/a/run.sh"; chmod 755 "$t/a/run.sh"
  printf 'secret\n' >"$t/private/key"; chmod 600 "$t/private/key"; chmod 700 "$t/private"
  printf 'ro\n' >"$t/sp ace/read only"; chmod 444 "$t/sp ace/read only"
  chmod 750 "$t/a/b"; chmod 1777 "$t/empty"
  ln -s top.txt "$t/link-to-top"
  ln -s a/b/c "$t/link-to-dir"
  ln -s ../../top.txt "$t/a/b/up-link"
  ln -s does/not/exist "$t/dangling"
  if [ "${2:-}" = links ]; then
    printf 'linked\n' >"$t/a/hard1"
    ln "$t/a/hard1" "$t/hard2"
    ln "$t/a/hard1" "$t/a/b/c/hard3"
    ln "$t/a/b/c/f7" "$t/f7-link"
  fi
  find "$t" -mindepth 1 ! -type l -print0 | xargs -0 touch -h -d '2001-02-03 04:05:06.123456789'
  touch -d '1999-12-31 23:59:59.5' "$t/top.txt"
  touch -h -d '2010-01-01 00:00:00.25' "$t/link-to-top"
  for d in "$t/a/b/c" "$t/a/b" "$t/a" "$t/empty" "$t/private" "$t/sp ace" "$t"; do
    touch -d '2002-03-04 05:06:07.891' "$d"
  done
}
# Metadata listings of a tree: "path<TAB>fields", one line per entry, sorted.
modes() { (cd "$1" && find . -mindepth 1 -printf '%P\t%y %m %U:%G\n' | sort); }
mtimes() { (cd "$1" && find . -mindepth 1 -printf '%P\t%y %TY-%Tm-%Td %TT\n' | sort); }
targets() { (cd "$1" && find . -mindepth 1 -type l -printf '%P\t-> %l\n' | sort); }
nlinks() { (cd "$1" && find . -mindepth 1 ! -type d -printf '%P\t%n links\n' | sort); }
# same_list LISTER A B: the listings match; otherwise prints "path: A has ..., B has ...".
same_list() {
  local a b
  a=$("$1" "$2") && b=$("$1" "$3") || return 1
  [ "$a" = "$b" ] && return 0
  join -t $'\t' -a1 -a2 -e '(missing)' -o 0,1.2,2.2 <(printf '%s\n' "$a") <(printf '%s\n' "$b") |
    awk -F'\t' '$2 != $3 { printf "%s: %s vs %s\n", $1, $2, $3 }'
  return 1
}
same_modes() { same_list modes "$1" "$2"; }
same_mtimes() { same_list mtimes "$1" "$2"; }
same_targets() { same_list targets "$1" "$2"; }
same_nlinks() { same_list nlinks "$1" "$2"; }
same_contents() { diff -r --no-dereference "$1" "$2"; }
# same_inode A B...: all are one inode.
same_inode() {
  local i; i=$(stat -c %i "$1") || return 1
  for f in "${@:2}"; do [ "$(stat -c %i "$f")" = "$i" ] || { stat -c '%n: inode %i' "$@"; return 1; }; done
}
export -f same_inode
# rsync -c -a --dry-run --itemize-changes from $1 to $2 lists nothing.
rsync_clean() {
  local out
  out=$(rsync -c -a --dry-run --itemize-changes "$1/" "$2/") || return 1
  [ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}

"$FF" keygen "$W/key" >/dev/null
check "mount" start
SRC=$W/src
make_tree "$SRC"

# ---------------------------------------------------------------- git
git_commit() {
  local r=$M/repo
  mkdir -p "$r" && cd "$r" || return 1
  git init -q . &&
  cp -r "$SRC/a" "$SRC/top.txt" . && ln -s top.txt link &&
  git add -A && git commit -q -m first &&
  for i in 1 2 3; do echo "change $i" >>top.txt; echo "$i" >"new$i"; git add -A; git commit -q -m "change $i" || return 1; done &&
  git mv new1 a/moved && git rm -q new2 && git commit -q -m "move and remove" &&
  [ "$(git rev-list --count HEAD)" = 5 ] && [ -z "$(git status --porcelain)" ]
}
check "git init, add, commit (5 commits) on the mount" git_commit
cd "$W" || exit 1
check "git fsck --strict of the repository on the mount" git -C "$M/repo" fsck --strict --no-progress
check "git gc on the mount, then fsck" bash -c "git -C '$M/repo' gc -q && git -C '$M/repo' fsck --strict --no-progress"
check "git clone from the mount to /tmp" git clone -q "$M/repo" "$W/clone"
check "git fsck of the clone" git -C "$W/clone" fsck --strict --no-progress
check "clone has the same tree as the mount" diff -r --no-dereference -x .git "$M/repo" "$W/clone"
check "git clone from /tmp into the mount" git clone -q --no-local "$W/clone" "$M/clone2"
check "git fsck of the clone on the mount" git -C "$M/clone2" fsck --strict --no-progress
check "clone on the mount: clean status, same HEAD" bash -c \
  "[ -z \"\$(git -C '$M/clone2' status --porcelain)\" ] && [ \"\$(git -C '$M/clone2' rev-parse HEAD)\" = \"\$(git -C '$M/repo' rev-parse HEAD)\" ]"
check "git clone within the mount (local, hard links if possible)" bash -c \
  "git clone -q '$M/repo' '$M/clone3' && git -C '$M/clone3' fsck --strict --no-progress"

# ---------------------------------------------------------------- rsync
check "rsync -a of a tree into the mount" rsync -a "$SRC/" "$M/rs/"
check "rsync -c --dry-run source -> mount: no differences" rsync_clean "$SRC" "$M/rs"
check "rsync -a from the mount back out" rsync -a "$M/rs/" "$W/rsback/"
check "rsync -c --dry-run source -> copy out: no differences" rsync_clean "$SRC" "$W/rsback"
echo changed >"$SRC/top.txt.new"; touch -d '1999-12-31 23:59:59.5' "$SRC/top.txt.new"
check "rsync -a again: changes only, then no differences" bash -c \
  "rsync -a --delete '$SRC/' '$M/rs/' && out=\$(rsync -c -a --dry-run --itemize-changes '$SRC/' '$M/rs/') && [ -z \"\$out\" ] || { echo \"\$out\"; false; }"
rm -f "$SRC/top.txt.new"
check "rsync -a --delete removes a file deleted at the source" bash -c \
  "rsync -a --delete '$SRC/' '$M/rs/' && [ ! -e '$M/rs/top.txt.new' ] && [ -z \"\$(rsync -c -a --dry-run --itemize-changes '$SRC/' '$M/rs/')\" ]"

# ---------------------------------------------------------------- tar
check "tar -c of the tree on the mount" tar -C "$M/rs" -cf "$W/t.tar" .
check "tar -x elsewhere" bash -c "mkdir '$W/untar' && tar -C '$W/untar' -xpf '$W/t.tar'"
check "tar round trip: diff -r with the source" same_contents "$SRC" "$W/untar"
check "tar round trip: modes" same_modes "$SRC" "$W/untar"
check "tar -x into the mount" bash -c "mkdir '$M/untar' && tar -C '$M/untar' -xpf '$W/t.tar'"
check "tar -x into the mount: diff -r with the source" same_contents "$SRC" "$M/untar"
check "tar -x into the mount: modes" same_modes "$SRC" "$M/untar"
# tar (gnu format) keeps whole seconds: compare with the extraction on local disk.
check "tar -x into the mount: mtimes as tar -x on local disk" same_mtimes "$W/untar" "$M/untar"

# ---------------------------------------------------------------- sqlite3
sql_fill() {
  local db=$1 mode=$2 k
  {
    echo "PRAGMA journal_mode=$mode;"
    echo "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER NOT NULL, s TEXT NOT NULL);"
    echo "CREATE INDEX t_v ON t(v);"
    for k in $(seq 0 9); do
      echo "BEGIN;"
      echo "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<1000)"
      echo "  INSERT INTO t(v, s) SELECT x + 1000*$k, hex(randomblob(40)) FROM c;"
      echo "COMMIT;"
    done
    echo "BEGIN; DELETE FROM t WHERE v % 10 = 0; ROLLBACK;"
  } | sqlite3 "$db" >/dev/null
}
sql_check() {
  local out
  out=$(sqlite3 "$1" "SELECT count(*), sum(v) FROM t; PRAGMA integrity_check;") || return 1
  [ "$out" = "$(printf '10000|50005000\nok')" ] || { echo "got: $out"; return 1; }
}
check "sqlite3: 10,000 rows in 10 transactions (rollback journal)" sql_fill "$M/db.sqlite" delete
check "sqlite3: count, sum, integrity_check (rollback journal)" sql_check "$M/db.sqlite"
check "sqlite3: 10,000 rows in 10 transactions (WAL)" sql_fill "$M/wal.sqlite" wal
check "sqlite3: count, sum, integrity_check (WAL)" sql_check "$M/wal.sqlite"
check "sqlite3: VACUUM, then integrity_check" bash -c "sqlite3 '$M/db.sqlite' VACUUM && [ \"\$(sqlite3 '$M/db.sqlite' 'PRAGMA integrity_check')\" = ok ]"

# ---------------------------------------------------------------- make
mkdir -p "$M/mk"
cat >"$M/mk/Makefile" <<'EOF'
CFLAGS = -O1 -Wall
hello: main.o util.o
	$(CC) -o $@ main.o util.o
%.o: %.c util.h
	$(CC) $(CFLAGS) -c -o $@ $<
clean:
	rm -f hello *.o
EOF
cat >"$M/mk/util.h" <<'EOF'
int triangle(int n);
EOF
cat >"$M/mk/util.c" <<'EOF'
#include "util.h"
int triangle(int n) { return n <= 0 ? 0 : n + triangle(n - 1); }
EOF
cat >"$M/mk/main.c" <<'EOF'
#include <stdio.h>
#include "util.h"
int main(void) { printf("hello from foreverfs %d\n", triangle(100)); return 0; }
EOF
check "make builds a C program on the mount" make -s -C "$M/mk"
check "the program runs from the mount" bash -c "[ \"\$('$M/mk/hello')\" = 'hello from foreverfs 5050' ]"
check "make again: up to date" make -q -C "$M/mk"
sleep 1.1
touch "$M/mk/util.c"
check "make after touch util.c: out of date, rebuilds" bash -c \
  "! make -q -C '$M/mk' && make -s -C '$M/mk' && make -q -C '$M/mk' && [ \"\$('$M/mk/hello')\" = 'hello from foreverfs 5050' ]"

# ---------------------------------------------------------------- cp -a
check "cp -a of a tree into the mount" cp -a "$SRC" "$M/cpa"
check "cp -a: contents" same_contents "$SRC" "$M/cpa"
check "cp -a: modes and owners (stat)" same_modes "$SRC" "$M/cpa"
check "cp -a: mtimes to the nanosecond (stat)" same_mtimes "$SRC" "$M/cpa"
check "cp -a: symlink targets" same_targets "$SRC" "$M/cpa"
check "cp -a out of the mount" cp -a "$M/cpa" "$W/cpa-out"
check "cp -a out of the mount: modes" same_modes "$M/cpa" "$W/cpa-out"
check "cp -a out of the mount: mtimes" same_mtimes "$M/cpa" "$W/cpa-out"
mkdir "$W/hl" && echo x >"$W/hl/one" && ln "$W/hl/one" "$W/hl/two"
check "cp -a of hard links into the mount" cp -a "$W/hl" "$M/hl"
check "cp -a of hard links: one inode, 2 links" bash -c "same_inode '$M/hl/one' '$M/hl/two' && [ \$(stat -c %h '$M/hl/one') = 2 ]"

check "unmount exits 0" stop
check "remount" start
check "after remount: git fsck" git -C "$M/repo" fsck --strict --no-progress
check "after remount: sqlite integrity_check" sql_check "$M/db.sqlite"
check "after remount: rsync -c --dry-run: no differences" rsync_clean "$SRC" "$M/rs"
check "unmount again" stop

# ---------------------------------------------------------------- two nodes
. "$ROOT/tests/lib/cluster.sh"
T=20
CT=$W/ctree
make_tree "$CT" links
cluster_up() { cluster_net && cluster_host 1 && cluster_host 2 && cnode_start 1 && cnode_start 2 --peer "$(caddr 1)"; }
if check "two nodes in network namespaces mount" cluster_up; then
  A=$(cmnt 1)/tree B=$(cmnt 2)/tree
  check "cp -a of a tree (with hard links) into node 1" cp -a "$CT" "$A"
  check "node 1: contents" same_contents "$CT" "$A"
  check "node 1: modes" same_modes "$CT" "$A"
  check "node 1: mtimes" same_mtimes "$CT" "$A"
  check "node 1: symlink targets" same_targets "$CT" "$A"
  check "node 1: hard-link counts" same_nlinks "$CT" "$A"
  # First that node 2 converges to what node 1 shows (replication), then that it is the
  # source tree (node 2 can only be as right as node 1).
  check "node 2 = node 1: contents" ceventually $T same_contents "$A" "$B"
  check "node 2 = node 1: modes and owners" ceventually $T same_modes "$A" "$B"
  check "node 2 = node 1: mtimes" ceventually $T same_mtimes "$A" "$B"
  check "node 2 = node 1: symlink targets" ceventually $T same_targets "$A" "$B"
  check "node 2 = node 1: hard-link counts" ceventually $T same_nlinks "$A" "$B"
  check "node 2 = source: contents" same_contents "$CT" "$B"
  check "node 2 = source: modes and owners" same_modes "$CT" "$B"
  check "node 2 = source: mtimes" same_mtimes "$CT" "$B"
  check "node 2 = source: symlink targets" same_targets "$CT" "$B"
  check "node 2 = source: hard-link counts" same_nlinks "$CT" "$B"
  check "node 2 = source: hard links share an inode" same_inode "$B/a/hard1" "$B/hard2" "$B/a/b/c/hard3"
  check "rsync -a on node 2 writes back, node 1 sees it" bash -c \
    "echo fresh >'$W/fresh' && touch -d '2005-05-05 05:05:05.5' '$W/fresh' && rsync -a '$W/fresh' '$B/fresh'"
  check "node 1: the file rsynced on node 2" ceventually $T cmp -s "$W/fresh" "$A/fresh"
  check "node 1: the file rsynced on node 2 has its mtime" ceventually $T bash -c \
    "[ \"\$(stat -c %y '$A/fresh')\" = \"\$(stat -c %y '$W/fresh')\" ]"
  check "unmount of node 2 exits 0" cnode_stop 2
  check "unmount of node 1 exits 0" cnode_stop 1
fi

echo "$PASS passed, $FAIL failed"
[ $FAIL = 0 ]
