"""Trigger capture and the history / blame views, straight in SQL."""

from __future__ import annotations

import uuid

import psycopg

REQ = uuid.UUID("01900000-0000-7000-8000-000000000001")


def setup_users(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text, plan text)")
    conn.execute("SELECT flux.install_capture('users')")


def as_request(conn: psycopg.Connection, request_id: uuid.UUID, span: str, statement: str
               ) -> None:
    with conn.transaction():
        conn.execute("SELECT set_config('flux.request_id', %s, true), "
                     "set_config('flux.span_id', %s, true)", [str(request_id), span])
        conn.execute(statement)


def test_changes_carry_request_and_span_of_the_execution(conn: psycopg.Connection) -> None:
    setup_users(conn)
    as_request(conn, REQ, "s2", "INSERT INTO users VALUES (42, 'a@b.c', 'free')")
    row = conn.execute("SELECT op, pk, new, request_id, span_id, changed_cols "
                       "FROM flux.state_mutations").fetchone()
    assert row == ("INSERT", {"id": 42}, {"id": 42, "email": "a@b.c", "plan": "free"}, REQ,
                   "s2", ["email", "id", "plan"])


def test_outside_writer_is_recorded_with_actor_and_no_request(conn: psycopg.Connection) -> None:
    setup_users(conn)
    conn.execute("SET application_name = 'psql'")
    conn.execute("INSERT INTO users VALUES (1, 'x@y.z', 'free')")
    row = conn.execute("SELECT request_id, actor, application_name "
                       "FROM flux.state_mutations").fetchone()
    assert row == (None, "postgres", "psql")
    hist = conn.execute("SELECT actor FROM flux.state_history").fetchone()
    assert hist == ("postgres (psql)",)


def test_noop_update_is_skipped_and_update_lists_changed_columns(conn: psycopg.Connection
                                                                 ) -> None:
    setup_users(conn)
    conn.execute("INSERT INTO users VALUES (1, 'x@y.z', 'free')")
    conn.execute("UPDATE users SET plan = 'free' WHERE id = 1")
    conn.execute("UPDATE users SET plan = 'pro' WHERE id = 1")
    rows = conn.execute("SELECT op, changed_cols FROM flux.state_mutations ORDER BY id").fetchall()
    assert rows == [("INSERT", ["email", "id", "plan"]), ("UPDATE", ["plan"])]


def test_delete_and_truncate_are_recorded(conn: psycopg.Connection) -> None:
    setup_users(conn)
    conn.execute("INSERT INTO users VALUES (1, 'a@b.c', 'free'), (2, 'c@d.e', 'free')")
    conn.execute("DELETE FROM users WHERE id = 1")
    conn.execute("TRUNCATE users")
    rows = conn.execute("SELECT op, pk, old IS NOT NULL FROM flux.state_mutations "
                        "WHERE op IN ('DELETE', 'TRUNCATE') ORDER BY id").fetchall()
    assert rows == [("DELETE", {"id": 1}, True), ("TRUNCATE", None, False)]


def test_history_view_gives_old_and_new_per_changed_column(conn: psycopg.Connection) -> None:
    setup_users(conn)
    conn.execute("INSERT INTO users VALUES (42, 'a@b.c', 'free')")
    as_request(conn, REQ, "s1", "UPDATE users SET plan = 'pro' WHERE id = 42")
    rows = conn.execute(
        "SELECT op, changes, request_id, rolled_back FROM flux.state_history "
        "WHERE record_id = flux.record_id('users'::regclass, '{\"id\": 42}') "
        "ORDER BY at, id").fetchall()
    assert rows == [
        ("INSERT", {"id": [None, 42], "email": [None, "a@b.c"], "plan": [None, "free"]},
         None, False),
        ("UPDATE", {"plan": ["free", "pro"]}, REQ, False),
    ]


