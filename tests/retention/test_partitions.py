"""flux.trace_requests and flux.state_mutations are partitioned by day (sql/0009): rows
route to their day, the default partition catches the rest, migration 0009 keeps rows."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path

import psycopg

from flux.store._migrate import migrate, migrations
from flux.store._queries import load
from flux.store._retention import ensure_partitions, partitions
from tests.fixtures.shop import Shop
from tests.retention.conftest import today, where


async def test_executions_land_in_their_day_partitions(ledger: Shop) -> None:
    with psycopg.connect(ledger.db, autocommit=True) as conn:
        assert ensure_partitions(conn) == 6  # today and two days ahead, both tables
        assert ensure_partitions(conn) == 0
        names = {(p["parent"], p["day"]) for p in partitions(conn)}
        day = today(conn)
    for offset in range(3):
        for table in ("trace_requests", "state_mutations"):
            assert (table, day + dt.timedelta(days=offset)) in names
    assert ("trace_requests", None) in names and ("state_mutations", None) in names

    ok = await ledger.post("post_entry", {"account": "a", "cents": 5})
    failed = await ledger.post("post_entry", {"account": "a", "cents": 0})  # CHECK fails
    assert (ok[0], failed[0]) == (200, 500)
    suffix = day.strftime("%Y%m%d")
    with psycopg.connect(ledger.db) as conn:
        for _, _, rid in (ok, failed):
            record, changes = where(conn, rid)
            assert record == f"flux.trace_requests_{suffix}"
            assert changes == [f"flux.state_mutations_{suffix}"]


async def test_rows_written_before_their_partition_move_into_it(ledger: Shop) -> None:
    status, _, rid = await ledger.post("post_entry", {"account": "b"})
    assert status == 200
    with psycopg.connect(ledger.db, autocommit=True) as conn:
        assert where(conn, rid) == ("flux.trace_requests_default",
                                    ["flux.state_mutations_default"])
        ensure_partitions(conn)
        suffix = today(conn).strftime("%Y%m%d")
        assert where(conn, rid) == (f"flux.trace_requests_{suffix}",
                                    [f"flux.state_mutations_{suffix}"])
        # History reads the same rows wherever they are.
        rows = conn.execute("SELECT count(*) FROM flux.state_history WHERE request_id = %s",
                            [rid]).fetchone()
    assert rows == (2,)


def test_a_row_no_day_covers_is_caught_by_the_default_partition(conn: psycopg.Connection
                                                                   ) -> None:
    ensure_partitions(conn)
    odd = uuid.uuid4()  # not a UUIDv7: its "time" is anywhere
    conn.execute("INSERT INTO flux.trace_requests (request_id, status, started_at) "
                 "VALUES (%s, 'ok', now())", [odd])
    conn.execute("INSERT INTO flux.state_mutations (table_schema, table_name, op, committed_at)"
                 " VALUES ('public', 't', 'INSERT', now() - interval '400 days')")
    assert conn.execute("SELECT tableoid::regclass::text FROM flux.trace_requests "
                        "WHERE request_id = %s", [odd]).fetchone() == \
        ("flux.trace_requests_default",)
    assert conn.execute("SELECT tableoid::regclass::text FROM flux.state_mutations").fetchone() \
        == ("flux.state_mutations_default",)


def test_wal_apply_lands_in_the_partition_of_its_commit_day(conn: psycopg.Connection) -> None:
    """The consumer's rows (flux/capture/_consumer.py) — by COPY, or staged and finished by
    the server — go to the partition of their commit's day."""
    ensure_partitions(conn)
    q = load("capture")
    committed = dt.datetime.now(dt.UTC).isoformat()

    def line(seq: int) -> str:  # the columns in copy_mutations' order
        return "\t".join(["\\N", '{"id": 1}', "INSERT", "\\N", '{"id": 1}', "{id}", "s1",
                          str(seq), "1", "public", "t", "\\N", "x", "\\N", "\\N", "7",
                          committed, "wal", "0/16B3748"]) + "\n"

    with conn.transaction():
        conn.execute(q.create_stage)
        with conn.cursor().copy(q.copy_stage) as copy:
            copy.write(line(1))
        assert conn.execute(q.apply_stage).rowcount == 1
        with conn.cursor().copy(q.copy_mutations) as copy:
            copy.write(line(2))
    found = conn.execute("SELECT lsn_seq, record_id::text, tableoid::regclass::text "
                         "FROM flux.state_mutations ORDER BY lsn_seq").fetchall()
    day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    assert [(s, p.endswith(day)) for s, _, p in found] == [(1, True), (2, True)]
    assert found[0][1] == conn.execute(
        "SELECT flux.record_id(1, '{\"id\": 1}')::text").fetchone()[0]


