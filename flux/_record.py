"""The execution record as written to ``flux.trace_requests``, and the writes that store it.

A record of an execution that committed data is written in the same transaction as that
data; a failed execution's record is written after the rollback, with the mutations it had
attempted copied back in, marked ``rolled_back``.
"""

from __future__ import annotations

import datetime as dt
import traceback
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from flux._ctx_db import db_error
from flux._errors import FunctionError, HttpError, HttpStatusError, Overloaded
from flux._queries import load
from flux._recorder import Recorder


@dataclass
class ExecutionRecord:
    """One row of flux.trace_requests, before it is stored."""

    request_id: str
    kind: str
    function: str | None
    status: str
    http_status: int
    started_at: dt.datetime
    duration_ms: float
    request: dict[str, Any]
    response: dict[str, Any] | None
    error: dict[str, Any] | None
    spans: list[dict[str, Any]]
    tape: list[dict[str, Any]]
    logs: list[dict[str, Any]]
    code_sha: str | None
    code_dirty: bool
    method: str | None = "POST"
    route: str | None = None
    runtime: str = "python"
    tenant: str | None = None
    parent_id: str | None = None
    replay_of: str | None = None
    resumed_from: str | None = None
    mutations: list[dict[str, Any]] = field(default_factory=list)

    def params(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id, "kind": self.kind, "function": self.function,
            "runtime": self.runtime, "method": self.method, "route": self.route,
            "status": self.status, "http_status": self.http_status,
            "started_at": self.started_at, "duration_ms": self.duration_ms,
            "request": Jsonb(self.request),
            "response": Jsonb(self.response) if self.response is not None else None,
            "error": Jsonb(self.error) if self.error is not None else None,
            "spans": Jsonb(self.spans), "tape": Jsonb(self.tape), "logs": Jsonb(self.logs),
            "code_sha": self.code_sha, "code_dirty": self.code_dirty, "tenant": self.tenant,
            "parent_id": self.parent_id, "replay_of": self.replay_of,
            "resumed_from": self.resumed_from,
        }


def describe_error(exc: BaseException, recorder: Recorder, scrub: Any) -> dict[str, Any]:
    """The structured error of a failed execution: type, message, codes, the user's
    file:line, the failing span and a scrubbed stack."""
    site = recorder.site_of_traceback(exc.__traceback__)
    error: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": scrub(str(exc) or type(exc).__name__),
        "file": site.file, "line": site.line, "function": site.function,
    }
    if isinstance(exc, FunctionError):
        error.update(code=exc.error_code, http_status=exc.status)
    elif isinstance(exc, HttpStatusError):
        error.update(http_code=exc.status, url=exc.url)
    elif isinstance(exc, HttpError):
        error.update(url=exc.url, method=exc.method, code=exc.code)
    elif isinstance(exc, psycopg.Error):
        error.update({k: v for k, v in db_error(exc).items() if k not in ("type", "message")})
        if error.get("detail"):
            error["detail"] = scrub(error["detail"])
    elif isinstance(exc, Overloaded):
        error["code"] = exc.code
    failing = [s for s in recorder.spans if s.status == "error"
               and s.kind not in ("gateway", "function")]
    if failing:
        error["span_id"] = failing[-1].id
    error["stack"] = [
        {"file": recorder.relative(f.filename), "line": f.lineno, "function": f.name,
         "code": scrub(f.line or "")}
        for f in traceback.extract_tb(exc.__traceback__)
    ][-20:]
    return error


async def store(conn: AsyncConnection[Any], record: ExecutionRecord) -> None:
    """Insert the record (and a failed execution's rolled-back mutations) on ``conn``
    inside its current transaction; the caller commits."""
    q = load("execution")
    async with conn.pipeline():
        await conn.execute(q.insert_record, record.params())
        if record.mutations:
            async with conn.cursor() as cur:
                await cur.executemany(q.insert_rolled_back, [
                    {**m, "pk": Jsonb(m["pk"]) if m["pk"] is not None else None,
                     "old": Jsonb(m["old"]) if m["old"] is not None else None,
                     "new": Jsonb(m["new"]) if m["new"] is not None else None}
                    for m in record.mutations])


async def attempted_mutations(conn: AsyncConnection[Any], request_id: str
                              ) -> list[dict[str, Any]]:
    """The changes this execution's transaction made so far (read before the rollback)."""
    async with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        await cur.execute(load("execution").attempted_mutations, {"request_id": request_id})
        return list(await cur.fetchall())
