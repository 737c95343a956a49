#!/usr/bin/env bash
# Ownership and permissions as an unprivileged user (issue 12, item 5). Creates a user and a
# group (removed at exit), mounts as root with -o allow_other,default_permissions, prepares the
# same tree on the mount and in a directory of the local disk (ext4), and then, as the user,
# runs each operation in both places: the errno (or the owner and mode it leaves) must be the
# same. chown and chmod by a non-owner, writing a read-only file, sticky and setgid
# directories, chmod clearing setgid for a non-member, writes clearing setuid/setgid. After
# every operation the daemon must still answer. Runs as root; about 5 s.
set -u
W=$(mktemp -d /tmp/ffperm.XXXXXX)
chmod 755 "$W"
M=$W/mnt D=$W/data L=$W/log LOCAL=$W/local
mkdir -p "$M" "$D" "$LOCAL"
U=ffp$$ G=ffpg$$
PID=
. "$(dirname "$0")/../lib/mount.sh"
cleanup() {
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
  "$FUSERMOUNT" -u -z "$M" 2>/dev/null
  userdel "$U" 2>/dev/null
  groupdel "$G" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
trap "exit 130" INT TERM
[ "$(id -u)" = 0 ] || { echo "not ok - permissions.sh must run as root"; exit 1; }

groupadd "$G" && useradd -M -N -g users -s /usr/sbin/nologin "$U" || {
  echo "not ok - create user $U and group $G"
  exit 1
}
echo "ok - create user $U (group users) and group $G (not the user's)"

ffmount -o allow_other,default_permissions || exit 1

# The same tree in both places, made by root.
prepare() {
  local r=$1
  chmod 0777 "$r"
  echo known >"$r/known" && chmod 0644 "$r/known"
  echo r >"$r/rootfile" && chmod 0644 "$r/rootfile"
  echo s >"$r/secret" && chmod 0600 "$r/secret"
  echo u >"$r/userfile" && chown "$U:users" "$r/userfile" && chmod 0644 "$r/userfile"
  echo u >"$r/ro" && chown "$U:users" "$r/ro" && chmod 0444 "$r/ro"
  echo u >"$r/notmember" && chown "$U:$G" "$r/notmember" && chmod 0755 "$r/notmember"
  echo u >"$r/member" && chown "$U:users" "$r/member" && chmod 0755 "$r/member"
  echo u >"$r/suid-root" && chmod 04777 "$r/suid-root"
  echo u >"$r/suid-own" && chown "$U:users" "$r/suid-own" && chmod 04755 "$r/suid-own"
  echo u >"$r/sgid-exec" && chown "root:users" "$r/sgid-exec" && chmod 02775 "$r/sgid-exec"
  echo u >"$r/sgid-noexec" && chown "root:users" "$r/sgid-noexec" && chmod 02666 "$r/sgid-noexec"
  mkdir "$r/sticky" && chmod 1777 "$r/sticky"
  echo r >"$r/sticky/rootowned" && chmod 0666 "$r/sticky/rootowned"
  mkdir "$r/sticky/rootdir"
  echo u >"$r/sticky/userowned" && chown "$U:users" "$r/sticky/userowned"
  mkdir "$r/sgid" && chown "root:$G" "$r/sgid" && chmod 02777 "$r/sgid"
  mkdir "$r/ro-dir" && chmod 0555 "$r/ro-dir" && echo r >"$r/ro-dir/inside"
  mkdir "$r/private" && chmod 0700 "$r/private" && echo r >"$r/private/inside"
  mkdir "$r/userdir" && chown "$U:users" "$r/userdir"
  mkdir "$r/notmember-dir" && chown "$U:$G" "$r/notmember-dir" && chmod 0775 "$r/notmember-dir"
  echo u >"$r/suid-chgrp" && chown "$U:$G" "$r/suid-chgrp" && chmod 04755 "$r/suid-chgrp"
  echo u >"$r/sgid-chgrp" && chown "$U:$G" "$r/sgid-chgrp" && chmod 02775 "$r/sgid-chgrp"
  echo u >"$r/suid-trunc" && chmod 04777 "$r/suid-trunc"
  echo u >"$r/sgid-trunc" && chown "root:users" "$r/sgid-trunc" && chmod 02666 "$r/sgid-trunc"
  echo u >"$r/suid-roottrunc" && chown "$U:users" "$r/suid-roottrunc" && chmod 04777 "$r/suid-roottrunc"
  echo r >"$r/rootxattr" && chmod 0666 "$r/rootxattr" && setfattr -n user.k -v v "$r/rootxattr"
  echo u >"$r/suid-rootwrite" && chown "$U:users" "$r/suid-rootwrite" && chmod 04777 "$r/suid-rootwrite"
  echo u >"$r/suid-rootchown" && chmod 04755 "$r/suid-rootchown"
  echo r >"$r/root-sgid" && chown "root:$G" "$r/root-sgid" && chmod 0755 "$r/root-sgid"
}
if prepare "$LOCAL" && prepare "$M"; then
  echo "ok - the same tree made by root in both places"
else
  echo "not ok - the same tree made by root in both places"
  exit 1
fi

cat >"$W/ops.py" <<'PYEOF'
import errno, grp, os, stat, sys

LOCAL, MNT, PID, OTHER_GROUP = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
UID_OF_USER = int(sys.argv[5])
G_OTHER = grp.getgrnam(OTHER_GROUP).gr_gid
G_USERS = grp.getgrnam("users").gr_gid
UID = os.getuid()


def run(fn):
    try:
        v = fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "ok" if v is None else "ok:%s" % (v,)


def owner_mode(p):
    st = os.lstat(p)
    who = {0: "root", UID_OF_USER: "user"}.get(st.st_uid, st.st_uid)
    group = {0: "root", G_USERS: "users", G_OTHER: "other"}.get(st.st_gid, st.st_gid)
    return "%s:%s %04o" % (who, group, stat.S_IMODE(st.st_mode))


def write(p, data=b"w"):
    with open(p, "r+b") as f:
        f.write(data)


cases = []


def case(name, role="user"):
    """An operation run by the unprivileged user, or (role="root") by root."""
    def add(fn):
        cases.append((name, role, fn))
        return fn
    return add


def j(root, *names):
    return os.path.join(root, *names)


# Ownership.
@case("chown of root's file to the user")
def _(r):
    return run(lambda: os.chown(j(r, "rootfile"), UID, -1)) + " " + owner_mode(j(r, "rootfile"))


@case("chown of the user's file to root (giving it away)")
def _(r):
    return run(lambda: os.chown(j(r, "userfile"), 0, -1)) + " " + owner_mode(j(r, "userfile"))


@case("chgrp of the user's file to a group the user is not in")
def _(r):
    return run(lambda: os.chown(j(r, "userfile"), -1, G_OTHER)) + " " + owner_mode(j(r, "userfile"))


@case("chgrp of the user's file to the user's group")
def _(r):
    return run(lambda: os.chown(j(r, "userfile"), -1, G_USERS)) + " " + owner_mode(j(r, "userfile"))


@case("chown to -1, -1 of root's file")
def _(r):
    return run(lambda: os.chown(j(r, "rootfile"), -1, -1))


# Modes.
@case("chmod of root's file")
def _(r):
    return run(lambda: os.chmod(j(r, "rootfile"), 0o666)) + " " + owner_mode(j(r, "rootfile"))


@case("chmod of the user's file")
def _(r):
    return run(lambda: os.chmod(j(r, "userfile"), 0o600)) + " " + owner_mode(j(r, "userfile"))


@case("chmod g+s by a non-member of the file's group clears setgid")
def _(r):
    return run(lambda: os.chmod(j(r, "notmember"), 0o2755)) + " " + owner_mode(j(r, "notmember"))


@case("chmod g+s by a member of the file's group keeps setgid")
def _(r):
    return run(lambda: os.chmod(j(r, "member"), 0o2755)) + " " + owner_mode(j(r, "member"))


@case("chmod u+s of the user's own file keeps setuid")
def _(r):
    return run(lambda: os.chmod(j(r, "userfile"), 0o4644)) + " " + owner_mode(j(r, "userfile"))


@case("utime with explicit times of root's file")
def _(r):
    return run(lambda: os.utime(j(r, "rootfile"), (1, 1)))


@case("utime to now of root's file (not writable)")
def _(r):
    return run(lambda: os.utime(j(r, "rootfile"), None))


@case("utime to now of a file writable by all")
def _(r):
    return run(lambda: os.utime(j(r, "sticky", "rootowned"), None))


# Access.
@case("write to a 0444 file of the user")
def _(r):
    return run(lambda: write(j(r, "ro")))


@case("truncate a 0444 file of the user")
def _(r):
    return run(lambda: os.truncate(j(r, "ro"), 0))


@case("write to root's 0644 file")
def _(r):
    return run(lambda: write(j(r, "rootfile")))


@case("read root's 0600 file")
def _(r):
    return run(lambda: open(j(r, "secret"), "rb").close())


@case("chmod u+w and then write the user's 0444 file")
def _(r):
    os.chmod(j(r, "ro"), 0o644)
    return run(lambda: write(j(r, "ro"))) + " " + owner_mode(j(r, "ro"))


@case("create in a 0555 directory")
def _(r):
    return run(lambda: os.close(os.open(j(r, "ro-dir", "new"), os.O_CREAT | os.O_WRONLY, 0o644)))


@case("unlink in a 0555 directory")
def _(r):
    return run(lambda: os.unlink(j(r, "ro-dir", "inside")))


@case("stat in a 0700 directory of root")
def _(r):
    return run(lambda: os.stat(j(r, "private", "inside")).st_size)


@case("list a 0700 directory of root")
def _(r):
    return run(lambda: os.listdir(j(r, "private")))


@case("setxattr user.* on root's 0644 file")
def _(r):
    return run(lambda: os.setxattr(j(r, "rootfile"), "user.k", b"v"))


@case("setxattr user.* on the user's file")
def _(r):
    return run(lambda: os.setxattr(j(r, "userdir"), "user.k", b"v"))


@case("hard link to root's file (protected_hardlinks)")
def _(r):
    return run(lambda: os.link(j(r, "rootfile"), j(r, "userdir", "link")))


@case("mknod of a FIFO in the user's directory")
def _(r):
    return run(lambda: os.mkfifo(j(r, "userdir", "fifo"), 0o644)) + " " + owner_mode(j(r, "userdir", "fifo"))


@case("mknod of a character device")
def _(r):
    return run(lambda: os.mknod(j(r, "userdir", "dev"), 0o644 | stat.S_IFCHR, os.makedev(1, 3)))


# Sticky directory.
@case("unlink another user's file in a sticky directory")
def _(r):
    return run(lambda: os.unlink(j(r, "sticky", "rootowned")))


@case("rename another user's file in a sticky directory")
def _(r):
    return run(lambda: os.rename(j(r, "sticky", "rootowned"), j(r, "sticky", "moved")))


@case("rename over another user's file in a sticky directory")
def _(r):
    p = j(r, "sticky", "mine")
    open(p, "w").close()
    return run(lambda: os.rename(p, j(r, "sticky", "rootowned")))


@case("rmdir another user's directory in a sticky directory")
def _(r):
    return run(lambda: os.rmdir(j(r, "sticky", "rootdir")))


@case("unlink the user's own file in a sticky directory")
def _(r):
    return run(lambda: os.unlink(j(r, "sticky", "userowned")))


@case("create in a sticky directory")
def _(r):
    p = j(r, "sticky", "created")
    return run(lambda: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o640))) + " " + owner_mode(p)


