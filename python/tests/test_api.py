"""Every call of the public API against the real broker."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from conftest import Broker

import squall
from squall import _conn


async def next_delivery(sub: squall.Subscription) -> squall.Delivery:
    d = await sub.recv(timeout=10)
    assert d is not None, "no delivery within 10 s"
    return d


async def test_hello_sends_the_exact_protocol_version(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = await squall.connect(broker.addr)
    assert c.server_info.protocol_version == squall.PROTOCOL_VERSION == 1
    assert c.server_info.limits.max_batch == 100
    assert await c.ping() > 0
    await c.close()
    # A version the broker does not speak is refused with its typed error.
    monkeypatch.setattr(_conn, "PROTOCOL_VERSION", 99)
    with pytest.raises(squall.UnsupportedVersion) as e:
        await squall.connect(broker.addr)
    assert e.value.code == 9 and not e.value.local


async def test_connect_failures_are_typed() -> None:
    with pytest.raises(squall.TransportError):
        await squall.connect("127.0.0.1:1")
    with pytest.raises(squall.ConfigError):
        await squall.connect("no-port")
    with pytest.raises(squall.ConfigError):
        await squall.connect("127.0.0.1:1", request_timeout=0)


async def test_publish_with_every_option(client: squall.Client, q: str) -> None:
    t = await client.publish(
        q,
        b"payload",
        priority=7,
        headers={"tenant": "acme", "raw": b"\x00\x01"},
        max_attempts=3,
        lease=timedelta(seconds=5),
    )
    assert t.id > 0 and not t.duplicate
    info = await client.task(t.id)
    assert (info.state, info.queue, info.priority, info.max_attempts) == ("ready", q, 7, 3)
    delayed = await client.publish(q, "text", delay=60)
    assert (await client.task(delayed.id)).state == "delayed"
    # Idempotency key: a repeat answers with the first task's id.
    a = await client.publish(q, b"x", key="k-1")
    b = await client.publish(q, b"y", key="k-1")
    assert b == squall.Published(a.id, True)
    async with client.subscribe(q) as sub:
        d = await next_delivery(sub)
        assert (d.id, d.queue, d.payload, d.attempt, d.priority) == (t.id, q, b"payload", 1, 7)
        assert d.headers == {"tenant": b"acme", "raw": b"\x00\x01"}
        assert d.max_attempts == 3
        await d.ack()


async def test_publish_batch_is_all_or_nothing(broker: Broker, q: str) -> None:
    c = await squall.connect(broker.addr)
    ts = await c.publish_batch(q, [b"a", b"b", squall.Message(b"c", priority=5, key="kc")])
    assert len({t.id for t in ts}) == 3
    assert (await c.queue(q)).ready == 3
    # The client refuses what the broker would refuse, before sending.
    with pytest.raises(squall.EmptyPayload) as e:
        await c.publish_batch(q, [b"ok", b""])
    assert e.value.local and e.value.nothing_was_applied
    with pytest.raises(squall.BadRequest):
        await c.publish_batch(q, [b"x"] * 101)  # HelloOk max_batch is 100
    with pytest.raises(squall.PayloadTooLarge):
        await c.publish(q, b"x" * 65537)  # HelloOk max_payload_bytes
    with pytest.raises(squall.InvalidQueueName):
        await c.publish("bad name", b"x")
    await c.close()
    # With local checks off, the broker refuses the whole batch with the same class.
    raw = await squall.connect(broker.addr, validate_locally=False)
    with pytest.raises(squall.EmptyPayload) as e:
        await raw.publish_batch(q, [b"ok", b""])
    assert not e.value.local
    with pytest.raises(squall.BadRequest):
        await raw.publish_batch(q, [b"x"] * 101)
    with pytest.raises(squall.InvalidQueueName):
        await raw.publish("bad name", b"x")
    assert (await raw.queue(q)).ready == 3, "nothing of a refused batch was stored"
    await raw.close()


async def test_settle_ack_nack_fail_extend(client: squall.Client, q: str) -> None:
    first = await client.publish(q, b"1")
    second = await client.publish(q, b"2")
    async with client.subscribe(q, prefetch=1) as sub:
        d = await next_delivery(sub)
        assert d.id == first.id
        before = d.deadline
        new_deadline = await d.extend(10)
        assert before is not None and new_deadline is not None and new_deadline > before
        await d.nack(delay=0, reason="try again")
        d = await next_delivery(sub)
        assert (d.id, d.attempt) == (first.id, 2)
        await d.ack(result="done")
        with pytest.raises(squall.LeaseExpired) as e:
            await d.ack()
        assert e.value.local and e.value.task_id == first.id
        d = await next_delivery(sub)
        assert d.id == second.id
        await d.fail("bad input")
    info = await client.task(second.id)
    assert (info.state, info.last_error) == ("dead", "bad input")
    assert await client.wait_result(first.id, timeout=1) == b"done"


async def test_wait_result_outcomes(client: squall.Client, q: str) -> None:
    t = await client.publish(q, b"job")

    async def work() -> None:
        async with client.subscribe(q) as sub:
            d = await next_delivery(sub)
            await asyncio.sleep(0.2)
            await d.ack(result=b"42")

    worker = asyncio.create_task(work())
    assert await client.wait_result(t.id, timeout=timedelta(seconds=10)) == b"42"
    await worker
    pending = await client.publish(q, b"nobody takes it")
    with pytest.raises(squall.WaitTimeout) as timeout:
        await client.wait_result(pending.id, timeout=0.3)
    assert timeout.value.status is not None and timeout.value.status.state == "ready"
    with pytest.raises(squall.TaskUnknown):
        await client.wait_result(10**12, timeout=1)
    assert (await client.task(10**12)).state == "unknown"
    await client.purge(q)
    doomed = await client.publish(q, b"doomed")
    async with client.subscribe(q) as sub:
        d = await next_delivery(sub)
        await d.fail("no way")
    with pytest.raises(squall.TaskDead) as dead:
        await client.wait_result(doomed.id, timeout=5)
    assert dead.value.status is not None and dead.value.status.last_error == "no way"


async def test_an_ack_without_a_result_is_kept_only_with_keep_acked(client: squall.Client, q: str) -> None:
    plain = await client.publish(q, b"no result")
    async with client.subscribe(q, prefetch=1) as sub:
        await (await next_delivery(sub)).ack()
    assert (await client.task(plain.id)).state == "unknown"
    with pytest.raises(squall.TaskUnknown):
        await client.wait_result(plain.id, timeout=1)
    info = await client.set_queue_config(q, keep_acked=True)
    assert info.config.keep_acked
    kept = await client.publish(q, b"no result, kept")
    async with client.subscribe(q, prefetch=1) as sub:
        await (await next_delivery(sub)).ack()
    assert (await client.task(kept.id)).state == "succeeded"
    assert await client.wait_result(kept.id, timeout=1) == b""


async def test_admin_operations(client: squall.Client, q: str) -> None:
    with pytest.raises(squall.NotFound):
        await client.queue(q)
    info = await client.set_queue_config(
        q, lease=timedelta(seconds=3), max_attempts=2, backoff_min=0.1, backoff_max=1, max_length=50
    )
    assert (info.config.lease, info.config.max_attempts, info.config.max_length) == (3.0, 2, 50)
    with pytest.raises(squall.BadRequest):
        await client.set_queue_config(q)
    with pytest.raises(squall.BadRequest) as refused:
        await client.set_queue_config(q, backoff_min=5, backoff_max=1)
    assert not refused.value.local
    await client.publish_batch(q, [b"a", b"b", b"c"])
    assert q in [x.name for x in await client.queues()]
    peeked = await client.peek(q, "ready", limit=2)
    assert [p.payload for p in peeked] == [b"a", b"b"] and peeked[0].state == "ready"
    assert (await client.queue(q)).ready == 3, "peek changes nothing"
    assert (await client.pause(q)).paused
    async with client.subscribe(q) as sub:
        assert await sub.recv(timeout=0.3) is None, "a paused queue delivers nothing"
        assert not (await client.resume(q)).paused
        d = await next_delivery(sub)
        await d.fail("to the dead set")
    assert (await client.queue(q)).dead == 1
    assert [p.state for p in await client.peek(q, "dead")] == ["dead"]
    assert await client.redrive(q) == 1
    assert await client.purge(q, "ready") == 3
    assert await client.purge(q) == 0
    with pytest.raises(squall.BadRequest):
        await client.peek(q, "nonsense")
    await client.publish(q, b"x")
    async with client.subscribe(q) as sub:
        first = await next_delivery(sub)
        assert await client.delete_queue(q) >= 1
        with pytest.raises(squall.SubscriptionEnded):
            while True:
                await sub.recv(timeout=10)
        with pytest.raises(squall.LeaseExpired):
            await first.ack()
    with pytest.raises(squall.NotFound):
        await client.queue(q)


async def test_full_queue_and_paused_codes(client: squall.Client, q: str) -> None:
    await client.set_queue_config(q, max_length=1)
    await client.publish(q, b"1")
    with pytest.raises(squall.QueueFull) as e:
        await client.publish(q, b"2")
    assert e.value.code == 6 and e.value.nothing_was_applied


async def test_subscription_close_releases_buffered_deliveries(client: squall.Client, q: str) -> None:
    await client.publish_batch(q, [b"1", b"2", b"3"])
    sub = client.subscribe(q, prefetch=3)
    async with sub:
        d = await next_delivery(sub)
        await d.ack()
        for _ in range(50):
            if len(sub._buffer) == 2:
                break
            await asyncio.sleep(0.05)
    assert sub.released_on_close == 2
    for _ in range(50):
        info = await client.queue(q)
        if info.ready == 2:
            break
        await asyncio.sleep(0.05)
    assert (info.ready, info.leased) == (2, 0)
    # Given back unseen: the delivery did not count as an attempt.
    assert [x.attempts for x in await client.peek(q, "ready")] == [0, 0]


async def test_prefetch_over_the_broker_limit_is_refused(client: squall.Client, q: str) -> None:
    with pytest.raises(squall.BadRequest) as e:
        async with client.subscribe(q, prefetch=10_001):
            pass
    assert e.value.local
    with pytest.raises(squall.BadRequest):
        async with client.subscribe(q, prefetch=0):
            pass


async def test_closed_client_refuses_calls(broker: Broker, q: str) -> None:
    c = await squall.connect(broker.addr)
    await c.close()
    await c.close()
    with pytest.raises(squall.Closed):
        await c.publish(q, b"x")


async def test_durations_accept_seconds_and_timedelta(client: squall.Client, q: str) -> None:
    a = await client.publish(q, b"x", delay=timedelta(milliseconds=1500))
    b = await client.publish(q, b"x", delay=1.5)
    ta, tb = await client.task(a.id), await client.task(b.id)
    assert ta.not_before is not None and tb.not_before is not None
    assert abs((tb.not_before - ta.not_before).total_seconds()) < 1
    with pytest.raises(ValueError):
        await client.publish(q, b"x", delay=-1)
    with pytest.raises(TypeError):
        await client.publish(q, b"x", delay="soon")  # type: ignore[arg-type]


def test_sync_facade(broker: Broker, q: str) -> None:
    with squall.sync.Client(broker.addr) as c:
        t = c.publish(q, b"sync")
        assert c.task(t.id).state == "ready"
        with pytest.raises(squall.WaitTimeout):
            c.wait_result(t.id, timeout=0.2)

        async def consume() -> None:
            cc = await squall.connect(broker.addr)
            async with cc.subscribe(q) as sub:
                d = await next_delivery(sub)
                await d.ack(result=b"from async")
            await cc.close()

        asyncio.run(consume())
        assert c.wait_result(t.id, timeout=5) == b"from async"


async def test_inflight_limit_from_hello_is_respected(binary: str, q: str) -> None:
    b = Broker(binary, ["--max-inflight-requests", "16"])
    b.start()
    try:
        c = await squall.connect(b.addr)
        assert c.server_info.limits.max_inflight_requests == 16
        # 300 concurrent calls over one connection: the client holds back what the
        # broker would refuse with TOO_MANY_REQUESTS.
        published = await asyncio.gather(*(c.publish(q, b"x") for _ in range(300)))
        assert len({p.id for p in published}) == 300
        await c.close()
    finally:
        b.close()


async def test_a_request_over_the_frame_limit_is_refused_before_sending(binary: str, q: str) -> None:
    b = Broker(binary, ["--max-frame-bytes", "16384", "--max-payload-bytes", "8192"])
    b.start()
    try:
        c = await squall.connect(b.addr)
        assert c.server_info.limits.max_frame_bytes == 16384
        with pytest.raises(squall.FrameTooLarge) as e:
            await c.publish_batch(q, [b"x" * 8000] * 3)
        assert e.value.local
        # The connection is still the same healthy one: nothing was sent.
        assert c.is_connected and len(await c.publish_batch(q, [b"x" * 8000] * 2)) == 2
        await c.close()
    finally:
        b.close()


async def test_release_and_release_unseen(client: squall.Client, q: str) -> None:
    t = await client.publish(q, b"back and forth")
    async with client.subscribe(q, prefetch=1) as sub:
        d = await next_delivery(sub)
        await d.release_unseen()  # never started: no attempt counted
        with pytest.raises(squall.LeaseExpired):
            await d.release_unseen()
        d = await next_delivery(sub)
        assert (d.id, d.attempt) == (t.id, 1)
        d.release()  # started: counts as an attempt, back at once without backoff
        d = await next_delivery(sub)
        assert (d.id, d.attempt) == (t.id, 2)
        await d.ack()


async def test_queues_follows_the_brokers_pages(client: squall.Client, q: str) -> None:
    # The broker answers ListQueues in pages of at most 1,000 queues.
    names = [f"{q}.{i:04}" for i in range(1_100)]
    for start in range(0, len(names), 100):
        await client.publish_batch(
            q, [squall.Message(b"x", queue=name) for name in names[start : start + 100]]
        )
    listed = [x.name for x in await client.queues()]
    assert set(names) <= set(listed), "every page is read"
    assert listed == sorted(listed) and len(listed) == len(set(listed))


async def test_peek_shows_previews_and_payload_fetches_the_whole_task(client: squall.Client, q: str) -> None:
    big = bytes(range(256)) * 20
    t = await client.publish(q, big, headers={"k": b"v"})
    [p] = await client.peek(q, "ready", preview_bytes=100)
    assert (p.truncated, p.payload_bytes, p.payload) == (True, len(big), big[:100])
    whole = await client.payload(t.id)
    assert (whole.id, whole.queue, whole.payload, whole.headers) == (t.id, q, big, {"k": b"v"})
    [small] = await client.peek(q, "ready")
    assert small.truncated and len(small.payload) == 1024, "the broker's default preview"
    with pytest.raises(squall.BadRequest):
        await client.peek(q, preview_bytes=-1)
    await client.purge(q)
    with pytest.raises(squall.NotFound):
        await client.payload(t.id)
