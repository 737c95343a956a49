#!/usr/bin/env python3
"""Randomized, model-based POSIX test of a foreverfs mount.

Every random operation is applied twice: to a directory on the mount and to a reference
directory on a local file system (under /tmp). The result of each operation (return value, or
the errno) must be identical on both sides, and the trees are compared after every step (the
paths the step touched) and every --full-every steps and at the end (everything): file bytes,
sizes, types, permission bits, symlink targets, link counts, hard-link identity, directory
listings, and mtimes where the test set them explicitly with utime.

  posix_model.py [--ops N] [--seed S] [--skip OP,...] [--mount DIR] [--full-every K] [-v]

Without --mount it starts a single foreverfs node (binary $FOREVERFS or build/foreverfs) and
unmounts it at the end; that unmount must exit 0. On a mismatch it prints the seed, the step,
the operation and the difference and exits 1; --seed S replays the same run.
"""
import argparse
import errno
import hashlib
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
MAX_SIZE = 5 * MiB + 4096       # files stay at about 5 MiB at most
MAXD = 3                        # directories nest at most this deep below the work root
PADS = ["pad1", "pad2", "pad3"]  # MAXD levels above the work root, see Model.__init__
NAMES = ["a", "b", "c", "d", "e", "f", "g h", "ü", "x" * 255]
NAME_WEIGHTS = [10, 10, 10, 10, 8, 6, 2, 1, 1]
ABSENT_DIR = "/nonexistent-ffmodel-dir"

# op name -> weight
OPS = {
    "write": 14, "create_excl": 4, "overwrite": 4, "append": 6, "truncate": 6, "ftruncate": 4,
    "read": 6, "rename": 12, "unlink": 6, "mkdir": 6, "rmdir": 4, "link": 5, "symlink": 5,
    "chmod": 5, "chown": 3, "utime": 5, "write_utime": 3, "readdir": 2, "unlink_open": 2, "replace_open": 2,
    "mknod": 2, "xattr": 3,
}
# Not operations but behaviours that can be left out with --skip like one.
FEATURES = {
    # modes with the setuid/setgid bits (new entries in a setgid directory take its group,
    # new directories inherit the bit, chown clears setuid/setgid of a file)
    "suid_sgid": "modes with the setuid and setgid bits",
}


def nb_open(path, flags, mode=0o644):
    """open(2) with O_NONBLOCK: no effect on regular files, and a FIFO made by mknod never
    blocks the test waiting for a partner (both sides then fail or succeed alike)."""
    return os.open(path, flags | os.O_NONBLOCK, mode)


class Mismatch(Exception):
    pass


def errname(e):
    return errno.errorcode.get(e, str(e))


def attempt(fn):
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", errname(e.errno))


def digest(b):
    return hashlib.sha256(b).hexdigest()[:16]


