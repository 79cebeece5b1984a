"""The one exception hierarchy of the client, mirroring the Rust `ClientError`
(client/src/error.rs): transport, protocol, timeout, lost connection, unavailable,
closed, configuration, ended subscription, unavailable cluster node, and one class per
broker error code under `BrokerError`. Plus the outcomes of `Client.wait_result` that
are not a result (`TaskDead`, `WaitTimeout`, `TaskUnknown`). Nothing here does I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .types import TaskInfo


class SquallError(Exception):
    """Base of every error this client raises."""

    #: True when the request certainly did not take effect on the broker, so sending
    #: it again cannot create a duplicate.
    nothing_was_applied: bool = False


class TransportError(SquallError):
    """Connecting or talking to the broker failed at the transport level (Rust `Io`)."""


class ProtocolError(SquallError):
    """The broker sent something this client does not understand; the connection is
    dropped."""


class Timeout(SquallError):
    """No answer within the configured time. For a publish the outcome is unknown."""

    def __init__(self, op: str, after: float) -> None:
        super().__init__(
            f"{op} timed out after {after:g} s; raise request_timeout / connect_timeout "
            "if the broker is just slow"
        )
        self.op = op
        self.after = after


class ConnectionLost(SquallError):
    """The connection was lost with the request in flight: the broker may or may not
    have applied it. Repeat only idempotent operations."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"connection to the broker lost with the request in flight (outcome unknown): {reason}"
        )
        self.reason = reason


class Unavailable(SquallError):
    """Not connected, and no connection came within `wait_for_connection`. Nothing was
    sent: retrying is safe."""

    nothing_was_applied = True

    def __init__(self, waited: float, reason: str) -> None:
        super().__init__(
            f"broker unavailable: not connected after waiting {waited:g} s (last error: {reason})"
        )
        self.waited = waited
        self.reason = reason


class NodeUnavailable(SquallError):
    """With several addresses: the node that owns the queue is not connected. Nothing
    was sent: retrying is safe; other nodes' queues are not affected."""

    nothing_was_applied = True

    def __init__(self, node: str, addr: str, reason: str) -> None:
        super().__init__(
            f"cluster node {node} ({addr}) is unavailable: {reason}; calls for its queues "
            "fail until it is back (the client keeps reconnecting)"
        )
        self.node = node
        self.addr = addr
        self.reason = reason


class SubscriptionEnded(SquallError):
    """The broker ended the subscription (its queue was deleted). No more deliveries
    come; leases it held are gone."""

    def __init__(self, queue: str, reason: str) -> None:
        super().__init__(f"the broker ended the subscription to queue {queue!r}: {reason}")
        self.queue = queue
        self.reason = reason


class ConfigError(SquallError):
    """The client configuration is unusable."""

    nothing_was_applied = True


class Closed(SquallError):
    """The client was closed (by `close()`, or because reconnecting gave up)."""

    def __init__(self, reason: str = "client is closed") -> None:
        super().__init__(reason)


class BrokerError(SquallError):
    """The broker refused the request with a typed error code (Rust `Server`), or the
    client refused it before sending for the reason the broker would give (Rust
    `Invalid`: then `local` is true). Either way the request was not applied. Every
    wire code has its own subclass; `code` is the wire number."""

    code: ClassVar[int] = 0
    nothing_was_applied = True

    def __init__(self, message: str, *, local: bool = False, code: int | None = None) -> None:
        prefix = "invalid request" if local else "broker refused the request"
        shown = self.code if code is None else code
        super().__init__(f"{prefix} ({_NAMES.get(shown, shown)}): {message}")
        self.message = message
        self.local = local
        if code is not None:
            self.code = code  # type: ignore[misc]


class BadRequest(BrokerError):
    code = 1


class Unauthenticated(BrokerError):
    code = 2


class Forbidden(BrokerError):
    code = 3


class NotFound(BrokerError):
    code = 4


class LeaseExpired(BrokerError):
    """The lease of this delivery is no longer live: it expired, the connection that
    received it was lost (leases never survive a reconnect), or it was already settled.
    The task is (or will be) redelivered; do not repeat the settle."""

    code = 5

    def __init__(self, message: str = "", *, local: bool = False, task_id: int = 0) -> None:
        super().__init__(
            message
            or f"the lease of task {task_id} is no longer live (expired, connection lost, "
            "or already settled); the task will be redelivered",
            local=local,
        )
        self.task_id = task_id


class QueueFull(BrokerError):
    code = 6


class PayloadTooLarge(BrokerError):
    code = 7


class QueuePaused(BrokerError):
    code = 8


class UnsupportedVersion(BrokerError):
    code = 9


class ShuttingDown(BrokerError):
    code = 10


class StorageError(BrokerError):
    """STORAGE: the broker could not persist the change; nothing was confirmed."""

    code = 11


class InternalError(BrokerError):
    code = 12


