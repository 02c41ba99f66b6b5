"""History and blame: inserts, updates, deletes, composite keys, outside writers, rolled-back
attempts — through flux/inspect/_state.py and through the CLI."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from flux import ConfigError, NotFound
from flux.inspect._state import blame, history

R1 = uuid.UUID("01900000-0000-7000-8000-000000000001")
R2 = uuid.UUID("01900000-0000-7000-8000-000000000002")
R3 = uuid.UUID("01900000-0000-7000-8000-000000000003")


def execution(conn: psycopg.Connection, request_id: uuid.UUID, function: str, sql: str,
              *, line: int) -> None:
    """What the executor does for a success: the GUCs, the statement, the record."""
    spans = json.dumps([{"id": "s3", "file": f"functions/{function}.py", "line": line}])
    with conn.transaction():
        conn.execute("SELECT set_config('flux.request_id', %s, true), "
                     "set_config('flux.span_id', 's3', true)", [str(request_id)])
        conn.execute(sql)
        conn.execute("INSERT INTO flux.trace_requests (request_id, function, status, "
                     "started_at, code_sha, spans) VALUES (%s, %s, 'ok', now(), 'c0ffee', %s)",
                     [request_id, function, spans])


def failed_execution(conn: psycopg.Connection, request_id: uuid.UUID, function: str, sql: str
                     ) -> None:
    """What it does for a failure: read the attempt's mutations, roll back, store them
    again marked rolled back, with the record."""
    columns = ("record_id, table_oid, table_schema, table_name, pk, op, old, new, "
               "changed_cols, span_id, request_id")
    conn.execute("BEGIN")
    conn.execute("SELECT set_config('flux.request_id', %s, true), "
                 "set_config('flux.span_id', 's3', true)", [str(request_id)])
    conn.execute(sql)
    attempted = conn.execute(f"SELECT {columns} FROM flux.state_mutations "
                             "WHERE request_id = %s", [request_id]).fetchall()
    conn.execute("ROLLBACK")
    with conn.transaction():
        conn.execute("INSERT INTO flux.trace_requests (request_id, function, status, "
                     "started_at) VALUES (%s, %s, 'error', now())", [request_id, function])
        for row in attempted:
            values = [psycopg.types.json.Jsonb(v) if isinstance(v, dict) else v for v in row]
            conn.execute(f"INSERT INTO flux.state_mutations ({columns}, source, rolled_back) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'executor', "
                         "true)", values)


@pytest.fixture
def shop_tables(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text, plan text)")
    conn.execute("CREATE TABLE memberships (org text, user_id bigint, role text, "
                 "PRIMARY KEY (org, user_id))")
    return conn


def test_history_of_a_row_through_its_life(shop_tables: psycopg.Connection) -> None:
    conn = shop_tables
    execution(conn, R1, "signup", "INSERT INTO users VALUES (42, 'a@b.c', 'free')", line=12)
    failed_execution(conn, R2, "checkout", "UPDATE users SET plan = NULL WHERE id = 42")
    conn.execute("SET application_name = 'psql'")
    conn.execute("UPDATE users SET plan = 'pro' WHERE id = 42")
    execution(conn, R3, "close_account", "DELETE FROM users WHERE id = 42", line=30)
    result = history(conn, "users", "42")
    rows = result["rows"]
    assert [(r["op"], r["request_id"], r["rolled_back"]) for r in rows] == [
        ("INSERT", str(R1), False), ("UPDATE", str(R2), True), ("UPDATE", None, False),
        ("DELETE", str(R3), False)]
    assert rows[0]["changes"]["plan"] == [None, "free"]
    assert rows[0]["file"] == "functions/signup.py" and rows[0]["line"] == 12
    assert rows[1]["changes"] == {"plan": ["free", None]}
    assert rows[2]["actor"] == "postgres (psql)"
    assert rows[2]["changes"] == {"plan": ["free", "pro"]}  # the failed attempt left no trace
    assert rows[3]["changes"]["email"] == ["a@b.c", None]


def test_blame_names_the_writer_of_each_column_never_a_rolled_back_one(
        shop_tables: psycopg.Connection) -> None:
    conn = shop_tables
    execution(conn, R1, "signup", "INSERT INTO users VALUES (7, 'a@b.c', 'free')", line=12)
    execution(conn, R3, "upgrade", "UPDATE users SET plan = 'pro' WHERE id = 7", line=44)
    failed_execution(conn, R2, "checkout", "UPDATE users SET plan = NULL WHERE id = 7")
    conn.execute("SET application_name = 'support-console'")
    conn.execute("UPDATE users SET email = 'new@b.c' WHERE id = 7")
    columns = blame(conn, "users", "7")["columns"]
    assert columns["plan"]["value"] == "pro" and columns["plan"]["request_id"] == str(R3)
    assert columns["plan"]["function"] == "upgrade" and columns["plan"]["line"] == 44
    assert columns["plan"]["code_sha"] == "c0ffee"
    assert columns["plan"]["file"] == "functions/upgrade.py"
    assert columns["email"]["request_id"] is None
    assert columns["email"]["actor"] == "postgres (support-console)"
    assert columns["id"]["request_id"] == str(R1)


def test_composite_keys_in_every_spelling(shop_tables: psycopg.Connection) -> None:
    conn = shop_tables
    execution(conn, R1, "invite", "INSERT INTO memberships VALUES ('acme', 5, 'admin')",
              line=3)
    conn.execute("UPDATE memberships SET role = 'owner' WHERE org = 'acme' AND user_id = 5")
    for spelling in ("org=acme,user_id=5", "user_id=5, org=acme",
                     '{"org": "acme", "user_id": 5}'):
        rows = history(conn, "memberships", spelling)["rows"]
        assert [r["op"] for r in rows] == ["INSERT", "UPDATE"], spelling
    assert blame(conn, "memberships", "org=acme,user_id=5")["columns"]["role"]["value"] == \
        "owner"
    with pytest.raises(ConfigError, match=r"composite key \(org, user_id\)"):
        history(conn, "memberships", "5")
    with pytest.raises(ConfigError, match="lacks user_id"):
        history(conn, "memberships", "org=acme")


def test_blame_of_a_whole_table(shop_tables: psycopg.Connection) -> None:
    conn = shop_tables
    conn.execute("INSERT INTO users VALUES (1, 'a@b.c', 'free'), (2, 'c@d.e', 'pro')")
    result = blame(conn, "users", None)
    assert sorted(r["pk"]["id"] for r in result["rows"]) == [1, 2]


def test_names_from_the_command_line_never_reach_sql(shop_tables: psycopg.Connection) -> None:
    conn = shop_tables
    for evil in ("users; DROP TABLE users", "users' OR '1'='1", 'x"; drop table users; --'):
        with pytest.raises(NotFound):
            history(conn, evil, "1")
    with pytest.raises(ConfigError, match="does not fit the key"):
        history(conn, "users", "1; DROP TABLE users")
    assert conn.execute("SELECT to_regclass('users')").fetchone() == ("users",)


def test_unknown_table_and_bad_key_are_one_sentence(make_project, flux_cli, db) -> None:
    root = make_project()
    env = {"DATABASE_URL": db}
    result = flux_cli(["state", "history", "nosuch", "--id", "1"], root, env=env)
    assert result.returncode == 1 and result.stderr.startswith("error: no table named")
    result = flux_cli(["state", "blame", "flux.jobs", "--id", "not-a-uuid"], root, env=env)
    assert result.returncode != 0 and "does not fit the key" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_history_and_blame_json_keys(make_project, flux_cli, db) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, plan text)")
        execution(conn, R1, "signup", "INSERT INTO users VALUES (1, 'free')", line=5)
    root = make_project()
    env = {"DATABASE_URL": db}
    result = flux_cli(["state", "history", "users", "--id", "1", "--json"], root, env=env)
    rows = json.loads(result.stdout)["rows"]
    assert set(rows[0]) >= {"at", "request_id", "op", "changes", "rolled_back", "actor"}
    result = flux_cli(["state", "blame", "users", "--id", "1", "--json"], root, env=env)
    plan = json.loads(result.stdout)["columns"]["plan"]
    assert set(plan) >= {"value", "request_id", "function", "code_sha", "file", "line", "at"}
    human = flux_cli(["state", "history", "users", "--id", "1"], root, env=env).stdout
    assert "users / id = 1" in human and "plan" in human and "free" in human
