"""The ASGI adapter on its own (flux/runtime/_asgi.py): real Starlette and FastAPI apps driven
through scope, receive and send, without a server or a database."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import FastAPI, HTTPException, Query, Request
from starlette.responses import StreamingResponse

from flux._errors import ConfigError
from flux._project import AsgiConfig, parse, with_asgi
from flux.runtime._asgi import (
    AppError,
    Lifespan,
    NoResponse,
    ResponseTooLarge,
    call_app,
    http_scope,
    load_app,
)


def shop() -> tuple[FastAPI, list[str]]:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"greeting": "hello"}
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/orders/{order_id}")
    async def order(
        order_id: int, request: Request, tag: Annotated[list[str] | None, Query()] = None
    ) -> dict[str, Any]:
        if order_id == 404:
            raise HTTPException(404, "no such order")
        return {
            "id": order_id,
            "tags": tag,
            "greeting": request.state.greeting,
            "agent": request.headers.get("user-agent"),
        }

    @app.post("/echo", status_code=201)
    async def echo(request: Request) -> dict[str, Any]:
        return {"raw": (await request.body()).decode()}

    @app.get("/stream")
    async def stream(n: int = 3) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(n):
                yield f"part {i}\n".encode()

        return StreamingResponse(parts(), media_type="text/plain")

    @app.get("/boom")
    def boom() -> None:
        raise ZeroDivisionError("the handler divided by zero")

    return app, events


async def test_a_fastapi_app_answers_through_scope_receive_send() -> None:
    app, events = shop()
    life = Lifespan(app)
    await life.startup()
    assert life.supported and events == ["startup"]
    scope = http_scope(
        "GET",
        "/orders/7",
        [("tag", "a"), ("tag", "b")],
        [("User-Agent", "story/1")],
        state=life.state,
    )
    reply = await call_app(app, scope, b"", max_bytes=10_000)
    assert reply.status == 200 and reply.content_type == "application/json"
    assert json.loads(reply.body) == {
        "id": 7,
        "tags": ["a", "b"],
        "greeting": "hello",
        "agent": "story/1",
    }
    missing = await call_app(
        app, http_scope("GET", "/orders/404", [], [], state=life.state), b"", max_bytes=10_000
    )
    assert missing.status == 404 and json.loads(missing.body) == {"detail": "no such order"}
    created = await call_app(
        app,
        http_scope("POST", "/echo", [], [], state=life.state),
        b"exact \x00 bytes",
        max_bytes=10_000,
    )
    assert created.status == 201 and json.loads(created.body) == {"raw": "exact \x00 bytes"}
    await life.shutdown()
    assert events == ["startup", "shutdown"]


async def test_a_streaming_response_is_collected_within_the_cap() -> None:
    app, _ = shop()
    reply = await call_app(app, http_scope("GET", "/stream", [], []), b"", max_bytes=10_000)
    assert reply.status == 200 and reply.body == b"part 0\npart 1\npart 2\n"
    assert ("content-type", "text/plain; charset=utf-8") in reply.headers
    with pytest.raises(ResponseTooLarge, match="max_response_bytes"):
        await call_app(app, http_scope("GET", "/stream", [("n", "50")], []), b"", max_bytes=100)


async def test_what_the_app_raises_propagates_with_its_own_traceback() -> None:
    app, _ = shop()
    with pytest.raises(ZeroDivisionError) as raised:
        await call_app(app, http_scope("GET", "/boom", [], []), b"", max_bytes=10_000)
    frames = [f.name for f in __import__("traceback").extract_tb(raised.value.__traceback__)]
    assert "boom" in frames


async def test_an_app_without_lifespan_serves_and_one_that_must_have_it_refuses() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("only http here")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    life = Lifespan(bare)
    await life.startup()
    assert not life.supported and "only http here" in (life.unsupported_reason or "")
    await life.shutdown()
    reply = await call_app(bare, http_scope("DELETE", "/x", [], []), b"", max_bytes=10)
    assert (reply.status, reply.body) == (204, b"")
    with pytest.raises(AppError, match="does not support lifespan"):
        await Lifespan(bare, "on").startup()

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    with pytest.raises(NoResponse):
        await call_app(silent, http_scope("GET", "/", [], []), b"", max_bytes=10)


async def test_a_failed_startup_is_one_sentence() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise ConnectionRefusedError("the cache is down")
        yield

    with pytest.raises(AppError, match=r"startup failed: .*the cache is down"):
        await Lifespan(FastAPI(lifespan=lifespan)).startup()


def test_loading_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "__init__.py").write_text("")
    (tmp_path / "svc" / "web.py").write_text("from fastapi import FastAPI\n\n\napi = FastAPI()\n")
    loaded = load_app("svc.web:api", tmp_path, AsgiConfig())
    assert loaded.line == 4 and loaded.file.endswith("svc/web.py")
    with pytest.raises(AppError, match="has no attribute 'app'"):
        load_app("svc.web:app", tmp_path, AsgiConfig())
    with pytest.raises(AppError, match="no such module"):
        load_app("svc.nowhere:app", tmp_path, AsgiConfig())


def test_the_asgi_table_and_flag_are_checked_in_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "flux.toml").write_text('[asgi]\napp = "shop.api:app"\nlifespan = "off"\n')
    project = parse(tmp_path)
    assert (project.asgi.app, project.asgi.lifespan, project.asgi.name) == (
        "shop.api:app",
        "off",
        "asgi",
    )
    assert with_asgi(project, "svc.web:api").asgi.app == "svc.web:api"
    assert with_asgi(project, None) is project
    with pytest.raises(ConfigError, match="--asgi must name an ASGI application"):
        with_asgi(project, "shop/api.py")
    for table, message in (
        ('app = "shop.api"', "module:attribute"),
        ('lifespan = "sometimes"', 'asgi.lifespan must be "auto", "on" or "off"'),
        ('apps = "x:y"', "has no option 'apps'"),
        ("max_response_bytes = 0", "at least 1"),
    ):
        (tmp_path / "flux.toml").write_text(f"[asgi]\n{table}\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse(tmp_path)
