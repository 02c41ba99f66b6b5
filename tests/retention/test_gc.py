"""flux gc: days older than the retention are dropped as partitions; pinned executions stay
findable by why, trace and state history; --dry-run changes nothing."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import psycopg
import pytest

from flux import ConfigError
from flux._project import parse
from flux.store._retention import ensure_partitions, gc, partitions, pin, run_pass
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import Shop
from tests.retention.conftest import age, make_day_partitions, today, where

DAY = dt.timedelta(days=1)


def snapshot(conninfo: str) -> dict[str, Any]:
    with psycopg.connect(conninfo) as conn:
        return {
            "partitions": sorted((p["parent"], p["name"]) for p in partitions(conn)),
            "records": conn.execute("SELECT request_id, tableoid::regclass::text "
                                    "FROM flux.trace_requests ORDER BY 1").fetchall(),
            "changes": conn.execute("SELECT id, tableoid::regclass::text, retained "
                                    "FROM flux.state_mutations ORDER BY 1").fetchall(),
            "signatures": conn.execute("SELECT request_id FROM flux.failure_signatures "
                                       "ORDER BY 1").fetchall(),
            "pins": conn.execute("SELECT request_id FROM flux.pins ORDER BY 1").fetchall(),
        }


async def recorded_history(ledger: Shop) -> dict[str, str]:
    """Four executions: two 20 days old (one failed, to be pinned), one 19 days old, one
    of today."""
    ids = {}
    for name, body in (("old_ok", {"account": "old"}), ("old_failed", {"account": "old",
                                                                      "cents": 0}),
                       ("older_ok", {"account": "older"}), ("new_ok", {"account": "new"})):
        status, _, ids[name] = await ledger.post("post_entry", body)
        assert status == (500 if name == "old_failed" else 200)
    with psycopg.connect(ledger.db, autocommit=True) as conn:
        day = today(conn)
        make_day_partitions(conn, day - 21 * DAY, day - 18 * DAY)
        ensure_partitions(conn)
        ids["old_ok"] = age(conn, ids["old_ok"], 20)
        ids["old_failed"] = age(conn, ids["old_failed"], 20)
        ids["older_ok"] = age(conn, ids["older_ok"], 19)
    return ids


async def test_gc_drops_old_days_and_keeps_pinned_executions_findable(ledger: Shop) -> None:
    ids = await recorded_history(ledger)
    env = {"DATABASE_URL": ledger.db}
    pinned = run_flux(["record", "pin", ids["old_failed"][:18], "--note", "INC-42",
                       "--json"], ledger.root, env=env)
    assert pinned.returncode == 0, pinned.stderr
    assert json.loads(pinned.stdout)["request_id"] == ids["old_failed"]
    assert json.loads(pinned.stdout)["note"] == "INC-42"
    with psycopg.connect(ledger.db) as conn:
        day = today(conn)
        old_changes = conn.execute("SELECT count(*) FROM flux.state_mutations "
                                   "WHERE request_id = %s", [ids["old_failed"]]).fetchone()
    assert old_changes == (1,)  # its first INSERT, rolled back

    report = gc(ledger.db, dt.timedelta(days=14))

    dropped = {(d.table, d.day) for d in report.dropped}
    assert dropped == {(t, day - n * DAY) for t in ("trace_requests", "state_mutations")
                       for n in (21, 20, 19, 18)}
    assert {d.pinned for d in report.dropped if d.day == day - 20 * DAY} == {1}
    assert not report.busy
    with psycopg.connect(ledger.db) as conn:
        left = {p["day"] for p in partitions(conn) if p["day"] is not None}
        assert min(left) == day  # nothing older than the retention is left
        assert where(conn, ids["old_ok"]) == (None, [])
        assert where(conn, ids["older_ok"]) == (None, [])
        assert where(conn, ids["old_failed"]) == ("flux.trace_requests_default",
                                                  ["flux.state_mutations_default"])
        assert conn.execute("SELECT pinned FROM flux.trace_requests WHERE request_id = %s",
                            [ids["old_failed"]]).fetchone() == (True,)
        suffix = day.strftime("%Y%m%d")
        assert where(conn, ids["new_ok"]) == (f"flux.trace_requests_{suffix}",
                                              [f"flux.state_mutations_{suffix}"])
        signatures = [r[0] for r in conn.execute(
            "SELECT request_id::text FROM flux.failure_signatures")]
    assert signatures == [ids["old_failed"]]

    why = run_flux(["why", ids["old_failed"][:18], "--json"], ledger.root, env=env)
    assert why.returncode == 0, why.stderr
    facts = json.loads(why.stdout)
    assert facts["request_id"] == ids["old_failed"]
    assert facts["root_cause"]["class"] == "constraint"
    assert [m["rolled_back"] for m in facts["mutations"]] == [True]
    trace = run_flux(["trace", ids["old_failed"][:18], "--json"], ledger.root, env=env)
    assert trace.returncode == 0, trace.stderr
    gone = run_flux(["why", ids["old_ok"][:18], "--json"], ledger.root, env=env)
    assert gone.returncode != 0 and "no execution" in gone.stderr


async def test_pinned_changes_stay_in_state_history(ledger: Shop) -> None:
    status, _, rid = await ledger.post("post_entry", {"account": "kept", "cents": 7})
    assert status == 200
    with psycopg.connect(ledger.db, autocommit=True) as conn:
        day = today(conn)
        make_day_partitions(conn, day - 31 * DAY, day - 29 * DAY)
        rid = age(conn, rid, 30)
        pin(conn, rid[:13] + rid[14:18])  # a prefix, dashes optional
        entry = conn.execute("SELECT max(id) FROM entries").fetchone()[0]
    gc(ledger.db, dt.timedelta(days=7))
    history = run_flux(["state", "history", "entries", "--id", str(entry), "--json"],
                       ledger.root, env={"DATABASE_URL": ledger.db})
    assert history.returncode == 0, history.stderr
    rows = json.loads(history.stdout)["rows"]
    assert [(r["request_id"], r["op"]) for r in rows] == [(rid, "INSERT")]
    # Kept only by its pin, the change no longer claims to be the last write in blame.
    with psycopg.connect(ledger.db) as conn:
        assert conn.execute("SELECT count(*) FROM flux.state_blame WHERE request_id = %s",
                            [rid]).fetchone() == (0,)


async def test_dry_run_says_what_would_go_and_changes_nothing(ledger: Shop) -> None:
    ids = await recorded_history(ledger)
    with psycopg.connect(ledger.db, autocommit=True) as conn:
        pin(conn, ids["old_failed"])
        conn.execute("INSERT INTO flux.trace_requests (request_id, status, started_at) "
                     "VALUES (%s, 'ok', now() - interval '30 days')", [uuid.uuid4()])
    before = snapshot(ledger.db)
    result = run_flux(["gc", "--dry-run", "--retention", "14d", "--json"], ledger.root,
                      env={"DATABASE_URL": ledger.db})
    assert result.returncode == 0, result.stderr
    assert snapshot(ledger.db) == before
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True and plan["retention"] == "14d"
    old = {d["partition"]: d for d in plan["dropped"]}
    with psycopg.connect(ledger.db) as conn:
        day = today(conn)
    twenty = (day - 20 * DAY).strftime("%Y%m%d")
    assert old[f"flux.trace_requests_{twenty}"]["rows"] == 2
    assert old[f"flux.trace_requests_{twenty}"]["pinned_kept"] == 1
    assert plan["expired_default"]["trace_requests"] == 1
    assert plan["signatures"] == 0  # the only failure is pinned

    human = run_flux(["gc", "--dry-run", "--retention", "14d"], ledger.root,
                     env={"DATABASE_URL": ledger.db})
    assert human.returncode == 0, human.stderr
    assert f"would drop trace_requests_{twenty}" in human.stdout
    assert snapshot(ledger.db) == before

    done = run_flux(["gc", "--retention", "14d", "--json"], ledger.root,
                    env={"DATABASE_URL": ledger.db})
    assert done.returncode == 0, done.stderr
    assert {d["partition"] for d in json.loads(done.stdout)["dropped"]} == set(old)
    assert snapshot(ledger.db) != before


def test_gc_deletes_expired_rows_of_the_default_partition_but_pinned(
        conn: psycopg.Connection, db: str) -> None:
    old, kept, recent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for rid, age_days in ((old, 30), (kept, 30), (recent, 1)):
        conn.execute("INSERT INTO flux.trace_requests (request_id, status, started_at) "
                     "VALUES (%s, 'ok', now() - %s * interval '1 day')", [rid, age_days])
        conn.execute("INSERT INTO flux.state_mutations (table_schema, table_name, op, "
                     "request_id, committed_at) VALUES ('public', 't', 'INSERT', %s, "
                     "now() - %s * interval '1 day')", [rid, age_days])
    conn.execute("INSERT INTO flux.pins (request_id) VALUES (%s)", [kept])
    report = gc(db, dt.timedelta(days=14))
    assert report.expired_default == {"trace_requests": 1, "state_mutations": 1}
    left = {r[0] for r in conn.execute("SELECT request_id FROM flux.trace_requests")}
    assert left == {kept, recent}
    assert {r[0] for r in conn.execute("SELECT request_id FROM flux.state_mutations")} == left


def test_dropping_a_day_of_records_drops_their_changes_after_midnight(
        conn: psycopg.Connection, db: str) -> None:
    """An execution that began just before midnight has its record in one day and its
    changes in the next: when its record goes, its changes go with it."""
    day = today(conn) - 30 * DAY
    make_day_partitions(conn, day, day + DAY)
    midnight = dt.datetime.combine(day + DAY, dt.time(), tzinfo=dt.UTC)
    late = uuid.UUID(int=((int(midnight.timestamp() * 1000) - 5) << 80) | (0x7 << 76) | 1)
    next_day = uuid.UUID(int=((int(midnight.timestamp() * 1000) + 5) << 80) | (0x7 << 76) | 2)
    for rid, started in ((late, midnight - dt.timedelta(milliseconds=5)),
                         (next_day, midnight + dt.timedelta(milliseconds=5))):
        conn.execute("INSERT INTO flux.trace_requests (request_id, status, started_at) "
                     "VALUES (%s, 'ok', %s)", [rid, started])
        conn.execute("INSERT INTO flux.state_mutations (table_schema, table_name, op, "
                     "request_id, committed_at) VALUES ('public', 't', 'INSERT', %s, %s)",
                     [rid, midnight + dt.timedelta(milliseconds=10)])
    # Retention reaches only the first of the two days.
    cutoff_age = dt.datetime.now(dt.UTC) - (midnight + dt.timedelta(hours=1))
    gc(db, dt.timedelta(hours=int(cutoff_age.total_seconds() // 3600)))
    assert where(conn, str(late)) == (None, [])
    assert where(conn, str(next_day))[1] == [
        f"flux.state_mutations_{(day + DAY).strftime('%Y%m%d')}"]


def test_a_busy_table_is_left_for_the_next_pass(conn: psycopg.Connection, db: str) -> None:
    day = today(conn) - 30 * DAY
    make_day_partitions(conn, day, day)
    with psycopg.connect(db) as reader:
        reader.execute("SELECT count(*) FROM flux.trace_requests")  # holds its lock
        report = gc(db, dt.timedelta(days=14), lock_timeout="50ms")
        assert [name for name in report.busy] == [f"trace_requests_{day:%Y%m%d}"]
        assert {d.table for d in report.dropped} == {"state_mutations"}
    again = gc(db, dt.timedelta(days=14))
    assert [d.table for d in again.dropped] == ["trace_requests"] and not again.busy


def test_background_pass_is_elected_once_per_database(conn: psycopg.Connection, db: str
                                                      ) -> None:
    conn.execute("SELECT pg_advisory_lock(%s)", [0x464C5558_0000000A])
    try:
        assert run_pass(db, dt.timedelta(days=14)) == (False, None)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [0x464C5558_0000000A])
    elected, report = run_pass(db, dt.timedelta(days=14))
    assert elected and report is not None and report.created == 6


def test_gc_without_a_retention_is_one_sentence(make_project, flux_cli, db: str) -> None:
    root = make_project('name = "demo"\n')
    result = flux_cli(["gc"], root, env={"DATABASE_URL": db})
    assert result.returncode == 2
    assert "no retention is set" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(ConfigError, match="no retention is set"):
        gc(db, None)


@pytest.mark.parametrize("value", ['"fortnight"', '"0d"', "14", '"14 days"', '"-3d"'])
def test_bad_retention_is_one_sentence(make_project, flux_cli, value: str) -> None:
    root = make_project(f'name = "demo"\n[record]\nretention = {value}\n')
    with pytest.raises(ConfigError, match=r"\[record\] retention must be a number of hours, "
                                          r"days or weeks such as \"14d\""):
        parse(root)
    result = flux_cli(["gc", "--dry-run"], root)
    assert result.returncode == 2
    assert "retention must be" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_retention_option_is_one_sentence(make_project, flux_cli) -> None:
    root = make_project('name = "demo"\n')
    result = flux_cli(["gc", "--retention", "soon"], root)
    assert result.returncode == 2
    assert "--retention must be a number of hours, days or weeks" in result.stderr


@pytest.mark.parametrize(("text", "expected"), [('"14d"', dt.timedelta(days=14)),
                                                ('"36h"', dt.timedelta(hours=36)),
                                                ('"2w"', dt.timedelta(days=14))])
def test_retention_values(make_project, text: str, expected: dt.timedelta) -> None:
    root = make_project(f'[record]\nretention = {text}\n')
    assert parse(root).record.retention == expected
