"""One TCP connection to the broker: dial + Hello handshake, frame parsing in
`data_received` (answers to waiting calls by request id, deliveries to subscriptions
by subscription id), coalesced writes (every request made in one event-loop turn goes
out in one `transport.write`), the in-flight limit the broker announced, and request
timeouts. No reconnect logic and no public API: client.py owns the lifecycle."""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl as _ssl
import struct
from typing import Protocol

from . import errors
from ._proto import squall_pb2 as pb
from .delivery import Delivery
from .types import ServerInfo

log = logging.getLogger("squall")

#: The protocol version this client speaks, sent in Hello (proto/src PROTOCOL_VERSION).
PROTOCOL_VERSION = 1
#: The broker's default frame limit; frames up to it are always accepted.
DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
#: Outstanding requests allowed when the broker announces no limit.
DEFAULT_INFLIGHT = 4096
#: Permits kept back from the broker's max_inflight_requests for one-way frames
#: (releases of deliveries nobody takes, unsubscribes).
INFLIGHT_RESERVE = 8
#: How often request deadlines are checked.
SWEEP_EVERY = 0.1

_LEN = struct.Struct(">I")


class Route(Protocol):
    """Where a subscription's deliveries and its end go."""

    def _on_delivery(self, delivery: Delivery) -> None: ...

    def _on_ended(self, error: errors.SquallError) -> None: ...


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise errors.ConfigError(f"broker address {addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class Conn(asyncio.Protocol):
    """A live (or just ended) connection."""

    def __init__(self, addr: str, request_timeout: float, generation: int) -> None:
        self.addr = addr
        self.generation = generation
        self.request_timeout = request_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.info = ServerInfo()
        self.closed_reason: str | None = None
        self.closed = self.loop.create_future()
        self.pending: dict[int, asyncio.Future[pb.Response]] = {}
        self.routes: dict[int, Route] = {}
        self.next_id = 2  # 1 is the Hello
        self._rbuf = bytearray()
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._free = DEFAULT_INFLIGHT
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._deadlines: collections.deque[tuple[float, int, str]] = collections.deque()
        self._max_frame = DEFAULT_MAX_FRAME_BYTES + 64 * 1024
        self._sweeper: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------

    @classmethod
    async def dial(
        cls,
        addr: str,
        *,
        client_name: str,
        token: str,
        ssl: _ssl.SSLContext | None,
        server_hostname: str | None,
        connect_timeout: float,
        request_timeout: float,
        generation: int,
    ) -> Conn:
        """Connects and performs the Hello handshake within `connect_timeout`."""
        host, port = _split_addr(addr)
        conn = cls(addr, request_timeout, generation)
        try:
            async with asyncio.timeout(connect_timeout):
                try:
                    if ssl is not None:
                        await conn.loop.create_connection(
                            lambda: conn, host, port, ssl=ssl, server_hostname=server_hostname or host
                        )
                    else:
                        await conn.loop.create_connection(lambda: conn, host, port)
                except OSError as e:
                    raise errors.TransportError(f"cannot connect to {addr}: {e}") from e
                hello = pb.Request(id=1)
                hello.hello.protocol_version = PROTOCOL_VERSION
                hello.hello.client_name = client_name
                hello.hello.token = token
                fut: asyncio.Future[pb.Response] = conn.loop.create_future()
                conn.pending[1] = fut
                conn._write(hello)
                resp = await fut
        except TimeoutError:
            conn.shutdown("connect timed out")
            raise errors.Timeout("connect", connect_timeout) from None
        except BaseException:
            conn.shutdown("handshake failed")
            raise
        kind = resp.WhichOneof("result")
        if kind == "error":
            conn.shutdown("broker refused the handshake")
            raise errors.from_wire(resp.error.code, resp.error.message)
        if kind != "hello":
            conn.shutdown("unexpected answer to Hello")
            raise errors.ProtocolError(f"expected HelloOk in answer to Hello, got {kind}")
        conn.info = ServerInfo.from_wire(resp.hello)
        limits = conn.info.limits
        n = limits.max_inflight_requests
        if n == 0:
            conn._free = DEFAULT_INFLIGHT
        elif n > 2 * INFLIGHT_RESERVE:
            conn._free = n - INFLIGHT_RESERVE
        else:
            conn._free = n
        conn._max_frame = max(limits.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES) + 64 * 1024
        conn._sweeper = conn.loop.create_task(conn._sweep())
        log.debug("connected to %s (node %s)", addr, conn.info.node_id)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.shutdown(f"connection lost: {exc}" if exc else "broker closed the connection")

    def eof_received(self) -> bool | None:
        self.shutdown("broker closed the connection")
        return None

    @property
    def is_closed(self) -> bool:
        return self.closed_reason is not None

    def shutdown(self, reason: str) -> None:
        """Ends the connection once: fails every waiting call with ConnectionLost, drops
        the subscription routes. Idempotent."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        if self.transport is not None:
            if self._wbuf:
                self._flush()
            self.transport.close()
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(errors.ConnectionLost(reason))
                fut.exception()  # mark retrieved: a caller may have given up
        self.routes.clear()
        for w in self._slot_waiters:
            if not w.done():
                w.set_result(None)
        self._slot_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        if self._sweeper is not None:
            self._sweeper.cancel()
        log.debug("connection to %s ended: %s", self.addr, reason)

    # --- writing -----------------------------------------------------------------

    def _write(self, req: pb.Request) -> None:
        self._write_data(req.SerializeToString())

    def _write_data(self, data: bytes) -> None:
        self._wbuf.append(_LEN.pack(len(data)))
        self._wbuf.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._wbuf:
            return
        data = b"".join(self._wbuf)
        self._wbuf.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_oneway(self, req: pb.Request) -> None:
        """Sends a request whose answer nobody waits for."""
        if self.closed_reason is not None:
            return
        req.id = self.next_id
        self.next_id += 1
        self._write(req)

    # --- calls ---------------------------------------------------------------------

    async def call(
        self, req: pb.Request, name: str, timeout: float | None = None, rid: int | None = None
    ) -> pb.Response:
        """Sends `req` (its id is set here, or is `rid` from `take_id`) and waits for the
        answer, within the request timeout (or `timeout`). A broker Error answer raises
        its BrokerError class."""
        if self.closed_reason is not None:
            raise errors.ConnectionLost(self.closed_reason)
        while self._free <= 0:
            w: asyncio.Future[None] = self.loop.create_future()
            self._slot_waiters.append(w)
            await w
            if self.closed_reason is not None:
                raise errors.ConnectionLost(self.closed_reason)
        self._free -= 1
        if rid is None:
            rid = self.next_id
            self.next_id = rid + 1
        req.id = rid
        data = req.SerializeToString()
        limit = self.info.limits.max_frame_bytes
        if limit and len(data) > limit:
            # The broker would close the connection on it: refuse it here instead.
            self._release_slot()
            raise errors.invalid(
                errors.FrameTooLarge,
                f"{name} request of {len(data)} bytes exceeds the broker's max_frame_bytes of "
                f"{limit}; send fewer or smaller tasks at once",
            )
        fut: asyncio.Future[pb.Response] = self.loop.create_future()
        self.pending[rid] = fut
        self._write_data(data)
        timer = None
        if timeout is None:
            self._deadlines.append((self.loop.time() + self.request_timeout, rid, name))
        else:
            timer = self.loop.call_later(timeout, self._expire, rid, name, timeout)
        try:
            resp = await fut
        finally:
            self.pending.pop(rid, None)
            if timer is not None:
                timer.cancel()
            self._release_slot()
        if resp.WhichOneof("result") == "error":
            raise errors.from_wire(resp.error.code, resp.error.message)
        return resp

    def _release_slot(self) -> None:
        self._free += 1
        if self._slot_waiters:
            w = self._slot_waiters.popleft()
            if not w.done():
                w.set_result(None)

    def _expire(self, rid: int, name: str, after: float) -> None:
        fut = self.pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_exception(errors.Timeout(name, after))

    async def _sweep(self) -> None:
        deadlines = self._deadlines
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = self.loop.time()
            while deadlines and deadlines[0][0] <= now:
                _, rid, name = deadlines.popleft()
                self._expire(rid, name, self.request_timeout)

    # --- reading -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self._rbuf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        n = len(view)
        pos = 0
        unpack = _LEN.unpack_from
        max_frame = self._max_frame
        while n - pos >= 4:
            (length,) = unpack(view, pos)
            if length > max_frame:
                self.shutdown(f"broker sent a frame of {length} bytes, above {max_frame}")
                return
            end = pos + 4 + length
            if end > n:
                break
            msg = pb.ServerMessage()
            try:
                msg.ParseFromString(memoryview(view)[pos + 4 : end])  # type: ignore[arg-type]
            except Exception as e:
                self.shutdown(f"undecodable frame from the broker: {e}")
                return
            pos = end
            self._dispatch(msg)
            if self.closed_reason is not None:
                return
        if view is buf:
            del buf[:pos]
        elif pos < n:
            buf += data[pos:]

    def _dispatch(self, msg: pb.ServerMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "response":
            resp = msg.response
            rid = resp.id
            if rid == 0:
                if resp.WhichOneof("result") == "error":
                    err = errors.from_wire(resp.error.code, resp.error.message)
                    log.warning("broker closed the connection to %s: %s", self.addr, err)
                    self.shutdown(str(err))
                else:
                    self.shutdown("broker sent an answer with id 0 that is not an error")
                return
            fut = self.pending.pop(rid, None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(resp)
            elif resp.WhichOneof("result") == "subscription_ended":
                route = self.routes.pop(rid, None)
                if route is not None:
                    ended = resp.subscription_ended
                    log.warning("the broker ended the subscription to %s: %s", ended.queue, ended.reason)
                    route._on_ended(errors.SubscriptionEnded(ended.queue, ended.reason))
        elif kind == "delivery":
            d = msg.delivery
            delivery = Delivery(d, self)
            route = self.routes.get(d.subscription_id)
            if route is not None:
                route._on_delivery(delivery)
            else:
                delivery._release_unseen_oneway()  # never seen by anyone
                unsub = pb.Request()
                unsub.unsubscribe.subscription_id = d.subscription_id
                self.send_oneway(unsub)

    def add_route(self, sub_id: int, route: Route) -> None:
        if self.closed_reason is not None:
            raise errors.ConnectionLost(self.closed_reason)
        self.routes[sub_id] = route

    def remove_route(self, sub_id: int) -> None:
        self.routes.pop(sub_id, None)

    def take_id(self) -> int:
        """An id for a request whose route must exist before it is sent (Subscribe)."""
        rid = self.next_id
        self.next_id = rid + 1
        return rid
