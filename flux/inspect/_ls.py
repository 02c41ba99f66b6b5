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
from flux.store._queries import load

_AGO = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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
    now = now or dt.datetime.now().astimezone()
    value = text.strip()
    if match := _AGO.match(value):
        return now - dt.timedelta(seconds=int(match[1]) * _UNIT[match[2]])
    if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value):
        parts = [int(p) for p in value.split(":")]
        return now.replace(hour=parts[0], minute=parts[1],
                           second=parts[2] if len(parts) > 2 else 0, microsecond=0)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is not a time: use 15m, 2h, 14:05 or "
                          "2026-03-10T14:00") from exc
    return parsed if parsed.tzinfo else parsed.astimezone()


def parse_window(text: str) -> tuple[dt.datetime, dt.datetime]:
    """``14:00..14:05``, ``2026-03-10T14:00..2026-03-10T15:00`` or ``1h..now``."""
    if ".." not in text:
        raise ConfigError(f"a window is START..END (e.g. 14:00..14:05), not {text!r}")
    start_text, end_text = text.split("..", 1)
    start = parse_time(start_text)
    end = dt.datetime.now().astimezone() if end_text.strip() in ("", "now") \
        else parse_time(end_text)
    if end <= start:
        raise ConfigError(f"the window {text!r} ends before it starts")
    return start, end


def list_executions(conn: psycopg.Connection[Any], *, function: str | None = None,
                    status: str | None = None, since: str | None = None,
                    window: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    if limit < 1:
        raise ConfigError("--limit must be at least 1")
    filt = parse_status(status)
    start = parse_time(since) if since else None
    end = None
    if window:
        start, end = parse_window(window)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(load("inspect").list_executions, {
            "function": function, "status": filt.status, "http_min": filt.http_min,
            "http_max": filt.http_max, "since": start, "until": end, "limit": limit,
        }).fetchall()
    return [plain(r) for r in rows]