def test_blame_attributes_each_column_and_ignores_rolled_back(conn: psycopg.Connection) -> None:
    setup_users(conn)
    conn.execute("INSERT INTO users VALUES (42, 'a@b.c', 'free')")
    conn.execute(
        "INSERT INTO flux.trace_requests (request_id, function, status, started_at, code_sha, "
        "spans) VALUES (%s, 'upgrade', 'ok', now(), 'abc1234', "
        "'[{\"id\": \"s1\", \"file\": \"functions/upgrade.py\", \"line\": 12}]')", [REQ])
    as_request(conn, REQ, "s1", "UPDATE users SET plan = 'pro' WHERE id = 42")
    # An attempt that was rolled back, as the executor records it after the rollback.
    conn.execute(
        "INSERT INTO flux.state_mutations (record_id, table_oid, table_schema, table_name, pk, "
        "op, old, new, changed_cols, request_id, source, rolled_back) "
        "SELECT flux.record_id('users'::regclass, '{\"id\": 42}'), 'users'::regclass, 'public', "
        "'users', '{\"id\": 42}', 'UPDATE', '{\"plan\": \"pro\"}', '{\"plan\": null}', "
        "'{plan}', gen_random_uuid(), 'executor', true")
    blame = {row[0]: row[1:] for row in conn.execute(
        "SELECT column_name, value, request_id, function, code_sha, file, line "
        "FROM flux.state_blame WHERE table_name = 'users' AND pk = '{\"id\": 42}'")}
    assert blame["plan"] == ("pro", REQ, "upgrade", "abc1234", "functions/upgrade.py", 12)
    assert blame["email"] == ("a@b.c", None, None, None, None, None)


def test_history_of_one_row_uses_the_record_index(conn: psycopg.Connection) -> None:
    setup_users(conn)
    conn.execute("INSERT INTO users SELECT g, g || '@x.y', 'free' FROM generate_series(1, 3000) g")
    conn.execute("ANALYZE flux.state_mutations")
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT * FROM flux.state_history "
        "WHERE record_id = flux.record_id('users'::regclass, '{\"id\": 7}')"))
    # Each partition's copy of state_mutations_record_idx is named for its partition.
    assert "record_id_committed_at_id_idx" in plan and "Seq Scan" not in plan


def test_capture_refuses_flux_own_tables(conn: psycopg.Connection) -> None:
    try:
        conn.execute("SELECT flux.install_capture('flux.jobs')")
    except psycopg.errors.RaiseException as exc:
        assert "does not capture its own tables" in str(exc)
    else:
        raise AssertionError("install_capture accepted a flux table")


def test_composite_and_keyless_tables_key_their_rows_as_record_id_does(
        conn: psycopg.Connection) -> None:
    # sql/0020 computes a one-column key, a composite key and a keyless row's identity on
    # three paths; each must hash as flux.record_id does, so history finds the row.
    conn.execute("CREATE TABLE seats (show int, seat text, holder text, "
                 "PRIMARY KEY (seat, show))")
    conn.execute("CREATE TABLE notes (body text, stars int)")
    conn.execute("SELECT flux.install_capture('seats'), flux.install_capture('notes')")
    with conn.transaction():
        conn.execute("SELECT set_config('flux.request_id', %s, true)", [str(REQ)])
        conn.execute("/*flux:s7*/ INSERT INTO seats VALUES (3, 'A1', 'ann')")
        conn.execute("UPDATE seats SET holder = 'bob' WHERE show = 3")
        conn.execute("INSERT INTO notes VALUES ('hi', 4)")
    rows = conn.execute(
        "SELECT table_name, op, pk, changed_cols, span_id, "
        "record_id = flux.record_id(table_oid, pk) FROM flux.state_mutations ORDER BY id"
    ).fetchall()
    assert rows == [
        ("seats", "INSERT", {"seat": "A1", "show": 3}, ["holder", "seat", "show"], "s7", True),
        ("seats", "UPDATE", {"seat": "A1", "show": 3}, ["holder"], None, True),
        ("notes", "INSERT", {"body": "hi", "stars": 4}, ["body", "stars"], None, True),
    ]
    history = conn.execute("SELECT count(*) FROM flux.state_history WHERE record_id = "
                           "flux.record_id('seats'::regclass, %s)",
                           [psycopg.types.json.Jsonb({"show": 3, "seat": "A1"})]).fetchone()
    assert history == (2,)
