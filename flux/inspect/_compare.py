"""``flux trace diff A B``: fetch two executions and their mutations, compare them."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from flux.inspect._diff import diff, to_json
from flux.store._lookup import fetch_record
from flux.store._queries import load


def mutations(conn: psycopg.Connection[Any], request_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(load("inspect").raw_mutations_of,
                                {"request_id": request_id}).fetchall())


def compare(conn: psycopg.Connection[Any], a_prefix: str, b_prefix: str) -> dict[str, Any]:
    """Execution B against execution A, as the JSON ``flux trace diff --json`` prints."""
    a = fetch_record(conn, a_prefix)
    b = fetch_record(conn, b_prefix)
    return to_json(diff(a, b, mutations(conn, a["request_id"]),
                        mutations(conn, b["request_id"])))
