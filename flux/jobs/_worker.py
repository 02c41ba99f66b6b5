"""The queue worker: runs the jobs of ``flux.jobs``, each attempt as one recorded execution.

A worker claims one job at a time per free slot (``[queue] concurrency``, default 4) with
``FOR UPDATE SKIP LOCKED``, so any number of workers in any number of processes share one
table and never run a job twice at once. The claim — status ``running``, a lease
(``locked_until``), ``attempts + 1`` and the attempt's request id — commits before the job
runs. Then:

- the job's function runs as an execution of kind ``job`` (``cron`` for a cron tick) whose
  ``parent_id`` is the execution that pushed the job, so ``flux why`` on any attempt leads
  back to the HTTP request;
- success marks the job ``done``; a failure queues it again after an exponential backoff
  with jitter (``backoff_base × 2^(attempt-1)``, capped at ``backoff_max``, ±25 %), until
  ``max_attempts`` (the function's ``retries`` + 1) is spent and the job is ``dead`` with
  its last error. A job whose function does not exist is dead at once.
- a worker that dies mid-job leaves the job ``running``; once its lease runs out
  (``visibility_timeout``, at least the function's timeout) another worker claims it again
  as a new attempt.

Delivery is at least once: the execution commits its data and record, then the job is
marked in a second transaction; a crash in between runs the job again.

``flux.toml``::

    [queue]
    concurrency = 4            # jobs at once per process (0: no worker in this process)
    backoff_base = "1s"
    backoff_max = "10m"
    visibility_timeout = "5m"
    poll_interval = "0.5s"
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from flux._errors import ConfigError, DatabaseError, DatabaseUnavailable, Overloaded
from flux._ids import new_request_id
from flux.jobs._cron import Scheduler
from flux.runtime._context import parse_delay
from flux.runtime._executor import Invocation, execute
from flux.runtime._runtime import Runtime
from flux.store._database import first_line
from flux.store._queries import load

if TYPE_CHECKING:
    from flux._project import Project
    from flux.runtime._executor import Outcome

log = logging.getLogger("flux.worker")

JITTER = 0.25
LEASE_MARGIN = 10.0  # seconds past a function's timeout before its job may be claimed again


@dataclass(frozen=True)
class QueueConfig:
    """The ``[queue]`` table of flux.toml, durations in seconds."""

    concurrency: int = 4
    backoff_base: float = 1.0
    backoff_max: float = 600.0
    visibility_timeout: float = 300.0
    poll_interval: float = 0.5
    cron: bool = True

    @classmethod
    def from_project(cls, project: Project) -> QueueConfig:
        raw = project.raw.get("queue", {})
        if not isinstance(raw, dict):
            raise ConfigError("[queue] in flux.toml must be a table")

        def seconds(key: str, default: float) -> float:
            value = raw.get(key)
            return default if value is None else parse_delay(value).total_seconds()

        concurrency = raw.get("concurrency", cls.concurrency)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 0:
            raise ConfigError(f"[queue] concurrency must be 0 or more, not {concurrency!r}")
        return cls(concurrency=concurrency,
                   backoff_base=seconds("backoff_base", cls.backoff_base),
                   backoff_max=seconds("backoff_max", cls.backoff_max),
                   visibility_timeout=seconds("visibility_timeout", cls.visibility_timeout),
                   poll_interval=max(0.01, seconds("poll_interval", cls.poll_interval)),
                   cron=bool(raw.get("cron", True)))


def backoff(attempt: int, base: float, cap: float,
            rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): ``base × 2^(attempt-1)``,
    capped, then spread ±25 % so that jobs failing together do not retry together."""
    delay = min(cap, base * 2 ** max(0, attempt - 1))
    return max(0.0, delay * (1 + JITTER * (2 * rand() - 1)))


@dataclass(frozen=True)
class Claimed:
    """One claimed job: what its attempt runs from."""

    id: str
    function: str
    payload: Any
    kind: str
    attempt: int
    max_attempts: int
    parent_id: str | None
    request_id: str
    tenant: str | None = None  # the enqueuing execution's


