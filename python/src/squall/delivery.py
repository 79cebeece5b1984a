"""Receiving: `Delivery` (a task under a lease bound to the connection it arrived on,
with ack / nack / fail / extend / release) and `Subscription` (an async context manager
and async iterator of deliveries that survives reconnects: the client re-subscribes it
on every new connection). Automatic lease extension is in worker.py."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING

from . import errors
from ._proto import squall_pb2 as pb
from .types import Duration, duration_ms, from_ms

if TYPE_CHECKING:
    from ._conn import Conn
    from .client import _Node

log = logging.getLogger("squall")

#: A lease shorter than this is assumed when the deadline looks already past (skew).
MIN_ASSUMED_LEASE_MS = 1000


def _as_bytes(value: bytes | bytearray | memoryview | str | None, what: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


class Task:
    """A received task's data: what a worker's handler gets."""

    __slots__ = (
        "_created_ms",
        "_deadline_ms",
        "_lease_ms",
        "_msg",
        "attempt",
        "id",
        "lease_token",
        "max_attempts",
        "payload",
        "priority",
        "queue",
    )

    id: int
    queue: str
    payload: bytes
    attempt: int
    max_attempts: int
    priority: int
    lease_token: int
    _deadline_ms: int
    _created_ms: int
    _lease_ms: int
    _msg: pb.Delivery

    @property
    def headers(self) -> dict[str, bytes]:
        """The task's headers (name -> bytes)."""
        return dict(self._msg.headers)

    @property
    def deadline(self) -> datetime | None:
        """When the current lease ends unless extended."""
        return from_ms(self._deadline_ms)

    @property
    def created_at(self) -> datetime | None:
        return from_ms(self._created_ms)

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure of this attempt sends the task to the dead set."""
        return self.max_attempts != 0 and self.attempt >= self.max_attempts

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} id={self.id} queue={self.queue!r} attempt={self.attempt} "
            f"payload={len(self.payload)} bytes>"
        )


class Delivery(Task):
    """A task delivered under a lease. Settle it exactly once with `ack`, `nack`,
    `fail` (or `release`). The lease belongs to the connection the delivery arrived
    on: after a reconnect, settling it fails locally with `LeaseExpired` (the broker
    already gave the task back for redelivery)."""

    __slots__ = ("_conn", "_settled")

    def __init__(self, d: pb.Delivery, conn: Conn) -> None:
        self._msg = d
        self.id = d.task_id
        self.queue = d.queue
        self.payload = d.payload
        self.attempt = d.attempt
        self.max_attempts = d.max_attempts
        self.priority = d.priority
        self.lease_token = d.lease_token
        self._deadline_ms = d.deadline_ms
        self._created_ms = d.created_at_ms
        now_ms = int(time.time() * 1000)
        self._lease_ms = max(d.deadline_ms - now_ms, MIN_ASSUMED_LEASE_MS)
        self._conn = conn
        self._settled = False

    @property
    def is_stale(self) -> bool:
        """True when the connection it arrived on is gone (so is its lease)."""
        return self._conn.closed_reason is not None

    def _take(self) -> Conn:
        if self._settled or self._conn.closed_reason is not None:
            self._settled = True
            raise errors.LeaseExpired(task_id=self.id, local=True)
        self._settled = True
        return self._conn

    async def _settle(self, req: pb.Request, name: str, conn: Conn) -> None:
        try:
            await conn.call(req, name)
        except errors.LeaseExpired as e:
            raise errors.LeaseExpired(e.message, task_id=self.id) from None

    async def ack(self, result: bytes | str | None = None) -> None:
        """Marks the task succeeded; `result` is kept for the queue's result TTL and
        returned by `task` / `wait_result`."""
        conn = self._take()
        req = pb.Request()
        a = req.ack
        a.task_id = self.id
        a.lease_token = self.lease_token
        if result:
            a.result = result if isinstance(result, bytes) else _as_bytes(result, "result")
        try:
            await conn.call(req, "ack")
        except errors.LeaseExpired as e:
            raise errors.LeaseExpired(e.message, task_id=self.id) from None

    async def nack(self, delay: Duration | None = None, reason: str = "") -> None:
        """Gives the task back for another attempt: after `delay`, or after the queue's
        exponential backoff when None. Counts as a failed attempt."""
        conn = self._take()
        req = pb.Request()
        n = req.nack
        n.task_id = self.id
        n.lease_token = self.lease_token
        if delay is not None:
            n.delay_ms = duration_ms(delay, "delay")
        n.reason = reason
        await self._settle(req, "nack", conn)

    async def fail(self, reason: str = "") -> None:
        """Sends the task to the dead set now, whatever its attempts."""
        conn = self._take()
        req = pb.Request()
        n = req.nack
        n.task_id = self.id
        n.lease_token = self.lease_token
        n.dead = True
        n.reason = reason
        await self._settle(req, "fail", conn)

    async def extend(self, by: Duration | None = None) -> datetime | None:
        """Pushes the lease deadline to now + `by` (default: the lease length this
        delivery came with), capped by the broker's max lease. Returns the new deadline."""
        if self._settled or self._conn.closed_reason is not None:
            raise errors.LeaseExpired(task_id=self.id, local=True)
        req = pb.Request()
        e = req.extend
        e.task_id = self.id
        e.lease_token = self.lease_token
        e.extend_ms = self._lease_ms if by is None else max(duration_ms(by, "by"), 1)
        try:
            resp = await self._conn.call(req, "extend")
        except errors.LeaseExpired as err:
            raise errors.LeaseExpired(err.message, task_id=self.id) from None
        self._deadline_ms = resp.extend.deadline_ms
        return from_ms(self._deadline_ms)

    def release(self, reason: str = "released by the consumer") -> None:
        """Gives the task back at once without counting a failed attempt's backoff
        (a nack with delay 0), without waiting for the answer."""
        if not self._settled:
            self._release(reason)

    async def release_unseen(self) -> None:
        """Gives back a delivery this consumer never started on: the task is ready again
        at once and this delivery does not count as an attempt. A consumer that did
        start on the task must `nack` it instead (so that a task that kills its handler
        still reaches the dead set)."""
        conn = self._take()
        req = pb.Request()
        r = req.release
        r.task_id = self.id
        r.lease_token = self.lease_token
        try:
            await conn.call(req, "release")
        except errors.LeaseExpired as e:
            raise errors.LeaseExpired(e.message, task_id=self.id) from None

    def _release_unseen_oneway(self) -> None:
        self._settled = True
        req = pb.Request()
        r = req.release
        r.task_id = self.id
        r.lease_token = self.lease_token
        self._conn.send_oneway(req)

    def _release(self, reason: str) -> None:
        self._settled = True
        req = pb.Request()
        n = req.nack
        n.task_id = self.id
        n.lease_token = self.lease_token
        n.delay_ms = 0
        n.reason = reason
        self._conn.send_oneway(req)