def test_migration_0009_keeps_existing_rows_pins_and_ids(empty_db: str, tmp_path: Path
                                                         ) -> None:
    upto8 = tmp_path / "sql"
    upto8.mkdir()
    for m in migrations():
        if m.version <= 8:
            shutil.copy(m.path, upto8 / m.path.name)
    migrate(empty_db, upto8)
    now = dt.datetime.now(dt.UTC)

    def v7(at: dt.datetime) -> uuid.UUID:
        return uuid.UUID(int=(int(at.timestamp() * 1000) << 80) | (0x7 << 76)
                         | (uuid.uuid4().int & ((1 << 76) - 1)))

    ids = {days: v7(now - dt.timedelta(days=days)) for days in (0, 3, 20)}
    stray = uuid.uuid4()
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
        conn.execute("SELECT flux.install_capture('users')")
        for days, rid in ids.items():
            with conn.transaction():
                conn.execute("SELECT set_config('flux.request_id', %s, true)", [str(rid)])
                conn.execute("INSERT INTO users VALUES (%s, 'x')", [days])
                conn.execute(
                    "INSERT INTO flux.trace_requests (request_id, status, started_at, "
                    "function, pinned) VALUES (%s, 'ok', %s, 'f', %s)",
                    [rid, now - dt.timedelta(days=days), days == 20])
            conn.execute("UPDATE flux.state_mutations SET committed_at = committed_at - %s "
                         "WHERE request_id = %s", [dt.timedelta(days=days), rid])
        conn.execute("INSERT INTO flux.trace_requests (request_id, status, started_at) "
                     "VALUES (%s, 'error', now())", [stray])
        before_records = conn.execute(
            "SELECT request_id, status, started_at, pinned FROM flux.trace_requests "
            "ORDER BY request_id").fetchall()
        before_changes = conn.execute(
            "SELECT id, request_id, op, new, committed_at FROM flux.state_mutations "
            "ORDER BY id").fetchall()

    assert [m.version for m in migrate(empty_db)][:1] == [9]  # and those after it

    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert conn.execute(
            "SELECT request_id, status, started_at, pinned FROM flux.trace_requests "
            "ORDER BY request_id").fetchall() == before_records
        assert conn.execute(
            "SELECT id, request_id, op, new, committed_at FROM flux.state_mutations "
            "ORDER BY id").fetchall() == before_changes
        for days, rid in ids.items():
            suffix = (now - dt.timedelta(days=days)).strftime("%Y%m%d")
            assert where(conn, str(rid)) == (f"flux.trace_requests_{suffix}",
                                             [f"flux.state_mutations_{suffix}"])
        assert where(conn, str(stray))[0] == "flux.trace_requests_default"
        assert conn.execute("SELECT request_id FROM flux.pins").fetchall() == [(ids[20],)]
        # The views are back, and capture goes on writing with fresh ids.
        assert conn.execute("SELECT count(*) FROM flux.state_history").fetchone() == (3,)
        conn.execute("INSERT INTO users VALUES (99, 'y')")
        newest = conn.execute("SELECT max(id) FROM flux.state_mutations").fetchone()[0]
        assert newest == max(row[0] for row in before_changes) + 1
