"""A connection lost during an execution's commit: the server may or may not have committed.
The executor settles it by storing the failure record under the same request id — a
duplicate key means the original committed — so the client gets the truth either way."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.store._embedded import ServerInfo
from tests.faults.conftest import fault_shop
from tests.faults.load import tracebacks
from tests.faults.proxy import CommitCutter

pytestmark = pytest.mark.fault


@pytest.fixture
def cutter(pg_server: ServerInfo, db: str) -> Iterator[tuple[CommitCutter, str]]:
    """A proxy in front of the test's database, and the address through it."""
    proxy = CommitCutter(pg_server.socket_dir / f".s.PGSQL.{pg_server.port}").start()
    try:
        yield proxy, proxy.conninfo(psycopg.conninfo.conninfo_to_dict(db)["dbname"])
    finally:
        proxy.stop()


def users(db: str) -> int:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM users").fetchone()
    return int(row[0]) if row else 0


async def test_commit_that_happened_before_the_connection_died_is_answered_200(
        cutter: tuple[CommitCutter, str], db: str, provider: Any, tmp_path: Path,
        shop_secret: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    proxy, through = cutter
    async with fault_shop(through, provider, tmp_path / "shop") as shop:
        proxy.arm("after")
        status, body, request_id = await shop.post("signup", {"email": "kept@fault.test"})
        record = shop.record(request_id)
    assert proxy.cuts == 1
    assert status == 200 and body["email"] == "kept@fault.test"
    assert record["status"] == "ok" and record["http_status"] == 200
    assert users(db) == 1
    assert not tracebacks(caplog.records), tracebacks(caplog.records)


async def test_commit_that_never_reached_the_server_is_a_recorded_503(
        cutter: tuple[CommitCutter, str], db: str, provider: Any, tmp_path: Path,
        shop_secret: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    proxy, through = cutter
    async with fault_shop(through, provider, tmp_path / "shop") as shop:
        proxy.arm("before")
        status, body, request_id = await shop.post("signup", {"email": "lost@fault.test"})
        record = shop.record(request_id)
        mutations = shop.mutations(request_id)
        again, _, _ = await shop.post("signup", {"email": "lost@fault.test"})  # retry: fine
    assert proxy.cuts == 1
    assert status == 503 and body["error"]["code"] == "unavailable" and "recorded" not in body
    assert record["status"] == "error" and record["http_status"] == 503
    assert mutations == []  # the attempt's rows were never read back: its connection was gone
    assert again == 200 and users(db) == 1
    assert not tracebacks(caplog.records), tracebacks(caplog.records)
