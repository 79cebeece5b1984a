"""`squall.sync.Client`: a small blocking facade (publish, task, wait_result) for
synchronous code such as scripts and Django/Flask views. It runs the asyncio client on
an event loop in a private daemon thread; each call blocks the calling thread only."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from . import client as _client
from .types import Duration, Published, TaskInfo

T = TypeVar("T")


class Client:
    """Blocking client: `with squall.sync.Client("127.0.0.1:7600") as c: c.publish(...)`.
    Takes the same arguments as `squall.connect`. Safe to share between threads."""

    def __init__(self, addr: str | Sequence[str] = _client.DEFAULT_ADDR, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="squall-sync", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._client: _client.Client = self._run(_client.connect(addr, **kwargs))
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result()

    def publish(
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
    ) -> Published:
        """Publishes one task; returns once it is durable (see `squall.Client.publish`)."""
        return self._run(
            self._client.publish(
                queue,
                payload,
                priority=priority,
                delay=delay,
                key=key,
                headers=headers,
                max_attempts=max_attempts,
                lease=lease,
            )
        )

    def task(self, task_id: int, *, queue: str | None = None) -> TaskInfo:
        """The status of a task (see `squall.Client.task`)."""
        return self._run(self._client.task(task_id, queue=queue))

    def wait_result(
        self, task_id: int, timeout: Duration | None = 30.0, *, queue: str | None = None
    ) -> bytes:
        """Blocks until the task succeeded and returns its result (see
        `squall.Client.wait_result` for what it raises)."""
        return self._run(self._client.wait_result(task_id, timeout, queue=queue))

    def close(self) -> None:
        """Closes the connection and stops the private loop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
