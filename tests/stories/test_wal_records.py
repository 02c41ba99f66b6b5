"""Story: a shop captures by WAL (flux.toml, and `flux capture switch wal`). Each committed
request's record travels in its transaction's WAL and the capture consumer writes it: the
tools still find a request right after its answer, a failure still explains itself with the
changes it rolled back, and while no consumer runs they say which records are not yet
written and what writes them. The consumer is killed with SIGKILL and started again:
every answer has exactly one record."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import psycopg

from tests.fixtures.projects import FLUX
from tests.fixtures.shop import serve_app
from tests.stories._world import Provider, flux, init_project

PLACE = '''"""Place an order; a quantity over the stock is a bug found after the insert."""

from flux import function


@function(route="/orders", methods=["POST"])
async def place_order(ctx, input):
    row = await ctx.db.fetchone(
        "INSERT INTO orders (reference, item, quantity) VALUES (%s, %s, %s) RETURNING id",
        ["ord_" + ctx.uuid().hex[:10], input["item"], int(input["quantity"])])
    stock = await ctx.db.fetchone("SELECT sum(quantity) AS left FROM stock")
    if int(input["quantity"]) > stock["left"]:
        raise RuntimeError(f"only {stock['left']} left")  # after the insert: rolled back
    await ctx.db.execute("UPDATE stock SET quantity = quantity - %s", [int(input["quantity"])])
    return {"id": row["id"]}
'''
SCHEMA = """CREATE TABLE orders (
    id        bigserial PRIMARY KEY,
    reference text NOT NULL UNIQUE,
    item      text NOT NULL,
    quantity  int NOT NULL
);
CREATE TABLE stock (item text PRIMARY KEY, quantity int NOT NULL);
INSERT INTO stock VALUES ('cups', 100);
"""


def consumer(project: Path, db: str) -> subprocess.Popen[str]:
    """`flux capture run`, as an operator starts it: returns once it is consuming."""
    proc = subprocess.Popen([*FLUX, "capture", "run"], cwd=project, text=True,
                            env={**os.environ, "DATABASE_URL": db}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    banner = proc.stdout.readline()  # once its signal handlers are in place
    assert "Flux capture" in banner, banner
    return proc


async def test_records_in_the_wal_are_found_right_after_the_answer(
        db: str, provider: Provider, tmp_path: Path) -> None:
    project = init_project(tmp_path, "cups")
    (project / "schema" / "002_orders.sql").write_text(SCHEMA)
    (project / "functions" / "place_order.py").write_text(PLACE)
    toml = project / "flux.toml"  # the project captures by WAL, as its operator decided
    toml.write_text(toml.read_text().replace('capture = "trigger"', 'capture = "wal"', 1))
    assert 'capture = "wal"' in toml.read_text()
    answers: dict[str, int] = {}
    async with serve_app(project, db, provider, consume=False) as app:  # type: ignore[arg-type]
        async def place(quantity: int) -> str:
            async with app.client.post(app.url + "/orders",
                                       json={"item": "cups", "quantity": quantity}) as answer:
                rid = answer.headers["x-flux-request-id"]
                answers[rid] = answer.status
                return rid

        code, switched, _ = flux(project, db, "capture", "switch", "wal")
        assert code == 0 and switched["mode"] == "wal", switched
        running = consumer(project, db)
        try:
            ok = await place(2)
            # Right after the answer: the record is found (the reader waited for the
            # consumer to write what the WAL carried).
            code, trace, out = flux(project, db, "trace", ok[:18])
            assert code == 0, out
            assert trace["request_id"] == ok and trace["status"] == "ok"
            failed = await place(500)
            assert answers[failed] == 500
            code, why, out = flux(project, db, "why", failed[:18])
            assert code == 0, out
            assert why["request_id"] == failed
            changes = why["mutations"]
            assert [(c["table"], c["op"], c["rolled_back"]) for c in changes] == \
                [("orders", "INSERT", True)], changes
        finally:
            running.send_signal(signal.SIGKILL)
            running.wait()

        # No consumer: the answers' records wait in the WAL, and the tools say so.
        later = [await place(1) for _ in range(3)]
        assert all(answers[rid] == 200 for rid in later)
        code, _, out = flux(project, db, "trace", later[-1][:18])
        assert code != 0
        assert "no capture consumer is running" in out and "flux capture run" in out, out
        with psycopg.connect(db) as conn:
            waiting = conn.execute("SELECT count(*) FROM flux.trace_requests WHERE "
                                   "request_id = ANY(%s::uuid[])", [later]).fetchone()
        assert waiting == (0,)  # not inserted: they travel in the WAL

        running = consumer(project, db)
        try:
            code, trace, out = flux(project, db, "trace", later[-1][:18])
            assert code == 0 and trace["request_id"] == later[-1], out
            await asyncio.gather(*(place(1) for _ in range(10)))
            code, listed, out = flux(project, db, "ls", "--limit", "50")
            assert code == 0, out
        finally:
            running.send_signal(signal.SIGINT)
            assert running.wait(timeout=20) == 0

    # Exactly one record per answer, each with the status the client got; every order
    # that committed names a request that has its record.
    with psycopg.connect(db) as conn:
        recorded = dict(conn.execute(
            "SELECT request_id::text, http_status FROM flux.trace_requests").fetchall())
        orphans = conn.execute(
            "SELECT count(*) FROM flux.state_mutations m WHERE NOT m.rolled_back AND NOT "
            "EXISTS (SELECT 1 FROM flux.trace_requests t WHERE t.request_id = m.request_id)"
            " AND m.request_id IS NOT NULL").fetchone()
    assert recorded == answers
    assert len(recorded) == 15
    assert {e["request_id"] for e in listed["executions"]} >= set(later)
    assert orphans == (0,)
