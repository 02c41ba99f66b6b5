"""A Starlette app served by Flux in-process, over real HTTP on loopback: every ctx door
through ``flux.context()`` (db from a sync route in a thread, step, queue.push, now), a
streaming response, the gateway's bad-input answers — one record each — and a replay that
reproduces status, headers and body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

import flux
from flux.replay._replay import replay
from tests.fixtures.shop import serve_app

APP = """import flux
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


async def stamp(request):
    ctx = flux.context()
    body = await request.json()
    ticket = ctx.step("reserve", lambda: f"t-{body['n']}")
    job = await ctx.queue.push("greet", {"name": body["name"]})
    row = await ctx.db.fetchone("INSERT INTO stamps (ticket) VALUES (%s) RETURNING id",
                                [ticket])
    return JSONResponse({"id": row["id"], "ticket": ticket, "job": job,
                         "at": ctx.now().isoformat()},
                        status_code=201, headers={"Location": f"/stamps/{row['id']}"})


def count(request):  # a sync route: Starlette runs it in a thread
    total = flux.context().db.fetchval("SELECT count(*) FROM stamps")
    return PlainTextResponse(f"{total} stamps")


async def stream(request):
    async def parts():
        for word in ("one ", "two ", "three"):
            yield word.encode()
    return StreamingResponse(parts(), media_type="text/plain")


app = Starlette(routes=[Route("/stamps", stamp, methods=["POST"]),
                        Route("/stamps/count", count),
                        Route("/stream", stream)])
"""

GREET = """from flux import function


@function
async def greet(ctx, input):
    return {"hello": input["name"]}
"""


JSON = {"Content-Type": "application/json"}


@pytest.fixture
def project(make_project: Any) -> Path:
    root = make_project(
        'name = "stamps"\n\n[asgi]\napp = "stampsvc.web:app"\n\n'
        "[record]\nmax_request_bytes = 4096\n"
    )
    (root / "stampsvc").mkdir()
    (root / "stampsvc" / "__init__.py").write_text("")
    (root / "stampsvc" / "web.py").write_text(APP)
    (root / "functions").mkdir()
    (root / "functions" / "greet.py").write_text(GREET)
    (root / "schema").mkdir()
    (root / "schema" / "001_stamps.sql").write_text(
        "CREATE TABLE stamps (id bigserial PRIMARY KEY, ticket text NOT NULL);\n"
    )
    return root


def records(db: str) -> dict[str, tuple[str | None, str, int]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT request_id::text, function, status, http_status FROM flux.trace_requests"
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_the_app_gets_every_ctx_door_and_each_answer_is_one_record(
    db: str, project: Path
) -> None:
    with pytest.raises(flux.FluxError, match=r"flux.context\(\) was called outside"):
        flux.context()
    async with serve_app(project, db, None) as shop:  # type: ignore[arg-type]
        answered: dict[str, int] = {}

        async def send(method: str, path: str, data: bytes | None = None) -> Any:
            async with shop.client.request(
                method, shop.url + path, data=data, headers=JSON
            ) as response:
                answered[response.headers["x-flux-request-id"]] = response.status
                return response.status, await response.read(), response.headers

        status, body, headers = await send("POST", "/stamps", b'{"n": 7, "name": "ada"}')
        assert status == 201 and headers["Location"] == "/stamps/1", body
        created = json.loads(body)
        assert created["ticket"] == "t-7"
        stamped = next(rid for rid, code in answered.items() if code == 201)
        status, body, headers = await send("GET", "/stamps/count")
        assert (status, body) == (200, b"1 stamps")
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        status, body, _ = await send("GET", "/stream")
        assert (status, body) == (200, b"one two three")
        status, body, _ = await send("POST", "/greet", b'{"name": "bo"}')  # a function's
        assert (status, json.loads(body)) == (200, {"hello": "bo"})
        status, _, _ = await send("GET", "/nowhere")  # the app's own 404
        assert status == 404
        status, _, _ = await send("POST", "/stamps", b"x" * 5000)  # over the request cap
        assert status == 413

        kept = records(db)
        assert {rid: kept[rid][2] for rid in answered} == answered  # one record per answer
        assert kept[stamped] == ("asgi", "ok", 201)
        with psycopg.connect(db) as conn:
            (job,) = conn.execute(
                "SELECT function FROM flux.jobs WHERE id = %s", [created["job"]]
            ).fetchone()
            assert job == "greet"  # pushed in the execution's transaction, committed with it

        record = shop.record(stamped)
        assert [e["kind"] for e in record["tape"]] == ["step", "queue", "db", "clock"]
        assert record["response"]["headers"] == {"location": "/stamps/1"}
        result = await replay(shop.runtime, record, expect_same=True)
        assert result["passed"] and result["divergence"] is None, result
        assert result["replayed"]["output"] == created
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM stamps").fetchone() == (1,)
