"""The admin API under ``/_flux/``: the inspect commands and resume, over HTTP.

Each read endpoint answers exactly the document the matching CLI command prints with
``--json`` (both come from flux/server/_inspector.py), so ``flux --remote URL why ID`` renders
what ``flux why ID`` would on the server's machine:

    GET  /_flux/executions                       flux ls
    GET  /_flux/executions/{id}                  flux record export
    GET  /_flux/executions/{id}/why              flux why
    POST /_flux/executions/{id}/why/ai           flux why --ai (the web view's button)
    GET  /_flux/executions/{id}/trace            flux trace
    POST /_flux/executions/{id}/resume           flux resume
    GET  /_flux/state/{table}/history?id=        flux state history
    GET  /_flux/state/{table}/blame[?id=]        flux state blame
    GET  /_flux/functions/openapi.json           the functions' routes (OpenAPI 3.1)
    GET  /_flux/diff?a=&b=                       flux trace diff
    GET  /_flux/source?file=&line=               the lines around a location (the web view)
    GET  /_flux/openapi.json                     this API, described (OpenAPI 3.1)

and the web view's pages under ``/_flux/ui/`` (flux/server/_web.py), behind the same door.

Access is decided by flux/runtime/_access.py (a token, except in ``flux dev`` on loopback). Errors
are ``{"error": {"code", "message", "hint"}, "request_id"}`` with the status of their kind
(400 bad input, 401/403 access, 404 unknown, 409 ambiguous id or refused resume, 503
database down); every message is the one sentence the CLI would print.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from flux._errors import (
    AmbiguousId,
    ConfigError,
    DatabaseError,
    FluxError,
    NotFound,
    Overloaded,
    ResumeRefused,
)
from flux.inspect import _ai
from flux.replay._resume import resume as run_resume
from flux.runtime._access import AdminAccess
from flux.runtime._gateway import ID_KEY, RETRY_AFTER, RUNTIME_KEY, identified
from flux.server import _web
from flux.server._inspector import Local
from flux.server._openapi import description, functions_description
from flux.server._source import code_around
from flux.store._database import read_only
from flux.store._lookup import fetch_record

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_app() -> web.Application:
    """The admin API as an aiohttp sub-application (the gateway mounts it at ``/_flux/``);
    who may call it is the runtime's ``admin`` (flux/runtime/_access.py).

    Every handler runs inside ``_guard``, wrapped route by route rather than as an aiohttp
    middleware (a sub-app's middleware makes aiohttp run its middleware chain for every
    request of the parent app too: the functions' requests). What no route takes reaches
    the guard through the two catch-all routes added last, and is answered as a 404 — or
    a 405 when another method of the path is routed — after the access check, as
    aiohttp's own refusal through a middleware was."""
    app = web.Application()
    for method, path, handler in [*ROUTES, *WEB_ROUTES]:
        app.router.add_route(method, path, _guarded(handler))
    unrouted = _guarded(_unrouted, routed=False)
    catch_all = {app.router.add_route("*", "", unrouted).resource,  # /_flux itself
                 app.router.add_route("*", "/{_:[\\s\\S]*}", unrouted).resource}
    app[_CATCH_ALL] = frozenset(r for r in catch_all if r is not None)
    return app


_CATCH_ALL = web.AppKey("catch_all", frozenset)


def _guarded(handler: Handler, *, routed: bool = True) -> Handler:
    return identified(functools.partial(_guard, handler=handler, routed=routed))


async def _unrouted(request: web.Request) -> web.StreamResponse:
    """What aiohttp's router would have raised for a path no admin route takes."""
    app = request.match_info.apps[-1]  # this one, the innermost
    allowed: set[str] = set()
    for resource in app.router.resources():
        if resource not in app[_CATCH_ALL]:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _error(request: web.Request, status: int, code: str, message: str,
           hint: str | None = None, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "hint": hint},
                              "request_id": request.get(ID_KEY), **extra},
                             status=status, dumps=_dumps)