# Setgid directory.
@case("a file created in a setgid directory takes its group")
def _(r):
    p = j(r, "sgid", "file")
    return run(lambda: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o2755))) + " " + owner_mode(p)


@case("a directory made in a setgid directory takes its group and setgid")
def _(r):
    p = j(r, "sgid", "sub")
    return run(lambda: os.mkdir(p, 0o755)) + " " + owner_mode(p)


@case("a file in a subdirectory of a setgid directory takes the group too")
def _(r):
    p = j(r, "sgid", "sub", "deeper")
    return run(lambda: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))) + " " + owner_mode(p)


@case("a symlink made in a setgid directory takes its group")
def _(r):
    p = j(r, "sgid", "link")
    return run(lambda: os.symlink("file", p)) + " " + owner_mode(p).split()[0]


# Writes clear setuid and setgid.
@case("writing root's setuid 04777 file clears setuid")
def _(r):
    return run(lambda: write(j(r, "suid-root"))) + " " + owner_mode(j(r, "suid-root"))


@case("writing the user's own setuid file clears setuid")
def _(r):
    return run(lambda: write(j(r, "suid-own"))) + " " + owner_mode(j(r, "suid-own"))


@case("writing a setgid group-executable file clears setgid")
def _(r):
    return run(lambda: write(j(r, "sgid-exec"))) + " " + owner_mode(j(r, "sgid-exec"))


