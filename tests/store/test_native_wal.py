"""WAL capture's writer-side functions in C (extension/flux_wal.c, sql/0025): used where the
server can load them, and writing the very messages the PL/pgSQL bodies write."""

from __future__ import annotations

import concurrent.futures
import json
import re
import uuid
from typing import Any

import psycopg
import pytest

from flux.store import _native as native

REQ = "01900000-0000-7000-8000-0000000000d1"
MESSAGE = re.compile(r"^message: transactional: (\d) prefix: ([^,]*), sz: \d+ content:(.*)$", re.S)


def run_workload(conn: psycopg.Connection[Any], slot: str) -> list[tuple[str, str, Any]]:
    """Every path of both functions; the messages they wrote, in order."""
    statements = json.dumps([["s1", 2, ["t"], "insert"], ["s2", 1, ["t"], 'up"d\\até']])
    with conn.transaction():  # a Flux execution with a tenant: end_execution's message only
        conn.execute(
            "SELECT set_config('flux.request_id', %s, true), "
            "set_config('flux.tenant', 'acme', true)",
            [REQ],
        )
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        conn.execute("SELECT flux.end_execution(%s, %s)", [REQ, statements])
    conn.execute("SET application_name = 'app \"quoted\" \\ back'")
    with conn.transaction():  # no tenant, no statements
        conn.execute("SELECT set_config('flux.request_id', %s, true)", [REQ])
        conn.execute("UPDATE t SET v = 'c' WHERE id = 1")
        conn.execute("SELECT flux.end_execution(%s, NULL)", [REQ])
    conn.execute("DELETE FROM t WHERE id = 2")  # from outside Flux: the actor trigger's
    conn.execute("RESET application_name")
    with conn.transaction():
        conn.execute("SELECT set_config('flux.tenant', 'beta', true)")
        conn.execute("UPDATE t SET v = 'd'")
    conn.execute("UPDATE flux.settings SET value = 'trigger' WHERE key = 'capture'")
    with conn.transaction():  # not WAL mode: end_execution writes nothing
        conn.execute("SELECT set_config('flux.request_id', %s, true)", [REQ])
        conn.execute("SELECT flux.end_execution(%s, '[]')", [REQ])
    conn.execute("UPDATE flux.settings SET value = 'wal' WHERE key = 'capture'")
    with conn.transaction():  # emptied for the next run, as an execution (no message)
        conn.execute("SELECT set_config('flux.request_id', %s, true)", [REQ])
        conn.execute("DELETE FROM t")
    messages = []
    for (data,) in conn.execute(
        "SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL)", [slot]
    ):
        m = MESSAGE.match(data)
        if m is not None:
            messages.append((m.group(1), m.group(2), json.loads(m.group(3))))
    return messages


def test_the_c_functions_write_the_messages_plpgsql_writes(db: str) -> None:
    slot = f"walw_{uuid.uuid4().hex[:12]}"  # slots are the server's, shared by all tests
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("SELECT flux.switch_capture('wal')")
        assert conn.execute("SELECT flux.wal_language()").fetchone() == ("c",)
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", [slot])
        try:
            in_c = run_workload(conn, slot)
            assert conn.execute("SELECT flux.use_native_wal(NULL)").fetchone() == ("plpgsql",)
            in_plpgsql = run_workload(conn, slot)
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    assert in_c == in_plpgsql
    user = in_c[0][2]["actor"]
    assert [(t, p) for t, p, _ in in_c] == [
        ("1", "flux"),
        ("1", "flux"),
        ("1", "flux.actor"),
        ("1", "flux.actor"),
    ]
    assert in_c[0][2] == {
        "request_id": REQ,
        "statements": [["s1", 2, ["t"], "insert"], ["s2", 1, ["t"], 'up"d\\até']],
        "actor": user,
        "application_name": "",
        "tenant": "acme",
    }
    assert in_c[1][2] == {
        "request_id": REQ,
        "statements": None,
        "actor": user,
        "application_name": 'app "quoted" \\ back',
        "tenant": None,
    }
    assert in_c[2][2] == {"actor": user, "application_name": 'app "quoted" \\ back', "tenant": None}
    assert in_c[3][2] == {"actor": user, "application_name": "", "tenant": "beta"}


