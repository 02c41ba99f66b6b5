"""The same changes captured by triggers and by the WAL consumer: identical rows."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from flux.capture import _consumer, _mode, _running
from flux.store._database import ensure_database
from flux.store._embedded import EmbeddedServer
from flux.store._migrate import migrate
from tests.fixtures.projects import FLUX
from tests.fixtures.shop import FakeProvider, Shop, serve_app

LEDGER = Path(__file__).resolve().parents[1] / "fixtures" / "apps" / "ledger"
COMPARED = ("request_id", "span_id", "table_schema", "table_name", "record_id", "pk", "op",
            "old", "new", "changed_cols", "actor", "application_name", "rolled_back")


@contextlib.asynccontextmanager
async def ledger(tmp_path: Path, db: str, provider: FakeProvider, *, both: bool = False,
                 consume: bool = True) -> AsyncIterator[Shop]:
    root = tmp_path / "ledger"
    shutil.copytree(LEDGER, root)
    (root / "flux.toml").write_text('name = "ledger"\ncapture = "wal"\n')
    async with serve_app(root, db, provider, consume=consume) as app:
        if both:  # triggers back on every table, beside the slot: two captures of one write
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute("SELECT flux.install_capture(c.oid::regclass) FROM pg_class c "
                             "WHERE flux.capturable(c.oid)")
        yield app


def rows(db: str, source: str) -> Counter[bytes]:
    with psycopg.connect(db) as conn:
        conn.row_factory = psycopg.rows.dict_row
        found = conn.execute(
            f"SELECT {', '.join(COMPARED)} FROM flux.state_mutations WHERE source = %s "
            "OR (source = 'executor' AND %s = 'trigger')", [source, source]).fetchall()
    return Counter(orjson.dumps(r, default=str, option=orjson.OPT_SORT_KEYS) for r in found)


async def test_trigger_and_wal_store_identical_rows(tmp_path: Path, db: str,
                                                    provider: FakeProvider) -> None:
    async with ledger(tmp_path, db, provider, both=True) as app:
        for i in range(1, 101):
            status, body, _ = await app.post("open_account", {"id": i, "owner": f"o{i}"})
            assert status == 200, body

        async def transfer(n: int) -> None:
            status, body, _ = await app.post("transfer", {
                "from": n % 100 + 1, "to": (n * 7 + 1) % 100 + 1, "amount": 1.25, "seq": n,
                "fail": n % 50 == 0})
            assert status == (500 if n % 50 == 0 else 200), body

        for start in range(0, 1000, 50):
            await asyncio.gather(*(transfer(n) for n in range(start, start + 50)))
        for k in range(60):
            status, body, _ = await app.post("bulk", {"upto": 100, "tag": f"t{k}"})
            assert status == 200 and body["rows"] == 100, body
        for i in range(1, 11):
            status, _, _ = await app.post("close_account", {"id": i})
            assert status == 200
        with psycopg.connect(db, autocommit=True) as conn:  # a write from outside Flux
            conn.execute("SET application_name = 'psql'")
            conn.execute("UPDATE accounts SET notes = repeat(md5(id::text), 400) WHERE id = 50")
            conn.execute("UPDATE accounts SET owner = 'renamed' WHERE id = 50")  # TOAST kept
            conn.execute("TRUNCATE events")
        _running.wait_caught_up(db)
        by_trigger, by_wal = rows(db, "trigger"), rows(db, "wal")
        with psycopg.connect(db) as conn:  # the C decoder wrote them (extension/flux_decode.c)
            plugin = conn.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s",
                                  [_consumer.SLOT]).fetchone()
    assert plugin is not None and _consumer.is_native(plugin[0]), plugin
    wal_total = sum(by_wal.values())
    assert wal_total >= 10_000
    # Rolled-back attempts never reach the WAL: the executor stores them in both modes.
    rolled_back = sum(n for r, n in by_trigger.items() if b'"rolled_back":true' in r)
    assert rolled_back == 20 * 4
    assert by_trigger - by_wal == Counter({r: n for r, n in by_trigger.items()
                                          if b'"rolled_back":true' in r})
    assert by_wal - by_trigger == Counter()


def records(db: str) -> tuple[int, int, int]:
    """Records, distinct request ids among them, and ok-records of requests whose changes
    no record names (a committed change without its record)."""
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT request_id), (SELECT count(DISTINCT m.request_id)"
            " FROM flux.state_mutations m WHERE m.request_id IS NOT NULL AND NOT EXISTS ("
            "SELECT 1 FROM flux.trace_requests t WHERE t.request_id = m.request_id))"
            " FROM flux.trace_requests").fetchone()
    assert row is not None
    return row[0], row[1], row[2]


async def load_ledger(app: Shop, requests: int, *, accounts: int = 100) -> int:
    """Open ``accounts`` accounts, then ``requests`` transfers 25 at a time; the number of
    changes committed."""
    for i in range(1, accounts + 1):
        status, body, _ = await app.post("open_account", {"id": i, "owner": f"o{i}"})
        assert status == 200, body

    async def transfer(n: int) -> None:
        status, body, _ = await app.post("transfer", {
            "from": n % accounts + 1, "to": (n * 7 + 1) % accounts + 1, "amount": 0.5,
            "seq": n})
        assert status == 200, body

    for start in range(0, requests, 25):
        await asyncio.gather(*(transfer(n) for n in range(start, min(start + 25, requests))))
    return accounts + 4 * requests


async def test_consumer_killed_at_random_loses_and_doubles_nothing(
        tmp_path: Path, db: str, provider: FakeProvider) -> None:
    """`flux capture run` as a real process, SIGKILLed at random moments while load runs
    and restarted: every change is stored exactly once (the triggers, on beside it, are the
    ground truth)."""
    rng = random.Random(8)
    async with ledger(tmp_path, db, provider, both=True, consume=False) as app:
        env = {"DATABASE_URL": db}
        kills = 0
        stop = asyncio.Event()

        async def chaos() -> None:
            nonlocal kills
            while not stop.is_set():
                proc = await asyncio.create_subprocess_exec(
                    *FLUX, "capture", "run", cwd=app.root, env={**os.environ, **env},
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                await asyncio.sleep(rng.uniform(0.3, 1.2))
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                kills += 1

        killer = asyncio.create_task(chaos())
        expected = await load_ledger(app, 1200)
        stop.set()
        await killer
        assert kills >= 3
        final = subprocess.Popen([*FLUX, "capture", "run"], cwd=app.root,
                                 env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
        try:
            # Its banner comes once its signal handlers are in place.
            assert final.stdout is not None
            banner = await asyncio.to_thread(final.stdout.readline)
            assert "Flux capture" in banner, banner
            await asyncio.to_thread(_running.wait_caught_up, db, 60)
        finally:
            final.send_signal(signal.SIGINT)
            assert final.wait(timeout=20) == 0
        by_trigger, by_wal = rows(db, "trigger"), rows(db, "wal")
        # Each answer's record travelled in its transaction's WAL (capture "wal"): written
        # by the consumer, once, across the kills.
        assert records(db) == (100 + 1200, 100 + 1200, 0)
    assert sum(by_wal.values()) == expected
    assert max(by_wal.values()) == 1
    assert by_wal == by_trigger


@pytest.mark.parametrize("project_mode", ["trigger", "wal"])
async def test_switching_modes_under_load_captures_each_change_once(
        tmp_path: Path, db: str, provider: FakeProvider, project_mode: str) -> None:
    """trigger → wal → trigger → wal while transfers run: every committed change is stored
    exactly once, by whichever mode captured its transaction. With the project's mode
    "wal" each BEGIN asks the database's mode under the switch's lock, and the records of
    those that read "wal" travel in the WAL: none is lost or doubled across the switches."""
    root = tmp_path / "ledger"
    shutil.copytree(LEDGER, root)
    async with serve_app(root, db, provider) as app:  # starts in trigger mode
        # what flux.toml's capture = "wal" makes the executions do (the database stays
        # in trigger mode until the first switch)
        app.runtime.project = dataclasses.replace(app.runtime.project, capture=project_mode)
        consumer = _running.Background(db).start()
        try:
            async def switches() -> list[str]:
                done = []
                for mode in ("wal", "trigger", "wal"):
                    await asyncio.sleep(0.8)
                    result = await asyncio.to_thread(_mode.switch, db, mode)
                    done.append(f"{result.previous}->{result.mode}")
                return done

            switching = asyncio.create_task(switches())
            expected = await load_ledger(app, 1500)
            assert await switching == ["trigger->wal", "wal->trigger", "trigger->wal"]
            await asyncio.to_thread(_running.wait_caught_up, db)
        finally:
            await asyncio.to_thread(consumer.stop)
        with psycopg.connect(db) as conn:
            by_source = dict(conn.execute(
                "SELECT source, count(*) FROM flux.state_mutations GROUP BY source").fetchall())
            per_change = conn.execute(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM flux.state_mutations "
                "GROUP BY request_id, span_id, record_id, op) AS c").fetchone()
    assert by_source.get("trigger", 0) > 0 and by_source.get("wal", 0) > 0, by_source
    assert by_source["trigger"] + by_source["wal"] == expected
    assert per_change == (1,)
    # Records inserted in trigger mode and carried by the WAL in WAL mode, across three
    # switches: one per answer, and no committed change without its record.
    assert records(db) == (100 + 1500, 100 + 1500, 0)
    travelled = consumer._consumer.records_written
    assert (travelled > 0) == (project_mode == "wal"), travelled


@contextlib.contextmanager
def server_without_wal_senders() -> Iterator[str]:
    """A server of its own that takes no replication connection (max_wal_senders = 0, as
    when they are all taken, or behind a pooler that passes none): a database there,
    migrated."""
    state = Path(tempfile.mkdtemp(prefix="flux-test-", dir="/tmp"))
    state.chmod(0o755)
    server = EmbeddedServer(state, settings={"fsync": "off", "max_wal_senders": "0"})
    try:
        info, _ = server.start()
        ensure_database(info.conninfo("postgres"), "ledger")
        migrate(info.conninfo("ledger"))
        yield info.conninfo("ledger")
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


async def test_without_replication_connections_the_consumer_reads_through_sql(
        tmp_path: Path, provider: FakeProvider) -> None:
    """Where the server refuses a replication connection, the consumer reads the same slot
    through the SQL functions and stores exactly what the triggers store."""
    with server_without_wal_senders() as db:
        async with ledger(tmp_path, db, provider, both=True, consume=False) as app:
            consumer = _consumer.Consumer(db)
            stop = threading.Event()
            thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
            thread.start()
            try:
                expected = await load_ledger(app, 300)
                await asyncio.to_thread(_running.wait_caught_up, db, 60)
            finally:
                stop.set()
                await asyncio.to_thread(thread.join, 20)
            by_trigger, by_wal = rows(db, "trigger"), rows(db, "wal")
            consumer_records = records(db)
    assert consumer.stream is False  # it tried, was refused, and fell back
    assert consumer_records == (100 + 300, 100 + 300, 0)
    assert sum(by_wal.values()) == expected
    assert by_wal == by_trigger


async def test_a_consumer_under_row_level_security_stages_and_stores_the_same(
        tmp_path: Path, db: str, provider: FakeProvider) -> None:
    """COPY cannot write a table whose row-level security applies to the session: a consumer
    role that is neither superuser nor BYPASSRLS (flux_runtime with REPLICATION, granted
    INSERT on the mutations by its operator: sql/0012 gives flux_runtime none) copies into
    its staging table and lets one INSERT … SELECT store the batch — the same rows."""
    role = f"capture_bot_{os.getpid()}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION IN ROLE flux_runtime")
        conn.execute(f"GRANT INSERT ON flux.state_mutations TO {role}")
    try:
        bot = make_conninfo(db, user=role)
        async with ledger(tmp_path, db, provider, both=True, consume=False) as app:
            consumer = _consumer.Consumer(bot)
            stop = threading.Event()
            thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
            thread.start()
            try:
                expected = await load_ledger(app, 150)
                await asyncio.to_thread(_running.wait_caught_up, db, 60)
            finally:
                stop.set()
                await asyncio.to_thread(thread.join, 20)
            by_trigger, by_wal = rows(db, "trigger"), rows(db, "wal")
        assert consumer._copy_for is not None and consumer._copy_for[1] is False
        assert records(db) == (100 + 150, 100 + 150, 0)
        assert consumer._records._copy_for is not None
        assert sum(by_wal.values()) == expected
        assert by_wal == by_trigger
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
