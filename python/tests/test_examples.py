"""The examples and the Rust side: the Tornado app driven over HTTP with the example
worker, SIGTERM draining the example worker process, and a Rust producer (the `squall`
CLI) with a Python worker and the reverse."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
from conftest import Broker, cli

import squall

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import tornado_app  # noqa: E402
import worker as example_worker  # noqa: E402


async def test_tornado_app_over_http(broker: Broker, q: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tornado_app, "QUEUE", q)
    client = await squall.connect(broker.addr)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    server = tornado.httpserver.HTTPServer(tornado_app.make_app(client))
    server.add_sockets(sockets)
    http = tornado.httpclient.AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}"
    try:
        resp = await http.fetch(f"{base}/jobs", method="POST", body=json.dumps({"numbers": [1, 2, 3]}))
        assert resp.code == 202
        job = json.loads(resp.body)["id"]
        resp = await http.fetch(f"{base}/jobs/{job}")
        assert json.loads(resp.body)["state"] == "ready"
        bad = json.loads((await http.fetch(f"{base}/jobs", method="POST", body="not json")).body)["id"]
        worker = squall.Worker(client, q, concurrency=2)
        run = asyncio.create_task(worker.run(example_worker.handle, signals=()))
        resp = await http.fetch(f"{base}/jobs/{job}?wait=10")
        assert json.loads(resp.body) == {
            "id": job,
            "state": "succeeded",
            "attempts": 1,
            "last_error": None,
            "result": '{"sum": 6}',
        }
        dead = json.loads((await http.fetch(f"{base}/jobs/{bad}?wait=10")).body)
        assert (dead["state"], dead["last_error"]) == ("dead", "payload is not JSON")
        missing = await http.fetch(f"{base}/jobs/999999999", raise_error=False)
        assert missing.code == 404
        empty = await http.fetch(f"{base}/jobs", method="POST", body=b"", raise_error=False)
        assert empty.code == 400
        worker.stop()
        assert (await run).acked == 1
    finally:
        server.stop()
        await client.close()


async def test_example_worker_drains_on_sigterm(broker: Broker, q: str) -> None:
    client = await squall.connect(broker.addr)
    long = await client.publish(q, json.dumps({"sleep": 3600}))
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [sys.executable, str(EXAMPLES / "worker.py")],
        env={
            **os.environ,
            "SQUALL_SERVER": broker.addr,
            "SQUALL_QUEUE": q,
            "SQUALL_GRACE_PERIOD": "0.3",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(200):
            if (await client.task(long.id)).state == "leased":
                break
            await asyncio.sleep(0.05)
        assert (await client.task(long.id)).state == "leased"
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.to_thread(proc.communicate, timeout=15)
        assert proc.returncode == 0, output
        assert "returned=1" in output, output
        # The unfinished task went back at once (not after a lease expiry).
        info = await client.task(long.id)
        assert (info.state, info.attempts) == ("ready", 1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await client.close()


async def test_rust_producer_python_worker(broker: Broker, binary: str, q: str) -> None:
    out = await asyncio.to_thread(
        cli, binary, "publish", "--server", broker.addr, q, "from rust", "--header", "lang=rust"
    )
    assert out.returncode == 0, out.stderr
    task_id = int(out.stdout.strip())
    client = await squall.connect(broker.addr)
    seen: list[tuple[bytes, dict[str, bytes]]] = []

    async def handler(task: squall.Task) -> bytes:
        seen.append((task.payload, task.headers))
        return b"handled by python"

    worker = squall.Worker(client, q)
    run = asyncio.create_task(worker.run(handler, signals=()))
    status = await asyncio.to_thread(
        cli, binary, "task", "--server", broker.addr, str(task_id), "--wait", "10s", "--json"
    )
    worker.stop()
    await run
    await client.close()
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["state"], info["result"]) == ("succeeded", "handled by python")
    assert seen == [(b"from rust", {"lang": b"rust"})]


async def test_python_producer_rust_consumer(broker: Broker, binary: str, q: str) -> None:
    client = await squall.connect(broker.addr)
    ids = [t.id for t in await client.publish_batch(q, [b"one", b"two", "three"])]
    out = await asyncio.to_thread(
        cli, binary, "consume", "--server", broker.addr, q, "--count", "3", "--json"
    )
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(g["id"], g["payload"]) for g in got] == list(zip(ids, ["one", "two", "three"], strict=True))
    for i in ids:
        assert (await client.task(i)).state in ("succeeded", "unknown")
    await client.close()
