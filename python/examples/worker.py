"""A Squall worker: handles tasks of the "jobs" queue (the ones the Tornado example
publishes) until SIGTERM or Ctrl-C, then drains and returns unfinished tasks.

    SQUALL_SERVER=127.0.0.1:7600 python examples/worker.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

import squall

QUEUE = os.environ.get("SQUALL_QUEUE", "jobs")
#: How long SIGTERM waits for running handlers before returning their tasks.
GRACE_PERIOD = float(os.environ.get("SQUALL_GRACE_PERIOD", "30"))


async def handle(task: squall.Task) -> bytes:
    """Sums the numbers in the job; a job that is not JSON can never succeed."""
    try:
        job = json.loads(task.payload)
    except ValueError:
        raise squall.Dead("payload is not JSON") from None
    if job.get("sleep"):
        await asyncio.sleep(float(job["sleep"]))  # the lease is extended meanwhile
    if job.get("flaky") and task.attempt == 1:
        raise squall.Retry("flaky on the first attempt", after=0.1)
    return json.dumps({"sum": sum(job.get("numbers", []))}).encode()


async def main() -> None:
    client = await squall.connect(os.environ.get("SQUALL_SERVER", "127.0.0.1:7600"), name="example-worker")
    try:
        report = await squall.Worker(client, QUEUE, concurrency=8, grace_period=GRACE_PERIOD).run(handle)
        print(f"worker stopped: {report}", flush=True)
    finally:
        await client.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
