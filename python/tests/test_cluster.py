"""A replicated cluster of three real brokers (target/debug/squall with cluster flags,
free ports on 127.0.0.1, temporary data directories): a client given every member
connects to the leader (the others answer NOT_LEADER naming it) and lists the cluster
once; after the leader is killed with -9, a consumer goes on receiving and a producer
goes on publishing through the new leader, without the test reconnecting anything,
and every publish the client saw confirmed is delivered. Publishes to a cluster are
numbered, so one whose answer was lost is sent again and not created twice."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

from conftest import Broker
from test_reconnect import proxy_to

import squall

FAST = squall.ReconnectPolicy(initial_delay=0.05, max_delay=0.5)
#: Generous: an election takes about a second; CI's 2 cores are shared.
WITHIN = 45.0


def free_addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@contextlib.contextmanager
def three_members(binary: str) -> Iterator[list[Broker]]:
    """Members 1, 2, 3 (index + 1), started; they form the cluster by themselves."""
    clusters = [free_addr() for _ in range(3)]
    peers = ",".join(f"{i + 1}@{a}" for i, a in enumerate(clusters))
    brokers = [
        Broker(binary, ["--node-id", str(i + 1), "--cluster-listen", a, "--peers", peers])
        for i, a in enumerate(clusters)
    ]
    try:
        for b in brokers:
            b.start(free_addr())
        yield brokers
    finally:
        for b in brokers:
            b.close()


async def until(what: str, done: Callable[[], bool]) -> None:
    for _ in range(int(WITHIN / 0.05)):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {WITHIN} s: {what}")


async def test_a_consumer_and_a_producer_carry_on_after_the_leader_is_killed(binary: str, q: str) -> None:
    with three_members(binary) as brokers:
        everyone = ",".join(b.addr for b in brokers)
        c = await squall.connect(
            everyone, reconnect=FAST, connect_timeout=WITHIN, wait_for_connection=WITHIN, request_timeout=10
        )
        info = c.server_info.cluster
        assert info is not None, "a cluster's leader announces its cluster"
        # (A member that had not answered when the cluster formed is listed without its
        # client address.)
        assert {a for _, a in info.members if a} <= {b.addr for b in brokers}
        assert sorted(i for i, _ in info.members) == [1, 2, 3]
        assert c.nodes == [info.cluster_id], "three addresses of one cluster are one node"

        confirmed: set[str] = set()
        confirmed_after_kill: set[str] = set()
        received: set[str] = set()
        killed = asyncio.Event()
        stop = asyncio.Event()

        async def produce() -> None:
            i = 0
            while not stop.is_set():
                payload = f"m{i}"
                i += 1
                try:
                    await c.publish(q, payload)
                except squall.SquallError:
                    await asyncio.sleep(0.05)
                    continue
                confirmed.add(payload)
                if killed.is_set():
                    confirmed_after_kill.add(payload)
                await asyncio.sleep(0.005)

        async def consume() -> None:
            async with c.subscribe(q, prefetch=16) as sub:
                while not stop.is_set():
                    d = await sub.recv(timeout=0.2)
                    if d is None:
                        continue
                    received.add(d.payload.decode())
                    with contextlib.suppress(squall.SquallError):
                        await d.ack()

        tasks = [asyncio.create_task(produce()), asyncio.create_task(consume())]
        try:
            await until("deliveries before the kill", lambda: len(received) >= 20)
            leader = info.leader
            brokers[leader - 1].stop(kill=True)
            killed.set()
            received_before = set(received)
            await until(
                "20 publishes confirmed and delivered after the kill",
                lambda: len(confirmed_after_kill & (received - received_before)) >= 20,
            )
            now = c.server_info.cluster
            assert now is not None and now.leader != leader, "the client follows the new leader"
            assert now.cluster_id == info.cluster_id, "the cluster keeps its id"
            stop.set()
            await asyncio.gather(*tasks)
            tasks = [asyncio.create_task(consume())]
            stop.clear()
            await until("every confirmed publish delivered", lambda: confirmed <= received)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await c.close()


async def test_a_publish_whose_answer_was_lost_is_sent_again_and_not_created_twice(
    binary: str, q: str
) -> None:
    """Every publish to a cluster is numbered, so the client repeats one whose answer it
    lost (without an idempotency key) and the cluster answers the repeat with the first
    task, also on a queue that remembers no idempotency keys (dedup window 0): producer
    numbers do not depend on them. (Negative control, run by hand: a broker that ignores
    producer numbers fails the first assertion.)"""
    with three_members(binary) as brokers:
        everyone = ",".join(b.addr for b in brokers)
        admin = await squall.connect(everyone, connect_timeout=WITHIN, wait_for_connection=WITHIN)
        info = admin.server_info.cluster
        assert info is not None
        forgetful = q + "-forgetful"
        await admin.set_queue_config(forgetful, dedup_window=0)
        async with proxy_to(brokers[info.leader - 1].addr) as proxy:
            c = await squall.connect(proxy.addr, reconnect=FAST, wait_for_connection=WITHIN)
            for queue in (q, forgetful):
                proxy.cut_next_request()
                published = await c.publish(queue, b"once")
                assert published.duplicate, f"the repeat to {queue} found the first send"
                assert (await admin.queue(queue)).ready == 1, f"{queue}: not created twice"
            await c.close()
        await admin.close()
