"""``flux queue ls | show | retry | dead``: reading the queue, and sending a job round again.

Jobs are named like executions: by their UUIDv7 id or any unique prefix of it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from flux._errors import AmbiguousId, ConfigError, FluxError, NotFound
from flux.store._lookup import id_range
from flux.store._queries import load

STATUSES = ("queued", "running", "done", "dead")


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A row as JSON-ready values: ids as text, times as ISO strings."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, dt.datetime):
            value = value.isoformat()
        out[key] = value
    return out


def list_jobs(conn: psycopg.Connection[Any], *, status: str | None = None,
              function: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Jobs, newest first, optionally of one status and one function."""
    if status is not None and status not in STATUSES:
        raise ConfigError(f"--status must be one of {', '.join(STATUSES)}, not {status!r}")
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(load("jobs").list_jobs,
                           {"status": status, "function": function, "limit": limit}).fetchall()
    return [_plain(r) for r in rows]


def dead_jobs(conn: psycopg.Connection[Any], *, function: str | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
    """The dead-letter list: jobs that spent every attempt."""
    return list_jobs(conn, status="dead", function=function, limit=limit)


def resolve_job(conn: psycopg.Connection[Any], prefix: str) -> str:
    """The one job id that starts with ``prefix``."""
    try:
        low, high = id_range(prefix)
    except ConfigError:
        raise ConfigError(f"{prefix!r} is not a job id or a prefix of one") from None
    rows = conn.execute(load("jobs").jobs_in_range, {"low": low, "high": high}).fetchall()
    if not rows:
        raise NotFound(f"no job has an id starting with {prefix!r}",
                       hint="`flux queue ls` lists recent jobs")
    if len(rows) > 1:
        raise AmbiguousId(prefix, [str(r[0]) for r in rows])
    return str(rows[0][0])


def show_job(conn: psycopg.Connection[Any], prefix: str) -> dict[str, Any]:
    """A job, its attempts in order (each with the execution it was recorded as and how it
    ended), and the execution that pushed it."""
    q = load("jobs")
    job_id = resolve_job(conn, prefix)
    with conn.cursor(row_factory=dict_row) as cur:
        job = cur.execute(q.job, {"id": job_id}).fetchone()
        assert job is not None
        attempts = cur.execute(q.job_attempts, {"id": job_id}).fetchall()
        parent = None
        if job["parent_id"] is not None:
            parent = cur.execute(q.parent, {"request_id": job["parent_id"]}).fetchone()
    document = _plain(job)
    document["executions"] = [_plain(a) for a in attempts]
    document["parent"] = _plain(parent) if parent else None
    return document


def retry_job(conn: psycopg.Connection[Any], prefix: str) -> dict[str, Any]:
    """Queue a dead job (or a failed one waiting for its next attempt) to run now, with its
    attempts reset; returns the job as it now is."""
    q = load("jobs")
    job_id = resolve_job(conn, prefix)
    with conn.transaction():
        row = conn.execute(q.retry_job, {"id": job_id}).fetchone()
    if row is None:
        with conn.cursor(row_factory=dict_row) as cur:
            job = cur.execute(q.job, {"id": job_id}).fetchone()
        status = job["status"] if job else "gone"
        raise FluxError(f"job {job_id} is {status}: only a dead or failed job can be retried",
                        hint="`flux queue show` tells how its attempts ended")
    return show_job(conn, job_id)