class FrameTooLarge(BrokerError):
    code = 13


class MalformedFrame(BrokerError):
    code = 14


class HelloRequired(BrokerError):
    code = 15


class InvalidQueueName(BrokerError):
    code = 16


class EmptyPayload(BrokerError):
    code = 17


class TooManyConnections(BrokerError):
    code = 18


class TooManyRequests(BrokerError):
    code = 19


class ServerTimeout(BrokerError):
    """TIMEOUT (code 20): a handshake or idle timeout closed the connection."""

    code = 20


class AnswerTooLarge(BrokerError):
    """ANSWER_TOO_LARGE (code 40): the answer would exceed the frame limit; nothing was
    sent. Ask for less (a smaller page, limit or preview)."""

    code = 40


class ScheduleExists(BrokerError):
    """SCHEDULE_EXISTS (code 46): a schedule of that name exists (remove it first)."""

    code = 46


class InvalidSchedule(BrokerError):
    """INVALID_SCHEDULE (code 47): the cron expression does not parse or never fires,
    or the time zone is unknown."""

    code = 47


class NotLeader(BrokerError):
    """NOT_LEADER (code 48): this member of a replicated cluster is not its leader; the
    message names the leader's address when known. Only the leader serves clients; the
    client follows it by itself (at connect and after a leader change) and sends a
    numbered publish again, so you see this only when that did not succeed. A change
    answered this way after the leadership moved may or may not have been applied
    (`nothing_was_applied` is false, as in the Rust client): retry only what is safe
    to repeat."""

    code = 48
    nothing_was_applied = False


class SequenceTooOld(BrokerError):
    """SEQUENCE_TOO_OLD (code 49): a numbered publish (to a cluster) whose number is
    older than the last 256 the broker remembers for this client's producer id. This
    request stored nothing, but an earlier send of the same number may have. The client
    resends a first send under a new number by itself; raised only for a retry."""

    code = 49
    nothing_was_applied = False


#: Wire code -> class. A code this client does not know becomes a plain `BrokerError`
#: whose `code` is the number received.
BY_CODE: dict[int, type[BrokerError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthenticated,
        Forbidden,
        NotFound,
        LeaseExpired,
        QueueFull,
        PayloadTooLarge,
        QueuePaused,
        UnsupportedVersion,
        ShuttingDown,
        StorageError,
        InternalError,
        FrameTooLarge,
        MalformedFrame,
        HelloRequired,
        InvalidQueueName,
        EmptyPayload,
        TooManyConnections,
        TooManyRequests,
        ServerTimeout,
        AnswerTooLarge,
        ScheduleExists,
        InvalidSchedule,
        NotLeader,
        SequenceTooOld,
    )
}

_NAMES: dict[int, str] = {
    0: "ERROR_CODE_UNSPECIFIED",
    1: "BAD_REQUEST",
    2: "UNAUTHENTICATED",
    3: "FORBIDDEN",
    4: "NOT_FOUND",
    5: "LEASE_EXPIRED",
    6: "QUEUE_FULL",
    7: "PAYLOAD_TOO_LARGE",
    8: "QUEUE_PAUSED",
    9: "UNSUPPORTED_VERSION",
    10: "SHUTTING_DOWN",
    11: "STORAGE",
    12: "INTERNAL",
    13: "FRAME_TOO_LARGE",
    14: "MALFORMED_FRAME",
    15: "HELLO_REQUIRED",
    16: "INVALID_QUEUE_NAME",
    17: "EMPTY_PAYLOAD",
    18: "TOO_MANY_CONNECTIONS",
    19: "TOO_MANY_REQUESTS",
    20: "TIMEOUT",
    40: "ANSWER_TOO_LARGE",
    46: "SCHEDULE_EXISTS",
    47: "INVALID_SCHEDULE",
    48: "NOT_LEADER",
    49: "SEQUENCE_TOO_OLD",
}


def from_wire(code: int, message: str) -> BrokerError:
    """The exception for a wire `Error` answer."""
    cls = BY_CODE.get(code)
    if cls is None:
        return BrokerError(f"unknown error code {code}: {message}", code=code)
    return cls(message)


def invalid(cls: type[BrokerError], message: str) -> BrokerError:
    """A request refused locally, before sending, with the broker's would-be code."""
    return cls(message, local=True)


class ResultError(SquallError):
    """`wait_result` ended without a result; `status` is the task as last seen
    (None for `TaskUnknown`)."""

    def __init__(self, message: str, status: TaskInfo | None) -> None:
        super().__init__(message)
        self.status = status


class TaskDead(ResultError):
    """The task is in the dead set (failed for good); `status.last_error` says why."""


class WaitTimeout(ResultError):
    """The timeout passed before the task succeeded or died; `status` is its state now."""


class TaskUnknown(ResultError):
    """The broker has no record of the task (never published, or its record expired)."""
