"""A Tornado application that hands work to Squall.

    POST /jobs            body = the job (JSON) -> 202 {"id": 17}
    GET  /jobs/17         -> {"id": 17, "state": "leased", "attempts": 1, ...}
    GET  /jobs/17?wait=5  -> waits up to 5 s for the result first

Run it beside a broker and examples/worker.py:

    SQUALL_SERVER=127.0.0.1:7600 python examples/tornado_app.py   # listens on :8888
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import tornado.web

import squall

QUEUE = os.environ.get("SQUALL_QUEUE", "jobs")
MAX_WAIT = 30.0


def _text(data: bytes) -> dict[str, str]:
    try:
        return {"result": data.decode()}
    except UnicodeDecodeError:
        return {"result": base64.b64encode(data).decode(), "result_encoding": "base64"}


class JobsHandler(tornado.web.RequestHandler):
    def initialize(self, client: squall.Client) -> None:
        self.client = client

    async def post(self) -> None:
        if not self.request.body:
            raise tornado.web.HTTPError(400, reason="empty job")
        key = self.request.headers.get("Idempotency-Key")
        try:
            t = await self.client.publish(QUEUE, self.request.body, key=key)
        except squall.QueueFull:
            raise tornado.web.HTTPError(503, reason="queue full, retry later") from None
        except squall.Unavailable:
            raise tornado.web.HTTPError(503, reason="broker unavailable, retry later") from None
        self.set_status(202)
        self.write({"id": t.id, "duplicate": t.duplicate})


class JobHandler(tornado.web.RequestHandler):
    def initialize(self, client: squall.Client) -> None:
        self.client = client

    async def get(self, task_id: str) -> None:
        tid = int(task_id)
        wait = min(float(self.get_argument("wait", "0")), MAX_WAIT)
        if wait > 0:
            try:
                await self.client.wait_result(tid, timeout=wait)
            except squall.ResultError:
                pass  # the status below says what happened
        info = await self.client.task(tid)
        if info.state == "unknown":
            raise tornado.web.HTTPError(404, reason="no such job (or its result expired)")
        body: dict[str, Any] = {
            "id": info.id,
            "state": info.state,
            "attempts": info.attempts,
            "last_error": info.last_error,
        }
        if info.result is not None:
            body.update(_text(info.result))
        self.write(body)


def make_app(client: squall.Client) -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/jobs", JobsHandler, {"client": client}),
            (r"/jobs/([0-9]+)", JobHandler, {"client": client}),
        ]
    )


async def main() -> None:
    client = await squall.connect(os.environ.get("SQUALL_SERVER", "127.0.0.1:7600"), name="tornado-app")
    app = make_app(client)
    app.listen(int(os.environ.get("PORT", "8888")), address="127.0.0.1")
    print(json.dumps({"listening": os.environ.get("PORT", "8888")}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
