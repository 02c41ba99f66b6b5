"""The gateway: a thin aiohttp app in front of the executor.

``POST /<route>`` runs a function; ``GET /health`` answers for load balancers; the admin API
is a sub-application under ``/_flux/`` (flux/server/_admin.py). A body that is not JSON a record
can hold is a 400 (flux/runtime/_body.py), an unknown route a 404, another method a 405, a body
over the limit a 413, a bad tenant a 400 — each answered with one sentence and the request
id, and each recorded like any execution. The tenant comes from ``[tenants]``
(flux/runtime/_tenants.py). Every response carries ``x-flux-request-id``.

Two refusals come before anything runs, each a 503 with ``Retry-After`` and
``"recorded": false`` in its body (the request is counted in ``/health``, not recorded —
there is nowhere to record it, or recording it is the load being shed): while the database
is down (``unavailable``), and while ``[server] max_inflight`` executions are already in
flight (``overloaded``). An execution that ran but whose record could not be stored is
answered the same way; one whose connection died during its COMMIT says ``"recorded":
null``: whether it committed is unknown until the database is back.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from aiohttp import web

from flux._errors import DatabaseUnavailable, Overloaded
from flux._ids import new_request_id
from flux._tracecontext import TraceContext, from_headers
from flux.inspect._signature import failure_signature
from flux.runtime._body import BodyError, parse_body, preview
from flux.runtime._executor import IN_DOUBT, Invocation, Outcome, execute
from flux.runtime._recorder import Span
from flux.runtime._runtime import Runtime, utcnow
from flux.runtime._tenants import TenantRefused
from flux.store._record import ExecutionRecord

REQUEST_ID_HEADER = "x-flux-request-id"
RUNTIME_KEY = web.AppKey("runtime", Runtime)
ID_KEY = web.RequestKey("request_id", str)
Observer = Callable[[str, str, int, float, str | None], None]
OBSERVER_KEY = web.AppKey("observer", object)
RETRY_AFTER = "1"  # seconds; an outage or a burst is usually over by then
NOT_RUN = "the database is unavailable, so the request was not run"
NOT_STORED = ("the database became unavailable, so the request was not recorded and nothing "
              "it wrote was kept")


def make_app(runtime: Runtime, *, observer: Observer | None = None,
             admin: web.Application | None = None) -> web.Application:
    """The aiohttp application serving ``runtime``'s functions, with ``admin`` (the admin
    API, built by the server above this package) mounted at ``/_flux/`` before the
    catch-all function route."""
    app = web.Application(client_max_size=runtime.max_body,
                          middlewares=[_request_id_middleware])
    app[RUNTIME_KEY] = runtime
    app[OBSERVER_KEY] = observer
    app.router.add_get("/health", _health)
    if admin is not None:
        app.add_subapp("/_flux/", admin)
    app.router.add_route("*", "/{path:.*}", _dispatch)
    return app


@web.middleware
async def _request_id_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request_id = str(new_request_id())
    request[ID_KEY] = request_id
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    response.headers[REQUEST_ID_HEADER] = request_id
    observer = request.app[OBSERVER_KEY]
    if callable(observer) and request.path != "/health":
        observer(request.method, request.path, response.status,
                 (time.perf_counter() - started) * 1000, request_id)
    return response


async def _health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    return web.json_response({
        "status": "ok", "functions": len(runtime.registry.by_name),
        "database": runtime.availability.state, "inflight": runtime.inflight,
        "max_inflight": runtime.max_inflight, "refused": runtime.refused})


async def _dispatch(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    request_id: str = request[ID_KEY]
    path = request.match_info["path"]
    if runtime.availability.down:
        return _unavailable(runtime, request_id, NOT_RUN)
    if runtime.inflight >= runtime.max_inflight:
        runtime.refused["overloaded"] += 1
        return _refusal(request_id, "overloaded",
                        f"{runtime.max_inflight} requests are already in flight, so this one "
                        "was not run", recorded=False)
    runtime.inflight += 1
    try:
        return await _run(request, runtime, path, request_id)
    finally:
        runtime.inflight -= 1


async def _run(request: web.Request, runtime: Runtime, path: str, request_id: str
               ) -> web.StreamResponse:
    spec = runtime.registry.route(path)
    try:
        tenant = runtime.tenants.resolve(request)
    except TenantRefused as refused:
        return await _reject(request, refused.status, "invalid_tenant", refused.message,
                             function=spec.name if spec else None)
    if spec is None:
        return await _reject(request, 404, "not_found", f"no function is routed at /{path}",
                             function=None, tenant=tenant)
    if request.method != "POST":
        response = await _reject(request, 405, "method_not_allowed",
                                 f"/{path} takes POST, not {request.method}",
                                 function=spec.name, tenant=tenant)
        response.headers["Allow"] = "POST"
        return response
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return await _reject(request, 413, "payload_too_large",
                             f"the request body is over the limit of {runtime.max_body} bytes",
                             function=spec.name, tenant=tenant)
    try:
        payload = parse_body(raw)
    except BodyError as exc:
        return await _reject(request, 400, "invalid_json", str(exc), function=spec.name,
                             body=preview(raw), tenant=tenant)
    invocation = Invocation(
        request_id=request_id, spec=spec, input=payload, kind="http", method=request.method,
        route=path, headers=dict(request.headers), query=dict(request.query), tenant=tenant,
        trace=from_headers(request.headers),  # a malformed traceparent starts a new trace
    )
    try:
        outcome = await execute(runtime, invocation)
    except (psycopg.Error, DatabaseUnavailable, Overloaded, OSError) as exc:
        return _unstored(runtime, request_id, exc)
    return _respond(outcome)


def _respond(outcome: Outcome) -> web.Response:
    response = web.json_response(outcome.body, status=outcome.http_status)
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
    return web.json_response(
        {"error": {"code": code, "message": message}, "request_id": request_id,
         "recorded": recorded}, status=503, headers={"Retry-After": RETRY_AFTER})


async def _reject(request: web.Request, status: int, code: str, message: str, *,
                  function: str | None, body: Any = None, tenant: str | None = None
                  ) -> web.Response:
    """Answer a request that never reached a function, and record it."""
    runtime = request.app[RUNTIME_KEY]
    request_id: str = request[ID_KEY]
    now = utcnow()
    error = {"type": "GatewayError", "code": code, "message": message, "http_status": status}
    span = Span(id="s1", parent_id=None, name=f"{request.method} {request.path}",
                kind="gateway", start_ms=0.0, duration_ms=0.0, status="error",
                error={"type": "GatewayError", "message": message})
    answer = {"error": {"code": code, "message": message}, "request_id": request_id}
    record = ExecutionRecord(
        request_id=request_id, kind="http", function=function, status="error",
        http_status=status, started_at=now, duration_ms=0.0,
        request={"method": request.method, "route": request.path.lstrip("/"),
                 "headers": runtime.policy.redact_headers(request.headers.items()),
                 "query": dict(request.query), "body": runtime.policy.prepare(body),
                 "trace": (from_headers(request.headers)
                           or TraceContext.start(request_id)).to_json()},
        response={"status": status, "body": answer}, error=error, spans=[span.to_json()],
        tape=[], logs=[], code_sha=runtime.code_version.sha,
        code_dirty=runtime.code_version.dirty, method=request.method,
        route=request.path.lstrip("/"), tenant=tenant,
    )
    record.signature = failure_signature(record)
    try:
        await runtime.store_record(record)
    except (psycopg.Error, DatabaseUnavailable, Overloaded, OSError) as exc:
        return _unstored(runtime, request_id, exc)
    runtime.export_spans(record)
    return web.json_response(answer, status=status)
