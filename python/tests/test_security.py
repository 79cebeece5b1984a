"""Token and TLS: a broker with a token list and a certificate (made here with the
openssl command), reached with `token=` and `ssl=`."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Broker, cli

import squall

TOKEN = "py-test-token-0123456789"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def secure_broker(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Path]]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    entry = cli(binary, "token", "hash", "--name", "py", "--role", "producer", "--queues", "py.", TOKEN)
    assert entry.returncode == 0, entry.stderr
    config = d / "squall.toml"
    config.write_text(f'[tls]\ncert = "{cert}"\nkey = "{key}"\n\n{entry.stdout}')
    b = Broker(binary, ["--config", str(config)])
    b.start()
    yield b, cert
    b.close()


async def test_token_and_tls(secure_broker: tuple[Broker, Path]) -> None:
    broker, cert = secure_broker
    ctx = ssl.create_default_context(cafile=str(cert))
    c = await squall.connect(broker.addr, token=TOKEN, ssl=ctx, server_hostname="localhost")
    t = await c.publish("py.jobs", b"over tls")
    assert (await c.task(t.id)).state == "ready"
    # A producer may not consume, nor publish outside its queue prefixes.
    with pytest.raises(squall.Forbidden):
        async with c.subscribe("py.jobs"):
            pass
    with pytest.raises(squall.Forbidden):
        await c.publish("other.jobs", b"x")
    await c.close()
    with pytest.raises(squall.Unauthenticated):
        await squall.connect(broker.addr, token="wrong", ssl=ctx, server_hostname="localhost")
    # A certificate the client does not trust is refused by the client.
    with pytest.raises(squall.TransportError):
        await squall.connect(broker.addr, token=TOKEN, ssl=ssl.create_default_context())
