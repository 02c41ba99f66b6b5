"""`flux init`, `flux dev` and `flux serve` as real processes over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import aiohttp
import psutil
import psycopg

from flux.store._embedded import EmbeddedServer
from tests.fixtures.shop import SECRET, copy_project


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: object) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), \
                response.headers["x-flux-request-id"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers["x-flux-request-id"]


def test_init_dev_request_reload_and_clean_stop(make_project, flux_cli, flux_process) -> None:
    parent = make_project()
    assert flux_cli(["init", "demo"], parent).returncode == 0
    root = parent / "demo"
    assert {p.name for p in root.iterdir()} >= {"flux.toml", "functions", "schema",
                                                 ".gitignore", "README.md"}
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "."], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
    port = free_port()
    dev = flux_process(["dev", "--port", str(port)], root)
    dev.wait_for("ready")
    status, body, rid = post(f"http://127.0.0.1:{port}/create_user",
                             {"email": "ada@example.com"})
    assert status == 200 and body["email"] == "ada@example.com"
    dev.wait_for(rid[:18])  # the request line names the execution

    handler = root / "functions" / "create_user.py"
    handler.write_text(handler.read_text().replace("return user", 'return {**user, "v": 2}'))
    line = dev.wait_for("create_user reloaded")
    assert line.strip().startswith("✓ create_user reloaded (") and line.endswith("ms)")
    status, body, second = post(f"http://127.0.0.1:{port}/create_user",
                                {"email": "b@example.com"})
    assert status == 200 and body["v"] == 2
    info = EmbeddedServer(root / ".flux").running()
    assert info is not None
    with psycopg.connect(info.conninfo("flux")) as conn:
        versions = dict(conn.execute(
            "SELECT request_id::text, (code_sha, code_dirty)::text FROM flux.trace_requests"
        ).fetchall())
    assert versions[rid] == f"({head},f)"  # the committed code
    assert versions[second] == f"({head},t)"  # the edited, uncommitted code

    handler.write_text("def broken(:\n")
    assert "SyntaxError at line 1" in dev.wait_for("create_user.py:")
    status, _, _ = post(f"http://127.0.0.1:{port}/create_user", {"email": "c@example.com"})
    assert status == 200  # the last good version keeps serving

    dev.signal(signal.SIGINT)
    assert dev.wait(30) == 0
    assert "stopped" in dev.output() and "Traceback" not in dev.output()
    assert not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == "zombie"


def test_dev_on_a_busy_port_is_one_sentence(make_project, flux_cli) -> None:
    parent = make_project()
    flux_cli(["init", "demo"], parent)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = flux_cli(["dev", "--port", str(port)], parent / "demo")
    assert result.returncode != 0
    assert f"error: port {port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def invariants(db: str, answered: dict[str, int]) -> None:
    """Every answered request has exactly one record with the status it was answered with;
    every committed mutation made by a request has that request's record."""
    with psycopg.connect(db) as conn:
        records = dict(conn.execute(
            "SELECT request_id::text, http_status FROM flux.trace_requests").fetchall())
        orphans = conn.execute(
            "SELECT count(*) FROM flux.state_mutations m WHERE m.request_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM flux.trace_requests t "
            "WHERE t.request_id = m.request_id)").fetchone()
    assert orphans == (0,)
    missing = {rid for rid in answered if rid not in records}
    assert not missing, f"{len(missing)} answered requests have no record"
    assert all(records[rid] == status for rid, status in answered.items())


async def load(url: str, count: int, concurrency: int, answered: dict[str, int],
               stop_after: int | None = None, on_stop: object = None) -> int:
    """Fire ``count`` requests, some failing on purpose; returns how many got no answer."""
    semaphore = asyncio.Semaphore(concurrency)
    lost = 0

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal lost
        async with semaphore:
            if stop_after is not None and len(answered) >= stop_after and callable(on_stop):
                on_stop()
            # Every fifth signup repeats an email: a constraint failure with a rollback.
            email = f"u{i - i % 5 if i % 5 == 4 else i}@example.com"
            try:
                async with session.post(f"{url}/signup", json={"email": email}) as response:
                    await response.read()
                    answered[response.headers["x-flux-request-id"]] = response.status
            except (aiohttp.ClientError, TimeoutError):
                lost += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(one(i, session) for i in range(count)))
    return lost


def test_concurrent_load_gives_one_record_per_request(db, provider, tmp_path, flux_process
                                                      ) -> None:
    root = copy_project(tmp_path / "shop", provider.url)
    port = free_port()
    serve = flux_process(["serve", "--port", str(port), "--host", "127.0.0.1"], root,
                         env={"DATABASE_URL": db, "SHOP_PAYMENTS_API_KEY": SECRET})
    serve.wait_for("ready")
    answered: dict[str, int] = {}
    lost = asyncio.run(load(f"http://127.0.0.1:{port}", 200, 32, answered))
    assert lost == 0 and len(answered) == 200
    assert sorted(set(answered.values())) == [200, 500]
    invariants(db, answered)
    serve.signal(signal.SIGTERM)
    assert serve.wait(30) == 0


def test_sigkill_during_load_loses_no_answered_record(db, provider, tmp_path, flux_process
                                                      ) -> None:
    root = copy_project(tmp_path / "shop", provider.url)
    port = free_port()
    env = {"DATABASE_URL": db, "SHOP_PAYMENTS_API_KEY": SECRET}
    args = ["serve", "--port", str(port), "--host", "127.0.0.1"]
    serve = flux_process(args, root, env=env)
    serve.wait_for("ready")
    answered: dict[str, int] = {}
    lost = asyncio.run(load(f"http://127.0.0.1:{port}", 400, 32, answered, stop_after=60,
                            on_stop=lambda: serve.proc.poll() is None and
                            serve.signal(signal.SIGKILL)))
    assert serve.wait(10) == -signal.SIGKILL
    assert lost > 0 and len(answered) >= 60
    restarted = flux_process(args, root, env=env)
    restarted.wait_for("ready")
    more: dict[str, int] = {}
    assert asyncio.run(load(f"http://127.0.0.1:{port}", 50, 16, more)) == 0
    invariants(db, {**answered, **more})


def test_serve_with_workers_shares_one_port(db, provider, tmp_path: Path, flux_process
                                            ) -> None:
    root = copy_project(tmp_path / "shop", provider.url)
    port = free_port()
    serve = flux_process(["serve", "--port", str(port), "--host", "127.0.0.1",
                          "--workers", "2"], root,
                         env={"DATABASE_URL": db, "SHOP_PAYMENTS_API_KEY": SECRET})
    serve.wait_for("2 workers serving")
    answered: dict[str, int] = {}
    deadline = 60
    while deadline and not answered:
        with contextlib.suppress(OSError):
            asyncio.run(load(f"http://127.0.0.1:{port}", 40, 8, answered))
        deadline -= 1
    invariants(db, answered)
    children = psutil.Process(serve.proc.pid).children()
    assert len(children) == 2
    serve.signal(signal.SIGTERM)
    assert serve.wait(30) == 0