def test_migrate_installs_the_c_functions_and_falls_back_without_them(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        # The test template was migrated by flux db migrate: C, on this machine.
        assert conn.execute("SELECT flux.wal_language()").fetchone() == ("c",)
        monkeypatch.setenv(native.ENV, "0")
        assert native.install_wal(conn) == native.NativeCapture("plpgsql", f"{native.ENV}=0")
        assert conn.execute("SELECT flux.wal_language()").fetchone() == ("plpgsql",)
        monkeypatch.delenv(native.ENV)
        assert native.install_wal(conn).language == "c"


def test_a_role_that_may_not_load_c_keeps_plpgsql_wal_functions(db: str) -> None:
    role = f"native_{uuid.uuid4().hex[:12]}"  # roles are the server's, shared by all tests
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT flux.use_native_wal(NULL)")
        conn.execute(f"CREATE ROLE {role} NOSUPERUSER")
        try:
            conn.execute(f"SET ROLE {role}")
            assert native.install_wal(conn) == native.NativeCapture(
                "plpgsql", "only a superuser may create a C function"
            )
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f"DROP ROLE {role}")


SWITCH_LOCK = 5065517517330448405  # sql/queries/capture.sql: switch_lock


def _waiting(conn: psycopg.Connection[Any], pid: int) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted"
                       " AND locktype = 'advisory'", [pid]).fetchone()
    return row is not None and row[0] > 0


@pytest.mark.parametrize("language", ["c", "plpgsql"])
def test_record_in_wal_reads_the_mode_under_the_switch_lock(db: str, language: str) -> None:
    """The BEGIN's mode read (sql/0023; in C since 0026): under READ COMMITTED true in WAL
    mode and false in trigger mode, NULL (unknown) under another isolation level; it holds
    the switch's lock shared to the end of the transaction, so a switch cannot commit while
    it is open; one that waited behind a switch sees the new mode."""
    with psycopg.connect(db, autocommit=True) as admin, psycopg.connect(db) as ex, \
            psycopg.connect(db) as switch:
        admin.execute("SELECT flux.switch_capture('wal')")
        if language == "plpgsql":
            admin.execute("SELECT flux.use_native_wal(NULL)")
        assert admin.execute(
            "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
            " WHERE p.oid = 'flux.record_in_wal()'::regprocedure").fetchone() == (language,)

        def asked() -> bool | None:
            row = ex.execute("SELECT flux.record_in_wal()").fetchone()
            assert row is not None
            return row[0]  # type: ignore[no-any-return]

        assert asked() is True
        # held shared until the transaction ends: the switch's exclusive lock times out
        switch.execute("SET lock_timeout = '50ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            switch.execute("SELECT pg_advisory_xact_lock(%s)", [SWITCH_LOCK])
        switch.rollback()
        ex.commit()
        switch.execute("SELECT pg_advisory_xact_lock(%s)", [SWITCH_LOCK])
        switch.execute("UPDATE flux.settings SET value = 'trigger' WHERE key = 'capture'")
        # an execution that begins while the switch is open waits for it, then reads
        # the mode the switch committed
        waiting = concurrent.futures.ThreadPoolExecutor(1).submit(asked)
        while not _waiting(admin, ex.info.backend_pid):
            assert not waiting.done(), waiting.result()
        switch.commit()
        assert waiting.result() is False
        ex.commit()
        admin.execute("UPDATE flux.settings SET value = 'wal' WHERE key = 'capture'")
        assert asked() is True
        ex.commit()
        for mode in ("wal", "trigger"):
            admin.execute("UPDATE flux.settings SET value = %s WHERE key = 'capture'", [mode])
            ex.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            assert asked() is None  # the snapshot may predate the lock: unknown
            ex.commit()
        assert asked() is False  # trigger mode, read after the lock
        ex.commit()
