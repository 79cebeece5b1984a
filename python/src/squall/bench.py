"""`python -m squall.bench`: the client's throughput against a running broker.

1. publish: `--publishers` coroutines publish one task each at a time, every publish
   awaited until the broker confirms it durable, all over one connection;
2. worker: `--tasks` tasks are published in batches, then one `Worker` (one process,
   one connection) runs a no-op handler over them; the figure is acks per second.

    python -m squall.bench --server 127.0.0.1:7600 --publishes 100000 --tasks 100000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
import uuid

from .client import connect
from .delivery import Task
from .worker import Worker


async def bench_publish(server: str, total: int, publishers: int, size: int) -> tuple[float, float]:
    client = await connect(server, name="squall-bench-publish")
    queue = "bench-pub-" + uuid.uuid4().hex[:8]
    payload = b"x" * size
    per = total // publishers
    done = 0

    async def publisher() -> None:
        nonlocal done
        publish = client.publish
        for _ in range(per):
            await publish(queue, payload)
        done += per

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(publisher() for _ in range(publishers)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await client.purge(queue)
    await client.delete_queue(queue)
    await client.close()
    return done / elapsed, cpu / done


async def bench_worker(
    server: str, total: int, concurrency: int, prefetch: int, size: int
) -> tuple[float, float]:
    client = await connect(server, name="squall-bench-worker")
    queue = "bench-work-" + uuid.uuid4().hex[:8]
    payload = b"x" * size
    batch = max(1, min(1000, client.server_info.limits.max_batch or 1000))
    left = total
    while left:
        n = min(batch, left)
        await client.publish_batch(queue, [payload] * n)
        left -= n
    worker = Worker(client, queue, concurrency=concurrency, prefetch=prefetch)
    acked = 0
    start = cpu = 0.0

    async def handler(task: Task) -> None:
        nonlocal acked, start, cpu
        if acked == 0 and start == 0.0:
            start, cpu = time.perf_counter(), time.process_time()
        acked += 1
        if acked == total:
            worker.stop()

    run = asyncio.create_task(worker.run(handler, signals=()))
    report = await run
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert report.acked == total, report
    await client.delete_queue(queue)
    await client.close()
    return total / elapsed, cpu / total


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m squall.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="127.0.0.1:7600")
    p.add_argument("--publishes", type=int, default=50_000)
    p.add_argument("--publishers", type=int, default=1024, help="concurrent publish coroutines")
    p.add_argument("--tasks", type=int, default=50_000)
    p.add_argument("--concurrency", type=int, default=256, help="worker concurrency")
    p.add_argument("--prefetch", type=int, default=1024, help="worker prefetch")
    p.add_argument("--size", type=int, default=100, help="payload bytes")
    p.add_argument("--only", choices=["publish", "worker"])
    p.add_argument("--profile", action="store_true", help="print the top functions (cProfile)")
    args = p.parse_args()

    async def run() -> None:
        if args.only in (None, "publish"):
            rate, cpu = await bench_publish(args.server, args.publishes, args.publishers, args.size)
            print(
                f"publish: {rate:,.0f} confirmed publishes/s "
                f"({args.publishes} x {args.size} B, {args.publishers} publishers, one connection); "
                f"client CPU {cpu * 1e6:.1f} us per publish = {1 / cpu:,.0f}/s on a core of its own"
            )
        if args.only in (None, "worker"):
            rate, cpu = await bench_worker(
                args.server, args.tasks, args.concurrency, args.prefetch, args.size
            )
            print(
                f"worker: {rate:,.0f} no-op tasks/s acked ({args.tasks} tasks, concurrency "
                f"{args.concurrency}, prefetch {args.prefetch}, one worker process); "
                f"client CPU {cpu * 1e6:.1f} us per task = {1 / cpu:,.0f}/s on a core of its own"
            )

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(run())
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    else:
        asyncio.run(run())


if __name__ == "__main__":
    main()
