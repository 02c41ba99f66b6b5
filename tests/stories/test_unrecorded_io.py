"""Story: handlers that reach outside through no recorded path — a raw socket, a second
psycopg connection, a subprocess — are recorded as incomplete with their file:line, and
their replay and resume refuse before anything leaves the process. ``ctx.step`` is the way
out: recorded once, served on replay and resume, its exception replayed as itself."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.projects import run_flux
from tests.fixtures.shop import Shop, serve_app
from tests.fixtures.stub import Listener, Stub

FAIL = '''if input.get("fail") and not ctx.config.get("fixed"):
                raise RuntimeError("bug after the access")'''

HANDLERS: dict[str, str] = {
    "raw_socket": '''
        import socket
        from flux import function

        @function
        def raw_socket(ctx, input):
            conn = socket.create_connection(("127.0.0.1", ctx.config["port"]))  # the access
            conn.close()
            # FAIL
            return {"ok": True}
    ''',
    "second_db": '''
        import psycopg
        from flux import function

        @function
        def second_db(ctx, input):
            with psycopg.connect(ctx.config["dsn"]) as conn:  # the access
                conn.execute("INSERT INTO marks VALUES (1)")
            # FAIL
            return {"ok": True}
    ''',
    "subproc": '''
        import subprocess
        from flux import function

        @function
        def subproc(ctx, input):
            subprocess.run(["touch", ctx.config["marker"]], check=True)  # the access
            # FAIL
            return {"ok": True}
    ''',
    "mailer": '''
        import urllib.request


        class MailRejected(Exception):
            def __init__(self, to, reason):
                super().__init__(to, reason)
                self.to = to


        def send(stub, to):
            urllib.request.urlopen(stub + "/mail?to=" + to, timeout=5).read()
            if to.endswith("@bad.example"):
                raise MailRejected(to, "550 mailbox unavailable")
            return "queued " + to


        async def send_async(stub, to):
            return send(stub, to)
    ''',
    "notify": '''
        from flux import function
        from mailer import MailRejected, send, send_async

        @function
        def notify(ctx, input):
            try:
                receipt = ctx.step("mail", send, ctx.config["stub"], input["to"])  # the step
            except MailRejected as exc:
                return {"rejected": list(exc.args), "to": exc.to}
            # FAIL
            return {"receipt": receipt}
    ''',
    "notify_async": '''
        from flux import function
        from mailer import send_async

        @function
        async def notify_async(ctx, input):
            receipt = await ctx.step("mail", send_async, ctx.config["stub"], input["to"])
            # FAIL
            return {"receipt": receipt}
    ''',
}


@pytest.fixture
async def app(db: str, stub: Stub, listener: Listener, tmp_path: Path) -> AsyncIterator[Shop]:
    root = tmp_path / "io"
    (root / "functions").mkdir(parents=True)
    (root / "flux.toml").write_text(textwrap.dedent(f'''
        name = "io"
        capture = "trigger"

        [app]
        stub = "{stub.url}"
        port = {listener.port}
        dsn = "{db}"
        marker = "{root / "marker"}"
    '''))
    for name, source in HANDLERS.items():
        (root / "functions" / f"{name}.py").write_text(
            textwrap.dedent(source.replace("# FAIL", FAIL)))
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE marks (n int)")
    async with serve_app(root, db, None) as served:  # type: ignore[arg-type]
        yield served


def _cli(app: Shop, *args: str) -> tuple[int, Any, str]:
    result = run_flux([*args, "--json"], app.root, env={"DATABASE_URL": app.db})
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None, \
        result.stderr


def _line(app: Shop, name: str, mark: str) -> int:
    lines = (app.root / "functions" / f"{name}.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if mark in line)


def _marks(app: Shop) -> int:
    with psycopg.connect(app.db) as conn:
        row = conn.execute("SELECT count(*) FROM marks").fetchone()
    return int(row[0]) if row else 0


def _effects(app: Shop, listener: Listener) -> tuple[int, int, bool]:
    return listener.accepted, _marks(app), (app.root / "marker").exists()


@pytest.mark.parametrize(("name", "what"), [
    ("raw_socket", "socket connection to 127.0.0.1:"),
    ("second_db", "a database connection of its own (psycopg"),
    ("subproc", "subprocess touch "),
])
async def test_unrecorded_access_marks_the_record_and_blocks_replay_and_resume(
        app: Shop, listener: Listener, name: str, what: str) -> None:
    where = f"functions/{name}.py:{_line(app, name, '# the access')}"
    status, _, rid = await app.post(name, {})
    assert status == 200
    code, trace, _ = _cli(app, "trace", rid[:18])
    assert code == 0
    [found] = trace["incomplete"]
    assert found["what"].startswith(what) and f"{found['file']}:{found['line']}" == where

    status, _, bad = await app.post(name, {"fail": True})
    assert status == 500
    code, why, _ = _cli(app, "why", bad[:18])
    assert code == 0 and why["incomplete"][0]["what"].startswith(what)

    (app.root / "marker").unlink(missing_ok=True)
    before = _effects(app, listener)
    code, replayed, err = _cli(app, "replay", rid[:18], "--expect", "same")
    assert code != 0, err
    message = replayed["replayed"]["error"]["message"]
    assert message.startswith(f"unrecorded IO: {what}") and message.endswith(f"at {where}")
    assert _effects(app, listener) == before  # nothing left the process

    toml = app.root / "flux.toml"
    toml.write_text(toml.read_text().replace("[app]\n", "[app]\nfixed = true\n"))
    code, _, err = _cli(app, "resume", bad[:18])
    assert code != 0 and "unrecorded IO" in err, err
    assert _effects(app, listener) == before
    with psycopg.connect(app.db) as conn:
        resumed = conn.execute("SELECT count(*) FROM flux.trace_requests WHERE resumed_from = %s",
                               [bad]).fetchone()
    assert resumed == (0,)  # resume refused and changed nothing


async def test_step_runs_once_and_replays_and_resumes_from_the_tape(
        app: Shop, stub: Stub) -> None:
    status, body, rid = await app.post("notify", {"to": "ann@example.com"})
    assert (status, body) == (200, {"receipt": "queued ann@example.com"})
    assert stub.count == 1
    record = app.record(rid)
    [step] = [e for e in record["tape"] if e["kind"] == "step"]
    assert (step["key"], step["file"], step["line"]) == (
        "mail", "functions/notify.py", _line(app, "notify", "# the step"))
    assert not [s for s in record["spans"] if s["kind"] == "unrecorded"]

    code, replayed, err = _cli(app, "replay", rid[:18], "--expect", "same")
    assert code == 0 and replayed["passed"], (err, replayed)
    assert stub.count == 1

    status, _, bad = await app.post("notify_async", {"to": "bo@example.com", "fail": True})
    assert status == 500 and stub.count == 2
    code, incident, err = _cli(app, "incident", "replay", "--ids", bad[:18])
    assert incident is not None and incident["replayed"] == 1, err
    toml = app.root / "flux.toml"
    toml.write_text(toml.read_text().replace("[app]\n", "[app]\nfixed = true\n"))
    code, resumed, err = _cli(app, "resume", bad[:18])
    assert code == 0 and resumed["status"] == "ok", (err, resumed)
    assert resumed["output"] == {"receipt": "queued bo@example.com"}
    assert stub.count == 2  # the step ran once in all


async def test_step_exception_replays_as_the_same_exception(app: Shop, stub: Stub) -> None:
    status, body, rid = await app.post("notify", {"to": "cy@bad.example"})
    assert (status, body) == (200, {"rejected": ["cy@bad.example", "550 mailbox unavailable"],
                                    "to": "cy@bad.example"})
    code, replayed, err = _cli(app, "replay", rid[:18], "--expect", "same")
    assert code == 0 and replayed["passed"], (err, replayed)
    assert replayed["replayed"]["output"] == body
    assert stub.count == 1
