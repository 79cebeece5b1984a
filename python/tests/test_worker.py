"""The Worker: settling by outcome, automatic lease extension, and the drain on
shutdown that returns unfinished tasks."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from conftest import Broker

import squall


async def wait_until(pred: object, what: str, timeout: float = 10.0) -> None:
    assert callable(pred)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_worker_settles_by_the_handlers_outcome(client: squall.Client, q: str) -> None:
    ok = await client.publish(q, b"ok")
    retry = await client.publish(q, b"retry")
    dead = await client.publish(q, b"dead")
    boom = await client.publish(q, b"boom")
    seen: dict[bytes, int] = {}

    async def handler(task: squall.Task) -> bytes | None:
        seen[task.payload] = task.attempt
        if task.payload == b"retry" and task.attempt == 1:
            raise squall.Retry("later", after=0.05)
        if task.payload == b"dead":
            raise squall.Dead("malformed")
        if task.payload == b"boom" and task.attempt == 1:
            raise ValueError("flaky")
        return task.payload.upper()

    worker = squall.Worker(client, q, concurrency=4)
    run = asyncio.create_task(worker.run(handler, signals=()))

    async def all_final() -> bool:
        states = [(await client.task(t.id)).state for t in (ok, retry, dead, boom)]
        return states == ["succeeded", "succeeded", "dead", "succeeded"]

    await wait_until(all_final, "every task final")
    worker.stop()
    report = await run
    assert (report.acked, report.retried, report.dead) == (3, 2, 1)
    assert await client.wait_result(ok.id) == b"OK"
    assert await client.wait_result(boom.id) == b"BOOM"
    assert (await client.task(boom.id)).attempts == 2
    with pytest.raises(squall.TaskDead) as e:
        await client.wait_result(dead.id)
    assert e.value.status is not None and e.value.status.last_error == "malformed"


async def test_worker_extends_the_lease_of_a_long_handler(client: squall.Client, q: str) -> None:
    await client.set_queue_config(q, lease=1.0)
    t = await client.publish(q, b"slow")

    async def handler(task: squall.Task) -> bytes:
        await asyncio.sleep(2.5)  # 2.5 lease lengths
        return b"finished"

    worker = squall.Worker(client, q, concurrency=1)
    run = asyncio.create_task(worker.run(handler, signals=()))
    assert await client.wait_result(t.id, timeout=10) == b"finished"
    worker.stop()
    report = await run
    info = await client.task(t.id)
    # Without the extensions the lease would have expired and the task been
    # redelivered (attempts 2) and the first ack refused.
    assert (info.attempts, report.acked, report.settle_failed) == (1, 1, 0)


async def test_worker_shutdown_returns_unfinished_tasks(client: squall.Client, q: str) -> None:
    ids = [t.id for t in await client.publish_batch(q, [b"1", b"2", b"3", b"4", b"5"])]
    started = 0

    async def handler(task: squall.Task) -> None:
        nonlocal started
        started += 1
        await asyncio.sleep(3600)

    worker = squall.Worker(client, q, concurrency=2, prefetch=4, grace_period=0.2)
    run = asyncio.create_task(worker.run(handler, signals=(signal.SIGTERM,)))
    await wait_until(lambda: started == 2, "two handlers running")
    await wait_until(lambda: len(worker._running) == 2, "two jobs tracked")
    await asyncio.sleep(0.3)
    assert started == 2, "no more handlers at once than the concurrency"
    os.kill(os.getpid(), signal.SIGTERM)  # the worker's own handler catches it
    report = await asyncio.wait_for(run, 10)
    # 2 running (returned after the grace period) + 2 prefetched but never started.
    assert report.returned == 4 and report.acked == 0
    infos = [await client.task(i) for i in ids]
    assert [i.state for i in infos] == ["ready"] * 5, "every task is back, none leased"


async def test_worker_ends_with_the_subscription(client: squall.Client, q: str) -> None:
    await client.publish(q, b"x")
    started = asyncio.Event()

    async def handler(task: squall.Task) -> None:
        started.set()

    worker = squall.Worker(client, q, concurrency=1)
    run = asyncio.create_task(worker.run(handler, signals=()))
    await asyncio.wait_for(started.wait(), 10)
    await client.delete_queue(q)
    with pytest.raises(squall.SubscriptionEnded):
        await asyncio.wait_for(run, 10)


async def test_worker_of_a_second_connection_gets_what_the_first_returned(broker: Broker, q: str) -> None:
    a = await squall.connect(broker.addr)
    b = await squall.connect(broker.addr)
    t = await a.publish(q, b"handed over")
    release = asyncio.Event()

    async def stuck(task: squall.Task) -> None:
        release.set()
        await asyncio.sleep(3600)

    w1 = squall.Worker(a, q, concurrency=1, grace_period=0)
    r1 = asyncio.create_task(w1.run(stuck, signals=()))
    await asyncio.wait_for(release.wait(), 10)
    w1.stop()
    assert (await r1).returned == 1

    async def done(task: squall.Task) -> bytes:
        return b"second worker"

    w2 = squall.Worker(b, q, concurrency=1)
    r2 = asyncio.create_task(w2.run(done, signals=()))
    assert await b.wait_result(t.id, timeout=10) == b"second worker"
    w2.stop()
    await r2
    await a.close()
    await b.close()
