"""Story: an existing Starlette service goes to production under ``flux serve --asgi
module:app`` — the flag, not flux.toml — with two workers and the admin token. A bug in one
route fails a request; the on-call engineer, on another machine with only the server's URL
and the token, asks ``flux --remote … why`` and is pointed at the line inside the route
handler, with the link to the web view; the same question asked of the database answers the
same. Without the token the admin API says nothing."""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from tests.access.conftest import free_port
from tests.fixtures.processes import FluxProcess
from tests.fixtures.projects import run_flux
from tests.stories._world import flux, init_project

API = '''"""The ledger service, as it ran before Flux: Starlette routes, flux.context() for ctx."""

import flux
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def add_entry(request):
    body = await request.json()
    ctx = flux.context()
    row = await ctx.db.fetchone(
        "INSERT INTO entries (account, cents) VALUES (%s, %s) RETURNING id",
        [body["account"], body["cents"]])
    memo = body["note"].upper()  # the bug: a note is optional
    return JSONResponse({"id": row["id"], "memo": memo}, status_code=201)


async def balance(request):
    total = await flux.context().db.fetchval(
        "SELECT coalesce(sum(cents), 0) FROM entries WHERE account = %s",
        [request.path_params["account"]])
    return JSONResponse({"account": request.path_params["account"], "cents": int(total)})


app = Starlette(routes=[Route("/entries", add_entry, methods=["POST"]),
                        Route("/balance/{account}", balance)])
'''
BUG = '    memo = body["note"].upper()  # the bug: a note is optional'

SCHEMA = """CREATE TABLE IF NOT EXISTS entries (
    id      bigserial PRIMARY KEY,
    account text NOT NULL,
    cents   integer NOT NULL
);
"""


def call(
    url: str, *, method: str = "GET", body: Any = None, token: str | None = None
) -> tuple[int, Any, str]:
    """(status, JSON answer, the answer's request id)."""
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, headers = error.code, error.read(), error.headers
    return status, json.loads(raw) if raw else None, headers.get("x-flux-request-id", "")


def serve(
    project: Path, db: str, token: str, flux_process: type[FluxProcess]
) -> tuple[FluxProcess, str]:
    port = free_port()
    process = flux_process(
        [
            "serve",
            "--asgi",
            "ledger.api:app",
            "--workers",
            "2",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        project,
        env={"DATABASE_URL": db, "FLUX_ADMIN_TOKEN": token},
    )
    process.wait_for("2 workers serving")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the supervisor says so before its workers listen
        assert process.proc.poll() is None, process.output()
        with contextlib.suppress(OSError):
            if call(f"{base}/health")[0] == 200:
                return process, base
        time.sleep(0.1)  # a readiness poll, not a timing the test asserts
    raise AssertionError("flux serve never answered /health:\n" + process.output())


def test_flux_serve_asgi_failure_is_explained_remotely_at_the_handlers_line(
    db: str, tmp_path: Path, flux_process: type[FluxProcess]
) -> None:
    project = init_project(tmp_path, "ledger")
    (project / "schema" / "002_entries.sql").write_text(SCHEMA)
    (project / "ledger").mkdir()
    (project / "ledger" / "__init__.py").write_text("")
    (project / "ledger" / "api.py").write_text(API)
    bug_line = API.splitlines().index(BUG) + 1
    token = secrets.token_urlsafe(32)
    process, base = serve(project, db, token, flux_process)
    try:
        status, created, ok_id = call(
            f"{base}/entries", method="POST", body={"account": "ada", "cents": 500, "note": "rent"}
        )
        assert status == 201 and created["memo"] == "RENT", created
        status, failed, failed_id = call(
            f"{base}/entries", method="POST", body={"account": "ada", "cents": 900}
        )
        assert status == 500 and failed["request_id"] == failed_id
        status, balance, _ = call(f"{base}/balance/ada")
        assert (status, balance) == (200, {"account": "ada", "cents": 500})  # rolled back
        status, user, _ = call(
            f"{base}/create_user", method="POST", body={"email": "ada@example.com"}
        )
        assert status == 200 and user["email"] == "ada@example.com"  # a function: first

        # Without the token the admin API and the web view answer 401 and reveal nothing.
        for path in (
            "/_flux/executions",
            f"/_flux/executions/{failed_id}/why",
            "/_flux/ui/",
            f"/_flux/ui/x/{failed_id}",
        ):
            try:
                urllib.request.urlopen(f"{base}{path}", timeout=30)
                raise AssertionError(f"{path} answered without the token")
            except urllib.error.HTTPError as error:
                answer = error.read()  # (a sign-in page keeps the path it was asked for)
                assert error.code == 401, path
                assert b"KeyError" not in answer and b"api.py" not in answer, path

        # On another machine: no project, only the URL and the token.
        elsewhere = tmp_path / "laptop"
        elsewhere.mkdir()
        env = {"FLUX_ADMIN_TOKEN": token}
        done = run_flux(["--remote", base, "why", failed_id[:18], "--json"], elsewhere, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        why = json.loads(done.stdout)
        assert why["request_id"] == failed_id and why["function"] == "asgi"
        assert (why["location"]["file"], why["location"]["line"]) == ("ledger/api.py", bug_line)
        assert why["root_cause"]["class"] == "exception", why["root_cause"]
        assert "note" in why["root_cause"]["message"], why["root_cause"]
        assert any(m["table"] == "entries" and m["rolled_back"] for m in why["mutations"])
        text = run_flux(["--remote", base, "why", failed_id[:18]], elsewhere, env=env)
        assert text.returncode == 0 and f"ledger/api.py:{bug_line}" in text.stdout
        assert f"{base}/_flux/ui/x/{failed_id}" in text.stdout, text.stdout
        listed = run_flux(["--remote", base, "ls", "--json"], elsewhere, env=env)
        kept = {e["request_id"]: e for e in json.loads(listed.stdout)["executions"]}
        assert (kept[ok_id]["function"], kept[ok_id]["status"]) == ("asgi", "ok")
        assert (kept[failed_id]["function"], kept[failed_id]["status"]) == ("asgi", "error")
    finally:
        process.signal(signal.SIGTERM)
        assert process.wait(30) in (0, -signal.SIGTERM), process.output()

    # The same question asked of the database, in the project: the same answer.
    code, local, out = flux(project, db, "why", failed_id)
    assert code == 0 and local["location"] == why["location"], out
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT account, cents FROM entries").fetchall() == [("ada", 500)]

    # --asgi named the app for that run only: replay says how to name it for good.
    code, _, out = flux(project, db, "replay", failed_id[:18])
    assert code != 0 and '[asgi] app = "module:app"' in out and "Traceback" not in out, out
    toml = project / "flux.toml"
    toml.write_text(toml.read_text() + '\n[asgi]\napp = "ledger.api:app"\n')
    code, replay, out = flux(project, db, "replay", failed_id[:18], "--expect", "same")
    assert code == 0 and replay["passed"] and replay["divergence"] is None, out
    api = project / "ledger" / "api.py"
    api.write_text(api.read_text().replace('body["note"]', 'body.get("note", "")'))
    code, resumed, out = flux(project, db, "resume", failed_id[:18])
    assert code == 0 and resumed["status"] == "ok" and resumed["http_status"] == 201, out
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT cents FROM entries ORDER BY id").fetchall() == [(500,), (900,)]
