"""PostgreSQL restarted under load: while it is down every request gets a clean 503 with
its request id, the pool recovers by itself, and nothing is half-written — with trigger
capture, and with WAL capture whose consumer loses its connection too."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.capture._running import wait_caught_up
from tests.faults.conftest import RestartableServer, fault_shop
from tests.faults.load import Answer, Load, reconcile, tracebacks
from tests.fixtures.shop import Shop

pytestmark = pytest.mark.fault

ADMIN_TOKEN = "fault-admin-token"
JOBS_DONE = "SELECT count(*) FROM flux.jobs WHERE status = 'done'"
# Every recorded job attempt was claimed: a job's record never appears from nowhere.
ORPHAN_JOB_RECORDS = """
SELECT count(*) FROM flux.trace_requests t WHERE kind = 'job'
AND NOT EXISTS (SELECT 1 FROM flux.job_attempts a WHERE a.request_id = t.request_id)"""


def signup(n: int) -> tuple[str, Any]:
    return "signup", {"email": f"user{n}@fault.test"}


def one_user_each(answer: Answer) -> int:
    return 1  # a signup inserts one users row (its welcome-email job is in flux.jobs)


def scalar(db: str, query: str) -> int:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(query.encode()).fetchone()
    return int(row[0]) if row else 0


async def answers_while_down(shop: Shop, request_id: str
                             ) -> tuple[tuple[int, Any], tuple[int, Any, str]]:
    """What /health and the admin API say while the database is down."""
    async with shop.client.get(f"{shop.url}/health") as response:
        health = response.status, await response.json()
    async with shop.client.post(f"{shop.url}/_flux/executions/{request_id}/resume",
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                         "X-Flux-Client": "test"}) as response:
        admin = (response.status, await response.json(content_type=None),
                 response.headers["x-flux-request-id"])
    return health, admin


@pytest.mark.parametrize(("mode", "capture"), [
    ("fast", "trigger"), ("immediate", "trigger"), ("immediate", "wal")])
async def test_restart_under_load_answers_503_then_recovers_with_nothing_half_written(
        own_server: RestartableServer, provider: Any, tmp_path: Path, shop_secret: None,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, mode: str,
        capture: str) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("FLUX_ADMIN_TOKEN", ADMIN_TOKEN)
    db = await asyncio.to_thread(own_server.new_database)
    async with fault_shop(db, provider, tmp_path / "shop", capture=capture,
                          jobs=True) as shop, \
            Load(shop.url, signup, concurrency=12) as load:
        await load.until(lambda: load.count(lambda a: a.status == 200) >= 40,
                         "40 signups before the restart")
        await asyncio.to_thread(own_server.stop, mode)
        await load.until(lambda: load.count(lambda a: a.code == "unavailable") >= 20,
                         "20 requests refused while the database is down")
        down = await answers_while_down(shop, load.answers[0].request_id)
        before = len(load.answers)
        await asyncio.to_thread(own_server.start)
        jobs_done = await asyncio.to_thread(scalar, db, JOBS_DONE)
        await load.until(lambda: sum(a.status == 200 for a in load.answers[before:]) >= 40,
                         "40 signups after the restart (the pool reconnects by itself)")
        await load.stop()
        async with shop.client.get(f"{shop.url}/health") as response:
            health = await response.json()
        # The queue worker lived through it and goes on.
        for _ in range(500):
            if await asyncio.to_thread(scalar, db, JOBS_DONE) > jobs_done:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the queue worker ran no job after the restart")
        if capture == "wal":  # the consumer reconnected and stored every committed change
            await asyncio.to_thread(wait_caught_up, db)

    summary = reconcile(db, load, writes=one_user_each)
    assert summary.unrecorded >= 20
    assert scalar(db, "SELECT count(*) FROM users") == summary.mutations
    assert scalar(db, ORPHAN_JOB_RECORDS) == 0
    refusals = [a for a in load.answers if a.status == 503]
    assert all(isinstance(a.body, dict) and a.body["request_id"] == a.request_id
               and a.code == "unavailable" for a in refusals)
    assert health["database"] == "up" and health["refused"]["unavailable"] >= 20
    (health_status, health_down), (admin_status, admin, admin_id) = down
    assert health_status == 200 and health_down["database"] == "down"
    assert admin_status == 503 and admin["error"]["code"] == "unavailable"
    assert admin["request_id"] == admin_id
    assert not tracebacks(caplog.records), tracebacks(caplog.records)