def _status_of(error: FluxError) -> int:
    """404 unknown, 503 overloaded, 400 everything else a caller got wrong (ambiguous ids
    and refused resumes, 409, and the database, 503, carry more and are answered before)."""
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Overloaded):
        return 503
    return 400


async def _guard(request: web.Request, handler: Handler, routed: bool = True
                 ) -> web.StreamResponse:
    """Access first, then every way a call can fail as one sentence with its status
    (``routed``: ``handler`` is a route's, not the catch-all's)."""
    access: AdminAccess = _runtime(request).admin
    web_page = _web.is_web(request.path)
    foreign = access.foreign(request.headers, admin=True, method=request.method)
    if foreign is not None:
        if web_page:
            return _web.refused(request, foreign)
        return _error(request, foreign.status, foreign.code, foreign.message)
    if _web.is_signin(request):  # the token itself arrives here, in a form
        return await _web.sign_in(request, access)
    if request.path.rstrip("/") != "/_flux/openapi.json":
        refusal = access.refusal(request.headers.get("Authorization"), _web.session_of(request))
        if refusal is not None and web_page:
            return _web.refused(request, refusal)
        if refusal is not None:
            response = _error(request, refusal.status, refusal.code, refusal.message)
            if refusal.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="flux admin"'
            return response
    unasked = access.unasked(request.headers, request.method)
    if unasked is not None and routed:
        return _error(request, unasked.status, unasked.code, unasked.message)
    if _runtime(request).availability.down:
        return _unavailable(request, "the database is unavailable, so the call was not run")
    if any("\x00" in v for v in (*request.query.values(),
                                  *(request.match_info.values() if routed else ()))):
        return _error(request, 400, "invalid_input", "a parameter holds a NUL character, "
                      "which no id, table, key or filter can contain")
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        response = _error(request, 405, "method_not_allowed",
                          f"{request.path} takes {', '.join(sorted(exc.allowed_methods))}, "
                          f"not {request.method}")
        response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    except web.HTTPNotFound:
        return _error(request, 404, "not_found", f"no admin endpoint {request.path}",
                      hint="GET /_flux/openapi.json lists them")
    except AmbiguousId as exc:
        return _error(request, 409, exc.code, exc.message, exc.hint,
                      candidates=exc.candidates)
    except ResumeRefused as exc:
        return _error(request, 409, exc.code, exc.message, exc.hint,
                      details=exc.details or None)
    except DatabaseError as exc:  # unreachable, or lost during the call
        return _unavailable(request, exc.message)
    except FluxError as exc:
        return _error(request, _status_of(exc), exc.code, exc.message, exc.hint)
    except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
        return _unavailable(request, f"the database is unavailable: {type(exc).__name__}")


def _unavailable(request: web.Request, message: str) -> web.Response:
    """A 503 as the gateway gives one while the database is down (flux/runtime/_gateway.py)."""
    response = _error(request, 503, "unavailable", message)
    response.headers["Retry-After"] = RETRY_AFTER
    return response


def _runtime(request: web.Request) -> Any:
    return request.config_dict[RUNTIME_KEY]


async def _local(request: web.Request) -> Any:
    runtime = _runtime(request)
    await runtime.ensure_pool()  # resolves a lazy database address
    return Local.of_conninfo(runtime.conninfo, runtime.project)


def _text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    return value if value not in (None, "") else None


def _int(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {value!r}") from None
    if not 1 <= number <= 10_000:
        raise ConfigError(f"{name} must be between 1 and 10000, not {number}")
    return number


def _flag(request: web.Request, name: str) -> bool:
    value = (request.query.get(name) or "").lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name} must be true or false, not {request.query.get(name)!r}")


def _json(document: Any) -> web.Response:
    return web.json_response(document, dumps=_dumps)


async def executions(request: web.Request) -> web.Response:
    local = await _local(request)
    rows = await asyncio.to_thread(
        local.executions, function=_text(request, "function"), status=_text(request, "status"),
        since=_text(request, "since"), window=_text(request, "window"),
        limit=_int(request, "limit", 20), kind=_text(request, "kind"))
    return _json({"executions": rows})


async def record(request: web.Request) -> web.Response:
    local = await _local(request)
    return _json(await asyncio.to_thread(local.record, request.match_info["id"]))


