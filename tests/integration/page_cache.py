#!/usr/bin/env python3
"""The kernel's page cache of a file on a mount always holds the file's bytes.

Small reads hand the rest of their segment to the kernel's cache (fuse/page_fill.h), from a
thread of the daemon's own, a moment after the read's reply. This drives one file with random
small reads through a read-only descriptor while writes through a second descriptor, truncates
by path, reopens and closes go on in between, right after the reads whose pages may still be on
their way, and compares every read and the size with a model.

Usage: page_cache.py DIR [--seed N] [--ops N]   (exit 0: every read matched)
"""
import argparse
import os
import random
import sys

PAGE = 4096


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--ops", type=int, default=4000)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    path = os.path.join(a.dir, f"page_cache.{seed}")
    model = bytearray(rng.randbytes(256 * 1024 + 100))
    initial = bytes(model)
    with open(path, "wb") as f:
        f.write(model)
    r = os.open(path, os.O_RDONLY)
    w = None
    counts = {}
    history = {}  # offset -> [(step, byte written)], to say which past state a bad read shows

    def fail(what):
        print(f"page_cache.py --seed {seed}: {what} (ops so far: {counts})", file=sys.stderr)
        sys.exit(1)

    for step in range(a.ops):
        op = rng.choices(["read", "write", "close", "truncate", "reopen"], [60, 15, 6, 9, 10])[0]
        counts[op] = counts.get(op, 0) + 1
        if op == "read":
            # Mostly one page, as the kernel asks for random reads; sometimes odd sizes.
            off = rng.randrange(0, len(model) + 2 * PAGE) // PAGE * PAGE
            n = PAGE if rng.random() < 0.8 else rng.randrange(1, 3 * PAGE)
            if rng.random() < 0.1:
                off += rng.randrange(PAGE)
            got = os.pread(r, n, off)
            want = bytes(model[off:off + n])
            if got != want:
                first = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                             min(len(got), len(want)))
                at = off + first
                past = [(-1, initial[at] if at < len(initial) else None)] + history.get(at, [])
                was = [st for st, v in past if first < len(got) and v == got[first]]
                # Where the bad bytes are: the kernel's cache, or what the daemon answers (read
                # again with the page cache dropped).
                try:
                    with open("/proc/sys/vm/drop_caches", "w") as dc:
                        dc.write("1")
                    where = ("the daemon's" if os.pread(r, n, off) != want else
                             "only the kernel's cache")
                except OSError:
                    where = "unknown"
                fail(f"step {step}: read of {n} at {off} gave {len(got)} bytes, "
                     f"{len(want)} expected, first difference at {at} "
                     f"(the byte read is what the file held after steps {was[-3:]}; "
                     f"after drop_caches {where} bytes are wrong)")
        elif op == "write":
            if w is None:
                w = os.open(path, os.O_WRONLY)
            off = rng.randrange(0, len(model) + PAGE)
            data = rng.randbytes(rng.randrange(1, 6000))
            if os.pwrite(w, data, off) != len(data):
                fail(f"step {step}: short write")
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + len(data)] = data
            for i in range(len(data)):
                history.setdefault(off + i, []).append((step, data[i]))
        elif op == "close":
            if w is not None:
                os.close(w)
                w = None
        elif op == "truncate":
            size = rng.randrange(0, 300 * 1024)
            os.truncate(path, size)
            if size < len(model):
                del model[size:]
            else:
                for i in range(len(model), size):
                    if i in history:
                        history[i].append((step, 0))
                model.extend(bytes(size - len(model)))
        else:
            os.close(r)
            r = os.open(path, os.O_RDONLY)
        size = os.fstat(r).st_size
        if size != len(model):
            fail(f"step {step} ({op}): size {size}, {len(model)} expected")
    os.close(r)
    if w is not None:
        os.close(w)
    with open(path, "rb") as f:
        if f.read() != bytes(model):
            fail("the file read whole differs from the model")
    os.unlink(path)
    print(f"# page_cache.py --seed {seed}: {a.ops} ops matched ({counts})")


if __name__ == "__main__":
    main()
