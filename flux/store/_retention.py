"""Retention: day partitions made ahead, days past ``[record] retention`` dropped, pinned
executions kept.

``flux.trace_requests`` and ``flux.state_mutations`` are partitioned by UTC day (sql/0009).
Maintenance makes today's partition and the next two; a DEFAULT partition catches any row
no day partition covers, so an insert never waits for maintenance. ``gc`` drops each day
partition that lies wholly before ``now - retention`` (a partition drop, not a DELETE),
after copying the rows of pinned executions out of it into the default partition, and
deletes what the default partition holds past retention. ``flux record pin`` adds an
execution to ``flux.pins``; ``flux why``, ``flux trace`` and ``flux state history`` find it
after any gc.

Dropping a partition takes its table's ACCESS EXCLUSIVE lock, which executions' writes wait
for: gc asks for it with a short ``lock_timeout`` and, when the table is busy, leaves that
day for its next pass rather than hold up requests.

``flux serve`` and ``flux dev`` run maintenance and gc in the background, every hour and at
start, in one process per database at a time (the one holding an advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from flux._errors import ConfigError, DatabaseError
from flux._project import Project, parse_retention
from flux.store._database import connect, resolve
from flux.store._lookup import resolve_id
from flux.store._migrate import migrate
from flux.store._queries import load

log = logging.getLogger("flux.retention")

AHEAD_DAYS = 2  # partitions made beyond today
ELECTION_LOCK = 0x464C5558_0000000A  # "FLUX", 10: one background maintainer per database
INTERVAL = 3600.0  # seconds between background passes
LOCK_TIMEOUT = "1s"  # how long a drop may wait for its table, holding up writes meanwhile
ATTEMPTS = 3  # tries per partition in one gc before it is left for the next pass
TABLES = ("state_mutations", "trace_requests")  # a day's changes go before its records


@dataclass(frozen=True)
class Dropped:
    """One day partition gc dropped (or, with --dry-run, would drop)."""

    table: str
    partition: str
    day: dt.date
    rows: int
    pinned: int  # rows of pinned executions copied into the default partition

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "partition": f"flux.{self.partition}",
                "day": self.day.isoformat(), "rows": self.rows, "pinned_kept": self.pinned}


@dataclass
class GcReport:
    """What one gc pass did, or would do."""

    retention: dt.timedelta
    cutoff: dt.datetime
    dry_run: bool
    created: int = 0  # partitions made ahead (0 in a dry run)
    dropped: list[Dropped] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # partitions left for the next pass
    expired_default: dict[str, int] = field(default_factory=dict)
    signatures: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "retention": format_duration(self.retention),
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "created": self.created,
            "dropped": [d.as_json() for d in self.dropped],
            "busy": [f"flux.{name}" for name in self.busy],
            "expired_default": self.expired_default,
            "signatures": self.signatures,
        }


def format_duration(value: dt.timedelta) -> str:
    """A retention as flux.toml spells it: ``14d`` or ``36h``."""
    hours = int(value.total_seconds() // 3600)
    return f"{hours // 24}d" if hours % 24 == 0 else f"{hours}h"


# -- maintenance and gc ------------------------------------------------------------------


def ensure_partitions(conn: psycopg.Connection[Any], ahead: int = AHEAD_DAYS,
                      lock_timeout: str = LOCK_TIMEOUT) -> int:
    """Make today's partitions and the next ``ahead`` days'; returns how many were new.
    Attaching one waits for readers of the default partition, at most ``lock_timeout``
    (then psycopg's LockNotAvailable: partitions are made days ahead, so a later pass
    does it)."""
    q = load("retention")
    with conn.transaction():
        conn.execute(q.lock_timeout, {"timeout": lock_timeout})
        row = conn.execute(q.ensure_partitions, {"ahead": ahead}).fetchone()
    return int(row[0]) if row else 0


def maintain(conninfo: str) -> int:
    """Partitions ahead, as ``flux serve`` and ``flux dev`` do at start; never fails the
    start for a busy table."""
    with connect(conninfo, autocommit=True) as conn:
        try:
            return ensure_partitions(conn)
        except psycopg.errors.LockNotAvailable:
            log.warning("partitions ahead: a table was busy; the next pass makes them")
            return 0
        except psycopg.errors.InsufficientPrivilege:
            # A flux_runtime member (sql/0010) may not create tables: the owner's `flux gc`
            # makes them; meanwhile rows go to the default partition.
            log.warning("partitions ahead: only the owner of the flux schema may make "
                        "them; run `flux gc` as the owner")
            return 0


def partitions(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The partitions of both tables: parent, name, day (None for the default), bytes."""
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(load("retention").partitions))