class Worker:
    """Runs the queue's jobs in one process until ``stop()``."""

    def __init__(self, runtime: Runtime, config: QueueConfig | None = None, *,
                 name: str | None = None) -> None:
        self.runtime = runtime
        self.config = config or QueueConfig.from_project(runtime.project)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._q = load("jobs")

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Claim and run jobs until ``stop()``; then let the jobs in flight finish."""
        slots = asyncio.Semaphore(max(1, self.config.concurrency))
        try:
            while not self._stop.is_set():
                await slots.acquire()
                if self._stop.is_set():
                    slots.release()
                    break
                try:
                    job = await self.claim()
                except (DatabaseError, Overloaded, psycopg.OperationalError) as exc:
                    # The database restarting must not end the worker; the runtime logs
                    # an outage once, so only other refusals are worth a line here.
                    if not isinstance(exc, DatabaseUnavailable):
                        log.warning("claiming a job failed: %s", first_line(exc))
                    job = None
                except Exception:
                    log.exception("claiming a job failed")
                    job = None
                if job is None:
                    slots.release()
                    await self._idle()
                    continue
                task = asyncio.create_task(self._attempt(job, slots))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        finally:
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.poll_interval):
                await self._wake.wait()

    async def _attempt(self, job: Claimed, slots: asyncio.Semaphore) -> None:
        try:
            await self.run_job(job)
        except (DatabaseError, Overloaded, psycopg.OperationalError) as exc:
            # Its execution was not recorded, or the job could not be settled: the job stays
            # claimed and runs again once its lease runs out (at least once, as always).
            log.warning("job %s (%s) was left to run again after its lease: %s", job.id,
                        job.function, first_line(exc))
        except Exception:
            log.exception("job %s (%s) failed outside its execution", job.id, job.function)
        finally:
            slots.release()
            self._wake.set()  # a slot is free: look for the next job at once

    def _lease(self) -> dt.timedelta:
        longest = max((s.timeout for s in self.runtime.registry.by_name.values()), default=0)
        return dt.timedelta(seconds=max(self.config.visibility_timeout, longest + LEASE_MARGIN))

    async def claim(self) -> Claimed | None:
        """Claim the next due job (or one whose lease ran out), committed before it runs."""
        request_id = str(new_request_id())
        async with self.runtime.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(self._q.claim, {"lease": self._lease(), "worker": self.name,
                                              "request_id": request_id})
            row = await cur.fetchone()
        if row is None:
            return None
        return Claimed(id=str(row["id"]), function=row["function"], payload=row["payload"],
                       kind=row["kind"], attempt=row["attempts"],
                       max_attempts=row["max_attempts"],
                       parent_id=str(row["parent_id"]) if row["parent_id"] else None,
                       request_id=request_id, tenant=row["tenant"])

    async def run_job(self, job: Claimed) -> str:
        """Run one claimed attempt and settle the job; returns its new status."""

        spec = self.runtime.registry.by_name.get(job.function)
        if spec is None:
            error = {"type": "NotFound", "code": "unknown_function",
                     "message": f"no function named {job.function!r} is loaded, so its job "
                                "cannot run", "request_id": None}
            await self._settle("mark_dead", job, error=error)
            return "dead"
        outcome: Outcome = await execute(self.runtime, Invocation(
            request_id=job.request_id, spec=spec, input=job.payload, kind=job.kind,
            method=None, route=spec.route, parent_id=job.parent_id, tenant=job.tenant))
        if outcome.status == "ok":
            await self._settle("mark_done", job)
            return "done"
        error = {**(outcome.error or {}), "request_id": job.request_id}
        if job.attempt < job.max_attempts:
            wait = backoff(job.attempt, self.config.backoff_base, self.config.backoff_max)
            await self._settle("mark_retry", job, error=error,
                               backoff=dt.timedelta(seconds=wait))
            return "queued"
        await self._settle("mark_dead", job, error=error)
        return "dead"

    async def _settle(self, query: str, job: Claimed, **params: Any) -> None:
        if "error" in params:
            params["error"] = Jsonb(params["error"])
        async with self.runtime.connection(patience=self.runtime.pool_timeout) as conn, \
                conn.transaction():
            # last_request_id guards against a worker whose lease ran out settling a job
            # another worker has claimed since.
            await conn.execute(getattr(self._q, query),
                               {"id": job.id, "request_id": job.request_id, **params})

    async def drain(self, *, timeout: float = 30.0) -> int:
        """Run due jobs one after another until none is due; returns how many ran (tests,
        and ``flux worker --drain``)."""
        ran = 0
        async with asyncio.timeout(timeout):
            while (job := await self.claim()) is not None:
                await self.run_job(job)
                ran += 1
        return ran


class Background:
    """The worker and the cron scheduler of a serving process, as asyncio tasks."""

    def __init__(self, runtime: Runtime, config: QueueConfig | None = None) -> None:
        self.config = config or QueueConfig.from_project(runtime.project)
        self.worker = Worker(runtime, self.config) if self.config.concurrency else None
        self.scheduler = Scheduler(runtime) if self.config.cron else None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> Background:
        if self.worker is not None:
            self._tasks.append(asyncio.create_task(self.worker.run(), name="flux-worker"))
        if self.scheduler is not None:
            self._tasks.append(asyncio.create_task(self.scheduler.run(), name="flux-cron"))
        return self

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, let the jobs in flight finish (up to ``grace`` seconds; a job cut
        short runs again after its lease), stop the scheduler."""
        if self.worker is not None:
            self.worker.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def start_jobs(runtime: Runtime) -> Background:
    """Start the queue worker and the cron scheduler of a serving process."""
    return Background(runtime).start()


async def run_worker(project: Project, conninfo: str, *,
                     concurrency: int | None = None, cron: bool = True) -> None:
    """``flux worker``: the worker (and the cron scheduler) alone, until SIGINT/SIGTERM."""

    config = QueueConfig.from_project(project)
    overrides: dict[str, Any] = {"cron": cron and config.cron}
    if concurrency is not None:
        overrides["concurrency"] = concurrency
    config = QueueConfig(**{**config.__dict__, **overrides})
    runtime = Runtime(project, conninfo, pool_size=max(4, config.concurrency * 2 + 2))
    jobs: Background | None = None
    try:
        errors = await runtime.start()
        for error in errors:
            log.error("%s: %s", error.file.name, error.message)
        jobs = Background(runtime, config).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if jobs is not None:
            await jobs.stop()
        await runtime.close()
