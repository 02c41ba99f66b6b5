"""Cron: ``@function(cron="*/5 * * * *")`` runs on a schedule, each tick once in all.

Expressions are parsed by ``croniter`` (five fields, or six with seconds last), in UTC.

**Once per tick, across processes.** Every Flux process runs a scheduler. For a tick it
inserts the row ``flux.cron_ticks (function, tick_at)`` with ``ON CONFLICT DO NOTHING`` and,
in the same statement, a job of kind ``cron`` for it; only the process whose insert won the
primary key gets the job back, so however many processes race, a tick is enqueued once. The
queue worker then runs it like any job (retries, backoff, dead state, visibility timeout),
recorded as an execution of kind ``cron`` whose input is ``{"tick_at": ISO time}``.

**Missed ticks (downtime, a stalled process): only the most recent one runs.** A scheduler
pass looks at the latest tick at or before now. If no process has enqueued it, it is
enqueued — so after an outage the schedule catches up with one run, as late as the outage
was long, and the ticks before it are skipped, never replayed in a burst. A new cron
function therefore runs once when first deployed, for its latest tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
from psycopg.types.json import Jsonb

from flux._errors import ConfigError, DatabaseError, DatabaseUnavailable, Overloaded
from flux._ids import new_request_id
from flux.store._database import first_line
from flux.store._queries import load

if TYPE_CHECKING:
    from flux._function import FunctionSpec
    from flux.runtime._runtime import Runtime

log = logging.getLogger("flux.cron")

MAX_SLEEP = 1.0  # a scheduler looks again at least this often (functions reload in dev)


def latest_tick(expression: str, now: dt.datetime) -> dt.datetime:
    """The latest tick of ``expression`` at or before ``now`` (UTC)."""
    # croniter: only when a cron function is served, off the CLI's start-up
    from croniter import croniter

    try:
        it = croniter(expression, now + dt.timedelta(microseconds=1))
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"invalid cron expression {expression!r}: {exc}") from exc
    tick: dt.datetime = it.get_prev(dt.datetime)
    return tick.astimezone(dt.UTC)


def next_tick(expression: str, now: dt.datetime) -> dt.datetime:
    """The first tick of ``expression`` after ``now`` (UTC)."""
    # croniter: only when a cron function is served, off the CLI's start-up
    from croniter import croniter

    tick: dt.datetime = croniter(expression, now).get_next(dt.datetime)
    return tick.astimezone(dt.UTC)


class Scheduler:
    """Enqueues the cron ticks of the loaded functions. ``now`` is the clock (tests pass
    their own); ``run()`` loops until ``stop()``, ``run_pass(now)`` does one pass."""

    def __init__(self, runtime: Runtime, *,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.runtime = runtime
        self.now = now
        self._seen: dict[str, dt.datetime] = {}  # function -> latest tick known enqueued
        self._bad: set[str] = set()  # expressions already reported invalid
        self._stop = asyncio.Event()
        self._q = load("jobs")

    def stop(self) -> None:
        self._stop.set()

    def _cron_functions(self) -> list[FunctionSpec]:
        return [s for s in self.runtime.registry.by_name.values() if s.cron]

    async def run_pass(self, now: dt.datetime | None = None
                       ) -> list[tuple[str, dt.datetime, str]]:
        """Enqueue the latest due tick of every cron function not enqueued yet (by any
        process); returns the (function, tick, job id) this pass enqueued."""
        now = now or self.now()
        enqueued = []
        for spec in self._cron_functions():
            assert spec.cron is not None
            try:
                tick = latest_tick(spec.cron, now)
            except ConfigError as exc:
                if spec.cron not in self._bad:
                    self._bad.add(spec.cron)
                    log.error("%s: %s", spec.name, exc.message)
                continue
            if self._seen.get(spec.name) == tick:
                continue
            job_id = await self._insert(spec, tick)
            self._seen[spec.name] = tick
            if job_id is not None:
                enqueued.append((spec.name, tick, job_id))
        return enqueued

    async def _insert(self, spec: FunctionSpec, tick: dt.datetime) -> str | None:
        async with self.runtime.connection() as conn, conn.transaction():
            cur = await conn.execute(self._q.insert_tick, {
                "function": spec.name, "tick_at": tick, "job_id": str(new_request_id()),
                "payload": Jsonb({"tick_at": tick.isoformat()}),
                "max_attempts": spec.retries + 1})
            row = await cur.fetchone()
        return str(row[0]) if row else None

    def _sleep_for(self, now: dt.datetime) -> float:
        soonest = MAX_SLEEP
        for spec in self._cron_functions():
            assert spec.cron is not None
            with contextlib.suppress(ConfigError, ValueError, KeyError):
                wait = (next_tick(spec.cron, now) - now).total_seconds()
                soonest = min(soonest, wait)
        return max(0.01, soonest)

    async def run(self) -> None:
        """Pass, sleep until the next tick (at most a second), again, until ``stop()``."""
        while not self._stop.is_set():
            now = self.now()
            try:
                await self.run_pass(now)
            except (DatabaseError, Overloaded, psycopg.OperationalError) as exc:
                # The database restarting must not end the scheduler; the tick is enqueued
                # by the next pass (the runtime logs an outage once).
                if not isinstance(exc, DatabaseUnavailable):
                    log.warning("cron pass failed: %s", first_line(exc))
            except Exception:
                log.exception("cron pass failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sleep_for(self.now())):
                    await self._stop.wait()
