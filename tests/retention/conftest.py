"""A small ledger app (tests/retention/app) served in-process, and a way to move recorded
executions back in time so that retention has something to drop."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.shop import FakeProvider, Shop, serve_app

APP = Path(__file__).resolve().parent / "app"


def make_app(target: Path, *, capture: str = "trigger", sample_rate: float = 1.0,
             retention: str | None = None) -> Path:
    shutil.copytree(APP, target, ignore=shutil.ignore_patterns(".flux", "__pycache__"))
    toml = target / "flux.toml"
    text = toml.read_text().replace('capture = "trigger"', f'capture = "{capture}"')
    text = text.replace("sample_rate = 1", f"sample_rate = {sample_rate}")
    if retention is not None:
        text += f'retention = "{retention}"\n'
    toml.write_text(text)
    return target


@pytest.fixture
def sample_rate() -> float:
    return 1.0


@pytest.fixture
async def ledger(db: str, provider: FakeProvider, tmp_path: Path, capture_mode: str,
                 sample_rate: float) -> AsyncIterator[Shop]:
    root = make_app(tmp_path / "ledger", capture=capture_mode, sample_rate=sample_rate)
    async with serve_app(root, db, provider) as app:
        yield app


def utc_day(at: dt.datetime) -> dt.date:
    return at.astimezone(dt.UTC).date()


def today(conn: psycopg.Connection) -> dt.date:
    return conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]


def make_day_partitions(conn: psycopg.Connection, first: dt.date, last: dt.date) -> None:
    day = first
    while day <= last:
        for table in ("trace_requests", "state_mutations"):
            conn.execute("SELECT flux.ensure_partition(%s, %s)", [table, day])
        day += dt.timedelta(days=1)


def age(conn: psycopg.Connection, request_id: str, days: int) -> str:
    """Move a recorded execution — its record and its changes — ``days`` back in time, as
    if it had run then: a UUIDv7 of that moment with the same random bits, started_at and
    committed_at shifted alike. Returns the new request id."""
    old = uuid.UUID(request_id)
    millis = (old.int >> 80) - days * 86_400_000
    new = str(uuid.UUID(int=(millis << 80) | (old.int & ((1 << 80) - 1))))
    shift = dt.timedelta(days=days)
    with conn.transaction():
        conn.execute(
            "INSERT INTO flux.trace_requests SELECT (jsonb_populate_record(t, "
            "jsonb_build_object('request_id', %s::uuid, 'started_at', t.started_at - %s))).* "
            "FROM flux.trace_requests t WHERE t.request_id = %s", [new, shift, request_id])
        conn.execute("DELETE FROM flux.trace_requests WHERE request_id = %s", [request_id])
        conn.execute("UPDATE flux.state_mutations SET request_id = %s, "
                     "committed_at = committed_at - %s WHERE request_id = %s",
                     [new, shift, request_id])
        conn.execute("UPDATE flux.failure_signatures SET request_id = %s, at = at - %s "
                     "WHERE request_id = %s", [new, shift, request_id])
    return new


def where(conn: psycopg.Connection, request_id: str) -> tuple[str | None, list[str]]:
    """The partition holding an execution's record, and those holding its changes."""
    record = conn.execute("SELECT tableoid::regclass::text FROM flux.trace_requests "
                          "WHERE request_id = %s", [request_id]).fetchone()
    changes = [r[0] for r in conn.execute(
        "SELECT DISTINCT tableoid::regclass::text FROM flux.state_mutations "
        "WHERE request_id = %s", [request_id])]
    return (record[0] if record else None), sorted(changes)
