"""Schedules, task expiry and per-queue flow control through the Python client,
against the real broker."""

from __future__ import annotations

import asyncio
import itertools

import pytest

import squall


async def test_a_schedule_publishes_each_tick_once_and_can_be_paused_and_removed(
    client: squall.Client, q: str
) -> None:
    name = f"{q}-every-second"
    info = await client.add_schedule(
        name, q, "* * * * * *", payload="tick", headers={"k": "v"}, catch_up="all"
    )
    assert (info.name, info.queue, info.cron, info.tz, info.catch_up) == (
        name,
        q,
        "* * * * * *",
        "UTC",
        "all",
    )
    assert info.next_run is not None and not info.paused
    with pytest.raises(squall.ScheduleExists):
        await client.add_schedule(name, q, "* * * * * *")
    with pytest.raises(squall.InvalidSchedule):
        await client.add_schedule(f"{name}-bad", q, "61 * * * *")
    with pytest.raises(squall.InvalidSchedule):
        await client.add_schedule(f"{name}-bad", q, "* * * * *", tz="Mars/Olympus")
    await asyncio.sleep(2.5)
    paused = await client.pause_schedule(name)
    assert paused.paused and paused.next_run is None
    ticks: list[int] = []
    async with client.subscribe(q, prefetch=100) as sub:
        while (d := await sub.recv(timeout=1.5)) is not None:
            assert d.payload == b"tick" and d.headers["k"] == b"v"
            ticks.append(int(d.headers["squall-tick-ms"]))
            await d.ack()
    assert len(ticks) >= 2 and len(set(ticks)) == len(ticks), ticks
    assert all(b - a == 1000 for a, b in itertools.pairwise(ticks)), ticks
    listed = [s for s in await client.schedules() if s.name == name]
    assert listed[0].last_run is not None and listed[0].last_task is not None
    await client.remove_schedule(name)
    assert name not in [s.name for s in await client.schedules()]
    with pytest.raises(squall.NotFound):
        await client.remove_schedule(name)


async def test_expiry_and_flow_settings(client: squall.Client, q: str) -> None:
    info = await client.set_queue_config(q, max_in_flight=2, rate_limit=100, rate_burst=10)
    c = info.config
    assert (c.max_in_flight, c.rate_limit, c.rate_burst, c.drop_expired) == (2, 100, 10, False)
    gone = await client.publish(q, b"late", expires_in=0.2)
    await asyncio.sleep(0.5)
    dead = await client.peek(q, "dead")
    assert [p.id for p in dead] == [gone.id] and dead[0].last_error == "expired"
    assert (await client.queue(q)).totals.expired_tasks == 1
    await client.publish_batch(q, [b"1", b"2", b"3"])
    async with client.subscribe(q, prefetch=10) as sub:
        first = [await sub.recv(timeout=5) for _ in range(2)]
        assert await sub.recv(timeout=0.3) is None, "capped at 2 in flight"
        for d in first:
            assert d is not None
            await d.ack()
        assert await sub.recv(timeout=5) is not None
