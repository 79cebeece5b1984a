#!/usr/bin/env python3
"""Why the journal recycles segments: a write + fdatasync into a fresh fallocate'd file
against one into a file whose blocks were written before (a recycled segment).

Writes N blocks of SIZE bytes one after another into each kind of file in DIR (default:
target/fsync-probe) and syncs each, kinds alternating for ROUNDS rounds. Prints syncs
per second, p50 / p99 and the system CPU per sync. On ext4 the first write into an
unwritten extent changes the extent, so its fdatasync also writes the inode.

Usage: benches/fsync-recycled.py [N=5000] [SIZE=16384] [ROUNDS=2] [DIR]
"""
import os
import resource
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
SIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
DIR = sys.argv[4] if len(sys.argv) > 4 else "target/fsync-probe"


def prepare(kind):
    path = os.path.join(DIR, kind)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    cap = N * SIZE + 4096
    if kind == "fallocated":
        os.posix_fallocate(fd, 0, cap)
    else:
        zeros = b"\0" * (1 << 20)
        done = 0
        while done < cap:
            done += os.write(fd, zeros)
    os.fsync(fd)
    return fd, path


def run(kind):
    fd, path = prepare(kind)
    block = os.urandom(SIZE)
    lat = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for i in range(N):
        a = time.perf_counter()
        os.pwrite(fd, block, i * SIZE)
        os.fdatasync(fd)
        lat.append(time.perf_counter() - a)
    took = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    os.close(fd)
    os.unlink(path)
    lat.sort()
    sys_us = 1e6 * (r1.ru_stime - r0.ru_stime) / N
    print(
        f"{kind:10} {N / took:7.0f} syncs/s  p50 {lat[N // 2] * 1e6:5.0f} us"
        f"  p99 {lat[N * 99 // 100] * 1e6:5.0f} us  system CPU {sys_us:5.1f} us/sync"
    )


os.makedirs(DIR, exist_ok=True)
for _ in range(ROUNDS):
    for kind in ("fallocated", "written"):
        run(kind)
