"""Finding executions: any unique prefix of a request id, like git.

A prefix becomes a range of the primary key (``0190a1b2`` → ``0190a1b2-0000-…`` ..
``0190a1b2-ffff-…``), so the lookup is an index range scan however many records there are.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg.rows import dict_row

from flux._errors import AmbiguousId, ConfigError, NotFound
from flux._ids import clean_id
from flux._jsoncodec import plain
from flux.store._pending import unwritten
from flux.store._queries import load

_HEX = re.compile(r"^[0-9a-f]+$")


def id_range(prefix: str) -> tuple[str, str]:
    """The lowest and highest request id that start with ``prefix`` (dashes optional; a
    ``req:`` label and the quotes or brackets copied with it are dropped)."""
    digits = clean_id(prefix).lower().replace("-", "")
    if not digits or not _HEX.match(digits) or len(digits) > 32:
        raise ConfigError(f"{prefix!r} is not a request id or a prefix of one "
                          "(hexadecimal digits and dashes)")
    low = digits.ljust(32, "0")
    high = digits.ljust(32, "f")
    return _dashed(low), _dashed(high)


def resolve_id(conn: psycopg.Connection[Any], prefix: str) -> str:
    """The one request id that starts with ``prefix``."""
    low, high = id_range(prefix)
    rows = conn.execute(load("inspect").ids_in_range, {"low": low, "high": high}).fetchall()
    if not rows:
        why = unwritten(conn)  # WAL capture: it may be committed and not yet written
        raise NotFound(f"no execution has an id starting with {clean_id(prefix)!r}"
                       + (f" ({why})" if why else ""),
                       hint="`flux ls` lists recent executions")
    if len(rows) > 1:
        raise AmbiguousId(clean_id(prefix), [r[0] for r in rows])
    return str(rows[0][0])


def fetch_record(conn: psycopg.Connection[Any], prefix: str) -> dict[str, Any]:
    """The record of the execution ``prefix`` names, as a dict."""
    request_id = resolve_id(conn, prefix)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(load("inspect").record, {"request_id": request_id}).fetchone()
    assert row is not None
    return normalize(row)


async def fetch_record_async(conn: psycopg.AsyncConnection[Any], request_id: str
                             ) -> dict[str, Any]:
    """The record of a full request id, read on an async connection (incident replay)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(load("inspect").record, {"request_id": request_id})
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no execution {request_id}")
    return normalize(row)


def normalize(row: dict[str, Any]) -> dict[str, Any]:
    """A trace_requests row as readers use it: ids as text, HTTP answers in their spans."""
    row["request_id"] = str(row["request_id"])
    for key in ("parent_id", "replay_of", "resumed_from", "resumed_by"):
        if row.get(key) is not None:
            row[key] = str(row[key])
    attach_responses(row)
    return row


def attach_responses(record: dict[str, Any]) -> None:
    """Put each HTTP answer (kept once, on the tape) into its span's attrs, where readers
    of spans look for it."""
    answers = {e.get("span_id"): e.get("value") for e in record.get("tape") or []
               if e.get("kind") == "http"}
    for span in record.get("spans") or []:
        if span.get("kind") == "http" and span.get("id") in answers:
            attrs = span.setdefault("attrs", {})
            value = answers[span["id"]]
            if isinstance(value, dict) and "status" in value:
                attrs.setdefault("response", value)


def _dashed(digits: str) -> str:
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def handoffs(conn: psycopg.Connection[Any], record: dict[str, Any]) -> dict[str, Any]:
    """Both directions of a queue hand-off: the jobs this execution enqueued (and their
    fate), and the execution that enqueued this one; and the replays and resumes of it."""

    q = load("inspect")
    with conn.cursor(row_factory=dict_row) as cur:
        jobs = cur.execute(q.jobs_enqueued, {"request_id": record["request_id"]}).fetchall()
        parent = None
        if record.get("parent_id"):
            parent = cur.execute(q.parent, {"request_id": record["parent_id"]}).fetchone()
        derived = cur.execute(q.derived, {"request_id": record["request_id"]}).fetchall()
    return plain({"jobs": jobs, "parent": parent or (
        {"request_id": record["parent_id"]} if record.get("parent_id") else None),
        "derived": derived})
