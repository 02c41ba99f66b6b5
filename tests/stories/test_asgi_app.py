"""Story: a shop already written as a FastAPI app runs inside Flux, unchanged but for
``flux.context()``. Its order endpoint takes a dependency-injected payments client that
charges through ``httpx`` and writes the order through ``flux.context().db``; a bug after
the charge fails an order. The developer serves it with ``flux dev`` beside a Flux function,
asks why (the line inside the FastAPI handler), replays it with the same IO, fixes the bug
and resumes the order: the customer is charged exactly once."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from tests.stories._world import Provider, commit, flux, git, init_project

API = '''"""The shop's API, as it was before Flux: FastAPI, a payments client injected."""

import contextlib
from pathlib import Path

import httpx
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel

import flux

LIFESPAN_LOG = Path(__file__).resolve().parent.parent / "lifespan.log"


@contextlib.asynccontextmanager
async def lifespan(app):
    with LIFESPAN_LOG.open("a") as log:
        log.write("startup\\n")
    app.state.currency = "usd"
    yield
    with LIFESPAN_LOG.open("a") as log:
        log.write("shutdown\\n")


app = FastAPI(lifespan=lifespan)


class Order(BaseModel):
    item: str
    amount_cents: int


class Payments:
    def __init__(self, base_url):
        self.base_url = base_url

    async def charge(self, order_id, amount):
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{self.base_url}/v1/charges",
                                         json={"amount": amount, "order_id": order_id})
        response.raise_for_status()
        return response.json()


def payments():
    return Payments(flux.context().config["payments_url"])


@app.post("/orders", status_code=201)
async def create_order(order: Order, pay: Payments = Depends(payments)):
    ctx = flux.context()
    row = await ctx.db.fetchone(
        "INSERT INTO orders (item, amount_cents, status) VALUES (%s, %s, 'pending') "
        "RETURNING id", [order.item, order.amount_cents])
    charge = await pay.charge(row["id"], order.amount_cents)
    await ctx.db.execute("UPDATE orders SET status = 'paid', charge_id = %s WHERE id = %s",
                         [charge["id"], row["id"]])
    return {"order_id": row["id"], "charge": charge["id"], "at": ctx.now().isoformat(),
            "receipt": receipt(charge)}


@app.get("/orders/{order_id}")
async def get_order(order_id: int):
    row = await flux.context().db.fetchone(
        "SELECT id, item, status FROM orders WHERE id = %s", [order_id])
    if row is None:
        raise HTTPException(404, "no such order")
    return row


def receipt(charge):
    return f"{charge['id']}: {charge['amount_cents']} cents"  # the bug