def gc(conninfo: str, retention: dt.timedelta | None, *, dry_run: bool = False,
       lock_timeout: str = LOCK_TIMEOUT) -> GcReport:
    """Drop what is older than ``retention`` but pinned executions; with ``dry_run``, only
    say what would go."""
    retention = _required(retention)
    q = load("retention")
    with connect(conninfo, autocommit=True) as conn:
        row = conn.execute(q.cutoff, {"retention": retention}).fetchone()
        assert row is not None
        cutoff, _today = row
        report = GcReport(retention=retention, cutoff=cutoff, dry_run=dry_run)
        if not dry_run:
            with contextlib.suppress(psycopg.errors.LockNotAvailable):  # next pass does it
                report.created = ensure_partitions(conn)
        expired = [p for p in partitions(conn) if p["day"] is not None
                   and _day_end(p["day"]) <= cutoff]
        # A day's changes are dropped before its records: if the records' drop must wait
        # for the next pass, no change is left without its record meanwhile.
        expired.sort(key=lambda p: (p["day"], TABLES.index(p["parent"])))
        for part in expired:
            name = sql.Identifier(part["name"])
            rows = _count(conn, q.count_rows, name)
            pinned = _count(conn, q.count_pinned, name)
            if not dry_run and not _drop(conn, part["parent"], part["day"], lock_timeout):
                report.busy.append(part["name"])
                continue
            report.dropped.append(Dropped(part["parent"], part["name"], part["day"], rows,
                                          pinned))
        params = {"cutoff": cutoff}
        if dry_run:
            report.expired_default = {
                "trace_requests": _one(conn, q.expired_in_default_traces, params),
                "state_mutations": _one(conn, q.expired_in_default_mutations, params)}
            report.signatures = _one(conn, q.expired_signatures, params)
            return report
        with conn.transaction():
            report.expired_default = {
                "state_mutations": conn.execute(q.delete_default_mutations, params).rowcount,
                "trace_requests": conn.execute(q.delete_default_traces, params).rowcount}
            report.signatures = conn.execute(q.delete_signatures, params).rowcount
    return report


def gc_project(project: Project, *, retention: str | None = None, dry_run: bool = False
               ) -> GcReport:
    """``flux gc``: the project's database brought up to date (unless a dry run), then gc
    with ``retention`` (flux.toml spelling) or the project's ``[record] retention``."""

    keep = parse_retention(retention, "--retention") if retention else \
        project.record.retention
    keep = _required(keep)  # the one sentence comes before any database is started
    target = resolve(project, start=True, create=False)
    if not dry_run:
        migrate(target.conninfo)
    try:
        return gc(target.conninfo, keep, dry_run=dry_run)
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as exc:
        raise DatabaseError(f"the flux schema is missing or old in {target.display}",
                            hint="run `flux db migrate`") from exc


def _required(retention: dt.timedelta | None) -> dt.timedelta:
    if retention is None:
        raise ConfigError("no retention is set, so gc would keep everything",
                          hint='add retention = "14d" under [record] in flux.toml, or pass '
                               "--retention 14d")
    return retention


def _day_end(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def _count(conn: psycopg.Connection[Any], query: str, partition: sql.Identifier) -> int:
    composed = sql.SQL(query).format(partition=partition)
    row = conn.execute(composed).fetchone()
    return int(row[0]) if row else 0


def _one(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def _drop(conn: psycopg.Connection[Any], parent: str, day: dt.date, lock_timeout: str
          ) -> bool:
    """Drop one day partition, in a transaction of its own; False if its table stayed busy
    past ``lock_timeout`` on every attempt."""
    q = load("retention")
    for attempt in range(ATTEMPTS):
        try:
            with conn.transaction():
                conn.execute(q.lock_timeout, {"timeout": lock_timeout})
                conn.execute(q.drop_partition, {"parent": parent, "day": day})
            return True
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            time.sleep(0.2 * (attempt + 1))
    return False


# -- pins --------------------------------------------------------------------------------


def pin(conn: psycopg.Connection[Any], prefix: str, note: str | None = None
        ) -> dict[str, Any]:
    """Keep the execution ``prefix`` names past retention; its pin (request_id, pinned_at,
    note). Pinning again keeps the first time and replaces the note if one is given."""
    request_id = resolve_id(conn, prefix)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(load("retention").pin,
                          {"request_id": request_id, "note": note}).fetchone()
    assert row is not None
    return {"request_id": row["request_id"], "pinned_at": row["pinned_at"].isoformat(),
            "note": row["note"]}


def unpin(conn: psycopg.Connection[Any], prefix: str) -> tuple[str, bool]:
    """Let retention take the execution again; (its id, whether it was pinned)."""
    request_id = resolve_id(conn, prefix)
    with conn.transaction():
        row = conn.execute(load("retention").unpin, {"request_id": request_id}).fetchone()
    return request_id, bool(row and row[0])


# -- in the background -------------------------------------------------------------------


def run_pass(conninfo: str, retention: dt.timedelta | None
             ) -> tuple[bool, GcReport | None]:
    """One background pass, if this process wins the election: partitions ahead, then gc
    when a retention is set. Returns (elected, gc's report or None)."""
    q = load("retention")
    with connect(conninfo, autocommit=True) as conn:
        row = conn.execute(q.try_lock, {"key": ELECTION_LOCK}).fetchone()
        if not row or not row[0]:
            return False, None
        try:
            if retention is None:
                ensure_partitions(conn)
                return True, None
            return True, gc(conninfo, retention)
        finally:
            conn.execute(q.unlock, {"key": ELECTION_LOCK})


class Background:
    """Maintenance and gc of a serving process (flux serve, flux dev): a pass at start,
    then one every ``interval`` seconds, until ``stop()``."""

    def __init__(self, conninfo: str, retention: dt.timedelta | None, *,
                 interval: float = INTERVAL) -> None:
        self.conninfo = conninfo
        self.retention = retention
        self.interval = interval
        self.passes = 0  # passes this process ran as the elected one
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Background:
        self._task = asyncio.create_task(self._run(), name="flux-retention")
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                elected, report = await asyncio.to_thread(run_pass, self.conninfo,
                                                          self.retention)
            except Exception as exc:  # the database restarting must not end the task
                log.warning("retention pass failed: %s", exc)
            else:
                self.passes += elected
                if report is not None and (report.dropped or report.busy):
                    log.info("retention: dropped %d partition(s), %d busy",
                             len(report.dropped), len(report.busy))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stop.wait()

    async def stop(self) -> None:
        """Stop after the pass in flight, if any (a pass is short: lock waits are bounded)."""
        self._stop.set()
        if self._task is not None:
            await self._task
