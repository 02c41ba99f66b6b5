"""Story: an orders service moved to Flux one endpoint at a time, written as such endpoints
are — ``POST /orders`` answers ``201`` with a ``Location``; ``GET /orders/{id:int}`` answers
200, or 404 for an order that does not exist; ``DELETE`` on the same path is another
function; a customer's note arrives as an HTML form and is answered with a redirect. Each
answer is one record, a wrong method is a 405 naming what the path takes, a path parameter
of the wrong type a 404, and every execution replays with ``--expect same``."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.fixtures.shop import serve_app
from tests.stories._world import Provider, flux, init_project

ADMIN_TOKEN = "adm_Orders4Kx9"
CREATE = '''"""Place an order: 201 and where to find it."""

from flux import Response, function


@function(route="/orders", methods=["POST"])
async def create_order(ctx, input):
    reference = "ord_" + ctx.uuid().hex[:10]
    row = await ctx.db.fetchone(
        "INSERT INTO orders (reference, item, quantity, placed_at) VALUES (%s, %s, %s, %s) "
        "RETURNING id", [reference, input["item"], int(input.get("quantity", 1)), ctx.now()])
    return Response({"id": row["id"], "reference": reference}, status=201,
                    headers={"Location": f"/orders/{row['id']}"})
'''
SHOW = '''"""Show an order, with its notes."""

from flux import function


@function(route="/orders/{id:int}", methods=["GET"])
async def get_order(ctx, input):
    order_id = ctx.request.path_params["id"]
    order = await ctx.db.fetchone(
        "SELECT id, reference, item, quantity, status FROM orders WHERE id = %s", [order_id])
    if order is None:
        raise ctx.error(404, "order_not_found", f"there is no order {order_id}")
    notes = await ctx.db.fetchall(
        "SELECT author, body FROM order_notes WHERE order_id = %s ORDER BY id", [order_id])
    return {**order, "notes": notes}
'''
CANCEL = '''"""Cancel an order: 204, nothing to say."""

from flux import Response, function


@function(route="/orders/{id:int}", methods=["DELETE"])
async def cancel_order(ctx, input):
    done = await ctx.db.fetchone(
        "UPDATE orders SET status = 'cancelled' WHERE id = %s RETURNING id",
        [ctx.request.path_params["id"]])
    if done is None:
        raise ctx.error(404, "order_not_found", "there is no such order")
    return Response(status=204)
'''
NOTE = '''"""The order page's form posts a note; answer with a redirect back to the order."""

from flux import Response, function


@function(route="/orders/{id:int}/notes", methods=["POST"])
async def add_note(ctx, input):
    order_id = ctx.request.path_params["id"]
    await ctx.db.execute("INSERT INTO order_notes (order_id, author, body) VALUES (%s, %s, %s)",
                         [order_id, input["author"], input["body"]])
    return Response(status=303, headers={"Location": f"/orders/{order_id}"})
'''
SCHEMA = """CREATE TABLE orders (
    id        bigserial PRIMARY KEY,
    reference text NOT NULL UNIQUE,
    item      text NOT NULL,
    quantity  int NOT NULL,
    status    text NOT NULL DEFAULT 'placed',
    placed_at timestamptz NOT NULL
);
CREATE TABLE order_notes (
    id       bigserial PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES orders (id),
    author   text NOT NULL,
    body     text NOT NULL
);
"""


async def test_orders_endpoints_answer_as_written_and_replay_the_same(
        db: str, provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX_ADMIN_TOKEN", ADMIN_TOKEN)
    project = init_project(tmp_path, "orders")
    (project / "schema" / "002_orders.sql").write_text(SCHEMA)
    for name, text in (("create_order", CREATE), ("get_order", SHOW),
                       ("cancel_order", CANCEL), ("add_note", NOTE)):
        (project / "functions" / f"{name}.py").write_text(text)

    answers: dict[str, tuple[int, str]] = {}
    async with serve_app(project, db, provider) as app:  # type: ignore[arg-type]
        async def send(name: str, method: str, path: str, **kwargs: object) -> object:
            async with app.client.request(method, app.url + path, allow_redirects=False,
                                          **kwargs) as response:  # type: ignore[arg-type]
                answers[name] = (response.status, response.headers["x-flux-request-id"])
                body = await response.read()
                return response, body

        response, body = await send("create", "POST", "/orders",
                                    json={"item": "espresso cups", "quantity": 6})
        assert response.status == 201 and response.headers["Location"] == "/orders/1"
        response, body = await send("note", "POST", "/orders/1/notes",
                                    data={"author": "Zoë", "body": "Gift wrap, please — ☕"})
        assert response.status == 303 and response.headers["Location"] == "/orders/1"
        response, body = await send("show", "GET", "/orders/1")
        assert response.status == 200
        shown = __import__("json").loads(body)
        assert (shown["item"], shown["quantity"], shown["status"]) == ("espresso cups", 6,
                                                                       "placed")
        assert shown["notes"] == [{"author": "Zoë", "body": "Gift wrap, please — ☕"}]
        response, body = await send("missing", "GET", "/orders/99")
        assert response.status == 404 and b"order_not_found" in body
        response, body = await send("wrong_type", "GET", "/orders/first")
        assert response.status == 404 and b"no function is routed" in body
        response, body = await send("wrong_method", "PUT", "/orders/1", json={})
        assert response.status == 405 and response.headers["Allow"] == "DELETE, GET, HEAD"
        response, body = await send("cancel", "DELETE", "/orders/1")
        assert response.status == 204 and body == b""
        async with app.client.get(f"{app.url}/_flux/functions/openapi.json", headers={
                "Authorization": f"Bearer {ADMIN_TOKEN}"}) as described:
            routes = (await described.json())["paths"]
    assert set(routes) == {"/create_user", "/orders", "/orders/{id}", "/orders/{id}/notes"}
    assert set(routes["/orders/{id}"]) == {"get", "delete"}

    # One record per answer, each with the status the client got.
    with psycopg.connect(db) as conn:
        recorded = dict(conn.execute(
            "SELECT request_id::text, http_status FROM flux.trace_requests").fetchall())
        status = conn.execute("SELECT status FROM orders WHERE id = 1").fetchone()
    assert recorded == {rid: code for code, rid in answers.values()}  # the admin call aside
    assert status == ("cancelled",)

    # Each execution replays as the same: status, headers (Location), body.
    for name in ("create", "note", "show", "missing", "cancel"):
        code, replay, _ = flux(project, db, "replay", answers[name][1][:18], "--expect", "same")
        assert code == 0 and replay["passed"] and replay["divergence"] is None, (name, replay)
        assert replay["http_status"]["replayed"] == answers[name][0], name
    code, replay, _ = flux(project, db, "replay", answers["create"][1][:18])
    assert replay["replayed"]["headers"] == {"location": "/orders/1"}
    assert provider.requests == []
