"""The audit trail is append-only to the runtime role (issue 20, item 12): a login role of
``flux_runtime`` — what every function's ctx.db, and so any SQL injection in an app, runs
as — serves the shop, its failed execution keeps its rolled-back change and a resume marks
the original, all through SECURITY DEFINER functions; yet the same role cannot update or
delete a record or a change, insert a forged change, hang one on another execution, mark
a resume it did not make, or lock the record tables against everyone else."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from flux._ids import new_request_id
from flux._project import parse
from flux.runtime._access import AdminAccess
from flux.runtime._executor import Invocation, execute
from flux.runtime._runtime import Runtime
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import Shop
from tests.replay.test_replay import CHECKOUT

FORGED = ("INSERT INTO flux.state_mutations (record_id, table_oid, table_schema, table_name, "
          "pk, op, new, changed_cols, request_id) SELECT record_id, table_oid, table_schema, "
          "table_name, pk, 'UPDATE', '{\"plan\": \"enterprise\"}', '{plan}', request_id "
          "FROM flux.state_mutations WHERE table_name = 'users' LIMIT 1")


async def test_the_runtime_role_cannot_rewrite_the_audit_trail(
        shop: Shop, login_role: Callable[..., tuple[str, str]]) -> None:
    app, app_db = login_role("app", "flux_runtime")
    _, user, ok_rid = await shop.post("signup", {"email": "ao@example.com"})

    # A runtime connected as the role runs a checkout that fails after the charge: its
    # pending order is rolled back and kept as a rolled-back change, stamped with the role.
    checkout = shop.root / CHECKOUT
    original = checkout.read_text()
    checkout.write_text(original.replace('charge_status = charge["status"]',
                                         'charge_status = charge["state"]'))
    runtime = Runtime(parse(shop.root), app_db, admin=AdminAccess())
    assert not await runtime.start()
    try:
        failed = str(new_request_id())
        outcome = await execute(runtime, Invocation(
            request_id=failed, spec=runtime.registry.by_name["checkout"],
            input={"user_id": user["id"], "amount_cents": 900}))
    finally:
        await runtime.close()
        checkout.write_text(original)  # the fix
    assert outcome.http_status == 500 and shop.provider.charges == 1
    kept = [(m["table_name"], m["op"], m["rolled_back"], m["source"], m["actor"])
            for m in shop.mutations(failed)]
    assert kept == [("orders", "INSERT", True, "executor", app)]

    # Resumed as the same role: the charge comes from the tape, the order is written for
    # real (the capture trigger records it, with the role as actor), the original marked.
    result = run_flux(["resume", failed[:18], "--json"], shop.root,
                      env={"DATABASE_URL": app_db})
    assert result.returncode == 0, result.stderr
    resumed = json.loads(result.stdout)["request_id"]
    assert shop.provider.charges == 1
    assert shop.record(failed)["resumed_by"] is not None
    assert str(shop.record(failed)["resumed_by"]) == resumed
    assert {(m["table_name"], m["actor"], m["rolled_back"])
            for m in shop.mutations(resumed)} >= {("orders", app, False)}

    before = _trail(shop.db)
    with psycopg.connect(app_db, autocommit=True) as conn:
        for statement in (
                f"UPDATE flux.trace_requests SET status = 'ok' WHERE request_id = '{failed}'",
                "UPDATE flux.trace_requests SET resumed_by = NULL",
                "DELETE FROM flux.trace_requests",
                "UPDATE flux.state_mutations SET rolled_back = false",
                "DELETE FROM flux.state_mutations",
                FORGED,
                "TRUNCATE flux.trace_requests",
                "DELETE FROM flux.pins",
                "DELETE FROM flux.trace_requests_default",
                "LOCK TABLE flux.trace_requests IN ACCESS EXCLUSIVE MODE",
                "LOCK TABLE flux.state_mutations IN ACCESS EXCLUSIVE MODE",
                "LOCK TABLE flux.trace_requests IN SHARE MODE",
                "LOCK TABLE flux.trace_requests_default IN ACCESS EXCLUSIVE MODE",
                # a rolled-back change hung on an execution that did not fail just now
                "SELECT flux.keep_rolled_back(NULL, NULL, 'public', 'users', NULL, 'UPDATE', "
                f"NULL, NULL, '{{plan}}', '{ok_rid}', NULL, NULL, NULL, NULL, now(), NULL)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)
        # marking a resume it did not make changes nothing
        assert conn.execute("SELECT flux.mark_resumed(%s, %s)",
                            [failed, ok_rid]).fetchone() == (False,)
    assert _trail(shop.db) == before


def _trail(db: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT request_id::text, status, resumed_by::text, pinned, "
            "(SELECT count(*) FROM flux.state_mutations m WHERE m.request_id = t.request_id "
            "AND NOT m.rolled_back) FROM flux.trace_requests t ORDER BY 1").fetchall()
