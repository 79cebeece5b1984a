"""`Worker`: runs an async handler per task with bounded concurrency, extends the
leases of handlers that run long, settles by the handler's outcome (return = ack with
the result, `Retry` = nack, `Dead` = fail, any other exception = nack with the queue's
backoff), and on shutdown (SIGTERM / SIGINT, or `stop()`) drains: unsubscribes, gives
back what is buffered, waits `grace_period` for running handlers and then returns
the unfinished tasks to the broker. Mirrors client/src/worker.rs."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from . import errors
from .client import Client
from .delivery import Delivery, Subscription, Task
from .types import Duration, duration_ms, seconds

log = logging.getLogger("squall")

DEFAULT_CONCURRENCY = 8
DEFAULT_GRACE_PERIOD = 30.0
#: Longest failure reason sent to the broker.
MAX_REASON_BYTES = 4096
#: How often the worker looks for leases due for extension.
EXTEND_TICK = 0.05

Handler = Callable[[Task], Awaitable[bytes | str | None]]


class Retry(Exception):
    """Raise from a handler to retry the task: after `after` (float seconds or
    timedelta), or after the queue's exponential backoff when None."""

    def __init__(self, reason: str = "", *, after: Duration | None = None) -> None:
        super().__init__(reason or "retry requested by the handler")
        self.reason = reason or "retry requested by the handler"
        self.after = after


