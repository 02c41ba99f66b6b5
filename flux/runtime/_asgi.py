"""An existing ASGI application (FastAPI, Starlette) served inside Flux.

``[asgi] app = "shop.api:app"`` in flux.toml (or ``flux serve --asgi shop.api:app``) makes the
application one more function of the registry, under ``[asgi] name``: each request no Flux
function takes is one execution of it, with the same record as a function's — the request as
it came, the response, the span tree, the tape of every outside call (``ctx.db`` through
``flux.context()``, and the HTTP clients captured transparently). Replay, resume, incident
replay and bisect drive the application with the recorded request, as they call a function
with its input.

This module is the adapter between that execution and the ASGI protocol:

- ``http_scope`` builds the ``http`` scope of one request from what the record keeps
  (method, path, query, headers), so a live request and its replay give the app the same
  scope; the body is handed over in one ``http.request`` message, and ``receive`` answers
  ``http.disconnect`` once the response is complete (a streaming response's disconnect
  listener waits until then);
- ``call_app`` collects the response — status, headers, every body chunk of a streaming
  response — up to ``[asgi] max_response_bytes``: the record keeps the answer whole, so it
  is sent only once complete. An exception the app lets out (Starlette sends its 500 and
  re-raises) fails the execution, with the file:line inside the app's handler;
- ``Lifespan`` runs the app's ``lifespan`` protocol: startup before the first request,
  shutdown when the runtime closes; an app without lifespan support still serves
  (``lifespan = "auto"``). Its ``state`` is copied into each request's scope, as servers do.

Why not a library: aiohttp-asgi mounts an app on aiohttp's request and streams to its
response, and httpx's ``ASGITransport`` has no size cap and no lifespan; here the same
request must also be driven from a record, where there is no aiohttp request at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from multidict import CIMultiDict

from flux._errors import FluxError
from flux._function import FunctionSpec
from flux._jsoncodec import encode
from flux._project import AsgiConfig
from flux.runtime._body import FORM, is_json_type, media_type
from flux.runtime._response import Answer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

SHUTDOWN_TIMEOUT = 10.0  # seconds the app's shutdown may take before it is cancelled
# Headers that describe one transfer on the wire, not the answer: aiohttp writes its own.
_WIRE = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_SAFE_PATH = "/:@!$&'()*+,;=-._~"


class AppError(FluxError):
    """The ASGI application could not be loaded or started."""

    code = "asgi_app"


class ResponseTooLarge(RuntimeError):
    """The app's response went past ``[asgi] max_response_bytes``."""


class NoResponse(RuntimeError):
    """The app returned without sending a response."""