@case("writing a setgid file that is not group-executable keeps setgid")
def _(r):
    return run(lambda: write(j(r, "sgid-noexec"))) + " " + owner_mode(j(r, "sgid-noexec"))


@case("truncating root's setuid 04777 file clears setuid")
def _(r):
    p = j(r, "suid-root")
    os.chmod(p, 0o4777) if os.stat(p).st_uid == UID else None
    return run(lambda: os.truncate(p, 0)) + " " + owner_mode(p)


@case("chgrp of the user's own setuid file clears setuid")
def _(r):
    p = j(r, "suid-chgrp")
    return run(lambda: os.chown(p, -1, G_USERS)) + " " + owner_mode(p)


@case("chgrp of the user's own setgid group-executable file clears setgid")
def _(r):
    p = j(r, "sgid-chgrp")
    return run(lambda: os.chown(p, -1, G_USERS)) + " " + owner_mode(p)


@case("open O_TRUNC of root's setuid 04777 file clears setuid")
def _(r):
    p = j(r, "suid-trunc")
    return run(lambda: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))) + " " + owner_mode(p)


@case("open O_TRUNC of a setgid file that is not group-executable keeps setgid")
def _(r):
    p = j(r, "sgid-trunc")
    return run(lambda: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))) + " " + owner_mode(p)