'''
BUG = "{charge['amount_cents']} cents\"  # the bug"
FIX = "{charge['amount']} cents\""

SCHEMA = """CREATE TABLE IF NOT EXISTS orders (
    id           bigserial PRIMARY KEY,
    item         text NOT NULL,
    amount_cents integer NOT NULL,
    status       text NOT NULL,
    charge_id    text
);
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(method: str, url: str, body: bytes | None = None) -> tuple[int, Any, str]:
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, headers = error.code, error.read(), error.headers
    return status, json.loads(raw), headers.get("x-flux-request-id", "")


async def ask(method: str, url: str, body: bytes | None = None) -> tuple[int, Any, str]:
    """A request from a thread: the provider answers on this test's event loop."""
    return await asyncio.to_thread(call, method, url, body)


async def cli(project: Path, db: str, *args: str) -> tuple[int, Any, str]:
    return await asyncio.to_thread(flux, project, db, *args)


def record(db: str, request_id: str) -> dict[str, Any]:
    with psycopg.connect(db) as conn:
        conn.row_factory = psycopg.rows.dict_row
        row = conn.execute(
            "SELECT * FROM flux.trace_requests WHERE request_id = %s", [request_id]
        ).fetchone()
    assert row is not None, f"no record of {request_id}"
    return row


async def test_a_fastapi_app_inside_flux_is_explained_replayed_and_resumed(
    db: str, provider: Provider, tmp_path: Path, flux_process: Any
) -> None:
    project = init_project(tmp_path, "fastshop")
    (project / "schema" / "002_orders.sql").write_text(SCHEMA)
    (project / "shop").mkdir()
    (project / "shop" / "__init__.py").write_text("")
    (project / "shop" / "api.py").write_text(API)
    toml = project / "flux.toml"
    toml.write_text(
        toml.read_text().replace(
            "[app]", f'[asgi]\napp = "shop.api:app"\n\n[app]\npayments_url = "{provider.url}"'
        )
    )
    git(project, "init", "-q", "-b", "main")
    commit(project, "the shop's FastAPI app, served by Flux")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    dev = flux_process(["dev", "--port", str(port)], project, env={"DATABASE_URL": db})
    assert "shop.api:app as asgi (lifespan on)" in dev.wait_for("shop.api:app")
    dev.wait_for("ready")
    assert (project / "lifespan.log").read_text() == "startup\n"  # before the first request

    # Flux's own: the scaffold's function, the health check; the app: everything else.
    status, user, _ = await ask("POST", f"{base}/create_user", b'{"email": "ada@example.com"}')
    assert status == 200 and user["email"] == "ada@example.com"
    status, health, _ = await ask("GET", f"{base}/health")
    assert status == 200 and health["status"] == "ok"
    status, missing, missing_id = await ask("GET", f"{base}/orders/999")
    assert status == 404 and missing == {"detail": "no such order"}
    status, invalid, invalid_id = await ask("POST", f"{base}/orders", b'{"item": ')
    assert status == 422 and invalid["detail"][0]["type"] == "json_invalid"

    status, failed, rid = await ask(
        "POST", f"{base}/orders", b'{"item": "lamp", "amount_cents": 4200}'
    )
    assert status == 500 and failed["request_id"] == rid
    assert provider.charges == 1
    sent = len(provider.requests)
    dev.signal(signal.SIGINT)
    assert dev.wait(30) == 0
    assert (project / "lifespan.log").read_text() == "startup\nshutdown\n"

    # One record per answer, each an execution of the app, with what it answered.
    for request_id, http_status in ((missing_id, 404), (invalid_id, 422)):
        answered = record(db, request_id)
        assert (answered["function"], answered["status"], answered["http_status"]) == (
            "asgi",
            "ok",
            http_status,
        )
    assert record(db, invalid_id)["request"]["raw"] == {"text": '{"item": '}
    failure = record(db, rid)
    assert failure["function"] == "asgi" and failure["status"] == "error"
    calls = [
        (s["kind"], s["file"], s["status"]) for s in failure["spans"] if s["kind"] in ("db", "http")
    ]
    assert calls == [
        ("db", "shop/api.py", "ok"),
        ("http", "shop/api.py", "ok"),
        ("db", "shop/api.py", "ok"),
    ]  # the charge through httpx, captured
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)  # rolled back

    code, why, _ = await cli(project, db, "why", rid)
    assert code == 0 and why["root_cause"]["class"] == "exception", why["root_cause"]
    bug_line = (
        API.splitlines().index(
            "    return f\"{charge['id']}: {charge['amount_cents']} cents\"  # the bug"
        )
        + 1
    )
    assert (why["location"]["file"], why["location"]["line"]) == ("shop/api.py", bug_line)
    assert any(m["table"] == "orders" and m["rolled_back"] for m in why["mutations"])

    code, trace, _ = await cli(project, db, "trace", rid)
    assert code == 0 and trace["request_id"] == rid

    code, replay, _ = await cli(project, db, "replay", rid, "--expect", "same")
    assert code == 0 and replay["passed"] and replay["divergence"] is None, replay
    assert replay["beyond_tape"] == [] and replay["request_body"]["exact"] is True
    code, incident, _ = await cli(project, db, "incident", "replay", "--ids", rid)
    assert code == 1 and incident["failing"] == 1, incident  # still the same bug
    assert len(provider.requests) == sent  # nothing sent by the replays

    api = project / "shop" / "api.py"
    api.write_text(api.read_text().replace(BUG, FIX))
    commit(project, "receipts: the provider calls it amount")
    code, resumed, out = await cli(project, db, "resume", rid)
    assert code == 0 and resumed["status"] == "ok", out
    assert resumed["http_status"] == 201 and resumed["resumed_from"] == rid
    assert provider.charges == 1 and len(provider.requests) == sent  # charged exactly once
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT item, status, charge_id FROM orders").fetchall() == [
            ("lamp", "paid", "ch_1")
        ]
