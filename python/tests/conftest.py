"""Test harness: the real broker binary (target/debug/squall, built once with `cargo
build` unless SQUALL_BIN names one) started on 127.0.0.1 port 0 with a temporary data
directory. One broker serves the whole session (tests use their own queue names);
tests that restart or kill a broker get their own."""

from __future__ import annotations

import os
import queue as _queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import squall

REPO = Path(__file__).resolve().parents[2]
WAIT = 15.0
_LISTEN = re.compile(r"listening on (127\.0\.0\.1:\d+)")


def squall_bin() -> str:
    env = os.environ.get("SQUALL_BIN")
    if env:
        return env
    path = REPO / "target" / "debug" / "squall"
    if not os.environ.get("SQUALL_SKIP_BUILD"):
        subprocess.run(["cargo", "build", "--bin", "squall", "--quiet"], cwd=REPO, check=True)
    return str(path)


class Broker:
    """`squall serve` as a child process. `restart()` starts it again on the same
    data directory and port, so connected clients can find it again."""

    def __init__(self, binary: str, extra: list[str] | None = None) -> None:
        self.binary = binary
        self.extra = extra or []
        self._dir = tempfile.TemporaryDirectory(prefix="squall-py-")
        self.data_dir = Path(self._dir.name) / "data"
        self.addr = ""
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def start(self, listen: str = "127.0.0.1:0") -> None:
        args = [
            self.binary,
            "serve",
            "--listen",
            listen,
            "--http",
            "off",
            "--data-dir",
            str(self.data_dir),
            "--queue-lease",
            "2s",
            "--queue-backoff",
            "50ms..200ms",
            "--shutdown-grace",
            "1s",
            *self.extra,
        ]
        proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "info"},
        )
        found: _queue.Queue[str] = _queue.Queue()

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.log.append(line)
                m = _LISTEN.search(line)
                if m:
                    found.put(m.group(1))
            found.put("")

        threading.Thread(target=read, daemon=True).start()
        try:
            addr = found.get(timeout=WAIT)
        except _queue.Empty:
            addr = ""
        if not addr:
            proc.kill()
            raise RuntimeError("broker did not start:\n" + "".join(self.log[-20:]))
        self.proc = proc
        self.addr = addr

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=WAIT)
        self.proc = None

    def restart(self) -> None:
        """Stops it and starts it again on the same port and data directory."""
        addr = self.addr
        self.stop()
        deadline = time.monotonic() + WAIT
        while True:
            try:
                self.start(addr)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
            self.proc = None
        self._dir.cleanup()


@pytest.fixture(scope="session")
def binary() -> str:
    return squall_bin()


@pytest.fixture(scope="session")
def broker(binary: str) -> Iterator[Broker]:
    b = Broker(binary, ["--max-batch", "100", "--max-payload-bytes", "65536"])
    b.start()
    yield b
    b.close()


@pytest.fixture
def own_broker(binary: str) -> Iterator[Broker]:
    """A broker of the test's own (for restarts and kills)."""
    b = Broker(binary)
    b.start()
    yield b
    b.close()


@pytest.fixture
def q() -> str:
    """A queue name no other test uses."""
    return "t-" + uuid.uuid4().hex[:12]


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[squall.Client]:
    c = await squall.connect(broker.addr, name="pytest")
    yield c
    await c.close()


def cli(binary: str, *args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    """Runs the `squall` CLI (the Rust client) and returns its result."""
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def have_cargo() -> bool:
    return shutil.which("cargo") is not None