@case("open O_TRUNC of a setuid file keeps setuid", role="root")
def _(r):
    p = j(r, "suid-roottrunc")
    return run(lambda: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))) + " " + owner_mode(p)


@case("chmod g+s of the user's directory whose group the user is not in")
def _(r):
    p = j(r, "notmember-dir")
    return run(lambda: os.chmod(p, 0o2775)) + " " + owner_mode(p)


@case("setxattr user.* on a sticky directory of root")
def _(r):
    return run(lambda: os.setxattr(j(r, "sticky"), "user.k", b"v"))


@case("removexattr on root's file")
def _(r):
    return run(lambda: os.removexattr(j(r, "rootxattr"), "user.k"))


@case("chmod of root's file by setting only its group to root's")
def _(r):
    return run(lambda: os.chown(j(r, "rootfile"), -1, 0))


# As root: CAP_FSETID keeps setuid on a write; chown clears it all the same.
@case("writing a setuid 04777 file keeps setuid", role="root")
def _(r):
    p = j(r, "suid-rootwrite")
    return run(lambda: write(p)) + " " + owner_mode(p)


@case("chown of a setuid 04777 file clears setuid", role="root")
def _(r):
    p = j(r, "suid-rootchown")
    return run(lambda: os.chown(p, UID_OF_USER, -1)) + " " + owner_mode(p)


@case("chmod g+s of a file of another group keeps setgid", role="root")
def _(r):
    p = j(r, "root-sgid")
    return run(lambda: os.chmod(p, 0o2755)) + " " + owner_mode(p)


@case("a file created by root in a setgid directory takes its group", role="root")
def _(r):
    p = j(r, "sgid", "rootfile")
    return run(lambda: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o2755))) + " " + owner_mode(p)


def alive():
    try:
        os.kill(PID, 0)
    except PermissionError:
        pass  # the daemon is root's: it exists
    except OSError:
        return False
    try:
        os.stat(MNT)
        with open(os.path.join(MNT, "known"), "rb") as f:
            return f.read() == b"known\n"
    except OSError:
        return False


fails, mismatches = 0, []
role = "root" if UID == 0 else "user"
for name, who, fn in cases:
    if who != role:
        continue
    name = "%s: %s" % (role, name)
    want = fn(LOCAL)
    got = fn(MNT)
    if got == want:
        print("ok - %s: %s" % (name, got))
    else:
        fails += 1
        print("not ok - %s: %s, ext4 gives %s" % (name, got, want))
        mismatches.append((name, want, got))
    if not alive():
        fails += 1
        print("not ok - the mount is alive after: %s" % name)
        break
else:
    print("ok - the mount answered after each operation as %s" % role)
if mismatches:
    w = max(len(m[0]) for m in mismatches)
    print("# mismatches (operation | ext4 | foreverfs):")
    for m in mismatches:
        print("#   %-*s | %s | %s" % (w, m[0], m[1], m[2]))
sys.exit(1 if fails else 0)
PYEOF
chmod 644 "$W/ops.py"
cd / && timeout 60 runuser -u "$U" -- python3 "$W/ops.py" "$LOCAL" "$M" "$PID" "$G" "$(id -u "$U")"
rc=$?
if [ $rc = 0 ]; then
  timeout 60 python3 "$W/ops.py" "$LOCAL" "$M" "$PID" "$G" "$(id -u "$U")"
  rc=$?
fi
[ $rc = 124 ] && echo "not ok - the operations finished within 60 s (the mount hangs?)"
if ! kill -0 "$PID" 2>/dev/null; then
  echo "not ok - the daemon is still running"
  tail -5 "$L" | sed 's/^/#   /'
  rc=1
else
  "$FUSERMOUNT" -u "$M" && wait "$PID"
  st=$?
  PID=
  if [ $st = 0 ]; then echo "ok - unmount exits 0"; else echo "not ok - unmount exits 0"; rc=1; fi
fi
exit $rc
