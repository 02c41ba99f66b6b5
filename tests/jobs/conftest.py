"""A small app for the queue tests (tests/jobs/app), served in-process on a fresh database,
and helpers that drive a worker one attempt at a time."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from flux._project import parse
from flux.jobs._worker import QueueConfig, Worker
from flux.runtime._runtime import Runtime
from tests.fixtures.shop import Shop, serve_app

APP = Path(__file__).resolve().parent / "app"
FAST = QueueConfig(concurrency=4, backoff_base=0.2, poll_interval=0.02, cron=False)


@pytest.fixture
async def jobs_app(db: str, provider: Any, tmp_path: Path) -> AsyncIterator[Shop]:
    root = tmp_path / "jobs"
    shutil.copytree(APP, root, ignore=shutil.ignore_patterns(".flux", "__pycache__"))
    async with serve_app(root, db, provider) as app:
        yield app


@contextlib.asynccontextmanager
async def runtime_for(root: Path, db: str) -> AsyncIterator[Runtime]:
    """Another process's runtime over the same database."""
    runtime = Runtime(parse(root), db)
    errors = await runtime.start()
    assert not errors, errors
    try:
        yield runtime
    finally:
        await runtime.close()


async def next_attempt(worker: Worker, *, timeout: float = 10.0) -> str:
    """Wait until a job is due, run that one attempt; its job's new status."""
    async with asyncio.timeout(timeout):
        while (job := await worker.claim()) is None:
            await asyncio.sleep(0.02)
    return await worker.run_job(job)


def query(db: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(db, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []
