"""Queue throughput: Flux workers running a no-op job, against a bare ``SKIP LOCKED`` loop
on the same table, with one and with two worker processes.

Setup, all in a temporary directory under /tmp that is removed at the end (also on Ctrl-C
and SIGTERM):

- a copy of ``tests/jobs/app`` (its ``noop`` function; ``[queue]`` concurrency 4, poll
  interval 0.01 s, no cron), and one embedded PostgreSQL in its ``.flux`` directory with
  the flux schema migrated and the app's schema applied;
- for each run, ``flux.jobs`` is emptied (``TRUNCATE … CASCADE``, which empties
  ``flux.job_attempts`` too) and refilled with ``--jobs`` fresh no-op jobs in one
  ``INSERT … SELECT generate_series``, then analysed.

Each run starts its worker processes (spawned children), waits until all of them are ready
(for Flux: a ``Runtime`` started and the functions loaded, as ``flux worker`` does), then
lets them go at once and waits until every job is ``done``. A run's time is measured by the
database, from the first claim to the last job marked done.

- **flux**: ``Worker(runtime, QueueConfig(...)).run()`` in each process, the pool sized as
  ``flux worker`` sizes it. Each job is claimed (``sql/queries/jobs.sql`` ``claim``), run as a
  recorded execution, and marked done. A no-op job opens no transaction: its record and its
  done-mark travel with the worker's next claim, one round trip for several jobs, and quick
  jobs are claimed ahead of free slots (flux/jobs/_worker.py). The line shows how many jobs
  a claim statement took on average.
- **bare**: the same number of asyncio tasks per process (the queue concurrency), each on
  its own psycopg connection, looping ``SELECT id … FOR UPDATE SKIP LOCKED LIMIT 1``,
  ``UPDATE`` status to ``done``, ``COMMIT``. No job function, no record: the floor.

After each run every job must have run exactly once: for Flux, one ``flux.job_attempts`` row
per job and one ``ok`` execution of kind ``job`` per attempt; for the bare loop, attempts = 1
on every row.

    .venv/bin/python bench/queue_throughput.py [--jobs 3000] [--concurrency 4] [--rounds 3]

The last line is ``ratio: <flux jobs/s with one process / bare jobs/s with one process>``.
The exit status is 1 only when a check fails, never for the ratio itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import psycopg
from _children import Child, scratch_dir, spawn, stop

from flux._project import parse
from flux.capture._schema import apply_schema
from flux.store._database import ensure_database
from flux.store._embedded import EmbeddedServer
from flux.store._migrate import migrate

APP = Path(__file__).resolve().parent.parent / "tests" / "jobs" / "app"
DB = "bench_queue"
POLL_INTERVAL = 0.01  # the smallest QueueConfig allows; the bare loop idles as long
DONE_TIMEOUT = 120.0

INSERT_SQL = ("INSERT INTO flux.jobs (id, function, payload) "
              "SELECT gen_random_uuid(), 'noop', jsonb_build_object('i', g) "
              "FROM generate_series(1, %s) g")
DONE_SQL = "SELECT count(*) FROM flux.jobs WHERE status = 'done'"

# The bare loop: the ready half of Flux's claim query, then done, in one transaction.
# locked_until keeps the claim's transaction start, so the run's span can be measured.
BARE_CLAIM = ("SELECT id FROM flux.jobs WHERE status = 'queued' AND run_at <= now() "
              "ORDER BY run_at LIMIT 1 FOR UPDATE SKIP LOCKED")
BARE_DONE = ("UPDATE flux.jobs SET status = 'done', attempts = attempts + 1, "
             "locked_until = now(), locked_by = %s, updated_at = clock_timestamp() "
             "WHERE id = %s")

SPAN_SQL = {
    "flux": "SELECT extract(epoch FROM (SELECT max(updated_at) FROM flux.jobs) "
            "- (SELECT min(claimed_at) FROM flux.job_attempts))",
    "bare": "SELECT extract(epoch FROM max(updated_at) - min(locked_until)) FROM flux.jobs",
}


# -- the workers, each in a child process -----------------------------------------------


async def _work(role: str, options: dict[str, Any], pipe: Connection) -> None:
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    go = options["go"]
    if role.startswith("flux"):
        await _flux_worker(options, pipe, go, stopping)
    else:
        await _bare_worker(role, options, pipe, go, stopping)


async def _wait_for_go(go: Any, stopping: asyncio.Event) -> bool:
    while not go.is_set():
        if stopping.is_set():
            return False
        await asyncio.sleep(0.001)
    return True


async def _flux_worker(options: dict[str, Any], pipe: Connection, go: Any,
                       stopping: asyncio.Event) -> None:
    """What ``flux worker`` runs (``run_worker`` in flux/jobs/_worker.py), minus cron."""
    from flux.jobs._worker import QueueConfig, Worker
    from flux.runtime._runtime import Runtime

    project = parse(Path(options["project"]))
    config = QueueConfig.from_project(project)
    runtime = Runtime(project, options["conninfo"],
                      pool_size=max(4, config.concurrency * 2 + 2))
    try:
        errors = await runtime.start()
        if errors or "noop" not in runtime.registry.by_name:
            raise RuntimeError(f"the app did not load: {errors}")
        worker = Worker(runtime, config)
        pipe.send(("ready", 0))
        if not await _wait_for_go(go, stopping):
            return
        profiler = cProfile.Profile() if options.get("profile") else None
        if profiler is not None:
            profiler.enable()
        task = asyncio.create_task(worker.run())
        await stopping.wait()
        worker.stop()
        await task
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(options["profile"])
    finally:
        await runtime.close()


async def _bare_worker(role: str, options: dict[str, Any], pipe: Connection, go: Any,
                       stopping: asyncio.Event) -> None:
    conns = [await psycopg.AsyncConnection.connect(options["conninfo"])
             for _ in range(options["concurrency"])]
    try:
        pipe.send(("ready", 0))
        if not await _wait_for_go(go, stopping):
            return

        async def loop(conn: psycopg.AsyncConnection[Any], name: str) -> None:
            while not stopping.is_set():
                async with conn.transaction():
                    cur = await conn.execute(BARE_CLAIM)
                    row = await cur.fetchone()
                    if row is not None:
                        await conn.execute(BARE_DONE, (name, row[0]))
                if row is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), POLL_INTERVAL)

        await asyncio.gather(*(loop(conn, f"{role}:{i}") for i, conn in enumerate(conns)))
    finally:
        for conn in conns:
            await conn.close()


# -- a run --------------------------------------------------------------------------------

@dataclass
class Run:
    side: str  # flux | bare
    processes: int
    jobs: int
    span: float  # seconds, first claim to last done (database clock)
    wall: float  # seconds, go to all done seen by the poll (an upper bound)
    app_cpu: float  # CPU seconds of the worker processes
    db_cpu: float  # CPU seconds of PostgreSQL
    checks: list[tuple[str, bool]]

    @property
    def rate(self) -> float:
        return self.jobs / self.span if self.span > 0 else 0.0

    @property
    def ok(self) -> bool:
        return all(ok for _, ok in self.checks)


def _scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query.encode() if params is None else query, params).fetchone()
    return row[0] if row else None


def _reset(conninfo: str, jobs: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("TRUNCATE flux.jobs CASCADE")
        conn.execute(INSERT_SQL, (jobs,))
        conn.execute("ANALYZE flux.jobs")
        conn.execute("ANALYZE flux.job_attempts")


def _cpu(processes: list[psutil.Process]) -> dict[int, float]:
    out: dict[int, float] = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            out[process.pid] = times.user + times.system
    return out


def _db_processes(postmaster: int) -> list[psutil.Process]:
    root = psutil.Process(postmaster)
    return [root, *root.children(recursive=True)]


def _checks(conn: psycopg.Connection[Any], side: str, jobs: int, processes: int
            ) -> list[tuple[str, bool]]:
    done = _scalar(conn, DONE_SQL)
    checks = [(f"{done}/{jobs} jobs done", done == jobs)]
    if side == "flux":
        attempts = _scalar(conn, "SELECT count(*) FROM flux.job_attempts")
        twice = _scalar(conn, "SELECT count(*) FROM (SELECT job_id FROM flux.job_attempts "
                              "GROUP BY job_id HAVING count(*) > 1) AS t")
        runs = _scalar(conn, "SELECT count(*) FROM flux.job_attempts a JOIN flux.jobs j "
                             "ON j.id = a.job_id WHERE j.attempts = 1")
        executions = _scalar(conn, "SELECT count(*) FROM flux.job_attempts a "
                                   "JOIN flux.trace_requests t ON t.request_id = a.request_id "
                                   "WHERE t.kind = 'job' AND t.status = 'ok' "
                                   "AND t.function = 'noop'")
        workers = _scalar(conn, "SELECT count(DISTINCT split_part(worker, ':', 2)) "
                                "FROM flux.job_attempts")
        claims = _scalar(conn, "SELECT count(*) FROM (SELECT DISTINCT worker, claimed_at "
                               "FROM flux.job_attempts) AS c")
        checks += [(f"{attempts} job_attempts, {twice} jobs claimed twice",
                    attempts == jobs and twice == 0 and runs == jobs),
                   (f"{executions} ok executions recorded", executions == jobs),
                   (f"{workers}/{processes} processes took jobs", workers == processes),
                   (f"{jobs / max(1, claims):.1f} jobs per claim", True)]
    else:
        once = _scalar(conn, "SELECT count(*) FROM flux.jobs WHERE attempts = 1")
        workers = _scalar(conn, "SELECT count(DISTINCT split_part(locked_by, ':', 1)) "
                                "FROM flux.jobs")
        checks += [(f"{once} jobs with exactly one attempt", once == jobs),
                   (f"{workers}/{processes} processes took jobs", workers == processes)]
    return checks


def _run(side: str, processes: int, conninfo: str, postmaster: int, args: argparse.Namespace,
         project: Path, profile: str | None) -> Run:
    import multiprocessing

    _reset(conninfo, args.jobs)
    go = multiprocessing.get_context("spawn").Event()
    children: list[Child] = []
    try:
        for number in range(processes):
            options: dict[str, Any] = {"conninfo": conninfo, "go": go,
                                       "concurrency": args.concurrency,
                                       "project": str(project),
                                       "profile": profile if number == 0 else None}
            children.append(spawn(_work, f"{side}{processes}-{number}", options))
        workers = [psutil.Process(c.process.pid) for c in children if c.process.pid]
        db = _db_processes(postmaster)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            app_before, db_before = _cpu(workers), _cpu(db)
            start = time.perf_counter()
            go.set()
            deadline = start + DONE_TIMEOUT
            while _scalar(conn, DONE_SQL) < args.jobs:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{side} x{processes}: not all jobs done within "
                                       f"{DONE_TIMEOUT:g} s")
                if not all(c.process.is_alive() for c in children):
                    raise RuntimeError(f"{side} x{processes}: a worker process died")
                time.sleep(0.005)
            wall = time.perf_counter() - start
            app_after, db_after = _cpu(workers), _cpu(_db_processes(postmaster))
    finally:
        for child in children:
            stop(child)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        span = float(_scalar(conn, SPAN_SQL[side]) or 0.0)
        checks = _checks(conn, side, args.jobs, processes)
    app_cpu = sum(t - app_before.get(pid, 0.0) for pid, t in app_after.items())
    db_cpu = sum(t - db_before.get(pid, 0.0) for pid, t in db_after.items())
    return Run(side, processes, args.jobs, span, wall, app_cpu, db_cpu, checks)


def _line(run: Run) -> str:
    per_job = 1000.0 / run.jobs
    return (f"{run.side:<5} x{run.processes}  {run.jobs:>6} jobs  {run.span:>7.3f} s  "
            f"{run.rate:>8.1f} jobs/s  cpu/job app {run.app_cpu * per_job:.3f} ms "
            f"db {run.db_cpu * per_job:.3f} ms  "
            f"[{'; '.join(text for text, _ in run.checks)}: "
            f"{'ok' if run.ok else 'MISMATCH'}]")


# -- main ---------------------------------------------------------------------------------

def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Jobs per second of Flux workers running a no-op job, against a bare "
                    "SKIP LOCKED loop on the same table, with one and two processes.")
    parser.add_argument("--jobs", type=int, default=3000,
                        help="no-op jobs per run (default: 3000)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="jobs at once per process, both sides (default: 4)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs per side and process count, alternating; the median "
                             "counts (default: 3)")
    parser.add_argument("--profile", metavar="FILE",
                        help="cProfile the Flux worker of the one-process run (the first "
                             "round) into FILE (pstats format); that run's rate is skewed")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--jobs, --concurrency and --rounds must be at least 1")
    return args


def _copy_app(root: Path, concurrency: int) -> Path:
    shutil.copytree(APP, root, ignore=shutil.ignore_patterns(".flux", "__pycache__"))
    (root / "flux.toml").write_text(
        'name = "jobs"\n\n[queue]\n'
        f'concurrency = {concurrency}\npoll_interval = "{POLL_INTERVAL}s"\ncron = false\n')
    return root



def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    with scratch_dir("flux-bench-") as tmp:
        server: EmbeddedServer | None = None
        runs: list[Run] = []
        try:
            print(f"{args.jobs} no-op jobs per run, concurrency {args.concurrency} per process, "
                  f"poll interval {POLL_INTERVAL:g} s, {args.rounds} round(s)", flush=True)
            project = _copy_app(tmp / "app", args.concurrency)
            server = EmbeddedServer(project / ".flux")
            info, _ = server.start()
            ensure_database(info.conninfo("postgres"), DB)
            conninfo = info.conninfo(DB)
            migrate(conninfo)
            apply_schema(conninfo, parse(project).schema_dir)
            for number in range(args.rounds):
                for processes in (1, 2):
                    for side in ("bare", "flux"):
                        profile = (args.profile if side == "flux" and processes == 1
                                   and number == 0 else None)
                        run = _run(side, processes, conninfo, info.pid, args, project, profile)
                        runs.append(run)
                        print(_line(run), flush=True)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()

    def rate(side: str, processes: int) -> float:
        return statistics.median(r.rate for r in runs
                                 if r.side == side and r.processes == processes)

    print()
    print(f"{'side':<6} {'1 process':>12} {'2 processes':>12} {'2/1':>6}   (jobs/s)")
    for side in ("bare", "flux"):
        one, two = rate(side, 1), rate(side, 2)
        print(f"{side:<6} {one:>12.1f} {two:>12.1f} {two / one if one else 0.0:>6.2f}")
    ratio1 = rate("flux", 1) / rate("bare", 1) if rate("bare", 1) else 0.0
    ratio2 = rate("flux", 2) / rate("bare", 2) if rate("bare", 2) else 0.0
    healthy = all(r.ok for r in runs)
    print(f"every job ran exactly once in every run: {'ok' if healthy else 'MISMATCH'}")
    print(f"flux/bare with two processes: {ratio2:.3f}")
    print(f"flux/bare with one process: {ratio1:.3f} (the headline ratio)")
    if args.profile:
        print(f"profile of the one-process Flux worker: {args.profile} "
              "(that run's rate is skewed)")
    print(f"ratio: {ratio1:.3f}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
