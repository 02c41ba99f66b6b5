"""A store slower than the traffic: with ``flux.trace_requests`` locked by another session,
no record can be written, so executions pile up. Flux keeps at most ``[server]
max_inflight`` of them; the rest are refused at once with a 503 ``overloaded`` and
``Retry-After``, and a wait for a pooled connection ends after ``pool_timeout`` — memory
stays bounded, nothing queues without limit, and once the store is fast again every
answer reconciles with the records."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.faults.conftest import fault_shop
from tests.faults.load import Answer, Load, reconcile, tracebacks

pytestmark = pytest.mark.fault

SMALL = """
[database]
pool_size = 4
pool_timeout = "1s"

[server]
max_inflight = 8
"""


def signup(n: int) -> tuple[str, Any]:
    return "signup", {"email": f"shed{n}@fault.test"}


def one_user_each(answer: Answer) -> int:
    return 1


async def test_a_locked_store_sheds_load_with_503_and_loses_nothing(
        db: str, provider: Any, tmp_path: Path, shop_secret: None,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with fault_shop(db, provider, tmp_path / "shop", toml=SMALL) as shop, \
            Load(shop.url, signup, concurrency=24) as load:
        await load.until(lambda: load.count(lambda a: a.status == 200) >= 30,
                         "30 signups before the store slows down")
        lock = await psycopg.AsyncConnection.connect(db, autocommit=True)
        await lock.execute("BEGIN")
        await lock.execute("LOCK TABLE flux.trace_requests IN EXCLUSIVE MODE")
        before = len(load.answers)
        peak = 0
        for _ in range(2000):  # watch the gateway while the store is stuck
            peak = max(peak, shop.runtime.inflight)
            if load.count(lambda a: a.code == "overloaded" and a.recorded is False) >= 100 \
                    and any(a.status == 503 for a in load.answers[before:]
                            if "came free" in str(a.body)):
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError(f"no shedding while the store was locked: {load.statuses()}")
        await lock.execute("COMMIT")
        await lock.close()
        after = len(load.answers)
        await load.until(lambda: sum(a.status == 200 for a in load.answers[after:]) >= 30,
                         "30 signups once the store is fast again")
        await load.stop()
        async with shop.client.get(f"{shop.url}/health") as response:
            health = await response.json()

    assert peak <= 8
    summary = reconcile(db, load, writes=one_user_each)
    # Refused unrecorded (shed at the door, or no record could be stored), or — a wait for
    # a connection that ran out, whose record was stored later — recorded like any answer.
    shed = [a for a in load.answers if a.code == "overloaded" and a.recorded is False]
    assert len(shed) >= 100 and all(a.status == 503 for a in shed)
    assert health["refused"]["overloaded"] == len(shed) and health["inflight"] == 0
    assert summary.records == len(load.answers) - summary.unrecorded
    assert not tracebacks(caplog.records), tracebacks(caplog.records)
