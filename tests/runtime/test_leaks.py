"""Nothing leaks: a real ``flux dev`` (its own embedded PostgreSQL) given secrets every way
a caller or a handler can carry them, then every byte Flux and its server keep — the
terminal, ``postgres.log``, every file of ``.flux/``, a ``pg_dump`` of the whole database —
searched for them in every encoding this test knows (issue 20, items 5 and 7)."""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from flux.store._embedded import install_dir
from tests.fixtures.processes import FluxProcess
from tests.fixtures.projects import run_flux

KEY = "vk_live_7Qm2/ZxR9+pLw4 Tn8Bc"  # ctx.secrets: VAULT_KEY (with / + and a space)
LOGGED = "tok_field_Hs83kPq0Zw1Lm"  # a log field named token
SENT = "bearer_Uy6Rt5Ee4Ww3Qq2"  # an Authorization header sent to the function
FIELDS = {"access_token": "at_Pz9Yx8Wv7Ut6", "refresh_token": "rt_Ab1Cd2Ef3Gh4",
          "client_secret": "cs_Ij5Kl6Mn7Op8"}  # body fields the default policy knows
AUTH_TOKEN = "xat_Qr9St0Uv1Wx2"  # an X-Auth-Token header

HANDLER = '''
import base64
from urllib.parse import quote

from flux import function


@function
async def leak(ctx, input):
    key = ctx.secrets.get("VAULT_KEY")
    ctx.log.info(f"calling the provider with {key}", token=input.get("token"))
    if input.get("fail"):
        await ctx.db.execute("INSERT INTO notes (n) VALUES (%s)", [key])  # not a number
    row = await ctx.db.fetchone("SELECT count(*) AS n FROM notes WHERE body = %s", [key])
    basic = base64.b64encode(f"svc:{key}".encode()).decode()
    response = await ctx.http.post(
        f"{ctx.config['provider_url']}/v1/emails?api_key={quote(key, safe='')}",
        headers={"Authorization": f"Bearer {key}", "X-Upstream": f"Basic {basic}"},
        json={"to": "a@b.test", "note": key})
    return {"n": row["n"], "provider": response.status}
'''


@dataclass
class Dev:
    root: Path
    url: str
    process: FluxProcess
    errors: list[str] = field(default_factory=list)

    def post(self, body: Any, headers: dict[str, str] | None = None, path: str = "/leak"
             ) -> int:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         method="POST", headers={
                                             "Content-Type": "application/json",
                                             **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status
        except urllib.error.HTTPError as error:
            self.errors.append(error.read().decode(errors="replace"))
            return error.code


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Provider(http.server.BaseHTTPRequestHandler):
    """A loopback stub of the provider the handler calls: 200 to any POST, counted."""

    received: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Provider.received.append(self.path)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def provider_url() -> Iterator[str]:
    Provider.received.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def dev(make_project: Callable[..., Path], flux_process: type[FluxProcess], provider_url: str
        ) -> Iterator[Dev]:
    root = make_project('name = "vault"\n\n[secrets]\nVAULT_KEY = "VAULT_KEY"\n\n'
                        f'[app]\nprovider_url = "{provider_url}"\n')
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


def encoded_forms(secret: str) -> dict[str, str]:
    """Every form of ``secret`` this test knows to look for."""
    forms = {"plain": secret, "url": urllib.parse.quote(secret, safe=""),
             "url+": urllib.parse.quote_plus(secret), "json": json.dumps(secret)[1:-1]}
    data = secret.encode()
    for offset in range(3):  # base64 after 0, 1 or 2 other bytes (user: in Basic auth)
        first, last = -(-8 * offset // 6), 8 * (offset + len(data)) // 6
        for name, encode in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
            forms[f"{name}@{offset}"] = encode(b"\0" * offset + data).decode()[first:last]
    return forms


def found(secrets: list[str], text: str) -> list[tuple[str, str]]:
    return [(secret, name) for secret in secrets
            for name, form in encoded_forms(secret).items() if form in text]


def test_a_dump_of_everything_holds_no_secret_in_any_encoding(dev: Dev) -> None:
    basic = base64.b64encode(f"svc:{KEY}".encode()).decode()
    headers = {"Authorization": f"Bearer {SENT}", "X-Auth-Token": AUTH_TOKEN,
               "X-Key": KEY, "X-Key-Encoded": urllib.parse.quote(KEY, safe=""),
               "X-Upstream-Authorization": f"Basic {basic}"}
    query = f"?k={urllib.parse.quote(KEY, safe='')}&b={urllib.parse.quote(basic)}"
    assert dev.post({"token": LOGGED, **FIELDS, "echo": KEY}, headers, f"/leak{query}") == 200, \
        dev.errors
    assert dev.post({"fail": True, "token": LOGGED}, headers, f"/leak{query}") == 500
    assert dev.post({"basic": basic, "password": KEY}) == 200
    assert dev.post({}, headers, f"/nowhere/{urllib.parse.quote(KEY)}{query}") == 404
    assert malformed(dev.url, f"Basic {basic}").startswith(b"HTTP/1.0 400")

    url = run_flux(["db", "url"], dev.root)
    assert url.returncode == 0, url.stderr
    dump = subprocess.run([str(install_dir() / "bin" / "pg_dump"), "--no-owner",
                           "-d", url.stdout.strip()],
                          capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    assert "trace_requests" in dump.stdout and "/v1/emails" in dump.stdout
    dev.process.signal(signal.SIGINT)
    dev.process.wait(60)
    assert sum("/v1/emails" in path for path in Provider.received) == 2  # (not the failed one)

    secrets = [KEY, LOGGED, SENT, AUTH_TOKEN, *FIELDS.values()]
    places = {"pg_dump": dump.stdout, "flux dev output": dev.process.output()}
    for path in sorted((dev.root / ".flux").rglob("*")):
        if path.is_file() and "pgdata" not in path.parts:
            places[str(path.relative_to(dev.root))] = path.read_text(errors="replace")
    assert ".flux/postgres.log" in places
    leaks = {where: hits for where, text in places.items() if (hits := found(secrets, text))}
    assert leaks == {}, [line[max(0, line.index(KEY) - 300):line.index(KEY) + 100]
                         for line in places["pg_dump"].splitlines() if KEY in line]
