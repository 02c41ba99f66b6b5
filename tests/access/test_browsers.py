"""A web page in the developer's browser can reach ``flux dev`` on loopback too: a
DNS-rebinding page (its own name in ``Host``), a cross-site form post (``text/plain``), a
same-site page's simple post. None of them reaches the admin API or runs a function; the
CLI and ordinary API clients are not affected (issue 20, item 3)."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.access.conftest import Served, serve_project
from tests.fixtures.processes import FluxProcess
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import copy_project


@pytest.fixture
def dev(db: str, provider: Any, tmp_path: Path, flux_process: type[FluxProcess]
        ) -> Iterator[Served]:
    root = copy_project(tmp_path / "shop", provider.url)
    server = serve_project(root, db, flux_process, token=None, args=("dev",))
    server.process.wait_for("admin API /_flux/ open to this machine")
    yield server
    server.process.signal(signal.SIGINT)
    server.process.wait(30)


def raw_post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def users(db: str) -> list[str]:
    with psycopg.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT email FROM users ORDER BY email")]


def test_dev_refuses_rebinding_and_cross_site_pages(dev: Served) -> None:
    port = dev.url.rsplit(":", 1)[1]
    evil = f"evil.example:{port}"
    # DNS rebinding: the page's own name in Host, on the admin API and on functions alike
    status, body, _ = dev.call("/_flux/executions", headers={"Host": evil})
    assert (status, body["error"]["code"]) == (403, "host_not_allowed")
    status, raw = raw_post(f"{dev.url}/signup", b'{"email": "rebound@x.test"}',
                           {"Host": evil, "Content-Type": "application/json"})
    assert status == 403
    # a cross-site form post of a JSON text, to resume and to a function
    form = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    status, raw = raw_post(f"{dev.url}/_flux/executions/0000/resume", b"{}", form)
    assert status == 403 and b"cross_origin" in raw
    status, raw = raw_post(f"{dev.url}/signup", b'{"email": "forged@x.test"}', form)
    assert status == 403 and b"cross_origin" in raw
    # a same-site simple post to the admin API changes nothing either
    status, raw = raw_post(f"{dev.url}/_flux/executions/0000/resume", b"", {})
    assert status == 403 and b"simple_request" in raw
    assert users(dev.db) == []
    # what is refused at a function is still recorded
    with psycopg.connect(dev.db) as conn:
        refused = conn.execute("SELECT http_status, error->>'code' FROM flux.trace_requests "
                               "ORDER BY started_at").fetchall()
    assert refused == [(403, "host_not_allowed"), (403, "cross_origin")]

    # Ordinary clients are served: curl's form type without an Origin, the CLI, JSON.
    status, _ = raw_post(f"{dev.url}/signup", b'{"email": "curl@x.test"}',
                         {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    status, raw = raw_post(f"{dev.url}/_flux/executions/0000/resume", b"{}",
                           {"Content-Type": "application/json"})
    assert status == 404, raw  # past the door: no such execution
    status, body, _ = dev.call("/_flux/executions", headers={"Host": f"localhost:{port}"})
    assert status == 200
    result = run_flux(["--remote", dev.url, "resume", "0000", "--json"], dev.root)
    assert result.returncode != 0 and "no execution" in result.stderr.lower(), result.stderr
    assert users(dev.db) == ["curl@x.test"]
