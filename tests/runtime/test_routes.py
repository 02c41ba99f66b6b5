"""Routes, methods and typed path parameters; ``ctx.request`` as it came; ``flux.Response``
— through a real gateway on loopback, with the records they leave and their replays."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flux._errors import ConfigError
from flux._function import function, parse_route
from flux._project import parse
from flux.replay._replay import replay_command
from flux.runtime._loader import Registry, load_all
from flux.runtime._redact import RedactionPolicy
from flux.runtime._request import Request, from_record, recorded
from flux.server._openapi import functions_description
from tests.fixtures.shop import Shop, serve_app

FUNCTIONS = {
    "get_item.py": '''from flux import Response, function


@function(route="/items/{id:int}", methods=["GET"])
async def get_item(ctx, input):
    row = await ctx.db.fetchone("SELECT id, name FROM items WHERE id = %s",
                                [ctx.request.path_params["id"]])
    if row is None:
        return Response({"error": "no such item"}, status=404)
    return {"id": row["id"], "name": row["name"], "tags": ctx.request.query.getall("tag", [])}
''',
    "delete_item.py": '''from flux import Response, function


@function(route="/items/{id:int}", methods=["DELETE"])
async def delete_item(ctx, input):
    await ctx.db.execute("DELETE FROM items WHERE id = %s", [ctx.request.path_params["id"]])
    return Response(None, status=204)
''',
    "create_item.py": '''from flux import Response, function


@function(route="/items", methods=["POST"])
async def create_item(ctx, input):
    row = await ctx.db.fetchone("INSERT INTO items (name) VALUES (%s) RETURNING id",
                                [input["name"]])
    return Response({"id": row["id"]}, status=201, headers={"Location": f"/items/{row['id']}"})
''',
    "echo_raw.py": '''import hashlib

from flux import Response, function


@function(route="/raw/{kind}", methods=["PUT", "POST"])
def echo_raw(ctx, input):
    body = ctx.request.body
    if ctx.request.path_params["kind"] == "bytes":
        return Response(body[::-1], headers={"X-Digest": hashlib.sha256(body).hexdigest()})
    return Response(f"{ctx.request.method} {ctx.request.content_type} {len(body)}",
                    content_type="text/csv")
''',
    "signup.py": '''from flux import function


@function
async def signup(ctx, input):
    form = ctx.request.form() if ctx.request.content_type.endswith("urlencoded") else None
    return {"input": input, "plans": form.getall("plan", []) if form else None}
''',
}
SCHEMA = "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL);\n"


@pytest.fixture
async def routes(db: str, provider: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[Shop]:
    monkeypatch.setenv("DATABASE_URL", db)  # replays run in this process too
    root = tmp_path / "routes"
    (root / "functions").mkdir(parents=True)
    (root / "schema").mkdir()
    (root / "flux.toml").write_text('name = "routes"\n')
    (root / "schema" / "001_items.sql").write_text(SCHEMA)
    for name, text in FUNCTIONS.items():
        (root / "functions" / name).write_text(text)
    async with serve_app(root, db, provider) as app:
        yield app


async def call(app: Shop, method: str, path: str, *, data: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    async with app.client.request(method, f"{app.url}{path}", data=data,
                                  headers=headers) as response:
        return response.status, await response.read(), response.headers


async def replays_the_same(app: Shop, rid: str) -> dict[str, Any]:
    result = await asyncio.to_thread(replay_command, parse(app.root), rid, expect_same=True)
    assert result["passed"] and result["divergence"] is None, result
    return result


async def test_methods_and_typed_path_parameters_route_to_their_functions(routes: Shop
                                                                          ) -> None:
    status, body, headers = await call(routes, "POST", "/items", data=b'{"name": "lamp"}',
                                       headers={"Content-Type": "application/json"})
    assert status == 201 and headers["Location"] == "/items/1"
    created = headers["x-flux-request-id"]
    status, body, headers = await call(routes, "GET", "/items/1?tag=a&tag=b")
    assert status == 200 and body == b'{"id":1,"name":"lamp","tags":["a","b"]}'
    found = headers["x-flux-request-id"]
    status, body, headers = await call(routes, "GET", "/items/2")
    assert status == 404 and b"no such item" in body
    missing = headers["x-flux-request-id"]
    # The wrong type for {id:int} matches no route: a 404, recorded, nothing run.
    status, body, headers = await call(routes, "GET", "/items/lamp")
    assert status == 404 and b"no function is routed at /items/lamp" in body
    assert routes.record(headers["x-flux-request-id"])["function"] is None
    # A method the path does not take: 405, and Allow lists those it does.
    status, body, headers = await call(routes, "PATCH", "/items/1")
    assert status == 405 and headers["Allow"] == "DELETE, GET, HEAD"
    assert routes.record(headers["x-flux-request-id"])["http_status"] == 405
    status, body, headers = await call(routes, "HEAD", "/items/1")
    assert status == 200 and body == b""
    status, body, headers = await call(routes, "DELETE", "/items/1")
    assert status == 204 and body == b""

    record = routes.record(found)
    assert record["method"] == "GET" and record["route"] == "items/1"
    assert record["request"]["path"] == "/items/1"
    assert record["request"]["path_params"] == {"id": 1}
    assert record["request"]["query_pairs"] == [["tag", "a"], ["tag", "b"]]
    assert routes.record(missing)["status"] == "ok"  # an answer it chose: committed
    assert routes.record(missing)["http_status"] == 404
    assert routes.record(created)["response"]["headers"] == {"location": "/items/1"}
    for rid in (created, found, missing):
        result = await replays_the_same(routes, rid)
        assert result["request_body"]["exact"]
    # The same tape with another answer is not "the same".
    again = await replays_the_same(routes, found)
    assert again["replayed"]["output"]["tags"] == ["a", "b"]


async def test_raw_bodies_text_and_bytes_answers_and_forms(routes: Shop) -> None:
    blob = bytes(range(256)) * 3
    status, body, headers = await call(routes, "PUT", "/raw/bytes", data=blob,
                                       headers={"Content-Type": "image/x-icon"})
    assert status == 200 and body == blob[::-1]
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Digest"] == hashlib.sha256(blob).hexdigest()
    binary = headers["x-flux-request-id"]
    text = b'{"b": 1,   "a": [1, 2]}'
    status, body, headers = await call(routes, "POST", "/raw/text", data=text,
                                       headers={"Content-Type": "application/json"})
    assert status == 200 and body == f"POST application/json {len(text)}".encode()
    assert headers["Content-Type"].startswith("text/csv")
    spaced = headers["x-flux-request-id"]
    assert routes.record(spaced)["request"]["raw"] == {"text": text.decode()}
    assert routes.record(spaced)["request"]["body"] == {"b": 1, "a": [1, 2]}
    assert "base64" in routes.record(binary)["request"]["raw"]
    for rid in (binary, spaced):
        result = await replays_the_same(routes, rid)
        assert result["request_body"] == {"exact": True, "read": True, "reason": None}

    status, body, headers = await call(
        routes, "POST", "/signup", data=b"email=ada%40example.com&plan=pro&plan=team",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    form = headers["x-flux-request-id"]
    assert routes.record(form)["response"]["body"] == {
        "input": {"email": "ada@example.com", "plan": ["pro", "team"]},
        "plans": ["pro", "team"]}
    await replays_the_same(routes, form)
    # curl -d '{…}' sends JSON with the form type: still JSON
    status, body, _ = await call(routes, "POST", "/signup", data=b'{"email": "b@x.test"}',
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and b'"input":{"email":"b@x.test"}' in body
    status, body, headers = await call(
        routes, "POST", "/signup", data=b"email=%ff",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and b"invalid_form" in body
    assert routes.record(headers["x-flux-request-id"])["http_status"] == 400


def test_a_body_with_a_redacted_field_is_not_kept_and_replay_says_so() -> None:
    policy = RedactionPolicy(key=b"k")
    raw = b'{"user": "ada", "password": "hunter22"}'
    request = Request(method="POST", path="/login", path_params={}, query=(),
                      headers=[("Content-Type", "application/json")], body=raw)
    fields = recorded(request, {"user": "ada", "password": "hunter22"}, policy, (),
                      policy.scrub)
    assert fields["raw"]["redacted"] == "it carried the redacted field(s) password"
    assert "hunter22" not in str(fields)
    secret = recorded(request, {"user": "ada"}, policy, ("hunter22",), policy.scrub)
    assert secret["raw"]["redacted"] == "it carried a secret value"
    given = from_record({"method": "POST", "route": "login", **fields,
                         "body": {"user": "ada", "password": "[redacted …]"}},
                        kind="http", input={"user": "ada", "password": "[redacted …]"},
                        route="login", headers={})
    assert given is not None and not given.exact
    assert given.why_inexact and "redacted field(s) password" in given.why_inexact
    compact = recorded(Request(method="POST", path="/x", path_params={}, query=(),
                               headers=(), body=b'{"a":1}'), {"a": 1}, policy, (),
                       policy.scrub)
    assert compact["raw"] == {"json": "compact"}


@pytest.mark.parametrize("body", [{"name": "bench", "n": [1, 2.5, None, True]},
                                  {"café": "naïve ✓", "nested": {"a": []}}, [1, 2]])
def test_a_json_body_as_requests_and_aiohttp_spell_it_is_kept_once(body: Any) -> None:
    """``json.dumps``'s default spelling (what requests and aiohttp send) is recorded as
    ``{"json": "spaced"}``, not as its text beside the body, and replay gives back the very
    bytes; any other spelling keeps its text."""
    policy = RedactionPolicy(key=b"k" * 32)
    for raw, kept in ((json.dumps(body).encode(), "spaced"),
                      (json.dumps(body, indent=1).encode(), None)):
        request = Request(method="POST", path="/x", path_params={}, query=(),
                          headers=[("Content-Type", "application/json")], body=raw)
        fields = recorded(request, body, policy, (), policy.scrub)
        if kept is None:
            assert "text" in fields["raw"] or fields["raw"] == {"json": "compact"}
        else:
            assert fields["raw"] == {"json": "spaced"}
        given = from_record({"method": "POST", "route": "x", **fields, "body": body},
                            kind="http", input=body, route="x", headers={})
        assert given is not None and given.exact and given._body == raw


def test_route_spellings_and_the_route_table(tmp_path: Path) -> None:
    assert parse_route("/orders/{id:int}").match("orders/42") == {"id": 42}
    assert parse_route("/orders/{id:int}").match("orders/4x") is None
    assert parse_route("/files/{rest:path}").match("files/a/b.txt") == {"rest": "a/b.txt"}
    for bad in ("/a/{id:integer}", "/a/{id", "/a/{x}/{x}"):
        with pytest.raises(ConfigError):
            parse_route(bad)
    with pytest.raises(ConfigError, match="not an HTTP method"):
        function(route="/a", methods=["GET POST"])(lambda ctx, input: None)
    functions = tmp_path / "functions"
    functions.mkdir()
    for name, text in FUNCTIONS.items():
        (functions / name).write_text(text)
    (functions / "zz_twice.py").write_text(FUNCTIONS["get_item.py"].replace(
        "def get_item", "def twice"))
    registry = Registry()
    errors = load_all(functions, registry)
    assert [e.message for e in errors] == ["GET /items/{id:int} is already served by "
                                           "get_item.py"]
    assert [(m, r) for m, r, _ in registry.table()] == [
        ("POST", "/items"), ("POST", "/signup"), ("DELETE", "/items/{id:int}"),
        ("PUT", "/raw/{kind}"), ("POST", "/raw/{kind}"), ("GET", "/items/{id:int}")]
    described = functions_description(registry)["paths"]
    assert set(described["/items/{id}"]) == {"get", "delete"}
    assert described["/items/{id}"]["get"]["parameters"][0]["schema"]["type"] == "integer"
    assert set(described["/raw/{kind}"]) == {"put", "post"}
