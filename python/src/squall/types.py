"""Plain data the client returns: `Published`, `TaskInfo` (+ `LeaseInfo`), `QueueInfo`
(+ settings, totals, rates), `PeekedTask`, `ServerInfo` (+ `Limits`), and the duration
and timestamp conversions every call uses. Built from wire messages; no I/O here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ._proto import squall_pb2 as pb

#: A duration: float seconds or a `datetime.timedelta`.
Duration = float | int | timedelta


def duration_ms(value: Duration, what: str = "duration") -> int:
    """Milliseconds, rounded up so that a sub-millisecond duration never becomes 0
    (0 means "the queue's default" on the wire)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{what} must be float seconds or a timedelta, not {type(value).__name__}")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a non-negative duration, got {value!r}")
    if math.isinf(seconds):
        return 2**64 - 1
    return min(math.ceil(seconds * 1000 - 1e-9), 2**64 - 1)


def seconds(value: Duration, what: str = "duration") -> float:
    """The duration in float seconds (validated like `duration_ms`)."""
    return duration_ms(value, what) / 1000.0


def from_ms(ms: int) -> datetime | None:
    """A unix-milliseconds timestamp as an aware UTC datetime; None for 0 (unset)."""
    if ms <= 0:
        return None
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


@dataclass(frozen=True, slots=True)
class Published:
    """One published task: its id, and whether an earlier publish with the same
    idempotency key had already created it."""

    id: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """Who holds a leased task, and until when."""

    connection_id: int
    consumer: str
    deadline: datetime | None


TASK_STATES = {
    pb.TASK_STATE_UNKNOWN: "unknown",
    pb.TASK_STATE_READY: "ready",
    pb.TASK_STATE_DELAYED: "delayed",
    pb.TASK_STATE_LEASED: "leased",
    pb.TASK_STATE_SUCCEEDED: "succeeded",
    pb.TASK_STATE_DEAD: "dead",
}


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """The status of one task. `state` is one of "unknown", "ready", "delayed",
    "leased", "succeeded", "dead". `result` is the ack's result (succeeded only)."""

    id: int
    state: str
    queue: str = ""
    priority: int = 0
    attempts: int = 0
    max_attempts: int = 0
    last_error: str | None = None
    lease: LeaseInfo | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    not_before: datetime | None = None
    result: bytes | None = None
    expires_at: datetime | None = None

    @property
    def is_final(self) -> bool:
        """Succeeded or dead: nothing more will happen to it."""
        return self.state in ("succeeded", "dead")

    @classmethod
    def from_wire(cls, t: pb.TaskInfo) -> TaskInfo:
        state = TASK_STATES.get(t.state, "unknown")
        lease = None
        if t.HasField("lease"):
            lease = LeaseInfo(t.lease.connection_id, t.lease.consumer, from_ms(t.lease.deadline_ms))
        return cls(
            id=t.task_id,
            state=state,
            queue=t.queue,
            priority=t.priority,
            attempts=t.attempts,
            max_attempts=t.max_attempts,
            last_error=t.last_error if t.HasField("last_error") else None,
            lease=lease,
            created_at=from_ms(t.created_at_ms),
            updated_at=from_ms(t.updated_at_ms),
            not_before=from_ms(t.not_before_ms),
            result=bytes(t.result) if state == "succeeded" else None,
            expires_at=from_ms(t.expires_at_ms),
        )


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """A queue's configuration (durations in float seconds)."""

    lease: float
    max_attempts: int
    backoff_min: float
    backoff_max: float
    max_length: int
    result_ttl: float
    dedup_window: float
    paused: bool
    max_in_flight: int = 0
    rate_limit: int = 0
    rate_burst: int = 0
    drop_expired: bool = False
    keep_acked: bool = False


@dataclass(frozen=True, slots=True)
class QueueTotals:
    """Lifetime counters since the broker started."""

    published: int = 0
    delivered: int = 0
    redelivered: int = 0
    acked: int = 0
    nacked: int = 0
    expired: int = 0
    dead_lettered: int = 0
    expired_tasks: int = 0