class Side:
    """One of the two trees; every operation takes paths relative to the work root."""

    def __init__(self, name, top):
        self.name = name
        self.top = top
        self.root = os.path.join(top, *PADS)

    def p(self, rel):
        return os.path.join(self.root, rel) if rel else self.root

    # ---- operations; each returns a comparable value or raises OSError ----
    def op_write(self, a):
        fd = nb_open(self.p(a["path"]), os.O_WRONLY | os.O_CREAT, a["mode"])
        try:
            n = os.pwrite(fd, a["data"], a["off"])
            return (n, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def op_create_excl(self, a):
        fd = nb_open(self.p(a["path"]), os.O_WRONLY | os.O_CREAT | os.O_EXCL, a["mode"])
        try:
            return os.write(fd, a["data"])
        finally:
            os.close(fd)

    def op_overwrite(self, a):
        fd = nb_open(self.p(a["path"]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, a["mode"])
        try:
            return os.write(fd, a["data"])
        finally:
            os.close(fd)

    def op_append(self, a):
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT if a["creat"] else 0)
        fd = nb_open(self.p(a["path"]), flags, 0o644)
        try:
            os.lseek(fd, 0, os.SEEK_SET)  # O_APPEND must write at the end anyway
            n = os.write(fd, a["data"])
            n2 = os.write(fd, a["data2"])
            return (n, n2, os.lseek(fd, 0, os.SEEK_CUR), os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def op_truncate(self, a):
        os.truncate(self.p(a["path"]), a["size"])

    def op_ftruncate(self, a):
        fd = nb_open(self.p(a["path"]), os.O_RDWR)
        try:
            os.pwrite(fd, a["data"], a["off"])
            os.ftruncate(fd, a["size"])
            s1 = os.fstat(fd).st_size
            got = os.pread(fd, a["rlen"], a["roff"])
            os.pwrite(fd, a["data2"], a["off2"])
            return (s1, digest(got), len(got), os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def op_read(self, a):
        fd = nb_open(self.p(a["path"]), os.O_RDONLY)
        try:
            got = os.pread(fd, a["len"], a["off"])
            return (len(got), digest(got))
        finally:
            os.close(fd)

    def op_rename(self, a):
        os.rename(self.p(a["src"]), self.p(a["dst"]))

    def op_unlink(self, a):
        os.unlink(self.p(a["path"]))

    def op_mkdir(self, a):
        os.mkdir(self.p(a["path"]), a["mode"])

    def op_rmdir(self, a):
        os.rmdir(self.p(a["path"]))

    def op_link(self, a):
        os.link(self.p(a["src"]), self.p(a["dst"]), follow_symlinks=False)

    def op_symlink(self, a):
        os.symlink(a["target"], self.p(a["path"]))

    def op_chmod(self, a):
        os.chmod(self.p(a["path"]), a["mode"])

    def op_chown(self, a):
        os.chown(self.p(a["path"]), a["uid"], a["gid"], follow_symlinks=a["follow"])

    def op_utime(self, a):
        os.utime(self.p(a["path"]), ns=(a["atime"], a["mtime"]))

    def op_write_utime(self, a):
        # What cp -a and tar do: write, set the times (on the fd or by path), then close.
        fd = nb_open(self.p(a["path"]), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, a["data"], a["off"])
            os.utime(fd if a["by_fd"] else self.p(a["path"]), ns=(a["atime"], a["mtime"]))
            if a["fchmod"]:
                os.fchmod(fd, a["mode"])
        finally:
            os.close(fd)

    def op_readdir(self, a):
        return sorted(os.listdir(self.p(a["path"])))

    def op_unlink_open(self, a):
        # An open file keeps its data after its last name is gone.
        fd = nb_open(self.p(a["path"]), os.O_RDWR)
        try:
            os.unlink(self.p(a["path"]))
            os.pwrite(fd, a["data"], a["off"])
            st = os.fstat(fd)
            got = os.pread(fd, a["rlen"], a["roff"])
            return (st.st_size, st.st_nlink, len(got), digest(got))
        finally:
            os.close(fd)

    def op_replace_open(self, a):
        # Open a file, rename another file over it: the open descriptor still reads the old data.
        fd = nb_open(self.p(a["path"]), os.O_RDONLY)
        try:
            with open(self.p(a["tmp"]), "xb") as f:
                f.write(a["data"])
            os.rename(self.p(a["tmp"]), self.p(a["path"]))
            got = os.pread(fd, a["rlen"], 0)
            return (len(got), digest(got))
        finally:
            os.close(fd)

    def op_mknod(self, a):
        os.mkfifo(self.p(a["path"]), a["mode"])

    def op_xattr(self, a):
        path = self.p(a["path"])
        if a["remove"]:
            os.removexattr(path, a["name"])
        else:
            os.setxattr(path, a["name"], a["value"])
        names = sorted(n for n in os.listxattr(path) if n.startswith("user."))
        return (names, [os.getxattr(path, n) for n in names])


def data_of(rng, n):
    # Bytes with structure (not all random) so that misplaced writes are visible.
    kind = rng.random()
    if kind < 0.5:
        return rng.randbytes(n)
    if kind < 0.8:
        return bytes([rng.randrange(256)]) * n
    pat = rng.randbytes(rng.randint(1, 64))
    return (pat * (n // len(pat) + 1))[:n]


class Model:
    def __init__(self, args, mnt_top, ref_top, rng):
        self.args = args
        self.rng = rng
        self.ops = {k: w for k, w in OPS.items() if k not in args.skip}
        if args.only:
            self.ops = {k: w for k, w in self.ops.items() if k in args.only}
        self.special_bits = "suid_sgid" not in args.skip
        # The work root sits MAXD directories below each top, so a relative symlink moved to
        # the work root still resolves inside the compared tree; the tree is compared from the
        # top. Only generated names are used at the last component, never the pad names.
        self.m = Side("mount", mnt_top)
        self.r = Side("ref", ref_top)
        for s in (self.m, self.r):
            os.makedirs(s.root)
            d = s.top
            os.chmod(d, 0o755)
            for p in PADS:
                d = os.path.join(d, p)
                os.chmod(d, 0o755)
        self.pinned = {}   # ref inode -> mtime_ns set by utime, on files and directories
        self.step = 0
        self.counts = {}
        self.xattr = "xattr" in self.ops

    # ---- the reference tree ----
    def scan(self):
        """Entries of the reference work tree: rel path -> (kind, depth)."""
        out = {}

        def walk(rel, depth):
            with os.scandir(self.r.p(rel)) as it:
                for e in it:
                    sub = os.path.join(rel, e.name) if rel else e.name
                    if e.is_symlink():
                        out[sub] = ("l", depth + 1)
                    elif e.is_dir():
                        out[sub] = ("d", depth + 1)
                        walk(sub, depth + 1)
                    elif e.is_file():
                        out[sub] = ("f", depth + 1)
                    else:
                        out[sub] = ("o", depth + 1)
        walk("", 0)
        return out

    def dirs(self, ents, max_depth=MAXD):
        return [""] + sorted(p for p, (k, d) in ents.items() if k == "d" and d <= max_depth)

    def name(self):
        return self.rng.choices(NAMES, NAME_WEIGHTS)[0]

    def new_path(self, ents, max_parent_depth=MAXD):
        r = self.rng.random()
        if r < 0.03:
            return os.path.join("nonexistent", self.name())           # ENOENT
        files = [p for p, (k, _) in ents.items() if k == "f"]
        if r < 0.06 and files:
            return os.path.join(self.rng.choice(sorted(files)), self.name())  # ENOTDIR
        d = self.rng.choice(self.dirs(ents, max_parent_depth))
        return os.path.join(d, self.name()) if d else self.name()

    def existing(self, ents, kinds="fdlo", p_new=0.15):
        pool = sorted(p for p, (k, _) in ents.items() if k in kinds)
        if not pool or self.rng.random() < p_new:
            return self.new_path(ents)
        return self.rng.choice(pool)

    def any_path(self, ents, file_bias=0.7):
        if self.rng.random() < file_bias:
            return self.existing(ents, "fl", p_new=0.25)
        return self.existing(ents, "fdlo", p_new=0.2)

    def ref_size(self, rel):
        try:
            return os.stat(self.r.p(rel)).st_size
        except OSError:
            return 0

    def offset(self, size, n):
        r = self.rng.random()
        if r < 0.35:
            off = self.rng.randint(0, max(0, size))
        elif r < 0.55:  # beyond EOF: a hole
            off = size + self.rng.randint(1, 2 * MiB)
        elif r < 0.8:   # across a 1 MiB boundary
            k = self.rng.randint(1, 5)
            off = k * MiB - self.rng.randint(1, max(1, n - 1))
        else:
            off = self.rng.randint(0, 5 * MiB)
        return max(0, min(off, MAX_SIZE - n))

    def length(self):
        r = self.rng.random()
        if r < 0.6:
            return self.rng.randint(1, 8192)
        if r < 0.9:
            return self.rng.randint(1, 256 * 1024)
        return self.rng.randint(MiB // 2, 3 * MiB // 2)

    def mode(self, dir=False):
        if dir and self.special_bits and self.rng.random() < 0.15:
            return 0o2775  # a setgid directory: what is created in it takes its group
        if self.rng.random() < 0.1:
            return self.rng.randrange(0o10000 if self.special_bits else 0o2000)
        return self.rng.choice([0o644, 0o600, 0o755, 0o700, 0o444, 0o000, 0o640, 0o777, 0o711])

    def symlink_target(self, ents, link):
        r = self.rng.random()
        if r < 0.08:
            return ABSENT_DIR + "/" + self.name()
        if r < 0.12:
            return "x" * self.rng.randint(200, 1000)
        if r < 0.16:
            return os.path.basename(link) if link else "a"  # a link to itself: ELOOP
        # Relative and inside the tree (existing or not). A symlink's directory is at most
        # MAXD deep, so ".." never climbs above the top wherever the link is later moved.
        if self.rng.random() < 0.75 and ents:
            dst = self.rng.choice(sorted(ents))
        else:
            dst = self.new_path(ents)
        if dst.startswith("nonexistent"):
            dst = "nonexistent"
        return os.path.relpath(dst or ".", os.path.dirname(link) or ".")

    # ---- op generation ----
    def gen(self, op, ents):
        rng = self.rng
        a = {}
        if op in ("write",):
            a["path"] = self.any_path(ents, 0.85)
            n = self.length()
            a["off"] = self.offset(self.ref_size(a["path"]), n)
            a["data"] = data_of(rng, n)
            a["mode"] = self.mode()
        elif op in ("create_excl", "overwrite"):
            a["path"] = self.any_path(ents, 0.6) if op == "overwrite" else self.existing(ents, p_new=0.7)
            a["data"] = data_of(rng, self.length() if rng.random() < 0.5 else rng.randint(0, 4096))
            a["mode"] = self.mode()
        elif op == "append":
            a["path"] = self.any_path(ents, 0.9)
            a["creat"] = rng.random() < 0.3
            n = self.length() if self.ref_size(a["path"]) < 4 * MiB else rng.randint(1, 4096)
            a["data"] = data_of(rng, n)
            a["data2"] = data_of(rng, rng.randint(1, 5000))
        elif op == "truncate":
            a["path"] = self.any_path(ents, 0.9)
            a["size"] = self.new_size(self.ref_size(a["path"]))
        elif op == "ftruncate":
            a["path"] = self.any_path(ents, 0.95)
            size = self.ref_size(a["path"])
            n = rng.randint(1, 65536)
            a["off"] = self.offset(size, n)
            a["data"] = data_of(rng, n)
            a["size"] = self.new_size(max(size, a["off"] + n))
            a["roff"] = max(0, a["size"] - rng.randint(0, 70000))
            a["rlen"] = rng.randint(1, 140000)
            n2 = rng.randint(1, 4096)
            a["off2"] = self.offset(a["size"], n2)
            a["data2"] = data_of(rng, n2)
        elif op == "read":
            a["path"] = self.any_path(ents, 0.9)
            size = self.ref_size(a["path"])
            a["off"] = rng.choice([0, rng.randint(0, size + 10), max(0, size - rng.randint(0, 5000)),
                                   rng.randint(0, 6 * MiB)])
            a["len"] = rng.choice([rng.randint(1, 4096), rng.randint(1, 2 * MiB)])
        elif op == "rename":
            src = self.existing(ents, "fdlo", p_new=0.05)
            a["src"] = src
            a["dst"] = self.rename_dst(ents, src)
        elif op == "unlink":
            a["path"] = self.existing(ents, "flo" if rng.random() < 0.85 else "d", p_new=0.1)
        elif op == "mkdir":
            a["path"] = (self.new_path(ents, MAXD - 1) if rng.random() < 0.85 or not ents
                         else self.existing(ents, p_new=0.0))
            a["mode"] = self.mode(dir=True) | (0o700 if rng.random() < 0.8 else 0)
        elif op == "rmdir":
            a["path"] = self.existing(ents, "d" if rng.random() < 0.85 else "flo", p_new=0.1)
        elif op == "link":
            a["src"] = self.existing(ents, "flo" if rng.random() < 0.9 else "d", p_new=0.05)
            a["dst"] = self.new_path(ents) if rng.random() < 0.85 else self.existing(ents)
        elif op == "symlink":
            a["path"] = self.new_path(ents) if rng.random() < 0.9 else self.existing(ents)
            a["target"] = self.symlink_target(ents, a["path"])
        elif op == "chmod":
            a["path"] = self.existing(ents, p_new=0.05)
            a["mode"] = self.mode()
        elif op == "chown":
            a["path"] = self.existing(ents, p_new=0.05)
            a["uid"] = rng.choice([0, 1, 1000, 65534, -1])
            a["gid"] = rng.choice([0, 1, 1000, 65534, -1])
            a["follow"] = rng.random() < 0.7
        elif op == "utime":
            a["path"] = self.existing(ents, p_new=0.05)
            a["atime"] = rng.randint(0, 1 << 33) * 10**9 + rng.randrange(10**9)
            a["mtime"] = rng.randint(0, 1 << 33) * 10**9 + rng.randrange(10**9)
        elif op == "write_utime":
            a["path"] = self.any_path(ents, 0.9)
            n = self.length()
            a["off"] = self.offset(self.ref_size(a["path"]), n)
            a["data"] = data_of(rng, n)
            a["by_fd"] = rng.random() < 0.7
            a["atime"] = rng.randint(0, 1 << 33) * 10**9 + rng.randrange(10**9)
            a["mtime"] = rng.randint(0, 1 << 33) * 10**9 + rng.randrange(10**9)
            a["fchmod"] = rng.random() < 0.3
            a["mode"] = self.mode()
        elif op == "readdir":
            a["path"] = self.existing(ents, "d" if rng.random() < 0.8 else "fl", p_new=0.05)
        elif op in ("unlink_open", "replace_open"):
            a["path"] = self.existing(ents, "f", p_new=0.02)
            n = rng.randint(1, 65536)
            a["off"] = self.offset(self.ref_size(a["path"]), n)
            a["data"] = data_of(rng, n)
            a["roff"] = rng.randint(0, self.ref_size(a["path"]) + n)
            a["rlen"] = rng.randint(1, 6 * MiB)
            d = os.path.dirname(a["path"])
            a["tmp"] = os.path.join(d, ".tmp-replace")
        elif op == "mknod":
            a["path"] = self.new_path(ents) if rng.random() < 0.9 else self.existing(ents)
            a["mode"] = self.mode()
        elif op == "xattr":
            a["path"] = self.existing(ents, "fd", p_new=0.05)
            a["name"] = "user." + rng.choice(["a", "b", "checksum", "x" * 200])
            a["remove"] = rng.random() < 0.25
            # Four names of at most 600 bytes each stay within the ~4 KiB ext4 keeps per inode
            # (foreverfs allows 64 KiB, so larger values would differ only by that limit).
            a["value"] = rng.randbytes(rng.choice([0, 1, 10, 300, 600]))
        return a

    def new_size(self, size):
        r = self.rng.random()
        if r < 0.15:
            return 0
        if r < 0.4:
            return self.rng.randint(0, size)
        if r < 0.55:
            return size
        if r < 0.8:
            k = self.rng.randint(1, 5)
            return k * MiB + self.rng.randint(-4096, 4096)
        return self.rng.randint(size, max(size, 5 * MiB))

    def rename_dst(self, ents, src):
        rng = self.rng
        kind = ents.get(src, ("?", 0))[0]
        r = rng.random()
        if kind == "d" and r < 0.1:
            return os.path.join(src, self.name())     # into itself: EINVAL
        if r < 0.15:
            return src                                 # onto itself: nothing happens
        if kind == "d":
            height = 1 + max([d for p, (k, d) in ents.items() if k == "d" and p.startswith(src + "/")]
                             + [ents[src][1]]) - ents[src][1]
        else:
            height = 0
        for _ in range(20):
            if r < 0.55:
                dst = self.existing(ents, "fdlo", p_new=0.0)
            else:
                dst = self.new_path(ents)
            parent = os.path.dirname(dst)
            pd = ents[parent][1] if parent in ents else 0
            inside = dst == src or dst.startswith(src + "/")
            if inside or pd + height <= MAXD:
                return dst
        return src

    # ---- comparing ----
    def fail(self, what):
        raise Mismatch(what)

    def lstat_pair(self, rel):
        return (attempt(lambda: os.lstat(self.m.p(rel))), attempt(lambda: os.lstat(self.r.p(rel))))

    def compare_entry(self, rel, top=False, windows=None, full=False):
        """Compare one path on both sides (rel relative to the work root, or to the top)."""
        mp = os.path.join(self.m.top, rel) if top else self.m.p(rel)
        rp = os.path.join(self.r.top, rel) if top else self.r.p(rel)
        ms = attempt(lambda: os.lstat(mp))
        rs = attempt(lambda: os.lstat(rp))
        if ms[0] != rs[0] or (ms[0] == "err" and ms != rs):
            self.fail(f"lstat {rel!r}: mount {fmt(ms)}, reference {fmt(rs)}")
        if ms[0] == "err":
            return None
        m, r = ms[1], rs[1]
        if stat.S_IFMT(m.st_mode) != stat.S_IFMT(r.st_mode):
            self.fail(f"{rel!r}: type {stat.S_IFMT(m.st_mode):o} on the mount, {stat.S_IFMT(r.st_mode):o} in the reference")
        if not stat.S_ISLNK(r.st_mode) and stat.S_IMODE(m.st_mode) != stat.S_IMODE(r.st_mode):
            self.fail(f"{rel!r}: mode {stat.S_IMODE(m.st_mode):o} on the mount, {stat.S_IMODE(r.st_mode):o} in the reference")
        if (m.st_uid, m.st_gid) != (r.st_uid, r.st_gid):
            self.fail(f"{rel!r}: owner {m.st_uid}:{m.st_gid} on the mount, {r.st_uid}:{r.st_gid} in the reference")
        if not stat.S_ISDIR(r.st_mode):
            if m.st_size != r.st_size:
                self.fail(f"{rel!r}: size {m.st_size} on the mount, {r.st_size} in the reference")
            if m.st_nlink != r.st_nlink:
                self.fail(f"{rel!r}: st_nlink {m.st_nlink} on the mount, {r.st_nlink} in the reference")
        pin = self.pinned.get(r.st_ino)
        if pin is not None:
            if r.st_mtime_ns != pin:
                del self.pinned[r.st_ino]
            elif m.st_mtime_ns != pin:
                self.fail(f"{rel!r}: mtime {m.st_mtime_ns} ns on the mount, {r.st_mtime_ns} ns in the "
                          f"reference (set with utime)")
        if stat.S_ISLNK(r.st_mode):
            mt, rt = os.readlink(mp), os.readlink(rp)
            if mt != rt:
                self.fail(f"{rel!r}: symlink target {mt!r} on the mount, {rt!r} in the reference")
        elif stat.S_ISDIR(r.st_mode):
            ml, rl = sorted(os.listdir(mp)), sorted(os.listdir(rp))
            if ml != rl:
                self.fail(f"listing of {rel!r}: mount {ml}, reference {rl} "
                          f"(only on the mount: {sorted(set(ml) - set(rl))}, only in the reference: {sorted(set(rl) - set(ml))})")
        elif stat.S_ISREG(r.st_mode):
            self.compare_bytes(rel, mp, rp, r.st_size, windows, full)
        if self.xattr and (stat.S_ISREG(r.st_mode) or stat.S_ISDIR(r.st_mode)):
            mx = attempt(lambda: sorted(n for n in os.listxattr(mp) if n.startswith("user.")))
            rx = attempt(lambda: sorted(n for n in os.listxattr(rp) if n.startswith("user.")))
            if mx != rx:
                self.fail(f"{rel!r}: xattrs {fmt(mx)} on the mount, {fmt(rx)} in the reference")
        return m, r

    def compare_bytes(self, rel, mp, rp, size, windows, full):
        if full or size <= 256 * 1024:
            ranges = [(0, size)]
        else:
            ranges = [(0, 65536), (max(0, size - 65536), size)] + list(windows or [])
        with open(mp, "rb", buffering=0) as mf, open(rp, "rb", buffering=0) as rf:
            for lo, hi in ranges:
                lo, hi = max(0, lo), min(size, hi)
                pos = lo
                while pos < hi:
                    n = min(MiB, hi - pos)
                    mb, rb = os.pread(mf.fileno(), n, pos), os.pread(rf.fileno(), n, pos)
                    if mb != rb:
                        i = next((k for k in range(min(len(mb), len(rb))) if mb[k] != rb[k]), min(len(mb), len(rb)))
                        self.fail(f"{rel!r}: bytes differ at offset {pos + i} (size {size}): mount "
                                  f"{mb[i:i + 16].hex()} ({len(mb)} bytes read), reference {rb[i:i + 16].hex()} ({len(rb)} bytes read)")
                    pos += n

    def compare_all(self):
        """Everything below the tops, including hard-link identity."""
        ino_map, rev = {}, {}

        def walk(rel):
            res = self.compare_entry(rel, top=True, full=True)
            if res is None:
                return
            m, r = res
            if not stat.S_ISDIR(r.st_mode):
                if ino_map.setdefault(r.st_ino, m.st_ino) != m.st_ino or rev.setdefault(m.st_ino, r.st_ino) != r.st_ino:
                    self.fail(f"{rel!r}: hard-link identity differs (reference inode {r.st_ino} is mount "
                              f"inode {ino_map[r.st_ino]} elsewhere, here {m.st_ino})")
                return
            for name in sorted(os.listdir(os.path.join(self.r.top, rel))):
                walk(os.path.join(rel, name) if rel else name)
        walk("")

    # ---- running ----
    def paths_of(self, a):
        return [a[k] for k in ("path", "src", "dst", "tmp") if k in a]

    def resolved_inos(self, a):
        inos = set()
        for p in self.paths_of(a):
            for q in (p, os.path.dirname(p)):
                for f in (os.stat, os.lstat):
                    try:
                        inos.add(f(self.r.p(q)).st_ino)
                    except OSError:
                        pass
        return inos

    def run_op(self, op, a):
        # mtimes are compared only where utime set them: every other op that could change an
        # mtime (data, entries of a parent directory) drops the pin of what it touches.
        before = self.resolved_inos(a) if op not in ("chmod", "chown", "read", "readdir", "xattr") else set()
        res_r = attempt(lambda: getattr(self.r, "op_" + op)(a))
        res_m = attempt(lambda: getattr(self.m, "op_" + op)(a))
        if op not in ("chmod", "chown", "read", "readdir", "xattr"):
            for ino in before | self.resolved_inos(a):
                self.pinned.pop(ino, None)
        if res_m != res_r:
            self.fail(f"result: mount {fmt(res_m)}, reference {fmt(res_r)}")
        if op in ("utime", "write_utime") and res_r[0] == "ok":
            self.pinned[os.stat(self.r.p(a["path"])).st_ino] = a["mtime"]
        windows = []
        if "off" in a and "data" in a:
            windows.append((a["off"] - 4096, a["off"] + len(a["data"]) + 4096))
        if "off2" in a:
            windows.append((a["off2"] - 4096, a["off2"] + len(a["data2"]) + 4096))
        if "size" in a:
            windows.append((a["size"] - 65536, a["size"] + 65536))
        seen = set()
        for p in self.paths_of(a):
            for q in (p, os.path.dirname(p)):
                if q not in seen:
                    seen.add(q)
                    self.compare_entry(q, windows=windows)
        return res_r

    def run(self):
        names = sorted(self.ops)
        weights = [self.ops[k] for k in names]
        for self.step in range(1, self.args.ops + 1):
            ents = self.scan()
            op = self.rng.choices(names, weights)[0]
            a = self.gen(op, ents)
            self.cur = (op, a)
            res = self.run_op(op, a)
            c = self.counts.setdefault(op, [0, 0])
            c[0 if res[0] == "ok" else 1] += 1
            if self.args.verbose:
                print(f"{self.step:5d} {describe(op, a)} -> {fmt(res)}", flush=True)
            if self.step % self.args.full_every == 0:
                self.cur = ("(full comparison)", {})
                self.compare_all()
        self.cur = ("(final full comparison)", {})
        self.compare_all()


def fmt(res):
    kind, v = res
    if kind == "err":
        return v
    return "ok" if v is None else f"ok {v!r}"


def describe(op, a):
    parts = []
    for k, v in a.items():
        if isinstance(v, bytes):
            parts.append(f"{k}=<{len(v)} bytes {digest(v)}>")
        elif k == "mode":
            parts.append(f"mode={v:o}")
        elif isinstance(v, str) and len(v) > 60:
            parts.append(f"{k}={v[:20]!r}...({len(v)} chars)")
        else:
            parts.append(f"{k}={v!r}")
    return f"{op}({', '.join(parts)})"


class Node:
    def __init__(self, binary, work):
        self.binary = binary
        self.work = work
        self.mnt = os.path.join(work, "mnt")
        self.data = os.path.join(work, "data")
        self.key = os.path.join(work, "key")
        self.log = os.path.join(work, "log")
        os.makedirs(self.mnt)
        os.makedirs(self.data)
        self.proc = None

    def mounted(self):
        with open("/proc/mounts") as f:
            return any(line.split()[1] == self.mnt and line.split()[2].startswith("fuse") for line in f)

    def start(self):
        subprocess.run([self.binary, "keygen", self.key], check=True, stdout=subprocess.DEVNULL)
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, self.mnt, "--listen", "127.0.0.1:0", "--data", self.data,
                                      "--key", self.key, "-f"], stdout=self.logf, stderr=subprocess.STDOUT)
        for _ in range(100):
            if self.mounted():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("foreverfs did not mount:\n" + self.tail())

    def tail(self):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def stop(self):
        fm = shutil.which("fusermount3") or "fusermount"
        if self.proc is None:
            return 0
        if self.proc.poll() is not None:
            return self.proc.returncode if self.proc.returncode != 0 else -1000
        subprocess.run([fm, "-u", self.mnt])
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        subprocess.run([fm, "-u", "-z", self.mnt], stderr=subprocess.DEVNULL)
        self.proc = None
        return rc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=3000)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--skip", default="", help="comma-separated op names not to generate: " + ",".join(sorted(OPS) + sorted(FEATURES)))
    ap.add_argument("--only", default="", help="comma-separated op names: generate only these")
    ap.add_argument("--mount", help="use this existing mount instead of starting a node")
    ap.add_argument("--full-every", type=int, default=100)
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    args.skip = set(s for s in args.skip.split(",") if s)
    args.only = set(s for s in args.only.split(",") if s)
    unknown = (args.skip | args.only) - set(OPS) - set(FEATURES)
    if unknown:
        ap.error(f"unknown op(s) in --skip: {','.join(sorted(unknown))}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    def replay(ops):
        return (f"--seed {seed} --ops {ops}" + (" --skip " + ",".join(sorted(args.skip)) if args.skip else "")
                + (" --only " + ",".join(sorted(args.only)) if args.only else ""))
    print(f"posix_model: seed {seed} ops {args.ops} (replay: {replay(args.ops)})", flush=True)
    if args.skip:
        print(f"posix_model: skipped ops: {','.join(sorted(args.skip))}")
    os.umask(0o022)
    rng = random.Random(seed)
    work = tempfile.mkdtemp(prefix="ffmodel.")
    ref_top = os.path.join(work, "ref")
    node = None
    rc = 0
    t0 = time.time()
    try:
        if args.mount:
            mnt_top = os.path.join(os.path.abspath(args.mount), f"ffmodel.{os.getpid()}.{seed}")
        else:
            binary = os.environ.get("FOREVERFS") or os.path.join(
                os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "foreverfs")
            node = Node(binary, os.path.join(work, "node"))
            node.start()
            mnt_top = node.mnt
        os.makedirs(ref_top)
        if args.mount:
            os.makedirs(mnt_top)
        model = Model(args, mnt_top, ref_top, rng)
        try:
            model.run()
            print(f"posix_model: {args.ops} ops match the reference ({time.time() - t0:.1f} s)")
            print("posix_model: ops (succeeded/failed with the same errno on both sides): " +
                  " ".join(f"{k}={v[0]}/{v[1]}" for k, v in sorted(model.counts.items())))
        except Mismatch as e:
            op, a = model.cur
            print(f"posix_model: MISMATCH seed {seed} step {model.step}")
            print(f"  op:   {describe(op, a) if a else op}")
            print(f"  diff: {e}")
            print(f"  replay: {sys.argv[0]} {replay(model.step)} -v")
            rc = 1
        if args.mount and rc == 0 and not args.keep:
            shutil.rmtree(mnt_top, ignore_errors=True)
    finally:
        if node is not None:
            urc = node.stop()
            if urc != 0:
                print(f"posix_model: foreverfs exited {urc} after the unmount:\n{node.tail()}")
                rc = 1
        if args.keep or rc != 0 and node is None:
            print(f"posix_model: work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
