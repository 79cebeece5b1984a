"""Losing the connection: reconnect with backoff after a broker restart, re-subscribe,
leases that die with the connection, wait_result resuming, publish retried only when
it is safe, giving up, and several addresses routed by rendezvous hashing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from conftest import Broker

import squall
from squall import rendezvous


class Proxy:
    """A TCP relay in front of a real broker that can lose a connection on purpose:
    `cut_next_request()` forwards the next request to the broker, swallows the answer
    and closes the client's connection (the outcome is unknown to the client)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.host, self.port = host, int(port)
        self._cut = False
        self._server: asyncio.Server | None = None
        self.addr = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.addr = f"127.0.0.1:{port}"

    def cut_next_request(self) -> None:
        self._cut = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection(self.host, self.port)
        mute = False

        async def down() -> None:
            while data := await br.read(65536):
                if mute:
                    continue
                writer.write(data)
            writer.close()

        task = asyncio.create_task(down())
        first = True
        try:
            while data := await reader.read(65536):
                bw.write(data)
                if not first and self._cut:
                    self._cut = False
                    mute = True
                    await asyncio.sleep(0.5)  # let the broker apply it
                    break
                first = False
        finally:
            writer.close()
            bw.close()
            task.cancel()


@contextlib.asynccontextmanager
async def proxy_to(addr: str) -> AsyncIterator[Proxy]:
    p = Proxy(addr)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


FAST = squall.ReconnectPolicy(initial_delay=0.05, max_delay=0.5)


async def test_reconnect_after_restart_resubscribes_and_leases_die(own_broker: Broker, q: str) -> None:
    c = await squall.connect(own_broker.addr, reconnect=FAST)
    t = await c.publish(q, b"survives")
    async with c.subscribe(q, prefetch=1) as sub:
        d = await sub.recv(timeout=10)
        assert d is not None and d.id == t.id
        waiting = asyncio.create_task(c.wait_result(t.id, timeout=30))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(own_broker.restart)
        # The lease belonged to the lost connection: settling fails locally.
        with pytest.raises(squall.LeaseExpired) as e:
            await d.ack(result=b"too late")
        assert e.value.local
        # The subscription came back by itself and the task is delivered again.
        again = await sub.recv(timeout=15)
        assert again is not None and again.id == t.id and again.attempt >= 1
        await again.ack(result=b"after restart")
        # wait_result, begun before the restart, resumed on the new connection.
        assert await asyncio.wait_for(waiting, 15) == b"after restart"
        t2 = await c.publish(q, b"new")
        d2 = await sub.recv(timeout=10)
        assert d2 is not None and d2.id == t2.id
        await d2.ack()
    assert c.is_connected
    await c.close()


async def test_publish_is_retried_only_with_an_idempotency_key(own_broker: Broker, q: str) -> None:
    async with proxy_to(own_broker.addr) as proxy:
        c = await squall.connect(proxy.addr, reconnect=FAST)
        proxy.cut_next_request()
        keyed = await c.publish(q, b"once", key="order-17")
        # The first send was applied, its answer lost; the repeat found it.
        assert keyed.duplicate
        assert (await c.queue(q)).ready == 1
        proxy.cut_next_request()
        with pytest.raises(squall.ConnectionLost) as e:
            await c.publish(q, b"unkeyed")
        assert not e.value.nothing_was_applied
        # Not repeated by the client: exactly the one the broker applied.
        assert (await c.queue(q)).ready == 2
        proxy.cut_next_request()
        with pytest.raises(squall.ConnectionLost):
            await c.publish_batch(q, [squall.Message(b"a", key="a"), b"no key"])
        assert (await c.queue(q)).ready == 4
        await c.close()


async def test_calls_wait_for_the_connection_then_fail_unavailable(own_broker: Broker, q: str) -> None:
    c = await squall.connect(own_broker.addr, reconnect=FAST, wait_for_connection=0.3)
    own_broker.stop()
    for _ in range(100):
        if not c.is_connected:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(squall.Unavailable) as e:
        await c.publish(q, b"x")
    assert e.value.nothing_was_applied
    assert not c.is_connected
    await asyncio.to_thread(own_broker.restart)
    ok = await squall.connect(own_broker.addr)
    await ok.close()
    for _ in range(100):
        if c.is_connected:
            break
        await asyncio.sleep(0.1)
    assert (await c.publish(q, b"back")).id > 0
    await c.close()


async def test_giving_up_closes_the_client(own_broker: Broker, q: str) -> None:
    policy = squall.ReconnectPolicy(initial_delay=0.02, max_delay=0.05, max_attempts=2)
    c = await squall.connect(own_broker.addr, reconnect=policy)
    async with c.subscribe(q) as sub:
        own_broker.stop()
        with pytest.raises(squall.Closed) as e:
            await sub.recv(timeout=10)
        assert "gave up" in str(e.value)
    with pytest.raises(squall.Closed):
        await c.publish(q, b"x")


async def test_several_addresses_route_queues_like_the_rust_client(
    own_broker: Broker, binary: str, q: str
) -> None:
    other = Broker(binary)
    other.start()
    try:
        spec = f"n1={own_broker.addr},n2={other.addr}"
        c = await squall.connect(spec)
        assert c.nodes == ["n1", "n2"]
        queues = [f"{q}-{i}" for i in range(12)]
        for name in queues:
            await c.publish(name, b"x")
        direct = {
            "n1": await squall.connect(own_broker.addr),
            "n2": await squall.connect(other.addr),
        }
        for name in queues:
            expected = ["n1", "n2"][rendezvous.owner(["n1", "n2"], name) or 0]
            assert c.node_of(name) == expected
            assert (await direct[expected].queue(name)).ready == 1
            elsewhere = direct["n2" if expected == "n1" else "n1"]
            with pytest.raises(squall.NotFound):
                await elsewhere.queue(name)
        assert {x.name for x in await c.queues()} >= set(queues)
        batch = await c.publish_batch(queues[0], [squall.Message(b"y", queue=n) for n in queues])
        assert len(batch) == len(queues)
        t = await c.publish(queues[1], b"z")
        with pytest.raises(squall.ConfigError):
            await c.task(t.id)
        assert (await c.task(t.id, queue=queues[1])).state == "ready"
        # A node that goes away fails its queues at once; the other node's still work.
        other.stop()
        on_n2 = next(n for n in queues if c.node_of(n) == "n2")
        on_n1 = next(n for n in queues if c.node_of(n) == "n1")
        for _ in range(100):
            if not c._owner(on_n2).is_connected:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(squall.NodeUnavailable):
            await c.publish(on_n2, b"x")
        assert (await c.publish(on_n1, b"x")).id > 0
        for d in direct.values():
            await d.close()
        await c.close()
    finally:
        other.close()
