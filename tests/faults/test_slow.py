"""A slow database: statements past ``[database] statement_timeout`` end as recorded
timeouts while quick requests keep being served, and a function's own ``timeout`` cancels
its running query in the server, not only the coroutine waiting for it."""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.inspect._classify import classify
from tests.faults.load import Answer, Load, reconcile, tracebacks
from tests.fixtures.shop import Shop, serve_app

pytestmark = pytest.mark.fault

SLEEPY = Path(__file__).resolve().parents[1] / "fixtures" / "apps" / "sleepy"
SLEEPING = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
  AND query LIKE '%pg_sleep%'"""


@pytest.fixture
async def sleepy(db: str, provider: Any, tmp_path: Path) -> AsyncIterator[Shop]:
    """tests/fixtures/apps/sleepy: a pool of 4 and a statement_timeout of 300 ms."""
    root = tmp_path / "sleepy"
    shutil.copytree(SLEEPY, root, ignore=shutil.ignore_patterns(".flux", "__pycache__"))
    async with serve_app(root, db, provider) as app:
        yield app


def one_note_if_ok(answer: Answer) -> int:
    return 1


def still_sleeping(db: str) -> int:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(SLEEPING.encode()).fetchone()
    return int(row[0]) if row else 0


def assert_recorded_timeouts(app: Shop, answers: list[Answer]) -> None:
    assert answers and all(a.status == 504 and a.code == "timeout" for a in answers), \
        {(a.status, a.code) for a in answers}
    for answer in answers[:5]:
        record = app.record(answer.request_id)
        assert classify(record).cls == "timeout", classify(record)
        assert any(m["rolled_back"] for m in app.mutations(answer.request_id))


async def test_statement_timeout_ends_slow_queries_as_recorded_timeouts_while_others_run(
        sleepy: Shop, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    def request(n: int) -> tuple[str, Any]:
        if n % 3 == 0:  # a third of the load sleeps 5 s in the database
            return "nap", {"text": f"nap {n}", "seconds": 5}
        return "note", {"text": f"note {n}"}

    async with Load(sleepy.url, request, concurrency=8) as load:
        await load.until(lambda: load.count(lambda a: a.route == "nap") >= 12
                         and load.count(lambda a: a.route == "note" and a.status == 200) >= 40,
                         "12 naps cut short and 40 notes written beside them")
    reconcile(sleepy.db, load, writes=one_note_if_ok)
    assert_recorded_timeouts(sleepy, [a for a in load.answers if a.route == "nap"])
    assert {a.status for a in load.answers if a.route == "note"} == {200}
    assert still_sleeping(sleepy.db) == 0
    assert not tracebacks(caplog.records), tracebacks(caplog.records)


async def test_function_timeout_cancels_its_query_in_the_server(
        sleepy: Shop, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    def request(n: int) -> tuple[str, Any]:
        if n < 8:  # two rounds of four: every pooled connection held by a 30 s pg_sleep
            return "doze", {"text": f"doze {n}"}
        return "note", {"text": f"note {n}"}

    async with Load(sleepy.url, request, concurrency=4) as load:
        await load.until(lambda: load.count(lambda a: a.route == "doze") == 8
                         and load.count(lambda a: a.route == "note" and a.status == 200) >= 20,
                         "8 dozes timed out and 20 notes written on the freed connections")
    assert still_sleeping(sleepy.db) == 0  # cancelled in the server, not left running
    reconcile(sleepy.db, load, writes=one_note_if_ok)
    assert_recorded_timeouts(sleepy, [a for a in load.answers if a.route == "doze"])
    assert not tracebacks(caplog.records), tracebacks(caplog.records)