class Subscription:
    """Deliveries from one queue. Use as `async with client.subscribe(q) as sub:
    async for d in sub: ...`. Leaving the block unsubscribes and releases deliveries
    received but not yet handed out. A lost connection does not end it: the client
    re-subscribes on the next connection (deliveries of the old one are skipped)."""

    def __init__(self, node: _Node, queue: str, prefetch: int) -> None:
        self._node = node
        self.queue = queue
        self.prefetch = prefetch
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._failure: errors.SquallError | None = None
        self._closed = False
        self._opened = False
        #: Deliveries received but never handed out, released by `close`.
        self.released_on_close = 0
        #: The connection and subscription id it is attached to now.
        self._current: tuple[Conn, int] | None = None

    # --- lifecycle ----------------------------------------------------------------

    async def open(self) -> Subscription:
        """Subscribes (done by `async with`)."""
        if self._opened:
            return self
        self._opened = True
        await self._node.open_subscription(self)
        return self

    async def close(self) -> None:
        """Unsubscribes, then gives back the deliveries received but never handed out,
        unseen (no attempt counted). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._node.close_subscription(self)
        unseen = [d for d in self._buffer if not d.is_stale and not d._settled]
        self._buffer.clear()
        results = await asyncio.gather(*(d.release_unseen() for d in unseen), return_exceptions=True)
        released = 0
        for d, r in zip(unseen, results, strict=True):
            if r is None:
                released += 1
            elif not isinstance(r, (errors.LeaseExpired, errors.ConnectionLost)):
                log.warning("giving back task %d unseen failed: %s", d.id, r)
        if released:
            log.info("subscription to %s closed; gave back %d buffered deliveries", self.queue, released)
        self.released_on_close = released
        self._wake()

    async def __aenter__(self) -> Subscription:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- events from the connection -------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _on_delivery(self, delivery: Delivery) -> None:
        if self._closed:
            delivery._release_unseen_oneway()
            return
        self._buffer.append(delivery)
        self._wake()

    def _on_ended(self, error: errors.SquallError) -> None:
        self._failure = error
        self._node.forget_subscription(self)
        self._wake()

    # --- receiving ------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        d = await self.recv()
        if d is None:
            raise StopAsyncIteration
        return d

    async def recv(self, timeout: float | None = None) -> Delivery | None:
        """The next delivery; None when the subscription is closed (or `timeout`
        seconds pass). Raises the error that ended it (`SubscriptionEnded`, or
        `Closed` when the client closed or gave up reconnecting)."""
        if not self._opened:
            await self.open()
        buf = self._buffer
        while True:
            while buf:
                d = buf.popleft()
                if d._conn.closed_reason is None:
                    return d
                log.debug("skipping delivery %d whose connection was lost", d.id)
            if self._failure is not None:
                failure, self._failure = self._failure, None
                self._closed = True
                raise failure
            if self._closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await self._waiter
                else:
                    try:
                        await asyncio.wait_for(asyncio.shield(self._waiter), timeout)
                    except TimeoutError:
                        return None
            finally:
                self._waiter = None

    def __repr__(self) -> str:
        return f"<Subscription queue={self.queue!r} prefetch={self.prefetch}>"