@dataclass(frozen=True, slots=True)
class QueueRates:
    """Per-second rates averaged over the last minute."""

    published: float = 0.0
    delivered: float = 0.0
    acked: float = 0.0
    nacked: float = 0.0
    expired: float = 0.0
    dead_lettered: float = 0.0


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue as it is now: depth by state, consumers, totals, rates, configuration."""

    name: str
    ready: int
    delayed: int
    leased: int
    dead: int
    consumers: int
    totals: QueueTotals
    rates: QueueRates
    oldest_ready_age: float | None
    paused: bool
    config: QueueSettings

    @classmethod
    def from_wire(cls, q: pb.QueueInfo) -> QueueInfo:
        c, r = q.config, q.rates
        return cls(
            name=q.name,
            ready=q.ready,
            delayed=q.delayed,
            leased=q.leased,
            dead=q.dead,
            consumers=q.consumers,
            totals=QueueTotals(
                q.published,
                q.delivered,
                q.redelivered,
                q.acked,
                q.nacked,
                q.expired,
                q.dead_lettered,
                q.expired_tasks,
            ),
            rates=QueueRates(r.published, r.delivered, r.acked, r.nacked, r.expired, r.dead_lettered),
            oldest_ready_age=(q.oldest_ready_age_ms / 1000.0 if q.HasField("oldest_ready_age_ms") else None),
            paused=q.paused,
            config=QueueSettings(
                lease=c.lease_ms / 1000.0,
                max_attempts=c.max_attempts,
                backoff_min=c.backoff_min_ms / 1000.0,
                backoff_max=c.backoff_max_ms / 1000.0,
                max_length=c.max_length,
                result_ttl=c.result_ttl_ms / 1000.0,
                dedup_window=c.dedup_window_ms / 1000.0,
                paused=c.paused,
                max_in_flight=c.max_in_flight,
                rate_limit=c.rate_limit,
                rate_burst=c.rate_burst,
                drop_expired=c.drop_expired,
                keep_acked=c.keep_acked,
            ),
        )


CATCH_UP = {"one": pb.CATCH_UP_ONE, "none": pb.CATCH_UP_NONE, "all": pb.CATCH_UP_ALL}
_CATCH_UP_NAMES = {v: k for k, v in CATCH_UP.items()}


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A periodic schedule kept by the broker: each tick of `cron` (read in `tz`)
    publishes one task to `queue`, exactly once."""

    name: str
    queue: str
    cron: str
    tz: str
    payload: bytes
    headers: dict[str, bytes]
    priority: int
    max_attempts: int
    catch_up: str
    paused: bool
    next_run: datetime | None
    last_run: datetime | None
    last_task: int | None
    created_at: datetime | None

    @classmethod
    def from_wire(cls, s: pb.ScheduleInfo) -> ScheduleInfo:
        spec = s.spec
        return cls(
            name=spec.name,
            queue=spec.queue,
            cron=spec.cron,
            tz=spec.tz or "UTC",
            payload=bytes(spec.payload),
            headers={k: bytes(v) for k, v in spec.headers.items()},
            priority=spec.priority,
            max_attempts=spec.max_attempts,
            catch_up=_CATCH_UP_NAMES.get(spec.catch_up, "one"),
            paused=s.paused,
            next_run=from_ms(s.next_run_ms) if s.HasField("next_run_ms") else None,
            last_run=from_ms(s.last_run_ms),
            last_task=s.last_task_id or None,
            created_at=from_ms(s.created_ms),
        )


STATE_FILTERS = {
    "ready": pb.TASK_STATE_FILTER_READY,
    "delayed": pb.TASK_STATE_FILTER_DELAYED,
    "leased": pb.TASK_STATE_FILTER_LEASED,
    "dead": pb.TASK_STATE_FILTER_DEAD,
}
_FILTER_NAMES = {v: k for k, v in STATE_FILTERS.items()}


@dataclass(frozen=True, slots=True)
class PeekedTask:
    """A task shown by `peek`, unchanged by looking."""

    id: int
    state: str
    priority: int
    attempts: int
    max_attempts: int
    created_at: datetime | None
    updated_at: datetime | None
    not_before: datetime | None
    lease_holder: str | None
    lease_deadline: datetime | None
    last_error: str | None
    payload: bytes
    headers: dict[str, bytes] = field(default_factory=dict)
    #: The payload is a preview (cut to the peek's preview_bytes) or the headers were
    #: left out; `Client.payload(id)` has the whole task.
    truncated: bool = False
    #: Size of the whole payload.
    payload_bytes: int = 0

    @classmethod
    def from_wire(cls, t: pb.PeekedTask) -> PeekedTask:
        return cls(
            id=t.task_id,
            state=_FILTER_NAMES.get(t.state, "unknown"),
            priority=t.priority,
            attempts=t.attempts,
            max_attempts=t.max_attempts,
            created_at=from_ms(t.created_at_ms),
            updated_at=from_ms(t.updated_at_ms),
            not_before=from_ms(t.not_before_ms),
            lease_holder=t.lease_holder or None,
            lease_deadline=from_ms(t.lease_deadline_ms),
            last_error=t.last_error or None,
            payload=bytes(t.payload),
            headers={k: bytes(v) for k, v in t.headers.items()},
            truncated=t.truncated,
            payload_bytes=t.payload_bytes,
        )


@dataclass(frozen=True, slots=True)
class TaskPayload:
    """A task's whole payload and headers (`Client.payload`)."""

    id: int
    queue: str
    payload: bytes
    headers: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, t: pb.TaskPayload) -> TaskPayload:
        return cls(
            id=t.task_id,
            queue=t.queue,
            payload=bytes(t.payload),
            headers={k: bytes(v) for k, v in t.headers.items()},
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """The broker's limits from its HelloOk (0 = not announced)."""

    max_frame_bytes: int = 0
    max_payload_bytes: int = 0
    max_batch: int = 0
    max_prefetch: int = 0
    max_lease_ms: int = 0
    max_inflight_requests: int = 0


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """The replicated cluster a leader announced in its HelloOk."""

    #: The same for every member of one cluster (for its whole life), different for
    #: another cluster.
    cluster_id: str
    #: The leader's node id.
    leader: int
    #: Every member: (node id, client address).
    members: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the broker announced in its handshake."""

    protocol_version: int = 0
    server_version: str = ""
    node_id: str = ""
    limits: Limits = field(default_factory=Limits)
    #: Set when the broker is the leader of a replicated cluster; None on a single node.
    cluster: ClusterInfo | None = None

    @classmethod
    def from_wire(cls, h: pb.HelloOk) -> ServerInfo:
        lim = h.limits
        cluster = None
        if h.HasField("cluster"):
            c = h.cluster
            cluster = ClusterInfo(
                c.cluster_id, c.leader, tuple((m.node_id, m.client_addr) for m in c.members)
            )
        return cls(
            protocol_version=h.protocol_version,
            server_version=h.server_version,
            node_id=h.node_id,
            limits=Limits(
                lim.max_frame_bytes,
                lim.max_payload_bytes,
                lim.max_batch,
                lim.max_prefetch,
                lim.max_lease_ms,
                lim.max_inflight_requests,
            ),
            cluster=cluster,
        )
