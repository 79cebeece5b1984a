"""`connect` and `Client`: publishing, task status and results, subscriptions, the
queue administration the CLI has, and close. `_Node` keeps one connection up in the
background (reconnect with capped jittered backoff, re-subscribe, keepalive pings) to
a single broker or to the leader of a replicated cluster (it follows NOT_LEADER to the
leader and dials the members the leader named when it goes away); a client of several
single brokers or clusters routes each queue to the one that rendezvous hashing picks
(rendezvous.py). Socket I/O is in _conn.py, receiving in delivery.py."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl as _ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from . import errors
from ._conn import Conn
from ._proto import squall_pb2 as pb
from .backoff import ReconnectPolicy
from .delivery import Subscription
from .rendezvous import owner
from .types import (
    CATCH_UP,
    STATE_FILTERS,
    Duration,
    PeekedTask,
    Published,
    QueueInfo,
    ScheduleInfo,
    ServerInfo,
    TaskInfo,
    TaskPayload,
    duration_ms,
    seconds,
)

log = logging.getLogger("squall")

__version__ = "0.1.0"

DEFAULT_ADDR = "127.0.0.1:7600"
#: How many times a publish whose every task carries an idempotency key is sent again
#: after a timeout or a lost connection (client/src/client.rs PUBLISH_RETRIES).
PUBLISH_RETRIES = 2
#: A wait the broker ended this close to the caller's deadline counts as timed out.
WAIT_AGAIN_MIN = 0.05
#: A year stands in for "forever" in wait_result.
FOREVER = 365 * 24 * 3600.0
MAX_PEEK = 1000
MAX_QUEUE_NAME_LEN = 200
_QUEUE_NAME = re.compile(r"[A-Za-z0-9._:-]+")


#: Queue names already checked (bounded: cleared when it grows past this many).
_CHECKED_NAMES: set[str] = set()
_CHECKED_NAMES_MAX = 4096


def check_queue_name(queue: str) -> None:
    """Refuses a queue name the broker would refuse (INVALID_QUEUE_NAME)."""
    if queue in _CHECKED_NAMES:
        return
    _check_queue_name(queue)
    if len(_CHECKED_NAMES) >= _CHECKED_NAMES_MAX:
        _CHECKED_NAMES.clear()
    _CHECKED_NAMES.add(queue)


def _check_queue_name(queue: str) -> None:
    if not isinstance(queue, str):
        raise TypeError(f"queue name must be str, not {type(queue).__name__}")
    if not queue:
        raise errors.invalid(errors.InvalidQueueName, "queue name is empty")
    if len(queue.encode()) > MAX_QUEUE_NAME_LEN:
        raise errors.invalid(
            errors.InvalidQueueName,
            f"queue name is {len(queue.encode())} bytes long; the limit is {MAX_QUEUE_NAME_LEN}",
        )
    if not _QUEUE_NAME.fullmatch(queue):
        raise errors.invalid(
            errors.InvalidQueueName,
            f"queue name {queue!r} may only contain A-Z a-z 0-9 . _ : -",
        )


@dataclass(frozen=True)
class Message:
    """One task of `publish_batch` with its own options (plain bytes use the batch's)."""

    payload: bytes | str
    priority: int = 0
    delay: Duration | None = None
    key: str | None = None
    headers: Mapping[str, bytes | str] | None = None
    max_attempts: int | None = None
    lease: Duration | None = None
    queue: str | None = None
    expires_in: Duration | None = None


@dataclass
class _Config:
    client_name: str
    token: str
    ssl: _ssl.SSLContext | None
    server_hostname: str | None
    connect_timeout: float
    request_timeout: float
    wait_for_connection: float
    reconnect: ReconnectPolicy
    keepalive: float | None
    validate_locally: bool


def _fill_spec(
    spec: pb.TaskSpec,
    queue: str,
    payload: bytes | str,
    priority: int,
    delay: Duration | None,
    key: str | None,
    headers: Mapping[str, bytes | str] | None,
    max_attempts: int | None,
    lease: Duration | None,
    expires_in: Duration | None = None,
) -> None:
    spec.queue = queue
    if isinstance(payload, str):
        payload = payload.encode()
    elif not isinstance(payload, bytes):
        if isinstance(payload, (bytearray, memoryview)):
            payload = bytes(payload)
        else:
            raise TypeError(f"payload must be bytes or str, not {type(payload).__name__}")
    spec.payload = payload
    if priority:
        spec.priority = priority
    if delay is not None:
        spec.delay_ms = duration_ms(delay, "delay")
    if key:
        spec.idempotency_key = key
    if headers:
        for k, v in headers.items():
            spec.headers[k] = v.encode() if isinstance(v, str) else bytes(v)
    if max_attempts:
        spec.max_attempts = max_attempts
    if lease is not None:
        spec.lease_ms = duration_ms(lease, "lease")
    if expires_in is not None:
        spec.expires_in_ms = duration_ms(expires_in, "expires_in")


def leader_named_in(message: str) -> str | None:
    """The leader's client address in a NOT_LEADER refusal ("... the leader is node N at
    HOST:PORT"), if it names one (client/src/client/link.rs leader_named_in)."""
    _, sep, addr = message.rpartition(" at ")
    addr = addr.strip()
    if not sep or ":" not in addr or " " in addr:
        return None
    return addr


async def dial_leader(
    members: Sequence[str], config: _Config, generation: int, patience: float = 0.0
) -> Conn:
    """Dials `members` in turn until one accepts the handshake. A cluster member that is
    not the leader refuses it with NOT_LEADER naming the leader, which is dialed next.
    While members answer NOT_LEADER without a leader (an election is under way), tries
    again every 0.1 s for up to `patience` seconds. With one address this is one dial."""
    deadline = time.monotonic() + patience
    while True:
        todo = list(members)
        tried: set[str] = set()
        last: errors.SquallError = errors.ConfigError("no broker address given")
        electing = False
        while todo:
            addr = todo.pop(0)
            if addr in tried:
                continue
            tried.add(addr)
            try:
                return await Conn.dial(
                    addr,
                    client_name=config.client_name,
                    token=config.token,
                    ssl=config.ssl,
                    server_hostname=config.server_hostname,
                    connect_timeout=config.connect_timeout,
                    request_timeout=config.request_timeout,
                    generation=generation,
                )
            except errors.NotLeader as e:
                log.debug("%s is not the cluster's leader: %s", addr, e)
                leader = leader_named_in(e.message)
                if leader is None:
                    electing = True
                elif leader not in tried:
                    todo.insert(0, leader)
                last = e
            except errors.SquallError as e:
                last = e
        if not electing or time.monotonic() >= deadline:
            raise last
        await asyncio.sleep(0.1)


@dataclass
class _Node:
    """One single broker or one replicated cluster, and the connection kept up to it
    (to the cluster's leader)."""

    name: str
    addr: str
    config: _Config
    #: Where to dial: the addresses given, then every member a cluster's leader named.
    members: list[str] = field(default_factory=list)
    #: This node's producer id (random) for the publishes it numbers (to a cluster).
    producer: str = field(default_factory=lambda: f"{random.getrandbits(128):032x}")
    next_sequence: int = 1
    conn: Conn | None = None
    down_reason: str = "not connected yet"
    closed: bool = False
    info: ServerInfo = field(default_factory=ServerInfo)
    subs: set[Subscription] = field(default_factory=set)
    generation: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _supervisor: asyncio.Task[None] | None = None
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    # --- connection ---------------------------------------------------------------

    def number(self, req: pb.Request) -> bool:
        """To a replicated cluster, numbers the publish `req` (producer id, sequence
        number): the cluster remembers each producer's latest numbered publishes, so the
        same publish sent again is not created twice. True when numbered."""
        if self.info.cluster is None:
            return False
        req.publish.producer_id = self.producer
        req.publish.sequence = self.next_sequence
        self.next_sequence += 1
        return True

    async def dial(self, patience: float = 0.0) -> Conn:
        self.generation += 1
        conn = await dial_leader(self.members or [self.addr], self.config, self.generation, patience)
        self.learn(conn.info)
        return conn

    def learn(self, info: ServerInfo) -> None:
        """Remembers every member a cluster's leader named (to dial when it goes away)."""
        if not self.members:
            self.members.append(self.addr)
        if info.cluster is not None:
            for _, addr in info.cluster.members:
                if addr and addr not in self.members:
                    self.members.append(addr)

    def start(self, conn: Conn | None) -> None:
        if conn is not None:
            self._set_up(conn)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    def _set_up(self, conn: Conn) -> None:
        self.conn = conn
        self.info = conn.info
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def is_connected(self) -> bool:
        return self.conn is not None and not self.conn.is_closed and not self.closed

    async def get_conn(self, wait: float | None = None) -> Conn:
        """The live connection, waiting (bounded) while reconnecting."""
        conn = self.conn
        if conn is not None and conn.closed_reason is None and not self.closed:
            return conn
        if self.closed:
            raise errors.Closed()
        wait = self.config.wait_for_connection if wait is None else wait
        deadline = time.monotonic() + wait
        while True:
            conn = self.conn
            if self.closed:
                raise errors.Closed()
            if conn is not None and conn.closed_reason is None:
                return conn
            left = deadline - time.monotonic()
            if left <= 0:
                reason = self.down_reason
                if conn is not None and conn.closed_reason:
                    reason = conn.closed_reason
                raise errors.Unavailable(wait, reason or "connection lost")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    async def _supervise(self) -> None:
        failure: str | None = None
        try:
            while not self.closed:
                conn = self.conn
                if conn is not None:
                    await self._watch(conn)
                    if self.closed:
                        break
                    self.down_reason = conn.closed_reason or "connection lost"
                    log.warning("connection to %s lost (%s); reconnecting", self.addr, self.down_reason)
                    self._notify()
                failure = await self._reconnect()
                if failure is not None:
                    break
        except asyncio.CancelledError:
            pass
        finally:
            self._close_all(failure)

    async def _watch(self, conn: Conn) -> None:
        """Until `conn` ends, pinging it every keepalive interval."""
        keepalive = self.config.keepalive
        while conn.closed_reason is None and not self.closed:
            try:
                await asyncio.wait_for(asyncio.shield(conn.closed), keepalive)
            except TimeoutError:
                ping = asyncio.get_running_loop().create_task(self._ping(conn))
                # Held until done: the loop keeps only weak references to tasks.
                self._background.add(ping)
                ping.add_done_callback(self._background.discard)

    async def _ping(self, conn: Conn) -> None:
        req = pb.Request()
        req.ping.SetInParent()
        try:
            await conn.call(req, "keepalive ping")
        except errors.Timeout:
            log.warning("broker %s did not answer a keepalive ping; dropping the connection", self.addr)
            conn.shutdown("keepalive ping unanswered")
        except errors.SquallError as e:
            log.debug("keepalive ping failed: %s", e)

    async def _reconnect(self) -> str | None:
        """Dials until it succeeds (None) or the policy gives up (the reason)."""
        policy = self.config.reconnect
        failures = 0
        last_error = self.down_reason
        me = asyncio.current_task()
        while not self.closed:
            if me is not None and me.cancelling():
                # A cancellation that landed as a dial finished was turned into its
                # error; honour it here rather than dial forever.
                raise asyncio.CancelledError
            if policy.gives_up_after(failures):
                log.error(
                    "giving up reconnecting to %s after %d attempts: %s", self.addr, failures, last_error
                )
                return f"gave up reconnecting after {failures} attempts: {last_error}"
            await asyncio.sleep(policy.delay(failures, random.random()))
            if self.closed:
                return None
            try:
                conn = await self.dial()
            except errors.SquallError as e:
                failures += 1
                last_error = str(e)
                self.down_reason = last_error
                log.warning("reconnect to %s failed (attempt %d): %s", self.addr, failures, e)
                continue
            self.info = conn.info
            await self._resubscribe(conn)
            log.info("reconnected to %s (%s) after %d failed attempts", self.name, conn.addr, failures)
            self._set_up(conn)
            return None
        return None

    def _close_all(self, failure: str | None) -> None:
        self.closed = True
        if self.conn is not None:
            self.conn.shutdown("client closed")
        subs, self.subs = self.subs, set()
        for sub in subs:
            sub._on_ended(errors.Closed(failure or "client is closed"))
        self._notify()

    async def close(self) -> None:
        self.closed = True
        self._notify()
        if self.conn is not None:
            self.conn.shutdown("client closed")
        sup = self._supervisor
        if sup is not None and not sup.done():
            sup.cancel()
            try:
                await sup
            except asyncio.CancelledError:
                pass
        self._close_all(None)

    # --- subscriptions --------------------------------------------------------------

    async def attach(self, conn: Conn, sub: Subscription) -> None:
        """Subscribes `sub` on `conn`; the route exists before the request is sent,
        since a delivery can follow the SubscribeOk at once."""
        rid = conn.take_id()
        conn.add_route(rid, sub)
        sub._current = (conn, rid)
        req = pb.Request()
        req.subscribe.queue = sub.queue
        req.subscribe.prefetch = sub.prefetch
        try:
            resp = await conn.call(req, "subscribe", rid=rid)
            if resp.subscribe.subscription_id != rid:
                raise errors.ProtocolError(
                    f"broker named subscription {resp.subscribe.subscription_id} for request {rid}"
                )
        except BaseException as e:
            conn.remove_route(rid)
            if isinstance(e, errors.Timeout):
                unsub = pb.Request()
                unsub.unsubscribe.subscription_id = rid
                conn.send_oneway(unsub)
            if sub._current == (conn, rid):
                sub._current = None
            raise

    async def open_subscription(self, sub: Subscription) -> None:
        if self.config.validate_locally:
            check_queue_name(sub.queue)
            check_prefetch(sub.prefetch, self.info)
        conn = await self.get_conn()
        self.subs.add(sub)
        try:
            await self.attach(conn, sub)
        except BaseException:
            self.subs.discard(sub)
            raise
        log.debug("subscribed to %s (prefetch %d)", sub.queue, sub.prefetch)

    async def _resubscribe(self, conn: Conn) -> None:
        subs = list(self.subs)
        if not subs:
            return
        results = await asyncio.gather(*(self.attach(conn, s) for s in subs), return_exceptions=True)
        for sub, result in zip(subs, results, strict=True):
            if result is None:
                log.info("re-subscribed to %s after reconnect", sub.queue)
            elif isinstance(result, (errors.BrokerError, errors.ProtocolError)):
                log.error("broker refused to re-subscribe to %s: %s", sub.queue, result)
                self.subs.discard(sub)
                sub._on_ended(result)
            else:
                log.debug("re-subscribe to %s interrupted: %s", sub.queue, result)

    async def close_subscription(self, sub: Subscription) -> None:
        self.subs.discard(sub)
        current, sub._current = sub._current, None
        if current is None:
            return
        conn, rid = current
        if conn.closed_reason is None:
            req = pb.Request()
            req.unsubscribe.subscription_id = rid
            try:
                await conn.call(req, "unsubscribe")
            except errors.ConnectionLost:
                pass
            except errors.SquallError as e:
                log.debug("unsubscribe from %s failed: %s", sub.queue, e)
        conn.remove_route(rid)

    def forget_subscription(self, sub: Subscription) -> None:
        self.subs.discard(sub)
        current, sub._current = sub._current, None
        if current is not None:
            current[0].remove_route(current[1])

    # --- calls ------------------------------------------------------------------------

    async def call(self, req: pb.Request, name: str) -> pb.Response:
        conn = await self.get_conn()
        return await conn.call(req, name)


def check_prefetch(prefetch: int, info: ServerInfo) -> None:
    if not isinstance(prefetch, int) or prefetch < 1:
        raise errors.invalid(errors.BadRequest, "prefetch must be at least 1")
    mx = info.limits.max_prefetch
    if mx and prefetch > mx:
        raise errors.invalid(
            errors.BadRequest, f"prefetch {prefetch} exceeds the broker's max_prefetch of {mx}"
        )


def _parse_nodes(addr: str | Sequence[str]) -> list[tuple[str, str]]:
    items = addr.split(",") if isinstance(addr, str) else list(addr)
    nodes: list[tuple[str, str]] = []
    for raw in items:
        spec = raw.strip()
        name, sep, a = spec.partition("=")
        if not sep:
            name, a = spec, spec
        name, a = name.strip(), a.strip()
        if not name or not a:
            raise errors.ConfigError(f"broker address {raw!r} is not ADDR or NAME=ADDR")
        nodes.append((name, a))
    if not nodes:
        raise errors.ConfigError("no broker address given")
    if len({n for n, _ in nodes}) != len(nodes) or len({a for _, a in nodes}) != len(nodes):
        raise errors.ConfigError(f"a broker node is listed twice in {addr!r}")
    return nodes


async def connect(
    addr: str | Sequence[str] = DEFAULT_ADDR,
    token: str | None = None,
    ssl: _ssl.SSLContext | bool | None = None,
    name: str | None = None,
    *,
    server_hostname: str | None = None,
    connect_timeout: Duration = 5.0,
    request_timeout: Duration = 30.0,
    wait_for_connection: Duration = 10.0,
    reconnect: ReconnectPolicy | None = None,
    keepalive: Duration | None = 15.0,
    validate_locally: bool = True,
) -> Client:
    """Connects to the broker at `addr` ("HOST:PORT") and performs the handshake.

    A member of a replicated cluster that is not its leader answers NOT_LEADER naming
    the leader: the client dials the leader instead, learns every member from it, and
    when the leader goes away (killed, or it lost the leadership) reconnects to the new
    leader and re-subscribes by itself.

    Several addresses (a list, or one string separated by commas; each "ADDR" or
    "NAME=ADDR"): addresses whose leader announces the same cluster id are one cluster
    (listed once); each single broker and each cluster is one node of the client, and
    each queue lives on the node that rendezvous hashing picks over the node names (a
    single broker's name, a cluster's id), exactly as the Rust client and the CLI pick
    it. `ssl` is an SSLContext, or True for the system's default trust.

    The first connection is not retried (but it waits up to `connect_timeout` for a
    cluster that is electing its leader): an unreachable broker fails here with
    `TransportError` or `Timeout`. Later losses are reconnected per `reconnect`.
    """
    if ssl is True:
        ctx: _ssl.SSLContext | None = _ssl.create_default_context()
    elif ssl is False or ssl is None:
        ctx = None
        if server_hostname is not None:
            raise errors.ConfigError("server_hostname needs ssl (an SSLContext or True)")
    else:
        ctx = ssl
    config = _Config(
        client_name=name or f"squall-client-python/{__version__}",
        token=token or "",
        ssl=ctx,
        server_hostname=server_hostname,
        connect_timeout=seconds(connect_timeout, "connect_timeout"),
        request_timeout=seconds(request_timeout, "request_timeout"),
        wait_for_connection=seconds(wait_for_connection, "wait_for_connection"),
        reconnect=reconnect or ReconnectPolicy(),
        keepalive=None if keepalive is None or seconds(keepalive) == 0 else seconds(keepalive),
        validate_locally=validate_locally,
    )
    if config.connect_timeout <= 0 or config.request_timeout <= 0:
        raise errors.ConfigError("connect_timeout and request_timeout must be greater than zero")
    given = [_Node(n, a, config) for n, a in _parse_nodes(addr)]
    patience = config.connect_timeout
    dialed = await asyncio.gather(*(n.dial(patience) for n in given), return_exceptions=True)
    for result in dialed:
        if isinstance(result, errors.ConfigError) or (len(given) == 1 and isinstance(result, BaseException)):
            for r in dialed:
                if isinstance(r, Conn):
                    r.shutdown("client closed")
            raise result
    nodes, conns = _one_node_per_cluster(given, dialed)
    failures = [
        f"{n.name} ({n.addr}): {n.down_reason}" for n, c in zip(nodes, conns, strict=True) if c is None
    ]
    if len(failures) == len(nodes):
        raise errors.Unavailable(0.0, "no node answered: " + "; ".join(failures))
    for node, conn in zip(nodes, conns, strict=True):
        node.start(conn)
        if conn is not None:
            log.info(
                "connected to squall broker %s (node %s, version %s)",
                conn.addr,
                conn.info.node_id,
                conn.info.server_version,
            )
        else:
            log.warning(
                "broker node %s unreachable; dialling it in the background: %s", node.addr, node.down_reason
            )
    return Client(nodes)


def _one_node_per_cluster(
    given: list[_Node], dialed: Sequence[Conn | BaseException]
) -> tuple[list[_Node], list[Conn | None]]:
    """Merges the addresses whose leader announced the same cluster id into one node
    named by that id (one connection kept, to the leader); a single broker stays a node
    of its own. An address that did not answer is dropped when a cluster that answered
    names it as a member, else it stays a node dialed in the background."""
    kept: dict[int, tuple[_Node, Conn | None]] = {}
    clusters: dict[str, _Node] = {}
    for i, (node, result) in enumerate(zip(given, dialed, strict=True)):
        if not isinstance(result, Conn):
            continue
        cluster = result.info.cluster
        if cluster is None:
            kept[i] = (node, result)
            continue
        merged = clusters.get(cluster.cluster_id)
        if merged is not None:
            merged.members.extend(m for m in node.members if m not in merged.members)
            result.shutdown("client closed: a second connection to the same cluster")
            continue
        clusters[cluster.cluster_id] = node
        node.name = cluster.cluster_id
        kept[i] = (node, result)
    known = {m for n in clusters.values() for m in n.members}
    for i, (node, result) in enumerate(zip(given, dialed, strict=True)):
        if not isinstance(result, Conn) and node.addr not in known:
            node.down_reason = str(result)
            kept[i] = (node, None)
    nodes = [kept[i][0] for i in sorted(kept)]
    conns = [kept[i][1] for i in sorted(kept)]
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise errors.ConfigError(f"a node name equals a cluster's id: {names}")
    return nodes, conns


class Client:
    """A connection to a Squall broker (or to several, see `connect`), shared by every
    task of the program: calls are pipelined over one TCP connection per broker.

    The connection is kept up in the background: when it is lost the client
    reconnects with capped exponential backoff and jitter and re-subscribes every open
    subscription. Calls made meanwhile wait up to `wait_for_connection`, then raise
    `Unavailable`; every call is bounded by the request timeout."""

    def __init__(self, nodes: list[_Node]) -> None:
        self._nodes = nodes
        self._names = [n.name for n in nodes]

    # --- routing --------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        """The node names (the addresses unless given as NAME=ADDR)."""
        return list(self._names)

    def node_of(self, queue: str) -> str:
        """The name of the node that owns `queue`."""
        return self._owner(queue).name

    def _owner(self, queue: str) -> _Node:
        if len(self._nodes) == 1:
            return self._nodes[0]
        i = owner(self._names, queue)
        return self._nodes[i or 0]

    def _node_for(self, queue: str) -> _Node:
        node = self._owner(queue)
        if len(self._nodes) > 1 and not node.is_connected:
            if node.closed:
                raise errors.Closed()
            raise errors.NodeUnavailable(node.name, node.addr, node.down_reason)
        return node

    def _node_for_task(self, queue: str | None) -> _Node:
        if queue is not None:
            return self._node_for(queue)
        if len(self._nodes) > 1:
            raise errors.ConfigError(
                "task ids are per node: with several addresses, pass queue= to name the node"
            )
        return self._nodes[0]

    @property
    def server_info(self) -> ServerInfo:
        """What the (first) broker announced in its last handshake."""
        return self._nodes[0].info

    @property
    def is_connected(self) -> bool:
        """True while every node's connection is up."""
        return all(n.is_connected for n in self._nodes)

    # --- publishing ----------------------------------------------------------------

    async def publish(
        self,
        queue: str,
        payload: bytes | str,
        *,
        priority: int = 0,
        delay: Duration | None = None,
        key: str | None = None,
        headers: Mapping[str, bytes | str] | None = None,
        max_attempts: int | None = None,
        lease: Duration | None = None,
        expires_in: Duration | None = None,
    ) -> Published:
        """Publishes one task; returns once it is durable. With an idempotency `key`,
        a publish whose outcome is unknown (timeout, lost connection) is sent again (up
        to twice), and a repeat answers with the first task's id (`duplicate` set);
        without one it is never repeated by the client, except to a replicated cluster:
        there every publish is numbered (this client's producer id and a sequence
        number, which the cluster makes the tasks' keys), so it is repeated the same
        way after a leader change. A task not delivered within
        `expires_in` of its publish is never delivered: it goes to the dead set with
        reason "expired" (or is dropped, per the queue's `drop_expired`)."""
        node = self._node_for(queue)
        req = pb.Request()
        spec = req.publish.tasks.add()
        _fill_spec(spec, queue, payload, priority, delay, key, headers, max_attempts, lease, expires_in)
        if node.config.validate_locally:
            _check_spec(spec, node.info)
        numbered = node.number(req)
        conn = node.conn
        if not key and not numbered and conn is not None and conn.closed_reason is None:
            # The common case, one coroutine layer less: never repeated anyway.
            got = (await conn.call(req, "publish")).publish.tasks
            if len(got) != 1:
                raise errors.ProtocolError(f"published 1 task but the broker confirmed {len(got)}")
            return Published(got[0].task_id, got[0].duplicate)
        published = await self._send_publish(node, req, 1, bool(key) or numbered)
        return published[0]

    async def publish_batch(
        self,
        queue: str,
        payloads: Iterable[bytes | str | Message],
        *,
        priority: int = 0,
        delay: Duration | None = None,
        headers: Mapping[str, bytes | str] | None = None,
        max_attempts: int | None = None,
        lease: Duration | None = None,
    ) -> list[Published]:
        """Publishes several tasks in one round trip, confirmed together after one
        durable write: all or nothing. Items are payloads (with the options given here)
        or `Message`s with their own options (and optionally their own queue)."""
        items = list(payloads)
        if len(self._nodes) > 1:
            return await self._publish_batch_cluster(
                queue, items, priority, delay, headers, max_attempts, lease
            )
        node = self._node_for(queue)
        req = pb.Request()
        tasks = req.publish.tasks
        all_keyed = bool(items)
        for item in items:
            spec = tasks.add()
            if isinstance(item, Message):
                _fill_spec(
                    spec,
                    item.queue or queue,
                    item.payload,
                    item.priority,
                    item.delay,
                    item.key,
                    item.headers,
                    item.max_attempts,
                    item.lease,
                    item.expires_in,
                )
                all_keyed = all_keyed and bool(item.key)
            else:
                _fill_spec(spec, queue, item, priority, delay, None, headers, max_attempts, lease)
                all_keyed = False
        if node.config.validate_locally:
            _check_batch_len(len(items), node.info)
            for spec in tasks:
                _check_spec(spec, node.info)
        numbered = node.number(req)
        return await self._send_publish(node, req, len(items), all_keyed or numbered)

    async def _publish_batch_cluster(
        self,
        queue: str,
        items: list[bytes | str | Message],
        priority: int,
        delay: Duration | None,
        headers: Mapping[str, bytes | str] | None,
        max_attempts: int | None,
        lease: Duration | None,
    ) -> list[Published]:
        """Splits the batch by owning node; all or nothing per node."""
        parts: dict[str, tuple[list[int], list[Message]]] = {}
        for pos, item in enumerate(items):
            msg = (
                item
                if isinstance(item, Message)
                else Message(item, priority, delay, None, headers, max_attempts, lease)
            )
            q = msg.queue or queue
            msg = Message(
                msg.payload, msg.priority, msg.delay, msg.key, msg.headers, msg.max_attempts, msg.lease, q
            )
            positions, msgs = parts.setdefault(self._owner(q).name, ([], []))
            positions.append(pos)
            msgs.append(msg)
        nodes = {n.name: n for n in self._nodes}
        for name in parts:
            if not nodes[name].is_connected:
                raise errors.NodeUnavailable(name, nodes[name].addr, nodes[name].down_reason)
        single = [Client([nodes[name]]) for name in parts]
        results = await asyncio.gather(
            *(c.publish_batch(queue, msgs) for c, (_, msgs) in zip(single, parts.values(), strict=True))
        )
        out: list[Published | None] = [None] * len(items)
        for (positions, _), published in zip(parts.values(), results, strict=True):
            for pos, p in zip(positions, published, strict=True):
                out[pos] = p
        return [p for p in out if p is not None]

    async def _send_publish(
        self, node: _Node, req: pb.Request, expected: int, retry: bool
    ) -> list[Published]:
        attempt = 0
        renumbered = False
        while True:
            retries_left = retry and attempt < PUBLISH_RETRIES
            conn = await node.get_conn()
            try:
                resp = await conn.call(req, "publish")
                break
            except (errors.Timeout, errors.ConnectionLost, errors.NotLeader) as e:
                if not retries_left:
                    raise
                attempt += 1
                log.warning(
                    "publish outcome unknown (%s); sending it again with the same "
                    "producer number or idempotency keys (attempt %d)",
                    e,
                    attempt,
                )
            except errors.SequenceTooOld:
                # Never sent before, the publish stored nothing anywhere: a new number
                # is safe (once). A retry's refusal leaves the outcome unknown.
                if attempt > 0 or renumbered or not node.number(req):
                    raise
                renumbered = True
                log.warning("publish number too old for the broker; sending it under a new one")
        got = resp.publish.tasks
        if resp.WhichOneof("result") != "publish" or len(got) != expected:
            raise errors.ProtocolError(f"published {expected} tasks but the broker confirmed {len(got)}")
        return [Published(p.task_id, p.duplicate) for p in got]

    # --- consuming ----------------------------------------------------------------------

    def subscribe(self, queue: str, prefetch: int = 16) -> Subscription:
        """A subscription to `queue` holding at most `prefetch` unsettled deliveries:
        `async with client.subscribe(q) as sub: async for d in sub: ...`."""
        return Subscription(self._node_for(queue), queue, prefetch)

    # --- task status and results --------------------------------------------------------

    async def task(self, task_id: int, *, queue: str | None = None) -> TaskInfo:
        """The status of a task: `state` is "ready", "delayed", "leased", "succeeded",
        "dead", or "unknown" when the broker has no record of it. With several
        addresses pass the task's `queue` (task ids are per node)."""
        req = pb.Request()
        req.get_task.task_id = task_id
        resp = await self._node_for_task(queue).call(req, "task status")
        return TaskInfo.from_wire(resp.task)

    async def wait_result(
        self, task_id: int, timeout: Duration | None = 30.0, *, queue: str | None = None
    ) -> bytes:
        """Waits until the task succeeded and returns its result bytes (b"" when the
        ack carried none). Raises `TaskDead` if it died, `WaitTimeout` when `timeout`
        (None = no limit) passes first, `TaskUnknown` when the broker has no record of
        it. The broker pushes the answer (no polling); a lost connection does not end
        the wait: it resumes on the next connection for the time left."""
        node = self._node_for_task(queue)
        total = FOREVER if timeout is None else min(seconds(timeout, "timeout"), FOREVER)
        deadline = time.monotonic() + total
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            conn = await node.get_conn()
            req = pb.Request()
            req.wait_result.task_id = task_id
            req.wait_result.timeout_ms = duration_ms(left)
            try:
                resp = await conn.call(req, "wait_result", timeout=left + conn.request_timeout)
            except errors.ConnectionLost as e:
                if time.monotonic() < deadline:
                    log.debug("connection lost during wait_result(%d) (%s); waiting again", task_id, e)
                    continue
                raise
            info = TaskInfo.from_wire(resp.task)
            if info.state == "succeeded":
                return info.result or b""
            if info.state == "dead":
                raise errors.TaskDead(f"task {task_id} is dead: {info.last_error or 'no reason given'}", info)
            if info.state == "unknown":
                raise errors.TaskUnknown(f"the broker has no record of task {task_id}", None)
            if deadline - time.monotonic() <= WAIT_AGAIN_MIN:
                raise errors.WaitTimeout(f"task {task_id} is still {info.state} after {total:g} s", info)

    async def ping(self) -> float:
        """One round trip to the (first) broker; returns its duration in seconds."""
        req = pb.Request()
        req.ping.SetInParent()
        start = time.perf_counter()
        await self._nodes[0].call(req, "ping")
        return time.perf_counter() - start

    # --- queue administration ------------------------------------------------------------

    async def queues(self) -> list[QueueInfo]:
        """Every queue with its depth by state, consumers, totals, rates and
        configuration, sorted by name (of every node, with several addresses)."""
        out: list[QueueInfo] = []
        for node in self._nodes:
            # The broker answers in pages (each within its frame limit); follow them.
            after = ""
            while True:
                req = pb.Request()
                req.list_queues.after = after
                resp = await node.call(req, "list queues")
                page = resp.queues
                out.extend(QueueInfo.from_wire(q) for q in page.queues)
                if not page.more or not page.queues:
                    break
                after = page.queues[-1].name
        out.sort(key=lambda q: q.name)
        return out

    async def _queue_call(self, queue: str, req: pb.Request, name: str) -> pb.Response:
        node = self._node_for(queue)
        if node.config.validate_locally:
            check_queue_name(queue)
        return await node.call(req, name)

    async def queue(self, queue: str) -> QueueInfo:
        """One queue (NOT_FOUND -> `NotFound`)."""
        req = pb.Request()
        req.get_queue.queue = queue
        return QueueInfo.from_wire((await self._queue_call(queue, req, "get queue")).queue)

    async def set_queue_config(
        self,
        queue: str,
        *,
        lease: Duration | None = None,
        max_attempts: int | None = None,
        backoff_min: Duration | None = None,
        backoff_max: Duration | None = None,
        max_length: int | None = None,
        result_ttl: Duration | None = None,
        dedup_window: Duration | None = None,
        max_in_flight: int | None = None,
        rate_limit: int | None = None,
        rate_burst: int | None = None,
        drop_expired: bool | None = None,
        keep_acked: bool | None = None,
    ) -> QueueInfo:
        """Changes the settings given (the rest stay); creates the queue if needed.
        `max_in_flight` caps the queue's leased tasks across all consumers (0 = no
        cap); `rate_limit` is deliveries per second (0 = none) with a bucket of
        `rate_burst` (0 = one second's worth); `drop_expired` drops tasks not started
        by their expiry instead of dead-lettering them; `keep_acked` keeps a record of
        tasks acked without a result too (by default only an ack with a result leaves
        one, readable with `task` and `wait_result` for `result_ttl`)."""
        req = pb.Request()
        s = req.set_queue_config
        s.queue = queue
        changed = False
        for fld, value in (
            ("lease_ms", lease),
            ("backoff_min_ms", backoff_min),
            ("backoff_max_ms", backoff_max),
            ("result_ttl_ms", result_ttl),
            ("dedup_window_ms", dedup_window),
        ):
            if value is not None:
                setattr(s, fld, duration_ms(value, fld[:-3]))
                changed = True
        if max_attempts is not None:
            s.max_attempts = max_attempts
            changed = True
        if max_length is not None:
            s.max_length = max_length
            changed = True
        for name, number in (
            ("max_in_flight", max_in_flight),
            ("rate_limit", rate_limit),
            ("rate_burst", rate_burst),
        ):
            if number is not None:
                setattr(s, name, number)
                changed = True
        if drop_expired is not None:
            s.drop_expired = drop_expired
            changed = True
        if keep_acked is not None:
            s.keep_acked = keep_acked
            changed = True
        if not changed:
            raise errors.invalid(errors.BadRequest, "the configuration update changes nothing")
        return QueueInfo.from_wire((await self._queue_call(queue, req, "set queue config")).queue)

    async def pause(self, queue: str) -> QueueInfo:
        """Stops deliveries from `queue` (publishes are still accepted). Persisted."""
        return await self._set_paused(queue, True)

    async def resume(self, queue: str) -> QueueInfo:
        """Resumes deliveries from a paused queue."""
        return await self._set_paused(queue, False)

    async def _set_paused(self, queue: str, paused: bool) -> QueueInfo:
        req = pb.Request()
        req.set_paused.queue = queue
        req.set_paused.paused = paused
        return QueueInfo.from_wire((await self._queue_call(queue, req, "pause or resume")).queue)

    async def peek(
        self, queue: str, state: str = "ready", limit: int = 20, preview_bytes: int = 0
    ) -> list[PeekedTask]:
        """Shows up to `limit` tasks in `state` ("ready", "delayed", "leased", "dead")
        without changing them. Payloads are previews of at most `preview_bytes` (0: the
        broker's default, 1 KiB; at most 64 KiB): `truncated` says when a task's was cut,
        and `payload()` fetches a whole one. The broker may return fewer tasks than
        `limit` when they would not fit in one answer."""
        wire_state = STATE_FILTERS.get(state)
        if wire_state is None:
            raise errors.invalid(
                errors.BadRequest, f"{state!r} is not a task state: ready, delayed, leased or dead"
            )
        if not 1 <= limit <= MAX_PEEK:
            raise errors.invalid(errors.BadRequest, f"peek limit {limit} is outside 1..={MAX_PEEK}")
        req = pb.Request()
        req.peek.queue = queue
        req.peek.state = wire_state
        req.peek.limit = limit
        if preview_bytes < 0:
            raise errors.invalid(errors.BadRequest, f"preview_bytes {preview_bytes} is negative")
        req.peek.preview_bytes = preview_bytes
        resp = await self._queue_call(queue, req, "peek")
        return [PeekedTask.from_wire(t) for t in resp.peek.tasks]

    async def payload(self, task_id: int, *, queue: str | None = None) -> TaskPayload:
        """A task's whole payload and headers (`NotFound` once it is gone). With several
        addresses pass the task's `queue` (task ids are per node)."""
        req = pb.Request()
        req.get_payload.task_id = task_id
        resp = await self._node_for_task(queue).call(req, "get payload")
        return TaskPayload.from_wire(resp.payload)

    async def purge(self, queue: str, state: str | None = None) -> int:
        """Removes the queue's tasks in `state` (None: ready, delayed and dead);
        returns how many."""
        req = pb.Request()
        req.purge.queue = queue
        if state is not None:
            wire_state = STATE_FILTERS.get(state)
            if wire_state is None:
                raise errors.invalid(errors.BadRequest, f"{state!r} is not a task state")
            req.purge.state = wire_state
        return int((await self._queue_call(queue, req, "purge")).count.count)

    async def redrive(self, queue: str, limit: int | None = None) -> int:
        """Moves dead tasks (all, or the `limit` oldest) back to ready with their
        attempts reset; returns how many."""
        if limit is not None and limit < 1:
            raise errors.invalid(errors.BadRequest, "redrive limit must be at least 1 (or None for all)")
        req = pb.Request()
        req.redrive.queue = queue
        req.redrive.limit = limit or 0
        return int((await self._queue_call(queue, req, "redrive")).count.count)

    async def delete_queue(self, queue: str) -> int:
        """Removes the queue, its configuration and its tasks; its subscriptions end
        with `SubscriptionEnded`. Returns how many tasks were removed."""
        req = pb.Request()
        req.delete_queue.queue = queue
        return int((await self._queue_call(queue, req, "delete queue")).count.count)

    # --- closing ----------------------------------------------------------------------

    # --- schedules ---------------------------------------------------------------------

    async def add_schedule(
        self,
        name: str,
        queue: str,
        cron: str,
        *,
        tz: str = "",
        payload: bytes | str = b"",
        headers: Mapping[str, bytes | str] | None = None,
        priority: int = 0,
        max_attempts: int = 0,
        catch_up: str = "one",
    ) -> ScheduleInfo:
        """Adds a schedule kept by the broker: every tick of `cron` (six fields with
        seconds first, or five; read in IANA zone `tz`, UTC by default) publishes one
        task to `queue`, exactly once even across a crash. `catch_up` says what happens
        to ticks missed while the broker was down: "none", "one" (a single run) or
        "all". A taken name raises `ScheduleExists`, a bad expression or zone
        `InvalidSchedule`."""
        if catch_up not in CATCH_UP:
            raise errors.invalid(errors.BadRequest, f"catch_up must be none, one or all, not {catch_up!r}")
        req = pb.Request()
        spec = req.add_schedule.schedule
        spec.name = name
        spec.queue = queue
        spec.cron = cron
        spec.tz = tz
        spec.payload = payload.encode() if isinstance(payload, str) else bytes(payload)
        for k, v in (headers or {}).items():
            spec.headers[k] = v.encode() if isinstance(v, str) else bytes(v)
        spec.priority = priority
        spec.max_attempts = max_attempts
        spec.catch_up = CATCH_UP[catch_up]
        node = self._node_for(queue)
        if node.config.validate_locally:
            check_queue_name(name)
            check_queue_name(queue)
        return ScheduleInfo.from_wire((await node.call(req, "add schedule")).schedule)

    async def schedules(self) -> list[ScheduleInfo]:
        """Every schedule (of every node), sorted by name."""
        out: list[ScheduleInfo] = []
        for node in self._nodes:
            after = ""
            while True:
                req = pb.Request()
                req.list_schedules.after = after
                page = (await node.call(req, "list schedules")).schedules
                out.extend(ScheduleInfo.from_wire(s) for s in page.schedules)
                if not page.more or not page.schedules:
                    break
                after = page.schedules[-1].spec.name
        out.sort(key=lambda s: s.name)
        return out

    async def remove_schedule(self, name: str) -> None:
        """Removes a schedule (`NotFound` if none has that name); its tasks stay."""
        for node in self._nodes:
            req = pb.Request()
            req.remove_schedule.name = name
            try:
                await node.call(req, "remove schedule")
                return
            except errors.NotFound:
                if node is self._nodes[-1]:
                    raise

    async def pause_schedule(self, name: str) -> ScheduleInfo:
        """Pauses a schedule: it does not fire, and the ticks meanwhile are skipped."""
        return await self._set_schedule_paused(name, True)

    async def resume_schedule(self, name: str) -> ScheduleInfo:
        """Resumes a paused schedule from its next tick."""
        return await self._set_schedule_paused(name, False)

    async def _set_schedule_paused(self, name: str, paused: bool) -> ScheduleInfo:
        for node in self._nodes:
            req = pb.Request()
            req.set_schedule_paused.name = name
            req.set_schedule_paused.paused = paused
            try:
                return ScheduleInfo.from_wire((await node.call(req, "pause schedule")).schedule)
            except errors.NotFound:
                if node is self._nodes[-1]:
                    raise
        raise errors.invalid(errors.NotFound, f"schedule {name!r} does not exist")

    async def close(self) -> None:
        """Closes the connection(s) and stops the background tasks. Calls in flight
        raise `ConnectionLost`, later calls `Closed`; subscriptions end. The broker
        frees the leases this client held. Idempotent."""
        await asyncio.gather(*(n.close() for n in self._nodes))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<squall.Client {','.join(n.addr for n in self._nodes)} connected={self.is_connected}>"


def _check_spec(spec: pb.TaskSpec, info: ServerInfo) -> None:
    check_queue_name(spec.queue)
    if not spec.payload:
        raise errors.invalid(
            errors.EmptyPayload,
            f"task for queue {spec.queue!r} has an empty payload; send at least one byte",
        )
    mx = info.limits.max_payload_bytes
    if mx and len(spec.payload) > mx:
        raise errors.invalid(
            errors.PayloadTooLarge,
            f"payload of {len(spec.payload)} bytes exceeds the broker's max_payload_bytes of {mx}; "
            "store large data elsewhere and publish a reference",
        )


def _check_batch_len(n: int, info: ServerInfo) -> None:
    if n == 0:
        raise errors.invalid(errors.BadRequest, "publish batch is empty; pass at least one payload")
    mx = info.limits.max_batch
    if mx and n > mx:
        raise errors.invalid(
            errors.BadRequest,
            f"batch of {n} tasks exceeds the broker's max_batch of {mx}; split it into smaller batches",
        )