@dataclass
class Reply:
    """What the app answered: status, headers as it sent them, and the whole body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def answer(self) -> Answer:
        """What the app sent, as the execution's answer: these bytes, with the app's status,
        headers and content type. The record keeps the body as JSON when it is JSON, as
        text when it is text, else as bytes."""
        kind = self.content_type
        media = media_type(kind)
        body: Any = encode(self.body)
        if not self.body:
            body = None
        elif b"\x00" in self.body or b"\\u0000" in self.body:
            pass  # jsonb holds no U+0000: kept as bytes
        elif is_json_type(media):
            with contextlib.suppress(ValueError):
                body = json.loads(self.body)
        elif media.startswith("text/") or media in ("application/xml", FORM):
            with contextlib.suppress(UnicodeDecodeError):
                body = self.body.decode("utf-8")
        headers = CIMultiDict(self.plain_headers())
        return Answer(self.status, body, headers, kind or "", self.body)

    @property
    def content_type(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "content-type"), None)

    def plain_headers(self) -> list[tuple[str, str]]:
        """The headers to send on, without those of the transfer (and the content type,
        which travels on its own)."""
        return [
            (k, v)
            for k, v in self.headers
            if k.lower() not in _WIRE and k.lower() != "content-type"
        ]


# -- loading -----------------------------------------------------------------------------


@dataclass
class LoadedApp:
    """The application, where it is declared, and its lifespan."""

    app: App
    spec: str  # shop.api:app
    file: str
    line: int
    lifespan: Lifespan = field(repr=False)


def load_app(spec: str, root: Path, config: AsgiConfig) -> LoadedApp:
    """Import ``module:attribute`` with the project root on ``sys.path``; AppError with one
    sentence if it cannot be found or is not an ASGI application."""
    module_name, _, attribute = spec.partition(":")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the app's package lives in the project
    _forget_foreign(module_name.split(".")[0], root)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppError(
                f"cannot import {module_name} for [asgi] app = {spec!r}: no such module in {root}"
            ) from exc
        raise AppError(f"importing {module_name} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise AppError(f"importing {module_name} failed: {type(exc).__name__}: {exc}") from exc
    app: Any = module
    for part in attribute.split("."):
        if not hasattr(app, part):
            raise AppError(
                f"{module_name} has no attribute {attribute!r} (from [asgi] app = {spec!r})"
            )
        app = getattr(app, part)
    if not callable(app):
        raise AppError(f"{spec} is not an ASGI application: {type(app).__name__} is not callable")
    file = getattr(module, "__file__", None) or "?"
    return LoadedApp(
        app=app,
        spec=spec,
        file=file,
        line=_line_of(file, attribute),
        lifespan=Lifespan(app, config.lifespan),
    )


def _forget_foreign(package: str, root: Path) -> None:
    """Drop an already imported ``package`` that is not this project's (another project of
    the same process, as in tests), so the import finds the project's own."""
    home = root.resolve()
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        file = getattr(sys.modules[name], "__file__", None)
        if file and not Path(file).resolve().is_relative_to(home):
            del sys.modules[name]


def _line_of(file: str, attribute: str) -> int:
    """The line that assigns the app (``app = FastAPI()``): where its span points."""
    name = re.escape(attribute.split(".")[0])
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return 1
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"{name}\s*(:[^=]*)?=", line):
            return number
    return 1


def function_spec(loaded: LoadedApp, config: AsgiConfig) -> FunctionSpec:
    """The app as a function of the registry: its handler drives the app with
    ``ctx.request`` — the request as it came, or as its record gives it back in replay —
    and answers with what the app sent."""
    app, lifespan, cap = loaded.app, loaded.lifespan, config.max_response_bytes

    async def handler(ctx: Any, input: Any) -> Any:
        request = ctx.request
        scope = http_scope(
            request.method or "GET",
            request.path,
            request.query.items(),
            request.headers.items(),
            state=lifespan.state,
        )
        reply = await call_app(app, scope, request.body, max_bytes=cap)
        return reply.answer()

    return FunctionSpec(
        name=config.name,
        route="",
        handler=handler,
        is_async=True,
        timeout=config.timeout,
        retries=0,
        cron=None,
        file=loaded.file,
        line=loaded.line,
    )


def not_named(function: Any, config: AsgiConfig) -> str | None:
    """Why a record of the ASGI app cannot run here: it names the app (``[asgi] name``) and
    this project names no app — ``flux serve --asgi`` sets it for that run only, so replay,
    resume and bisect need it in flux.toml. None for any other record."""
    if function != config.name or config.app is not None:
        return None
    return (
        f"{function!r} is the ASGI app Flux served (flux serve --asgi module:app), and "
        'this project names none: add [asgi] app = "module:app" to flux.toml to run it'
    )


# -- one request -------------------------------------------------------------------------


