"""Cron: each tick runs once however many schedulers race for it; after downtime only the
most recent missed tick runs."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from flux._errors import ConfigError
from flux.jobs._cron import Scheduler, latest_tick
from flux.jobs._worker import Worker
from tests.jobs.conftest import FAST, query, runtime_for


def test_latest_tick_includes_now_and_supports_seconds() -> None:
    at = dt.datetime(2026, 1, 1, 12, 5, tzinfo=dt.UTC)
    assert latest_tick("*/5 * * * *", at) == at
    assert latest_tick("*/5 * * * *", at - dt.timedelta(seconds=1)) == at.replace(minute=0)
    assert latest_tick("* * * * * */2", at + dt.timedelta(seconds=3.5)) == \
        at + dt.timedelta(seconds=2)
    with pytest.raises(ConfigError):
        latest_tick("every minute", at)


async def test_each_tick_runs_once_across_two_schedulers(jobs_app) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    async with runtime_for(jobs_app.root, jobs_app.db) as other:
        schedulers = [Scheduler(jobs_app.runtime), Scheduler(other)]
        won = []
        for step in (0, 0.5, 1, 1.2, 2, 3, 3.9, 4):
            now = start + dt.timedelta(seconds=step)
            results = await asyncio.gather(*(s.run_pass(now) for s in schedulers))
            won += [item for result in results for item in result]
        ticks = [start + dt.timedelta(seconds=s) for s in range(5)]
        assert sorted(t for _, t, _ in won) == ticks

        # Downtime: 50 ticks missed; only the most recent one runs.
        later = start + dt.timedelta(seconds=54.5)
        results = await asyncio.gather(*(s.run_pass(later) for s in schedulers))
        assert [t for r in results for _, t, _ in r] == [start + dt.timedelta(seconds=54)]

        rows = query(jobs_app.db, "SELECT function, tick_at FROM flux.cron_ticks "
                                  "ORDER BY tick_at")
        assert [r["tick_at"] for r in rows] == [*ticks, start + dt.timedelta(seconds=54)]
        workers = [Worker(jobs_app.runtime, FAST), Worker(other, FAST)]
        ran = await asyncio.gather(*(w.drain() for w in workers))
        assert sum(ran) == 6
    runs = query(jobs_app.db, "SELECT kind, function, status, request ->> 'body' AS body "
                              "FROM flux.trace_requests ORDER BY request_id")
    assert {(r["kind"], r["function"], r["status"]) for r in runs} == {("cron", "tick", "ok")}
    assert len(runs) == 6


def test_a_bad_cron_expression_is_a_load_error_naming_the_line(tmp_path) -> None:
    from flux.runtime._loader import load_file

    module = tmp_path / "bad_cron.py"
    module.write_text("from flux import function\n\n\n@function(cron='every tuesday')\n"
                      "async def bad_cron(ctx, input):\n    return None\n")
    loaded = load_file(module)
    assert loaded.spec is None and loaded.error is not None
    assert "invalid cron expression 'every tuesday'" in loaded.error.message
    assert "line 4" in loaded.error.message
