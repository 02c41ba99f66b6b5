"""The gateway: a thin aiohttp app in front of the executor.

``POST /<route>`` runs a function — or whatever methods and route (with typed path
parameters) it declares (flux/_function.py); ``GET /health`` answers for load balancers; the
admin API is a sub-application under ``/_flux/`` (flux/server/_admin.py). A body that is not
JSON (or a form) a record can hold is a 400 (flux/runtime/_body.py), an unknown route — or a
path parameter of the wrong type — a 404, a method the route does not take a 405 with
``Allow``, a body over the limit a 413, a bad tenant a 400 — each answered with one sentence
and the request id, and each recorded like any execution. The request as it came is
``ctx.request`` (flux/runtime/_request.py); a handler's ``flux.Response`` chooses the status,
headers and body type of the answer (flux/runtime/_response.py). The tenant comes from ``[tenants]``
(flux/runtime/_tenants.py). Every response carries ``x-flux-request-id``.

Two refusals come before anything runs, each a 503 with ``Retry-After`` and
``"recorded": false`` in its body (the request is counted in ``/health``, not recorded —
there is nowhere to record it, or recording it is the load being shed): while the database
is down (``unavailable``), and while ``[server] max_inflight`` executions are already in
flight (``overloaded``). A request's body is read before it takes one of those slots, within
``[server] body_timeout`` (a 408 after it): a client trickling its body holds a connection,
never a slot that others need. An execution that ran but whose record could not be stored is
answered the same way; one whose connection died during its COMMIT says ``"recorded":
null``: whether it committed is unknown until the database is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from enum import Enum
from typing import Any

import psycopg
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from flux._errors import DatabaseUnavailable, Overloaded
from flux._ids import new_request_id_text
from flux._tracecontext import TraceContext, from_headers
from flux.inspect._signature import failure_signature
from flux.runtime._body import BodyError, decode_input, media_type, preview
from flux.runtime._executor import IN_DOUBT, Invocation, Outcome, execute
from flux.runtime._loader import RouteMatch
from flux.runtime._recorder import Span
from flux.runtime._request import Request
from flux.runtime._response import json_bytes
from flux.runtime._runtime import Runtime, utcnow
from flux.runtime._tenants import TenantRefused
from flux.store._record import ExecutionRecord

REQUEST_ID_HEADER = "x-flux-request-id"
RUNTIME_KEY = web.AppKey("runtime", Runtime)
ID_KEY = web.RequestKey("request_id", str)
ERROR_KEY = web.RequestKey("error", str)  # the failure the serve log names (error_line)
# (method, path, status, milliseconds, request id, the failure in one line or None)
Observer = Callable[[str, str, int, float, str | None, str | None], None]
ERROR_LINE_MAX = 160
OBSERVER_KEY = web.AppKey("observer", object)
RETRY_AFTER = "1"  # seconds; an outage or a burst is usually over by then
NOT_RUN = "the database is unavailable, so the request was not run"
NOT_STORED = ("the database became unavailable, so the request was not recorded and nothing "
              "it wrote was kept")


def make_app(runtime: Runtime, *, observer: Observer | None = None,
             admin: web.Application | None = None) -> web.Application:
    """The aiohttp application serving ``runtime``'s functions, with ``admin`` (the admin
    API, built by the server above this package) mounted at ``/_flux/`` before the
    catch-all function route.

    No aiohttp middleware, here or in ``admin``: an app with one (or with a sub-app that has
    one) runs every request through a chain of coroutines, aiohttp's own among them. Each
    handler is ``identified`` instead (the function route by ``_dispatch`` itself)."""
    app = web.Application(client_max_size=runtime.max_body)
    app[RUNTIME_KEY] = runtime
    app[OBSERVER_KEY] = observer
    app.router.add_get("/health", identified(_health))
    if admin is not None:
        app.add_subapp("/_flux/", admin)
    app.router.add_route("*", "/{path:[\\s\\S]*}", _dispatch)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def identified(handler: Handler) -> Handler:
    """``handler`` given a request id (``request[ID_KEY]``), answering with it in
    ``x-flux-request-id`` — an ``HTTPException`` it raises too — and telling the observer."""

    async def run(request: web.Request) -> web.StreamResponse:
        request_id = new_request_id_text()
        request[ID_KEY] = request_id
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        return _answered(request, request.config_dict, request_id, started, response)

    return run


def _answered(request: web.Request, config: Mapping[Any, Any], request_id: str,
              started: float, response: web.StreamResponse) -> web.StreamResponse:
    response.headers[REQUEST_ID_HEADER] = request_id
    observer = config[OBSERVER_KEY]
    if callable(observer) and request.path != "/health":
        runtime = config[RUNTIME_KEY]  # the path, as the serve log shows it: no secret
        path = runtime.policy.scrub_text(request.path, runtime.configured_secrets())
        observer(request.method, path, response.status,
                 (time.perf_counter() - started) * 1000, request_id, request.get(ERROR_KEY))
    return response


def error_line(error: dict[str, Any]) -> str:
    """A recorded error as the serve log names it: its type and the first line of its
    message (already scrubbed of secrets), cut at ``ERROR_LINE_MAX`` characters; a
    ``ctx.error`` answer (FunctionError) by its message alone, as ``flux ls`` shows it. The text
    may be an attacker's (a path, a body echoed in an exception): the console that prints it
    draws control characters instead of sending them (cli/_output.py)."""
    kind = str(error.get("type") or "Error")
    message = str(error.get("message") or "").strip()
    first = message.splitlines()[0] if message else ""
    text = first if first and kind == "FunctionError" else \
        f"{kind}: {first}" if first and first != kind else kind
    return text if len(text) <= ERROR_LINE_MAX else text[:ERROR_LINE_MAX - 1] + "…"


async def _health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    return _json_response({
        "status": "ok", "functions": len(runtime.registry.by_name),
        "database": runtime.availability.state, "inflight": runtime.inflight,
        "max_inflight": runtime.max_inflight, "refused": runtime.refused})


async def _dispatch(request: web.Request) -> web.StreamResponse:
    """A function's route: ``identified``'s work done here, one coroutine fewer."""
    request_id = new_request_id_text()
    request[ID_KEY] = request_id
    started = time.perf_counter()
    app = request.app
    try:
        response = await _serve(request, app[RUNTIME_KEY], request_id)
    except web.HTTPException as exc:
        response = exc
    return _answered(request, app, request_id, started, response)


async def _serve(request: web.Request, runtime: Runtime, request_id: str
                 ) -> web.StreamResponse:
    path = request.match_info["path"]
    if runtime.availability.down:
        return _unavailable(runtime, request_id, NOT_RUN)
    foreign = runtime.admin.foreign(request.headers, admin=False, method=request.method)
    if foreign is not None:  # a web page's request (flux/runtime/_access.py): recorded, not run
        spec = runtime.registry.route(path) or runtime.registry.asgi
        return await _reject(request, foreign.status, foreign.code, foreign.message,
                             function=spec.name if spec else None)
    body: bytes | _BodyProblem | None = None
    found = _take(runtime, request.method, path)
    if found is not None and found.spec is not None:
        body = await _read_body(request, runtime)
        if isinstance(body, _BodyProblem):  # answered and recorded, nothing run: no slot
            return await _run(request, runtime, path, request_id, body, found)
    if runtime.inflight >= runtime.max_inflight:
        runtime.refused["overloaded"] += 1
        return _refusal(request_id, "overloaded",
                        f"{runtime.max_inflight} requests are already in flight, so this one "
                        "was not run", recorded=False)
    runtime.inflight += 1
    try:
        return await _run(request, runtime, path, request_id, body, found)
    finally:
        runtime.inflight -= 1


class _BodyProblem(Enum):
    TOO_LARGE = "too_large"
    TOO_SLOW = "too_slow"
    CUT_OFF = "cut_off"  # the client closed the connection before its body was whole
    UNDECODABLE = "undecodable"  # its Content-Encoding does not decode


async def _read_body(request: web.Request, runtime: Runtime) -> bytes | _BodyProblem:
    """The whole body, read before the request takes an execution slot, within the body
    deadline. A body that is already all here (most are: it came with the headers) is
    taken without arming that deadline's timer."""
    try:
        if request.content.is_eof():
            return await request.read()
        async with asyncio.timeout(runtime.body_timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _BodyProblem.TOO_LARGE
    except TimeoutError:
        return _BodyProblem.TOO_SLOW
    except ConnectionError:
        return _BodyProblem.CUT_OFF
    except (HttpProcessingError, RequestPayloadError):  # gzip said, and it is not gzip
        return _BodyProblem.UNDECODABLE


def _take(runtime: Runtime, method: str, path: str) -> RouteMatch | None:
    """What answers ``method`` at ``path``: the function that takes it; else the ASGI app
    Flux serves, if any (flux/runtime/_asgi.py) — so one endpoint can move into a function
    while the app keeps the rest; else what the functions say (a 405, or None: a 404)."""
    found = runtime.registry.match(method, path)
    app = runtime.registry.asgi
    if app is not None and (found is None or found.spec is None):
        return RouteMatch(app, {}, ())
    return found


async def _run(request: web.Request, runtime: Runtime, path: str, request_id: str,
               body: bytes | _BodyProblem | None, found: RouteMatch | None
               ) -> web.StreamResponse:
    # ``found``: what _dispatch matched, once per request (matching walks every route).
    spec = found.spec if found is not None else None
    try:
        tenant = runtime.tenants.resolve(request)
    except TenantRefused as refused:
        named = spec or runtime.registry.route(path)
        return await _reject(request, refused.status, "invalid_tenant", refused.message,
                             function=named.name if named else None)
    if found is None:
        shown = request.rel_url.raw_path  # as sent: percent-encoded, no control character
        return await _reject(request, 404, "not_found", f"no function is routed at {shown}",
                             function=None, tenant=tenant)
    if spec is None:
        shown = request.rel_url.raw_path
        allowed = ", ".join(found.allowed)
        named = runtime.registry.route(path)
        response = await _reject(request, 405, "method_not_allowed",
                                 f"{shown} takes {allowed}, not {request.method}",
                                 function=named.name if named else None, tenant=tenant)
        response.headers["Allow"] = allowed
        return response
    raw = body if body is not None else await _read_body(request, runtime)
    if raw is _BodyProblem.TOO_LARGE:
        return await _reject(request, 413, "payload_too_large",
                             f"the request body is over the limit of {runtime.max_body} bytes",
                             function=spec.name, tenant=tenant)
    if raw is _BodyProblem.TOO_SLOW:
        response = await _reject(
            request, 408, "request_timeout", "the request body did not arrive within "
            f"{runtime.body_timeout:g} seconds", function=spec.name, tenant=tenant)
        response.force_close()  # the rest of the body is not waited for
        return response
    if raw is _BodyProblem.UNDECODABLE:
        response = await _reject(request, 400, "invalid_encoding", "the request body does "
                                 "not decode as its Content-Encoding says",
                                 function=spec.name, tenant=tenant)
        response.force_close()  # what is left of it cannot be read either
        return response
    if raw is _BodyProblem.CUT_OFF:  # nobody hears the answer; the record says what happened
        return await _reject(request, 400, "incomplete_body", "the client closed the "
                             "connection before its request body was complete",
                             function=spec.name, tenant=tenant)
    assert isinstance(raw, bytes)
    media = media_type(request.headers.get("Content-Type"))
    try:
        payload = decode_input(raw, media)
    except BodyError as exc:
        if spec is not runtime.registry.asgi:
            return await _reject(request, 400, exc.code, str(exc), function=spec.name,
                                 body=preview(raw), tenant=tenant)
        payload = None  # the app reads the bytes and answers as it does (FastAPI: a 422)
    invocation = Invocation(
        request_id=request_id, spec=spec, input=payload, kind="http", method=request.method,
        route=path, headers=dict(request.headers), query=dict(request.query), tenant=tenant,
        trace=from_headers(request.headers),  # a malformed traceparent starts a new trace
        request=Request(method=request.method, path=request.path, path_params=found.params,
                        query=request.query, headers=request.headers, body=raw,
                        content_type=media),
    )
    try:
        outcome = await execute(runtime, invocation)
    except (psycopg.Error, DatabaseUnavailable, Overloaded, OSError) as exc:
        return _unstored(runtime, request_id, exc)
    if outcome.error and outcome.http_status >= 500:
        request[ERROR_KEY] = error_line(outcome.error)
    return _respond(outcome)


def _json_response(value: Any, *, status: int = 200,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    """JSON as Flux answers it: orjson's compact bytes (``json_bytes``), sent as they are
    (aiohttp's ``json_response`` encodes with ``json.dumps`` and then to UTF-8 again)."""
    return _json_bytes_response(json_bytes(value), status, headers)


def _json_bytes_response(data: bytes, status: int, headers: Mapping[str, str] | None
                         ) -> web.Response:
    return web.Response(body=data, status=status, headers=headers or None,
                        content_type="application/json", charset="utf-8")


def _respond(outcome: Outcome) -> web.Response:
    if outcome.content_type is None:  # JSON: its bytes made once, when it was checked
        data = outcome.raw if outcome.raw is not None else json_bytes(outcome.body)
        response = _json_bytes_response(data, outcome.http_status, outcome.headers)
    else:  # a flux.Response with a body of its own type (or none)
        response = web.Response(body=outcome.raw, status=outcome.http_status,
                                headers=outcome.headers)
        if outcome.content_type:
            response.headers["Content-Type"] = outcome.content_type
    if outcome.http_status == 503:
        response.headers["Retry-After"] = RETRY_AFTER
    return response


def _unstored(runtime: Runtime, request_id: str, exc: BaseException) -> web.Response:
    """The answer to an execution whose record could not be stored. Nothing it wrote was
    committed (its record goes in the same transaction) — unless its COMMIT is in doubt."""
    if isinstance(exc, DatabaseUnavailable) and exc.in_doubt:
        runtime.refused["unavailable"] += 1
        return _refusal(request_id, "unavailable", IN_DOUBT, recorded=None)
    if isinstance(exc, Overloaded):
        runtime.refused["overloaded"] += 1
        return _refusal(request_id, "overloaded", f"{exc.message}, so the request was not "
                        "recorded and nothing it wrote was kept", recorded=False)
    return _unavailable(runtime, request_id, NOT_STORED)


def _unavailable(runtime: Runtime, request_id: str, message: str) -> web.Response:
    runtime.refused["unavailable"] += 1
    return _refusal(request_id, "unavailable", message, recorded=False)


def _refusal(request_id: str, code: str, message: str, *, recorded: bool | None
             ) -> web.Response:
    return _json_response(
        {"error": {"code": code, "message": message}, "request_id": request_id,
         "recorded": recorded}, status=503, headers={"Retry-After": RETRY_AFTER})


async def _reject(request: web.Request, status: int, code: str, message: str, *,
                  function: str | None, body: Any = None, tenant: str | None = None
                  ) -> web.Response:
    """Answer a request that never reached a function, and record it."""
    runtime = request.app[RUNTIME_KEY]
    request_id: str = request[ID_KEY]
    now = utcnow()
    secrets = runtime.configured_secrets()
    policy = runtime.policy
    message = policy.scrub_text(message, secrets)  # it may quote the path
    error = {"type": "GatewayError", "code": code, "message": message, "http_status": status}
    span = Span(id="s1", parent_id=None,
                name=policy.scrub_text(f"{request.method} {request.path}", secrets),
                kind="gateway", start_ms=0.0, duration_ms=0.0, status="error",
                error={"type": "GatewayError", "message": message})
    answer = {"error": {"code": code, "message": message}, "request_id": request_id}
    route = policy.scrub_text(request.path.lstrip("/"), secrets)
    record = ExecutionRecord(
        request_id=request_id, kind="http", function=function, status="error",
        http_status=status, started_at=now, duration_ms=0.0,
        request={"method": request.method, "route": route,
                 "headers": policy.redact_headers(request.headers.items(), secrets),
                 "query": policy.scrub(dict(request.query), secrets),
                 "body": policy.prepare(body, secrets),
                 "trace": (from_headers(request.headers)
                           or TraceContext.start(request_id)).to_json()},
        response={"status": status, "body": answer}, error=error, spans=[span.to_json()],
        tape=[], logs=[], code_sha=runtime.code_version.sha,
        code_dirty=runtime.code_version.dirty, method=request.method,
        route=route, tenant=tenant,
    )
    record.signature = failure_signature(record)
    try:
        await runtime.store_record(record)
    except (psycopg.Error, DatabaseUnavailable, Overloaded, OSError) as exc:
        return _unstored(runtime, request_id, exc)
    runtime.export_spans(record)
    return _json_response(answer, status=status)
