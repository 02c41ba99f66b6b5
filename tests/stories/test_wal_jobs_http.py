"""Story: a shop that captures by WAL (flux.toml and ``flux capture switch wal``) serves
orders with ``flux serve``: each order takes stock and hands its shipment to a job, pushed
from the handler (no cron), which books it at a carrier. Orders arrive concurrently, one
asks for more than the stock holds (a bug after the insert and after the push: both rolled
back), and the capture consumer is killed with SIGKILL in the middle of the traffic; the
serving process's own consumer takes over. Through the CLI: every answered request has
exactly one record, each job ran once with its record pointing at its order, the stock row's
history carries every order's request id, and nothing was doubled."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from tests.access.conftest import free_port
from tests.fixtures.processes import FluxProcess
from tests.stories._world import Provider, flux, init_project
from tests.stories.test_wal_records import consumer

SCHEMA = """CREATE TABLE orders (
    id        bigserial PRIMARY KEY,
    reference text NOT NULL UNIQUE,
    item      text NOT NULL,
    quantity  int NOT NULL,
    status    text NOT NULL DEFAULT 'placed',
    shipment  text
);
CREATE TABLE stock (item text PRIMARY KEY, quantity int NOT NULL);
INSERT INTO stock VALUES ('cups', 100);
"""

PLACE = '''"""Place an order: take the stock, and ship it later, in a job."""

from flux import function


@function(route="/orders", methods=["POST"])
async def place_order(ctx, input):
    quantity = int(input["quantity"])
    order = await ctx.db.fetchone(
        "INSERT INTO orders (reference, item, quantity) VALUES (%s, %s, %s) RETURNING id",
        ["ord_" + ctx.uuid().hex[:12], input["item"], quantity])
    job = await ctx.queue.push("ship_order", {"order": order["id"]})
    stock = await ctx.db.fetchone("SELECT quantity FROM stock WHERE item = %s FOR UPDATE",
                                  [input["item"]])
    if quantity > stock["quantity"]:  # a bug: checked after the insert and the push
        raise RuntimeError(f"only {stock['quantity']} left\\x1b[2J")
    await ctx.db.execute("UPDATE stock SET quantity = quantity - %s WHERE item = %s",
                         [quantity, input["item"]])
    return {"id": order["id"], "job": job}
'''

SHIP = '''"""Book an order's shipment at the carrier."""

from flux import function


@function(retries=0)
async def ship_order(ctx, input):
    booked = await ctx.http.post(ctx.config["carrier"] + "/v1/charges",
                                 json={"customer": f"order-{input['order']}", "amount": 500})
    await ctx.db.execute("UPDATE orders SET status = 'shipped', shipment = %s WHERE id = %s",
                         [booked.json()["id"], input["order"]])
    return {"order": input["order"], "shipment": booked.json()["id"]}
