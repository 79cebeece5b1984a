#!/usr/bin/env python3
"""How this disk syncs small appends, the way the journal does, by method.

Writes N 4 KiB blocks one after another into a preallocated file in DIR (default:
target/fsync-probe) and syncs each: write + fdatasync (what the journal does), an
O_DSYNC write, and an O_DIRECT|O_DSYNC write. Prints p50 / p99 / p99.9 / max and how
many syncs took over 1 ms, for ROUNDS rounds, methods alternating.

Usage: benches/fsync-probe.py [N=20000] [ROUNDS=2] [DIR]
"""
import mmap
import os
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
DIR = sys.argv[3] if len(sys.argv) > 3 else "target/fsync-probe"
BLOCK = 4096


def run(name, flags, sync):
    path = os.path.join(DIR, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    os.posix_fallocate(fd, 0, (N + 1) * BLOCK)
    os.fsync(fd)
    os.close(fd)
    fd = os.open(path, os.O_RDWR | flags)
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    buf.write(b"x" * BLOCK)
    lat = []
    for i in range(N):
        start = time.perf_counter()
        os.pwritev(fd, [buf], i * BLOCK)
        if sync:
            os.fdatasync(fd)
        lat.append(time.perf_counter() - start)
    os.close(fd)
    os.unlink(path)
    lat.sort()
    us = lambda q: lat[min(int(N * q), N - 1)] * 1e6
    slow = sum(1 for x in lat if x > 0.001)
    print(f"| {name} | {us(0.5):.0f} | {us(0.99):.0f} | {us(0.999):.0f} | {lat[-1] * 1e6:.0f} | {slow} |")


os.makedirs(DIR, exist_ok=True)
print(f"{N} syncs of {BLOCK} B per method and round, {ROUNDS} rounds, in {DIR}\n")
print("| method | p50 µs | p99 µs | p99.9 µs | max µs | over 1 ms |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for _ in range(ROUNDS):
    run("write + fdatasync", 0, True)
    run("O_DSYNC write", os.O_DSYNC, False)
    run("O_DIRECT + O_DSYNC write", os.O_DIRECT | os.O_DSYNC, False)
