"""The admin API under ``/_flux/``: actions on records from another machine.

Access: with ``FLUX_ADMIN_TOKEN`` set, every call needs ``Authorization: Bearer <token>``
(compared in constant time, never logged); without it, only loopback clients are served
(``flux dev`` on a laptop). Everything else gets a 401/403 with one sentence.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
from typing import Any

import psycopg
from aiohttp import web

from flux._errors import FluxError, NotFound, ResumeRefused

TOKEN_ENV = "FLUX_ADMIN_TOKEN"


def _error(status: int, code: str, message: str, request_id: str, **extra: Any
           ) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message},
                              "request_id": request_id, **extra}, status=status)


def allowed(request: web.Request) -> str | None:
    """None if the caller may use the admin API, else why not."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return "the admin API needs Authorization: Bearer <FLUX_ADMIN_TOKEN>"
        return None
    try:
        if ipaddress.ip_address(request.remote or "").is_loopback:
            return None
    except ValueError:
        pass
    return f"set {TOKEN_ENV} to use the admin API from another machine"


async def handle(request: web.Request, runtime: Any, path: str, request_id: str
                 ) -> web.Response:
    """Dispatch ``/_flux/<path>``."""
    refusal = allowed(request)
    if refusal is not None:
        status = 401 if os.environ.get(TOKEN_ENV) else 403
        return _error(status, "unauthorized", refusal, request_id)
    parts = path.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "executions" and parts[2] == "resume":
        if request.method != "POST":
            return _error(405, "method_not_allowed", "resume takes POST", request_id)
        return await _resume(request, runtime, parts[1], request_id)
    return _error(404, "not_found", f"no admin endpoint /_flux/{path}", request_id)


async def _resume(request: web.Request, runtime: Any, prefix: str, request_id: str
                  ) -> web.Response:
    from flux._lookup import fetch_record
    from flux._resume import resume

    dry_run = request.query.get("dry_run") in ("1", "true")
    strict = request.query.get("strict") in ("1", "true")

    def fetch() -> dict[str, Any]:
        with psycopg.connect(runtime.conninfo, autocommit=True) as conn:
            return fetch_record(conn, prefix)

    try:
        record = await asyncio.to_thread(fetch)
        result = await resume(runtime, record, dry_run=dry_run, strict=strict)
    except NotFound as exc:
        return _error(404, exc.code, exc.message, request_id)
    except ResumeRefused as exc:
        return _error(409, exc.code, exc.message, request_id, **(exc.details or {}))
    except FluxError as exc:
        return _error(400, exc.code, exc.message, request_id)
    return web.json_response(result, status=200 if result["status"] in ("ok", "dry-run")
                             else 500, dumps=_dumps)


def _dumps(value: Any) -> str:
    import json

    from flux._jsoncodec import plain

    return json.dumps(plain(value))
