"""The queue worker: runs the jobs of ``flux.jobs``, each attempt as one recorded execution.

A worker fills its free slots (``[queue] concurrency``, default 4) with one statement that
claims as many due jobs as there are free slots, with ``FOR UPDATE SKIP LOCKED``, so any
number of workers in any number of processes share one table and never run a job twice at
once. The claim — status ``running``, a lease (``locked_until``), ``attempts + 1`` and the
attempt's request id — commits before the jobs run. Then:

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

A job's success is a fact once its execution commits: the record (status ``ok``, keyed by the
attempt's request id, which the job row names) commits with the data it wrote. Marking the
job ``done`` is bookkeeping that follows, so the worker does it in batches: the successes
since its last claim ride along in its next claim statement (``sql/queries/jobs.sql``), and
what is left when it stops goes in one last statement. A worker that dies between the
commit and the mark leaves the job ``running``; when its lease runs out, the next claim sees
the attempt's ``ok`` record and marks the job done instead of running it again. A job's
effects are therefore exactly-once across a crash; an attempt that failed, or died before
it committed, runs again (its rolled-back work is kept in its record).

A success that opened no transaction (it wrote nothing to the database) has only its record
to write. The run loop keeps such records (``records_to``) and writes them in the round trip
of its next claim, one multi-row INSERT pipelined before the claim statement: both run in
one implicit transaction, so each record commits together with its job's done-mark, and
the claim, the records and the marks of several jobs cost one round trip. A worker that
dies before that leaves the job ``running`` without a record; after its lease the job runs
again — it had written nothing, so nothing is done twice in the database.

While recent attempts were quick (under ``QUICK`` seconds), the worker claims up to twice
as many jobs again ahead of free slots, so that the next claim's round trip overlaps with
running the jobs the last one handed over, and one claim serves several turnovers. A job
claimed ahead starts within ``AHEAD_WAIT`` seconds of its claim (its lease counts from the
claim) or is queued again unrun (``release``), as are those left when the worker stops.

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
import collections
import contextlib
import datetime as dt
import logging
import os
import random
import signal
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from flux._errors import ConfigError, DatabaseError, DatabaseUnavailable, Overloaded
from flux._ids import new_request_id
from flux.jobs._cron import Scheduler
from flux.runtime._context import parse_delay
from flux.runtime._executor import Invocation, execute
from flux.runtime._runtime import Runtime, records_to
from flux.store._availability import connection_lost
from flux.store._database import first_line
from flux.store._queries import load
from flux.store._record import ExecutionRecord
from flux.store._record_batch import insert_records

if TYPE_CHECKING:
    from flux._project import Project
    from flux.runtime._executor import Outcome

log = logging.getLogger("flux.worker")

JITTER = 0.25
LEASE_MARGIN = 10.0  # seconds past a function's timeout before its job may be claimed again
# Claiming ahead: a job claimed before a slot is free for it starts within AHEAD_WAIT
# seconds of its claim (well inside LEASE_MARGIN) or is queued again unrun; the worker
# claims ahead AHEAD jobs for each recent attempt that took less than QUICK seconds.
AHEAD = 2  # jobs claimed ahead per quick recent attempt
AHEAD_WAIT = 2.0
QUICK = 0.2


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
        self._busy = 0  # slots taken: an attempt frees its slot before its task ends
        self._ready: collections.deque[tuple[float, Claimed]] = collections.deque()
        self._quick: collections.deque[bool] = collections.deque()  # of recent attempts
        self._done: list[tuple[uuid.UUID, uuid.UUID]] = []  # successes not yet marked done
        self._records: list[ExecutionRecord] = []  # of successes in _done, not yet written
        self._q = load("jobs")
        self._claims: dict[int, bytes] = {}  # the claim's text for each batch size

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Claim and run jobs until ``stop()``; then let the jobs in flight finish."""
        slots = max(1, self.config.concurrency)
        self._quick = collections.deque(maxlen=slots)
        try:
            while not self._stop.is_set():
                self._wake.clear()
                await self._start_ready(slots)
                # Claim ahead: twice as many more jobs as recent attempts were quick, so that
                # the next claim's round trip overlaps with running the jobs the last one
                # handed over; claim once what is ahead no longer fills every slot, so that
                # one claim takes (and one transaction records) several slots' worth.
                want = slots + AHEAD * sum(self._quick) - self._busy - len(self._ready)
                jobs: list[Claimed] = []
                claiming = want > 0 and len(self._ready) < slots
                if claiming:
                    try:
                        jobs = await self.claim_many(want)
                    except (DatabaseError, Overloaded, psycopg.OperationalError) as exc:
                        # The database restarting must not end the worker; the runtime logs
                        # an outage once, so only other refusals are worth a line here.
                        if not isinstance(exc, DatabaseUnavailable):
                            log.warning("claiming a job failed: %s", first_line(exc))
                    except Exception:
                        log.exception("claiming a job failed")
                    claimed_at = asyncio.get_running_loop().time()
                    self._ready.extend((claimed_at, job) for job in jobs)
                    await self._start_ready(slots)
                if claiming and len(jobs) == want:
                    continue  # as many as asked for: there may be more
                await self._idle()
        finally:
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
            if self._ready:
                await self._release([job for _, job in self._ready])
                self._ready.clear()
            await self._flush()

    async def _start_ready(self, slots: int) -> None:
        """Start jobs claimed ahead in the free slots; give back those that waited longer
        than AHEAD_WAIT for one (their lease was measured from the claim)."""
        now = asyncio.get_running_loop().time()
        stale: list[Claimed] = []
        while self._ready and (self._busy < slots or now - self._ready[0][0] > AHEAD_WAIT):
            claimed_at, job = self._ready.popleft()
            if now - claimed_at > AHEAD_WAIT:
                stale.append(job)
                continue
            self._busy += 1
            task = asyncio.create_task(self._attempt(job))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if stale:
            self._quick.clear()  # the slots are slow to free: claim ahead no more for now
            await self._release(stale)

    async def _release(self, jobs: list[Claimed]) -> None:
        """Queue jobs claimed ahead again, unrun (their attempt is given back). If the
        database refuses, they run again once their leases run out."""
        try:
            async with self.runtime.connection(patience=self.runtime.pool_timeout) as conn:
                await conn.execute(self._q.release,
                                   {"ids": [job.id for job in jobs],
                                    "request_ids": [job.request_id for job in jobs]})
        except Exception as exc:
            log.warning("%d jobs claimed ahead stay claimed until their leases run out: %s",
                        len(jobs), first_line(exc))

    async def _idle(self) -> None:
        wait = min(self.config.poll_interval, AHEAD_WAIT) if self._ready else \
            self.config.poll_interval
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    async def _attempt(self, job: Claimed) -> None:
        started = asyncio.get_running_loop().time()
        try:
            await self.run_job(job, defer_done=True, keep_record=True)
        except (DatabaseError, Overloaded, psycopg.OperationalError) as exc:
            # Its execution was not recorded, or the job could not be settled: the job stays
            # claimed and runs again once its lease runs out (at least once, as always).
            log.warning("job %s (%s) was left to run again after its lease: %s", job.id,
                        job.function, first_line(exc))
        except Exception:
            log.exception("job %s (%s) failed outside its execution", job.id, job.function)
        finally:
            self._busy -= 1
            self._quick.append(asyncio.get_running_loop().time() - started < QUICK)
            self._wake.set()  # a slot is free: look for the next job at once

    def _lease(self) -> dt.timedelta:
        longest = max((s.timeout for s in self.runtime.registry.by_name.values()), default=0)
        return dt.timedelta(seconds=max(self.config.visibility_timeout, longest + LEASE_MARGIN))

    async def claim(self) -> Claimed | None:
        """Claim the next due job (or one whose lease ran out), committed before it runs."""
        jobs = await self.claim_many(1)
        return jobs[0] if jobs else None

    async def claim_many(self, limit: int) -> list[Claimed]:
        """Claim up to ``limit`` due jobs in one statement, committed before they run; the
        successes not yet marked done are marked in the same statement, and the records
        not yet written are inserted in the same transaction and round trip."""
        done, self._done = self._done, []
        records, self._records = self._records, []
        params = {"lease": self._lease(), "worker": self.name,
                  "request_ids": [new_request_id() for _ in range(limit)],
                  "done_ids": [d[0] for d in done], "done_requests": [d[1] for d in done]}
        claim = self._claims.get(limit)
        if claim is None:  # the batch size as a literal: see {limit} in sql/queries/jobs.sql
            claim = self._claims[limit] = sql.SQL(self._q.claim).format(
                limit=sql.Literal(limit)).as_bytes(None)
        try:
            async with self.runtime.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                if records:
                    # Pipelined on an autocommit connection: the INSERT and the claim run in
                    # one implicit transaction, ended by the pipeline's Sync. If either
                    # fails, neither commits.
                    async with conn.pipeline():
                        for statement in insert_records(records, conn.info.encoding):
                            await conn.execute(statement, prepare=False)
                        await cur.execute(claim, params)
                else:
                    await cur.execute(claim, params)
                rows = await cur.fetchall()
        except BaseException as exc:
            # Not marked, not written: they go with the next claim.
            self._done[:0] = done
            self._records[:0] = records
            if records and isinstance(exc, psycopg.Error) and not connection_lost(exc):
                await self._store_apart()  # a record the batch refused must not block it
            raise
        return [Claimed(id=str(row["id"]), function=row["function"], payload=row["payload"],
                        kind=row["kind"], attempt=row["attempts"],
                        max_attempts=row["max_attempts"],
                        parent_id=str(row["parent_id"]) if row["parent_id"] else None,
                        request_id=str(row["request_id"]), tenant=row["tenant"])
                for row in rows]

    async def run_job(self, job: Claimed, *, defer_done: bool = False,
                      keep_record: bool = False) -> str:
        """Run one claimed attempt and settle the job; returns its new status. With
        ``defer_done`` a success is marked done by the worker's next claim (or when it
        stops) rather than in a round trip of its own; with ``keep_record`` as well, the
        record of a success that opened no transaction is written in that claim's
        transaction too (the run loop does both)."""
        if keep_record and defer_done:
            # The sink reads self._records when it is called: a claim may have taken the
            # list (and left a new one) while the job ran.
            with records_to(job.request_id, lambda record: self._records.append(record)):
                return await self._run_job(job, defer_done=True)
        return await self._run_job(job, defer_done=defer_done)

    async def _run_job(self, job: Claimed, *, defer_done: bool) -> str:

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
            if defer_done:
                self._done.append((uuid.UUID(job.id), uuid.UUID(job.request_id)))
            else:
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
        # One statement on an autocommit connection: its own transaction, one round trip.
        # last_request_id guards against a worker whose lease ran out settling a job
        # another worker has claimed since.
        async with self.runtime.connection(patience=self.runtime.pool_timeout) as conn:
            await conn.execute(getattr(self._q, query),
                               {"id": job.id, "request_id": job.request_id, **params})

    async def _store_apart(self) -> None:
        """Write the records kept for the next claim one by one, as executions store them
        (after the batch that held them failed for a reason other than the connection). A
        record that cannot be stored leaves its job to run again after its lease."""
        records, self._records = self._records, []
        for record in records:
            try:
                await self.runtime.store_record(record)
            except Exception as exc:
                log.warning("job attempt %s is left to run again after its lease: its "
                            "record was not stored: %s", record.request_id, first_line(exc))
                unrecorded = uuid.UUID(record.request_id)
                self._done = [d for d in self._done if d[1] != unrecorded]

    async def _flush(self) -> None:
        """Write the records and mark the successes not yet marked done (when the worker
        stops), in one transaction. If the database refuses, their jobs are marked by the
        first claim after their leases run out, or run again if their records were not
        written."""
        done, self._done = self._done, []
        records, self._records = self._records, []
        if not done:
            return
        params = {"done_ids": [d[0] for d in done], "done_requests": [d[1] for d in done]}
        try:
            async with self.runtime.connection(patience=self.runtime.pool_timeout) as conn, \
                    conn.pipeline():  # one implicit transaction, as in claim_many
                for statement in insert_records(records, conn.info.encoding):
                    await conn.execute(statement, prepare=False)
                await conn.execute(self._q.settle_done, params)
        except Exception as exc:
            if records and isinstance(exc, psycopg.Error) and not connection_lost(exc):
                self._done, self._records = done, records
                await self._store_apart()
                await self._flush()  # the records that were stored, and the other marks
                return
            log.warning("%d finished jobs stay running until their leases run out: %s",
                        len(done), first_line(exc))

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
