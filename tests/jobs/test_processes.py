"""Real processes: two `flux serve` sharing one database, and a worker killed mid-job."""

from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path

import psycopg

APP = Path(__file__).resolve().parent / "app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def copy_app(tmp_path: Path, *, cron: bool) -> Path:
    root = tmp_path / "jobs"
    shutil.copytree(APP, root, ignore=shutil.ignore_patterns(".flux", "__pycache__"))
    toml = (root / "flux.toml").read_text().replace(
        "cron = false", f'cron = {str(cron).lower()}\nvisibility_timeout = "1s"')
    (root / "flux.toml").write_text(toml)
    (root / "functions" / "slow.py").write_text(
        "import asyncio\n\nfrom flux import function\n\n\n@function(timeout=1)\n"
        "async def slow(ctx, input):\n    await asyncio.sleep(0.8)\n    return {'slept': True}\n")
    return root


def scalar(db: str, query: str) -> int:
    with psycopg.connect(db) as conn:
        return conn.execute(query).fetchone()[0]


def test_two_serve_processes_run_each_job_and_each_tick_once(db, tmp_path, flux_process
                                                             ) -> None:
    root = copy_app(tmp_path, cron=True)
    env = {"DATABASE_URL": db}
    servers = [flux_process(["serve", "--port", str(free_port()), "--host", "127.0.0.1"],
                            root, env=env) for _ in range(2)]
    for server in servers:
        server.wait_for("ready")
    with psycopg.connect(db, autocommit=True) as conn:
        # Due in two seconds: both servers' workers are polling by then, and compete.
        conn.execute("INSERT INTO flux.jobs (id, function, payload, run_at) "
                     "SELECT gen_random_uuid(), 'noop', jsonb_build_object('i', g), "
                     "now() + interval '2 seconds' FROM generate_series(1, 500) g")
    wait_until(lambda: scalar(db, "SELECT count(*) FROM flux.jobs WHERE function = 'noop' "
                                  "AND status = 'done'") == 500, 90, "500 jobs done")
    assert scalar(db, "SELECT count(*) FROM flux.trace_requests t JOIN flux.jobs j "
                      "ON j.last_request_id = t.request_id WHERE j.function = 'noop'") == 500
    assert scalar(db, "SELECT count(*) FROM flux.job_attempts a JOIN flux.jobs j "
                      "ON j.id = a.job_id WHERE j.function = 'noop'") == 500
    assert scalar(db, "SELECT count(DISTINCT worker) FROM flux.job_attempts") >= 2
    wait_until(lambda: scalar(db, "SELECT count(*) FROM flux.cron_ticks") >= 3, 30,
               "three cron ticks")
    time.sleep(1.5)  # let the last tick's job run
    # Ticks go on meanwhile: read them before and after the runs.
    ticks_before = scalar(db, "SELECT count(*) FROM flux.cron_ticks WHERE function = 'tick'")
    runs = scalar(db, "SELECT count(*) FROM flux.trace_requests WHERE kind = 'cron'")
    ticks = scalar(db, "SELECT count(*) FROM flux.cron_ticks WHERE function = 'tick'")
    assert ticks_before - 1 <= runs <= ticks  # the newest tick may still be running
    assert scalar(db, "SELECT count(*) FROM (SELECT job_id FROM flux.job_attempts a JOIN "
                      "flux.jobs j ON j.id = a.job_id WHERE j.kind = 'cron' GROUP BY job_id "
                      "HAVING count(*) > 1) AS twice") == 0
    for server in servers:
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0


def test_worker_killed_mid_job_the_job_runs_again_as_a_new_attempt(db, tmp_path,
                                                                   flux_process) -> None:
    root = copy_app(tmp_path, cron=False)
    for other in ("enqueue", "noop", "notify", "tick"):  # the lease covers the longest timeout: 1 s
        (root / "functions" / f"{other}.py").unlink()
    env = {"DATABASE_URL": db}
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO flux.jobs (id, function, max_attempts) "
                     "VALUES (gen_random_uuid(), 'slow', 3)")
    first = flux_process(["worker"], root, env=env)
    wait_until(lambda: scalar(db, "SELECT count(*) FROM flux.jobs WHERE status = 'running'")
               == 1, 30, "the job is claimed")
    first.signal(signal.SIGKILL)
    first.wait(10)
    assert scalar(db, "SELECT status FROM flux.jobs") == "running"  # held by the dead worker
    second = flux_process(["worker"], root, env=env)
    wait_until(lambda: scalar(db, "SELECT count(*) FROM flux.jobs WHERE status = 'done'") == 1,
               40, "the job runs again after its lease")
    assert scalar(db, "SELECT attempts FROM flux.jobs") == 2
    assert scalar(db, "SELECT count(*) FROM flux.job_attempts") == 2
    assert scalar(db, "SELECT count(*) FROM flux.trace_requests WHERE kind = 'job' "
                      "AND status = 'ok'") == 1
    second.signal(signal.SIGTERM)
    second.wait(30)
