"""`flux serve` makes the day partitions ahead and runs gc by itself."""

from __future__ import annotations

import datetime as dt
import signal
import time
import uuid
from pathlib import Path

import psycopg

from flux.store._retention import partitions
from tests.retention.conftest import make_app, make_day_partitions, today
from tests.runtime.test_serve import free_port, post

DAY = dt.timedelta(days=1)


def v7(at: dt.datetime) -> uuid.UUID:
    return uuid.UUID(int=(int(at.timestamp() * 1000) << 80) | (0x7 << 76)
                     | (uuid.uuid4().int & ((1 << 76) - 1)))


def test_serve_drops_expired_days_in_the_background(db: str, tmp_path: Path, flux_process
                                                    ) -> None:
    root = make_app(tmp_path / "ledger", retention="14d")
    with psycopg.connect(db, autocommit=True) as conn:
        old_day = today(conn) - 20 * DAY
        make_day_partitions(conn, old_day, old_day)
        noon = dt.datetime.combine(old_day, dt.time(12), tzinfo=dt.UTC)
        expired, pinned = v7(noon), v7(noon + dt.timedelta(minutes=1))
        for rid in (expired, pinned):
            conn.execute("INSERT INTO flux.trace_requests (request_id, status, started_at, "
                         "function) VALUES (%s, 'ok', %s, 'post_entry')", [rid, noon])
        conn.execute("INSERT INTO flux.pins (request_id) VALUES (%s)", [pinned])
    port = free_port()
    serve = flux_process(["serve", "--port", str(port), "--host", "127.0.0.1"], root,
                         env={"DATABASE_URL": db})
    serve.wait_for("ready")
    name = f"trace_requests_{old_day:%Y%m%d}"
    deadline = time.monotonic() + 60
    with psycopg.connect(db, autocommit=True) as conn:
        while name in {p["name"] for p in partitions(conn)}:
            assert time.monotonic() < deadline, f"{name} is still there:\n{serve.output()}"
            time.sleep(0.2)
        left = {r[0] for r in conn.execute("SELECT request_id FROM flux.trace_requests")}
        days = {p["day"] for p in partitions(conn) if p["day"] is not None}
    now = old_day + 20 * DAY
    assert left == {pinned}
    assert days == {now, now + DAY, now + 2 * DAY}  # partitions made ahead, the old one gone
    status, _, rid = post(f"http://127.0.0.1:{port}/post_entry", {"account": "x"})
    assert status == 200
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT tableoid::regclass::text FROM flux.trace_requests "
                            "WHERE request_id = %s", [rid]).fetchone() == \
            (f"flux.trace_requests_{now:%Y%m%d}",)
    serve.signal(signal.SIGTERM)
    assert serve.wait(30) == 0