class Dead(Exception):
    """Raise from a handler to send the task to the dead set now (a permanent
    failure: retrying would not help)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "failed for good by the handler")
        self.reason = reason or "failed for good by the handler"


@dataclass
class WorkerReport:
    """What a worker did: tasks acked, retried, dead-lettered, returned unfinished at
    shutdown, and settlements that failed (lease already gone)."""

    acked: int = 0
    retried: int = 0
    dead: int = 0
    returned: int = 0
    settle_failed: int = 0


def _reason(text: str) -> str:
    raw = text.encode()
    if len(raw) <= MAX_REASON_BYTES:
        return text
    return raw[:MAX_REASON_BYTES].decode(errors="ignore")


class Worker:
    """Runs `handler` for each task of `queue`, at most `concurrency` at once.

    `prefetch` defaults to the concurrency (capped by the broker's max_prefetch).
    `lease_extension` (default: the lease each delivery came with) is how far each
    automatic extension pushes the deadline; extensions happen at a third of it."""

    def __init__(
        self,
        client: Client,
        queue: str,
        concurrency: int = DEFAULT_CONCURRENCY,
        *,
        prefetch: int | None = None,
        grace_period: Duration = DEFAULT_GRACE_PERIOD,
        lease_extension: Duration | None = None,
    ) -> None:
        self.client = client
        self.queue = queue
        self.concurrency = max(1, int(concurrency))
        self.prefetch = prefetch
        self.grace_period = seconds(grace_period, "grace_period")
        self.lease_extension_ms = None if lease_extension is None else max(duration_ms(lease_extension), 3)
        self.report = WorkerReport()
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        #: Every job not yet settled; `_handlers` of them are still in their handler.
        self._running: dict[asyncio.Task[None], _Job] = {}
        self._handlers = 0
        self._background: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()

    def stop(self) -> None:
        """Begins a graceful shutdown (what SIGTERM does); `run` returns when drained."""
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    def _effective_prefetch(self) -> int:
        if self.prefetch is not None:
            return self.prefetch
        mx = self.client._owner(self.queue).info.limits.max_prefetch
        return min(self.concurrency, mx) if mx else self.concurrency

    async def run(
        self,
        handler: Handler,
        *,
        signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    ) -> WorkerReport:
        """Runs until `stop()`, one of `signals` (installed on the running loop for the
        duration; pass () to leave signals alone), or the subscription ends (then
        raises its error after draining). Returns the report."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        installed: list[signal.Signals] = []
        for sig in signals:
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        sub = self.client.subscribe(self.queue, self._effective_prefetch())
        failure: BaseException | None = None
        try:
            await sub.open()
            log.info("worker for %s started (concurrency %d)", self.queue, self.concurrency)
            extender = loop.create_task(self._extend_loop())
            try:
                failure = await self._dispatch(sub, handler)
            finally:
                await self._drain(sub)
                extender.cancel()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        log.info("worker for %s stopped: %s", self.queue, self.report)
        if failure is not None:
            raise failure
        return self.report

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s received; worker for %s draining", sig.name, self.queue)
        self.stop()

    async def _dispatch(self, sub: Subscription, handler: Handler) -> BaseException | None:
        assert self._stop is not None
        stop = self._stop
        stop_wait = asyncio.ensure_future(stop.wait())
        slot_free = self._slot_free = asyncio.Event()
        slot_free.set()
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                if self._handlers >= self.concurrency:
                    slot_free.clear()
                    freed = loop.create_task(slot_free.wait())
                    await asyncio.wait([stop_wait, freed], return_when=asyncio.FIRST_COMPLETED)
                    freed.cancel()
                    continue
                d = sub._buffer.popleft() if sub._buffer else None
                if d is not None and d.is_stale:
                    continue
                if d is None:
                    recv = loop.create_task(sub.recv())
                    await asyncio.wait([stop_wait, recv], return_when=asyncio.FIRST_COMPLETED)
                    if not recv.done():
                        recv.cancel()
                        try:
                            await recv
                        except asyncio.CancelledError:
                            pass
                        continue
                    try:
                        d = recv.result()
                    except errors.SquallError as e:
                        log.warning("subscription to %s ended: %s; worker stopping", self.queue, e)
                        return e
                    if d is None:
                        return errors.Closed("subscription closed; worker stopping")
                job = _Job(d, self._extension_ms(d))
                self._handlers += 1
                t = loop.create_task(self._drive(job, handler))
                self._running[t] = job
                t.add_done_callback(self._finished)
            return None
        finally:
            stop_wait.cancel()

    def _finished(self, t: asyncio.Task[None]) -> None:
        self._running.pop(t, None)

    def _extension_ms(self, d: Delivery) -> int:
        return self.lease_extension_ms if self.lease_extension_ms is not None else d._lease_ms

    async def _drive(self, job: _Job, handler: Handler) -> None:
        d = job.delivery
        r = self.report
        try:
            try:
                result = await handler(d)
            finally:
                # The slot is the handler's: settling (bounded by the prefetch the
                # broker grants) goes on while the next handler starts.
                job.handler_done = True
                self._handlers -= 1
                self._slot_free.set()
        except asyncio.CancelledError:
            # Hard stop after the grace period: give the task back at once.
            try:
                await d.nack(delay=0, reason="worker shut down before the handler finished")
                r.returned += 1
            except errors.SquallError as e:
                self._settle_failed("return", d, e)
            return
        except Retry as e:
            try:
                await d.nack(delay=e.after, reason=_reason(e.reason))
                r.retried += 1
            except errors.SquallError as err:
                self._settle_failed("nack", d, err)
            return
        except Dead as e:
            try:
                await d.fail(_reason(e.reason))
                r.dead += 1
            except errors.SquallError as err:
                self._settle_failed("fail", d, err)
            return
        except Exception as e:
            log.debug("handler failed for task %d: %r", d.id, e)
            try:
                await d.nack(reason=_reason(f"{type(e).__name__}: {e}"))
                r.retried += 1
            except errors.SquallError as err:
                self._settle_failed("nack", d, err)
            return
        try:
            await d.ack(result)
            r.acked += 1
        except errors.SquallError as e:
            self._settle_failed("ack", d, e)

    def _settle_failed(self, op: str, d: Delivery, e: errors.SquallError) -> None:
        self.report.settle_failed += 1
        if isinstance(e, (errors.LeaseExpired, errors.ConnectionLost)):
            log.debug("lease of task %d gone before %s; it will be redelivered", d.id, op)
        else:
            log.warning("%s of task %d failed: %s", op, d.id, e)

    async def _extend_loop(self) -> None:
        """Extends the lease of every running handler a third of the way through."""
        while True:
            await asyncio.sleep(EXTEND_TICK)
            now = time.monotonic()
            for job in list(self._running.values()):
                if job.extending and now >= job.next_extend and not job.busy and not job.handler_done:
                    job.busy = True
                    t = asyncio.get_running_loop().create_task(self._extend(job))
                    # Held until done: the loop keeps only weak references to tasks.
                    self._background.add(t)
                    t.add_done_callback(self._background.discard)

    async def _extend(self, job: _Job) -> None:
        try:
            await job.delivery.extend(job.extension_ms / 1000.0)
            job.next_extend = time.monotonic() + job.extension_ms / 3000.0
            log.debug("extended the lease of task %d", job.delivery.id)
        except errors.SquallError as e:
            if not job.delivery._settled:
                log.warning(
                    "could not extend the lease of task %d (%s); "
                    "it may be redelivered while its handler runs",
                    job.delivery.id,
                    e,
                )
            job.extending = False
        finally:
            job.busy = False

    async def _drain(self, sub: Subscription) -> None:
        # Stop deliveries, then give back what arrived but was never started.
        await sub.close()
        self.report.returned += sub.released_on_close
        if self._running:
            log.info(
                "waiting up to %g s for %d running handlers of %s",
                self.grace_period,
                len(self._running),
                self.queue,
            )
            _, pending = await asyncio.wait(list(self._running), timeout=self.grace_period)
            if pending:
                log.warning(
                    "grace period over; returning %d unfinished tasks of %s to the broker",
                    len(pending),
                    self.queue,
                )
                for t in pending:
                    job = self._running.get(t)
                    if job is not None and not job.handler_done:
                        t.cancel()
                await asyncio.wait(pending)

    def __repr__(self) -> str:
        return f"<squall.Worker queue={self.queue!r} concurrency={self.concurrency}>"


class _Job:
    __slots__ = ("busy", "delivery", "extending", "extension_ms", "handler_done", "next_extend")

    def __init__(self, delivery: Delivery, extension_ms: int) -> None:
        self.delivery = delivery
        self.extension_ms = extension_ms
        remaining_ms = max(delivery._deadline_ms - int(time.time() * 1000), 0)
        self.next_extend = time.monotonic() + min(remaining_ms, extension_ms) / 3000.0
        self.extending = True
        self.busy = False
        self.handler_done = False