async def why(request: web.Request) -> web.Response:
    local = await _local(request)
    spans = _flag(request, "spans")
    report = await asyncio.to_thread(local.why, request.match_info["id"])
    return _json(report if spans else {k: v for k, v in report.items() if k != "spans"})


async def why_ai(request: web.Request) -> web.Response:
    """The model's reading of a failure, asked by this server (its [ai], its secrets, its
    code); ``send=false`` answers the prompt only. A model that fails is 200 with one
    sentence in ``ai.error``: the deterministic report stands without it."""
    send = _flag(request, "send") if "send" in request.query else True
    show_prompt = _flag(request, "show_prompt")
    runtime = _runtime(request)
    config = runtime.project.ai
    key = None
    if send:
        _ai.require(config)
        key = _ai.api_key(runtime.project)
    local = await _local(request)
    request_id, prompt = await asyncio.to_thread(local.ai_prompt, request.match_info["id"])
    answer = await _ai.ask(config, key, prompt) if send else None
    return _json({"request_id": request_id,
                  "ai": _ai.reading(config, prompt, answer, show_prompt=show_prompt)})


async def trace(request: web.Request) -> web.Response:
    local = await _local(request)
    return _json(await asyncio.to_thread(local.trace, request.match_info["id"]))


async def history(request: web.Request) -> web.Response:
    key = _text(request, "id")
    if key is None:
        raise ConfigError("state history needs the row's primary key: ?id=42")
    local = await _local(request)
    return _json(await asyncio.to_thread(local.history, request.match_info["table"], key))


async def blame(request: web.Request) -> web.Response:
    local = await _local(request)
    return _json(await asyncio.to_thread(local.blame, request.match_info["table"],
                                         _text(request, "id"),
                                         limit=_int(request, "limit", 50)))


async def resume(request: web.Request) -> web.Response:
    """Resume with the code this server runs. A resume that ran answers 200 whatever the
    resumed execution's own status (it is in the document)."""
    runtime = _runtime(request)
    dry_run, strict = _flag(request, "dry_run"), _flag(request, "strict")
    await runtime.ensure_pool()

    def fetch() -> dict[str, Any]:
        with read_only(runtime.conninfo) as conn:
            return fetch_record(conn, request.match_info["id"])

    found = await asyncio.to_thread(fetch)
    return _json(await run_resume(runtime, found, dry_run=dry_run, strict=strict))


async def diff(request: web.Request) -> web.Response:
    a, b = _text(request, "a"), _text(request, "b")
    if a is None or b is None:
        raise ConfigError("a diff needs two executions: ?a=ID&b=ID")
    local = await _local(request)
    return _json(await asyncio.to_thread(local.diff, a, b))


async def source(request: web.Request) -> web.Response:
    """A few lines of the project's code around ``line`` of ``file``, as the file reads on
    this server now (the web view's location panel)."""
    file = _text(request, "file")
    if file is None:
        raise ConfigError("source needs a file: ?file=functions/checkout.py&line=12")
    line = _int(request, "line", 1)
    root = _runtime(request).project.root
    return _json(await asyncio.to_thread(code_around, root, file, line))


async def openapi(request: web.Request) -> web.Response:
    return _json(description())


async def functions_openapi(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    return _json(functions_description(runtime.registry, f"{runtime.project.name} functions"))


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/executions", executions),
    ("GET", "/executions/{id}", record),
    ("GET", "/executions/{id}/why", why),
    ("POST", "/executions/{id}/why/ai", why_ai),
    ("GET", "/executions/{id}/trace", trace),
    ("POST", "/executions/{id}/resume", resume),
    ("GET", "/state/{table}/history", history),
    ("GET", "/state/{table}/blame", blame),
    ("GET", "/functions/openapi.json", functions_openapi),
    ("GET", "/diff", diff),
    ("GET", "/source", source),
    ("GET", "/openapi.json", openapi),
]
WEB_ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/ui/signin", _web.sign_in_route),  # answered by the guard
    *_web.WEB_ROUTES,
]
