"""Nothing leaks: a real ``flux dev`` (its own embedded PostgreSQL) given secrets every way
a caller or a handler can carry them, then every byte Flux and its server keep — the
terminal, ``postgres.log``, the whole database — searched for them in every encoding
(issue 20, items 5 and 7)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.processes import FluxProcess
from tests.fixtures.projects import run_flux

KEY = "vk_live_7Qm2ZxR9pLw4Tn8Bc"  # ctx.secrets: VAULT_KEY
LOGGED = "tok_field_Hs83kPq0Zw1Lm"  # a log field named token
SENT = "bearer_Uy6Rt5Ee4Ww3Qq2"  # an Authorization header sent to the function

HANDLER = '''
from flux import function


@function
async def leak(ctx, input):
    key = ctx.secrets.get("VAULT_KEY")
    ctx.log.info("calling the provider", token=input.get("token"))
    if input.get("fail"):
        await ctx.db.execute("INSERT INTO notes (n) VALUES (%s)", [key])  # not a number
    return {"ok": True}
'''


@dataclass
class Dev:
    root: Path
    url: str
    process: FluxProcess

    def post(self, body: Any, headers: dict[str, str] | None = None) -> int:
        request = urllib.request.Request(f"{self.url}/leak", data=json.dumps(body).encode(),
                                         method="POST", headers={
                                             "Content-Type": "application/json",
                                             **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dev(make_project: Callable[..., Path], flux_process: type[FluxProcess]) -> Iterator[Dev]:
    root = make_project('name = "vault"\n\n[secrets]\nVAULT_KEY = "VAULT_KEY"\n')
    (root / "functions").mkdir()
    (root / "functions" / "leak.py").write_text(HANDLER)
    (root / "schema").mkdir()
    (root / "schema" / "001_notes.sql").write_text(
        "CREATE TABLE notes (id serial PRIMARY KEY, n int, body text);\n")
    port = free_port()
    process = flux_process(["dev", "--port", str(port)], root, env={"VAULT_KEY": KEY})
    process.wait_for("ready")
    yield Dev(root, f"http://127.0.0.1:{port}", process)
    process.signal(signal.SIGINT)
    process.wait(60)


def malformed(url: str, authorization: str) -> bytes:
    """A request aiohttp cannot parse, with an Authorization header in it."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"POST /leak HTTP/1.1\r\nHost: localhost\r\nAuthorization: "
                     + authorization.encode() + b"\x01\r\n\r\n")
        return sock.recv(65536)


def test_dev_prints_and_its_server_logs_no_secret(dev: Dev) -> None:
    assert dev.post({"token": LOGGED}) == 200
    assert dev.post({"fail": True}) == 500
    assert malformed(dev.url, f"Bearer {SENT}").startswith(b"HTTP/1.0 400")
    log = dev.root / ".flux" / "postgres.log"
    dev.process.signal(signal.SIGINT)
    dev.process.wait(60)
    output = dev.process.output()
    assert "calling the provider" in output  # the log line is shown, its token field is not
    for secret in (KEY, LOGGED, SENT):
        assert secret not in output, secret
    assert "refused a malformed request" in output
    text = log.read_text(errors="replace")
    assert "database system is ready" in text  # the server's own life is still logged
    assert KEY not in text
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    assert run_flux(["ls", "--json"], dev.root).returncode == 0
