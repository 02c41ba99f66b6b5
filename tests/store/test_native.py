"""The capture trigger in C (extension/flux_capture.c, flux/store/_native.py): used where the
server can load it, and writing the very rows the PL/pgSQL trigger writes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.store import _native as native

REQ = uuid.UUID("01900000-0000-7000-8000-0000000000c1")

# Every path of the trigger: a one-column key, a composite key, no key (the whole row), a
# dropped column, numbers equal as JSON but not as bytes, nulls, jsonb, arrays, non-ASCII
# text (its collation order for changed columns), the span from a statement's comment and
# from the GUC, a request id, a tenant, inserts, updates and deletes.
SETUP = """
CREATE TABLE one (id bigint PRIMARY KEY, "Zeta" text, amount numeric, tags text[],
                  doc jsonb, gone int, "émoji" text, note text);
ALTER TABLE one DROP COLUMN gone;
CREATE TABLE two (a int, b text, v numeric, PRIMARY KEY (b, a));
CREATE TABLE keyless (x int, y text);
SELECT flux.install_capture('one'), flux.install_capture('two'),
       flux.install_capture('keyless');
"""
WORKLOAD = [
    "INSERT INTO one VALUES (1, 'z', 1.0, '{a,b}', '{\"k\": [1, null]}', 'é', NULL)",
    "/*flux:s7*/ UPDATE one SET amount = 1.00, note = 'n' WHERE id = 1",
    'UPDATE one SET "Zeta" = NULL, doc = \'{"k": 2}\', "émoji" = \'😀\' WHERE id = 1',
    "INSERT INTO two VALUES (1, 'x', 2), (2, 'x', 3)",
    "UPDATE two SET v = v * 10 WHERE a = 2",
    "INSERT INTO keyless VALUES (1, 'a'), (NULL, NULL)",
    "DELETE FROM keyless WHERE x IS NULL",
    "/*flux:*/ DELETE FROM two WHERE a = 1",
    "DELETE FROM one",
]
COLUMNS = (
    "record_id, table_oid, table_schema, table_name, pk, op, old, new, changed_cols, "
    "request_id, span_id, actor, application_name, source, tenant, rolled_back"
)


def run_workload(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    conn.execute("TRUNCATE one, two, keyless")
    conn.execute("DELETE FROM flux.state_mutations")
    for number, statement in enumerate(WORKLOAD):
        with conn.transaction():
            if number % 2:
                conn.execute(
                    "SELECT set_config('flux.request_id', %s, true), "
                    "set_config('flux.span_id', 's3', true), "
                    "set_config('flux.tenant', 'acme', true)",
                    [str(REQ)],
                )
            conn.execute(statement)
    return conn.execute(
        f"SELECT {COLUMNS} FROM flux.state_mutations WHERE op <> 'TRUNCATE' ORDER BY id"
    ).fetchall()


def test_the_c_trigger_writes_the_rows_plpgsql_writes(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SET application_name = 'native-test'")
        conn.execute(SETUP)
        assert native.install(conn).language == "c"  # the test server can load it
        in_c = run_workload(conn)
        assert conn.execute("SELECT flux.use_native_capture(NULL)").fetchone() == ("plpgsql",)
        in_plpgsql = run_workload(conn)
    assert in_c == in_plpgsql
    assert len(in_c) == 11
    spans = [(row[5], row[10]) for row in in_c]
    assert {("UPDATE", "s7"), ("INSERT", "s3"), ("INSERT", None), ("DELETE", None)} <= set(spans)
    # 1.0 → 1.00 is no change to JSON; note's is.
    assert in_c[1][5:9] == ("UPDATE", in_c[1][6], in_c[1][7], ["note"])


def test_migrate_installs_the_c_trigger_and_falls_back_without_it(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        # The test template was migrated by flux db migrate: C, on this machine.
        assert conn.execute("SELECT flux.capture_language()").fetchone() == ("c",)
        monkeypatch.setenv(native.ENV, "0")
        result = native.install(conn)
        assert result == native.NativeCapture("plpgsql", f"{native.ENV}=0")
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("SELECT flux.install_capture('t')")
        conn.execute("INSERT INTO t VALUES (1)")
        monkeypatch.delenv(native.ENV)
        assert native.install(conn).language == "c"
        conn.execute("INSERT INTO t VALUES (2)")
        rows = conn.execute("SELECT pk FROM flux.state_mutations ORDER BY id").fetchall()
    assert rows == [({"id": 1},), ({"id": 2},)]


def test_a_role_that_may_not_load_c_keeps_plpgsql(db: str) -> None:
    role = f"native_{uuid.uuid4().hex[:12]}"  # roles are the server's, shared by all tests
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT flux.use_native_capture(NULL)")
        conn.execute(f"CREATE ROLE {role} NOSUPERUSER")
        try:
            conn.execute(f"SET ROLE {role}")
            assert native.install(conn) == native.NativeCapture(
                "plpgsql", "only a superuser may create a C function"
            )
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f"DROP ROLE {role}")


def test_the_c_trigger_writes_into_the_days_partition(conn: psycopg.Connection[Any]) -> None:
    # The C trigger forms the row and inserts it into its partition itself (no INSERT):
    # the day's partition once it exists, else the default one, with the defaults filled.
    assert conn.execute("SELECT flux.capture_language()").fetchone() == ("c",)
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    conn.execute("SELECT flux.install_capture('t')")
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    before = conn.execute("SELECT tableoid::regclass::text FROM flux.state_mutations").fetchall()
    conn.execute("SELECT flux.ensure_partitions(0)")
    with conn.transaction():
        conn.execute("SELECT set_config('flux.tenant', 'acme', true)")
        conn.execute("UPDATE t SET v = 'b'")
        at = conn.execute("SELECT now()").fetchone()
    rows = conn.execute(
        "SELECT tableoid::regclass::text, committed_at, tenant, source, rolled_back, retained "
        "FROM flux.state_mutations ORDER BY id"
    ).fetchall()
    day = conn.execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')").fetchone()
    assert at is not None and day is not None
    assert before == [("flux.state_mutations_default",)]
    assert [r[0] for r in rows] == [f"flux.state_mutations_{day[0]}"] * 2  # the first moved
    assert rows[1][1:] == (at[0], "acme", "trigger", False, False)
    assert rows[0][2] is None


def test_a_library_that_cannot_be_written_is_a_reason_not_an_error(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    reason = native.build(blocked / native.LIBRARY_DIR / "flux_capture-x.so")
    assert reason is not None and reason.startswith("the C trigger could not be built into")


def test_the_c_triggers_kept_executor_state_follows_the_schema(
    conn: psycopg.Connection[Any],
) -> None:
    # The C trigger keeps its partition's executor state (indexes, constraints) across rows
    # and transactions: an index or a CHECK constraint added later in the same session must
    # take effect at once, and a row that failed half-way must not spoil the next ones.
    assert conn.execute("SELECT flux.capture_language()").fetchone() == ("c",)
    conn.execute("CREATE TABLE once (id int PRIMARY KEY, v text)")
    conn.execute("SELECT flux.install_capture('once')")
    conn.execute("INSERT INTO once VALUES (1, 'a')")  # the state is built here
    # Unique per table and transaction: two captured rows of `once` in one transaction clash
    # only if the cached state writes the new index.
    conn.execute(
        "CREATE UNIQUE INDEX state_mutations_once ON flux.state_mutations "
        "(table_name, committed_at) WHERE table_name = 'once'"
    )
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        conn.execute("INSERT INTO once VALUES (2, 'b'), (3, 'c')")
    conn.execute("DROP INDEX flux.state_mutations_once")
    conn.execute(
        "ALTER TABLE flux.state_mutations ADD CONSTRAINT no_bad CHECK (new ->> 'v' <> 'bad')"
    )
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
        conn.execute("INSERT INTO once VALUES (4, 'bad')")
    conn.execute("ALTER TABLE flux.state_mutations DROP CONSTRAINT no_bad")
    with conn.transaction():
        conn.execute("SAVEPOINT s")
        conn.execute("INSERT INTO once VALUES (5, 'x')")
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.execute("INSERT INTO once VALUES (6, 'bad'), (7, 'y')")
    rows = conn.execute(
        "SELECT new ->> 'id' FROM flux.state_mutations WHERE table_name = 'once' ORDER BY id"
    ).fetchall()
    assert rows == [("1",), ("6",), ("7",)]
    # Every index of the partition holds every row (an index scan finds them all).
    conn.execute("SET enable_seqscan = off")
    found = conn.execute(
        "SELECT count(*) FROM flux.state_mutations m JOIN flux.state_mutations n "
        "ON n.record_id = m.record_id WHERE m.table_name = 'once'"
    ).fetchone()
    assert found == (3,)
