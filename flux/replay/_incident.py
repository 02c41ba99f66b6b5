"""``flux incident replay``: re-run every execution of an incident against today's code,
with outbound side effects suppressed, and say how many still fail.

Each execution is replayed as ``flux replay`` does — HTTP answered from its tape and never
sent, ``ctx.is_replay`` true, ``x-flux-replay: true`` — with the database either live
(``--db live``, the default: real statements in a transaction that is always rolled back,
so the mutations the new code would make are recorded next to the original ones) or from
the tape (``--db tape``). Each replay is itself recorded, with ``replay_of``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg

from flux._errors import ConfigError, FluxError
from flux._project import Project
from flux.inspect._ls import parse_status, parse_window
from flux.replay._replay import replay
from flux.runtime._runtime import Runtime
from flux.store._lookup import fetch_record_async, resolve_id
from flux.store._queries import load

MAX_EXECUTIONS = 100_000
CONCURRENCY = 8


def select(conn: psycopg.Connection[Any], *, window: str | None = None,
           ids: list[str] | None = None, function: str | None = None,
           status: str | None = None) -> list[str]:
    """The request ids of the incident, oldest first."""
    if not window and not ids:
        raise ConfigError("say which executions: --window START..END or --ids ID,ID,…")
    start = end = None
    if window:
        start, end = parse_window(window)
    full_ids = [resolve_id(conn, prefix) for prefix in ids] if ids else None
    filt = parse_status(status)
    rows = conn.execute(load("inspect").incident, {
        "ids": full_ids, "function": function, "status": filt.status,
        "http_min": filt.http_min, "http_max": filt.http_max, "since": start, "until": end,
        "limit": MAX_EXECUTIONS}).fetchall()
    return [r[0] for r in rows]


def replay_incident(project: Project, conninfo: str, request_ids: list[str], *,
                    db_mode: str = "live", on_result: Callable[[dict[str, Any]], None]
                    = lambda r: None, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """Replay ``request_ids`` (each recorded with ``replay_of``); one result per execution,
    reported to ``on_result`` as it completes, and the summary."""
    return asyncio.run(_run(project, conninfo, request_ids, db_mode, on_result, concurrency))


async def _run(project: Project, conninfo: str, request_ids: list[str], db_mode: str,
               on_result: Callable[[dict[str, Any]], None], concurrency: int
               ) -> dict[str, Any]:
    runtime = Runtime(project, conninfo, pool_size=concurrency + 2)
    await runtime.start()
    results: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(request_id: str) -> None:
        async with gate:
            async with runtime.pool.connection() as conn:
                record = await fetch_record_async(conn, request_id)
            try:
                outcome = await replay(runtime, record, db_mode=db_mode, persist=True)
                result = {
                    "request_id": request_id, "function": record["function"],
                    "original_status": record["http_status"],
                    "status": outcome["http_status"]["replayed"],
                    "passed": outcome["passed"], "replay_id": outcome["replay_id"],
                    "divergence": outcome["divergence"],
                    "error": (outcome["replayed"]["error"] or {}).get("type"),
                    "beyond_tape": len(outcome["beyond_tape"]),
                }
            except FluxError as exc:
                result = {"request_id": request_id, "function": record.get("function"),
                          "original_status": record.get("http_status"), "status": None,
                          "passed": False, "replay_id": None, "divergence": None,
                          "error": exc.message, "beyond_tape": 0}
            results.append(result)
            on_result(result)

    try:
        await asyncio.gather(*(one(rid) for rid in request_ids))
    finally:
        await runtime.close()
    order = {rid: i for i, rid in enumerate(request_ids)}
    results.sort(key=lambda r: order[r["request_id"]])
    passing = sum(1 for r in results if r["passed"])
    return {"replayed": len(results), "passing": passing, "failing": len(results) - passing,
            "db": db_mode, "results": results}
