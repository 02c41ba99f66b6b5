"""``flux ls``: recent executions, filtered by function, status and time."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from flux._errors import ConfigError
from flux._jsoncodec import plain
from flux.inspect._window import describe as _describe
from flux.inspect._window import parse_time as _parse_time
from flux.inspect._window import parse_window as _parse_window
from flux.store._queries import load

# What started an execution (flux.trace_requests.kind).
KINDS = ("http", "job", "cron", "replay", "resume", "invoke")


@dataclass(frozen=True)
class StatusFilter:
    status: str | None = None  # ok | error
    http_min: int | None = None
    http_max: int | None = None


def parse_status(text: str | None) -> StatusFilter:
    """``ok``, ``error``, ``5xx``, ``4xx``, ``500`` …"""
    if text is None:
        return StatusFilter()
    value = text.strip().lower()
    if value in ("ok", "error"):
        return StatusFilter(status=value)
    if value in ("failed", "fail", "errors"):
        return StatusFilter(status="error")
    if re.fullmatch(r"[1-5]xx", value):
        low = int(value[0]) * 100
        return StatusFilter(http_min=low, http_max=low + 99)
    if re.fullmatch(r"[1-5]\d\d", value):
        return StatusFilter(http_min=int(value), http_max=int(value))
    raise ConfigError(f"--status takes ok, error, 4xx, 5xx or an HTTP status, not {text!r}")


def parse_time(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``15m`` / ``2h`` / ``3d`` ago, ``14:05`` today (local time), or an ISO date-time."""
    try:
        return _parse_time(text, now=now)
    except (OverflowError, ValueError) as exc:  # 9999999999h ago, 0001-01-01 in UTC-1
        raise ConfigError(f"{text.strip()!r} is out of the range of times Flux can "
                          "look at") from exc


def parse_window(text: str) -> tuple[dt.datetime, dt.datetime]:
    """The two ends of a window as flux/inspect/_window.py reads it (``14:00..14:05``,
    ``14:20-14:25``, ``2026-03-10T14:00..2026-03-10T15:00``, ``1h..now`` …)."""
    try:
        window = _parse_window(text)
    except (OverflowError, ValueError) as exc:  # 0001-01-01..now in a zone west of UTC
        raise ConfigError(f"{text.strip()!r} is out of the range of times Flux can "
                          "look at") from exc
    return window.start, window.end


def server_zone(conn: psycopg.Connection[Any]) -> str | None:
    """The server's TimeZone setting: the zone psql shows its times in."""
    row = conn.execute(load("inspect").server_timezone).fetchone()
    return str(row[0]) if row and row[0] else None


def describe_window(conn: psycopg.Connection[Any] | None, text: str) -> dict[str, Any]:
    """The interpretation of the window ``text``, in the reader's zone and, where it differs,
    the server's (``conn``'s)."""
    parse_window(text)  # out-of-range ends: one sentence, before describing them
    return _describe(_parse_window(text),
                     server_zone=server_zone(conn) if conn is not None else None)


def list_executions(conn: psycopg.Connection[Any], *, function: str | None = None,
                    status: str | None = None, since: str | None = None,
                    window: str | None = None, limit: int = 20,
                    kind: str | None = None) -> list[dict[str, Any]]:
    if limit < 1:
        raise ConfigError("--limit must be at least 1")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--kind takes {', '.join(KINDS)}, not {kind!r}")
    filt = parse_status(status)
    start = parse_time(since) if since else None
    end = None
    if window:
        start, end = parse_window(window)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(load("inspect").list_executions, {
            "function": function, "status": filt.status, "http_min": filt.http_min,
            "http_max": filt.http_max, "since": start, "until": end, "limit": limit,
            "kind": kind,
        }).fetchall()
    # Milliseconds to three decimals, as every span and reader gives them (a record stored
    # before the executor rounded it holds the float's every digit).
    return [plain({**r, "duration_ms": round(float(r["duration_ms"]), 3)}) for r in rows]