'''


def slot_held(db: str) -> bool:
    """Whether a capture consumer holds the one-consumer election (an advisory lock)."""
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                           "AND granted AND database = (SELECT oid FROM pg_database "
                           "WHERE datname = current_database())").fetchone()
    return bool(row and row[0])


def until(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.1)


async def test_orders_and_their_jobs_through_the_wal_survive_a_killed_consumer(
        db: str, provider: Provider, tmp_path: Path, flux_process: type[FluxProcess]) -> None:
    project = init_project(tmp_path, "cups")
    (project / "schema" / "002_orders.sql").write_text(SCHEMA)
    (project / "functions" / "place_order.py").write_text(PLACE)
    (project / "functions" / "ship_order.py").write_text(SHIP)
    toml = project / "flux.toml"
    toml.write_text(toml.read_text().replace('capture = "trigger"', 'capture = "wal"', 1)
                    .replace("[app]\n", f'[app]\ncarrier = "{provider.url}"\n'))

    async def cli(*args: str) -> tuple[int, Any, str]:
        # In a thread: the carrier answers on this test's event loop.
        return await asyncio.to_thread(flux, project, db, *args)

    code, switched, out = await cli("capture", "switch", "wal")
    assert code == 0 and switched["mode"] == "wal", out
    killed = await asyncio.to_thread(consumer, project, db)  # elected before serve starts
    await asyncio.to_thread(until, lambda: slot_held(db), "the consumer elected")
    port = free_port()
    serve = flux_process(["serve", "--port", str(port)], project, env={"DATABASE_URL": db})
    await asyncio.to_thread(serve.wait_for, "ready")
    base = f"http://127.0.0.1:{port}"
    answers: dict[str, int] = {}
    placed: dict[str, int] = {}  # request id → order id

    async with aiohttp.ClientSession() as client:
        async def order(quantity: int) -> str:
            async with client.post(base + "/orders",
                                   json={"item": "cups", "quantity": quantity}) as answer:
                rid = answer.headers["x-flux-request-id"]
                answers[rid] = answer.status
                if answer.status == 200:
                    placed[rid] = (await answer.json())["id"]
                return rid

        async def user(n: int) -> None:
            async with client.post(base + "/create_user",
                                   json={"email": f"u{n}@example.com"}) as answer:
                answers[answer.headers["x-flux-request-id"]] = answer.status

        first = [asyncio.create_task(order(1)) for _ in range(6)]
        failing = asyncio.create_task(order(500))
        users = [asyncio.create_task(user(n)) for n in range(2)]
        done, _ = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        assert done
        killed.send_signal(signal.SIGKILL)  # mid-traffic: serve's own consumer takes over
        await asyncio.to_thread(killed.wait)
        second = [asyncio.create_task(order(2)) for _ in range(5)]
        await asyncio.gather(*first, *second, *users)
        failed = await failing

    assert answers[failed] == 500 and len(answers) == 14
    assert sorted(answers.values()) == [200] * 13 + [500]
    # The serve log names the failure, its control characters drawn, beside the hint.
    line = await asyncio.to_thread(serve.wait_for, f"flux why {failed[:18]}")
    assert "RuntimeError: only " in line and "left␛[2J" in line, line

    # Each order's job runs once, in serve's worker: wait for the carrier to see them all.
    await asyncio.to_thread(until, lambda: len(provider.requests) >= len(placed),
                            "every shipment booked")
    code, why, out = await cli("why", failed[:18])
    assert code == 0 and why["request_id"] == failed, out
    assert why["root_cause"]["class"] == "exception"
    assert [(m["table"], m["op"], m["rolled_back"]) for m in why["mutations"]] == \
        [("orders", "INSERT", True)], why["mutations"]

    code, listed, out = await cli("ls", "--limit", "100")
    assert code == 0, out
    seen = collections.Counter(e["request_id"] for e in listed["executions"])
    assert all(n == 1 for n in seen.values()), seen  # nothing doubled
    http = {e["request_id"]: e["http_status"] for e in listed["executions"]
            if e["kind"] == "http"}
    assert http == answers  # every answer has exactly one record, with its status
    jobs = [e for e in listed["executions"] if e["kind"] == "job"]
    assert sorted(e["parent_id"] for e in jobs) == sorted(placed)  # one per order, none for
    assert all(e["status"] == "ok" for e in jobs)                   # the failed one
    code, queue, out = await cli("queue", "ls")
    assert code == 0, out
    ran = sorted((j["status"], j["attempts"]) for j in queue["jobs"])
    assert ran == [("done", 1)] * len(placed)
    keys = [r["headers"].get("Idempotency-Key") for r in provider.requests]
    assert len(placed) == 11
    assert len(keys) == 11 and len(set(keys)) == 11 and provider.charges == 11

    # The stock row's history names every order that took from it, once; an order's row
    # names the request that placed it and the job that shipped it.
    code, stock, out = await cli("state", "history", "stock", "--id", "cups")
    assert code == 0, out
    took = [r["request_id"] for r in stock["rows"] if r["op"] == "UPDATE"]
    assert sorted(took) == sorted(placed), stock["rows"]
    job_of = {e["parent_id"]: e["request_id"] for e in jobs}
    for rid in (sorted(placed)[0], sorted(placed)[-1]):  # the oldest and the newest order
        code, history, out = await cli("state", "history", "orders", "--id",
                                       str(placed[rid]))
        assert code == 0, out
        assert [(r["op"], r["request_id"]) for r in history["rows"]] == \
            [("INSERT", rid), ("UPDATE", job_of[rid])], history["rows"]  # oldest first

    serve.signal(signal.SIGINT)
    assert await asyncio.to_thread(serve.wait, 30) == 0
    with psycopg.connect(db) as conn:
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM flux.state_mutations WHERE NOT rolled_back "
            "GROUP BY request_id, record_id, op HAVING count(*) > 1) d").fetchone()
        stock_left = conn.execute("SELECT quantity FROM stock").fetchone()
        shipped = conn.execute("SELECT count(*) FROM orders WHERE status = 'shipped'"
                               ).fetchone()
    assert doubled == (0,)
    assert stock_left == (100 - 6 - 5 * 2,) and shipped == (11,)
    assert "Traceback" not in serve.output()
