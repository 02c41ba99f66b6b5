"""Migrations: versioned, idempotent, and safe when two processes run them at once."""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from flux import MigrationError
from flux.store._migrate import migrate, migrations

SCHEMA_SHAPE = """
SELECT c.relkind::text, c.relname, coalesce(string_agg(a.attname || ' ' || format_type(a.atttypid,
       a.atttypmod), ', ' ORDER BY a.attnum), '')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'flux'
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
GROUP BY c.relkind, c.relname
UNION ALL
SELECT 'f', p.proname, pg_get_function_identity_arguments(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'flux'
ORDER BY 1, 2, 3
"""


def shape(conninfo: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(SCHEMA_SHAPE).fetchall()


def test_migrate_applies_every_file_once_then_nothing(empty_db: str) -> None:
    first = migrate(empty_db)
    assert [m.version for m in first] == [m.version for m in migrations()]
    before = shape(empty_db)
    assert migrate(empty_db) == []
    assert shape(empty_db) == before
    names = {name for kind, name, _ in before if kind in ("r", "p")}
    assert {"trace_requests", "state_mutations", "jobs", "migrations"} <= names
    assert {"state_history", "state_blame"} <= {name for kind, name, _ in before if kind == "v"}


def test_two_concurrent_migrates_leave_one_correct_schema(empty_db: str, db: str) -> None:
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(slot: int) -> None:
        barrier.wait()
        try:
            results[slot] = [m.version for m in migrate(empty_db)]
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    everything = [m.version for m in migrations()]
    assert sorted([results[0], results[1]], key=len) == [[], everything]
    with psycopg.connect(empty_db) as conn:
        rows = conn.execute("SELECT version FROM flux.migrations ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == everything
    assert shape(empty_db) == shape(db)  # identical to the template's schema


def test_schema_newer_than_this_flux_is_refused(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO flux.migrations VALUES (9999, 'future', 'x')")
    with pytest.raises(MigrationError, match="newer than this Flux knows"):
        migrate(db)


def test_failed_migration_rolls_back_and_names_the_file(empty_db: str, tmp_path) -> None:
    broken = tmp_path / "0001_broken.sql"
    broken.write_text("CREATE TABLE flux.ok (id int); SELECT * FROM no_such_table;")
    with pytest.raises(MigrationError, match=r"0001_broken\.sql failed"):
        migrate(empty_db, tmp_path)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regclass('flux.ok')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM flux.migrations").fetchone() == (0,)


VIEW_STATE = """
SELECT c.relname, c.reloptions, has_table_privilege('flux_reader', c.oid, 'SELECT')
FROM pg_class c WHERE c.oid IN ('flux.state_history'::regclass, 'flux.state_blame'::regclass)
ORDER BY 1
"""


def test_0019_turns_stored_records_into_json_and_keeps_history_and_its_views(
    empty_db: str, tmp_path: Path
) -> None:
    before_0019 = [m for m in migrations() if m.version < 19]
    for m in before_0019:
        shutil.copy(m.path, tmp_path / m.path.name)
    migrate(empty_db, tmp_path)
    request_id = str(uuid.UUID("01f00000-0000-7000-8000-0000000000b1"))
    spans = [
        {"id": "s1", "name": "handler", "file": "functions/a.py", "line": 3},
        {"id": "s2", "name": "db.insert(items)", "file": "functions/a.py", "line": 7},
    ]
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO flux.trace_requests (request_id, function, status, started_at, spans,"
            " tape, error) VALUES (%s, 'a', 'error', now(), %s, %s, %s)",
            [
                request_id,
                Jsonb(spans),
                Jsonb([{"seq": 0, "kind": "clock"}]),
                Jsonb({"type": "ValueError", "message": "no"}),
            ],
        )
        conn.execute(
            "INSERT INTO flux.state_mutations (table_schema, table_name, op, new, changed_cols,"
            " request_id, span_id) VALUES ('public', 'items', 'INSERT', '{\"n\": 1}', '{n}',"
            " %s, 's2')",
            [request_id],
        )
        views = conn.execute(VIEW_STATE).fetchall()
    assert [m.version for m in migrate(empty_db)] == [
        m.version for m in migrations() if m.version >= 19
    ]
    with psycopg.connect(empty_db, autocommit=True) as conn:
        types = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = 'flux.trace_requests'::regclass AND attname IN"
                " ('request', 'response', 'error', 'spans', 'tape', 'logs', 'imported')"
            ).fetchall()
        )
        assert types == {
            "request": "json",
            "response": "json",
            "error": "json",
            "spans": "json",
            "tape": "json",
            "logs": "json",
            "imported": "jsonb",
        }
        row = conn.execute(
            "SELECT spans, tape, logs, request, error ->> 'type' FROM flux.trace_requests"
            " WHERE request_id = %s",
            [request_id],
        ).fetchone()
        assert row == (spans, [{"seq": 0, "kind": "clock"}], [], {}, "ValueError")
        history = conn.execute(
            "SELECT function, file, line FROM flux.state_history WHERE request_id = %s",
            [request_id],
        ).fetchall()
        assert history == [("a", "functions/a.py", 7)]
        blame = conn.execute(
            "SELECT column_name, line FROM flux.state_blame WHERE request_id = %s", [request_id]
        ).fetchall()
        assert blame == [("n", 7)]
        assert conn.execute(VIEW_STATE).fetchall() == views  # options and grants kept
        # A record written now keeps its documents as sent, keys in Flux's order.
        later = str(uuid.UUID("01f00000-0000-7000-8000-0000000000b2"))
        conn.execute(
            "INSERT INTO flux.trace_requests (request_id, status, started_at, spans)"
            " VALUES (%s, 'ok', now(), %s::json)",
            [later, '[{"zz": 1, "a": 2}]'],
        )
        assert conn.execute(
            "SELECT spans::text FROM flux.trace_requests WHERE request_id = %s", [later]
        ).fetchone() == ('[{"zz": 1, "a": 2}]',)