def http_scope(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Iterable[tuple[str, str]],
    *,
    state: dict[str, Any] | None = None,
) -> Scope:
    """The ``http`` scope of one request, from what its record keeps. The client's address
    is not kept, so it is absent (``None``) live and in replay alike."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": path,
        "raw_path": quote(path, safe=_SAFE_PATH).encode("ascii"),
        "query_string": urlencode(list(query)).encode("ascii"),
        "root_path": "",
        "headers": [
            (k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers
        ],
        "client": None,
        "server": None,
        "state": dict(state or {}),  # a shallow copy per request, as the spec says
    }


async def call_app(app: App, scope: Scope, body: bytes, *, max_bytes: int) -> Reply:
    """Run one request through ``app`` and collect its response. What the app raises
    propagates (after its response, if it sent one: the execution failed all the same)."""
    asked = False
    complete = asyncio.Event()
    start: Message | None = None
    chunks: list[bytes] = []
    size = 0

    async def receive() -> Message:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": body, "more_body": False}
        await complete.wait()  # nothing more comes: the client is gone once it is answered
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal start, size
        kind = message.get("type")
        if kind == "http.response.start":
            if start is not None:
                raise RuntimeError("the ASGI app started its response twice")
            start = message
        elif kind == "http.response.body":
            if start is None:
                raise RuntimeError("the ASGI app sent a body before http.response.start")
            if complete.is_set():
                return  # after the end of the response: nobody reads it
            chunk = bytes(message.get("body") or b"")
            size += len(chunk)
            if size > max_bytes:
                raise ResponseTooLarge(
                    f"the ASGI app's response is over [asgi] max_response_bytes ({max_bytes} bytes)"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                complete.set()
        # Other messages (trailers, extensions) belong to extensions the scope did not offer.

    try:
        await app(scope, receive, send)
    finally:
        complete.set()  # a disconnect listener still waiting is let go
    if start is None:
        raise NoResponse("the ASGI app returned without sending a response")
    headers = [(_text(k), _text(v)) for k, v in start.get("headers") or []]
    return Reply(int(start.get("status", 200)), headers, b"".join(chunks))


def _sentence(message: Message) -> str:
    """A failure message in one line: Starlette sends the whole traceback; its last line
    says what went wrong."""
    lines = [line for line in str(message.get("message") or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no reason given"


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)


# -- lifespan ----------------------------------------------------------------------------


class Lifespan:
    """The app's ``lifespan`` protocol: ``startup()`` before serving, ``shutdown()`` after.
    With ``mode`` auto an app that does not speak it (it raises, or returns, on a
    ``lifespan`` scope) serves without; with ``on`` that is an error; ``off`` never asks."""

    def __init__(self, app: App, mode: str = "auto") -> None:
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self.supported = False
        self.unsupported_reason: str | None = None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run the app's startup; AppError if it failed (or, with ``on``, if the app has no
        lifespan)."""
        if self.mode == "off":
            return
        self._task = asyncio.create_task(self._main(), name="asgi-lifespan")
        await self._inbox.put({"type": "lifespan.startup"})
        message = await self._outbox.get()
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            self.supported = True
            return
        if kind == "lifespan.startup.failed":
            await self._finish()
            raise AppError(f"the ASGI app's startup failed: {_sentence(message)}")
        # It ended without answering: no lifespan support.
        self.unsupported_reason = str(message.get("error") or "it returned")
        await self._finish()
        if self.mode == "on":
            raise AppError(
                "the ASGI app does not support lifespan ([asgi] lifespan = "
                f'"on"): {self.unsupported_reason}'
            )

    async def shutdown(self) -> None:
        """Run the app's shutdown (within SHUTDOWN_TIMEOUT); a failure is reported by
        AppError after the app was let go."""
        if not self.supported or self._task is None:
            return
        self.supported = False
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                message = await self._outbox.get()
        except TimeoutError:
            message = {
                "type": "lifespan.shutdown.failed",
                "message": f"it did not finish within {SHUTDOWN_TIMEOUT:g}s",
            }
        await self._finish()
        if message.get("type") == "lifespan.shutdown.failed":
            raise AppError(f"the ASGI app's shutdown failed: {_sentence(message)}")

    async def _main(self) -> None:
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._inbox.get, self._send)
        except Exception as exc:
            self._outbox.put_nowait({"type": "_ended", "error": f"{type(exc).__name__}: {exc}"})
            return
        self._outbox.put_nowait({"type": "_ended"})

    async def _send(self, message: Message) -> None:
        await self._outbox.put(message)

    async def _finish(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await asyncio.shield(task)
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
