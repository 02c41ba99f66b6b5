"""``flux why <id>``: the root cause of a failed execution, and everything around it that
helps fix it — where, what data it touched, how it departed from the last success, and
whether it has happened before.

The classification itself is pure (``_classify``); this module fetches what it needs.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg
from psycopg.rows import dict_row

from flux._errors import ConfigError
from flux._jsoncodec import plain
from flux.inspect._classify import RootCause, classify, dependency_key
from flux.inspect._diff import config_changes, departure
from flux.inspect._signature import features, signature_text, vector
from flux.inspect._trace import incomplete
from flux.store._lookup import fetch_record, handoffs
from flux.store._queries import load

SIMILAR_LIMIT = 5
SIMILAR_MAX_DISTANCE = 0.35  # cosine distance; same bug ≈ 0, unrelated ≈ 1
BASELINE_EXECUTIONS = 20


def _scope(record: dict[str, Any], same_tenant: bool) -> dict[str, Any]:
    """The query parameters that keep a read to the record's own tenant (or not)."""
    return {"same_tenant": same_tenant, "tenant": record.get("tenant")}


def earlier_responses(conn: psycopg.Connection[Any], record: dict[str, Any], *,
                      same_tenant: bool = False) -> dict[str, list[Any]]:
    """Bodies of 2xx HTTP answers in the function's recent successful executions, by
    dependency — what a payload shape change is measured against."""
    rows = conn.execute(load("inspect").recent_success_tapes, {
        "function": record["function"], "before": record["started_at"],
        "limit": BASELINE_EXECUTIONS, **_scope(record, same_tenant)}).fetchall()
    found: dict[str, list[Any]] = {}
    for (tape,) in rows:
        for entry in tape:
            value = entry.get("value")
            if entry.get("kind") != "http" or not isinstance(value, dict):
                continue
            status = value.get("status")
            if not isinstance(status, int) or not 200 <= status < 300:
                continue
            method, _, url = str(entry.get("key", "")).partition(" ")
            key = dependency_key({"attrs": {"method": method, "url": url}})
            found.setdefault(key, []).append(value.get("body"))
    return found


def similar(conn: psycopg.Connection[Any], record: dict[str, Any], cause: RootCause, *,
            same_tenant: bool = False) -> dict[str, Any]:
    """Earlier failures like this one: nearest by signature vector, and how often exactly
    this signature was seen."""
    feats = features(record, cause)
    vec = vector(feats)
    signature = signature_text(feats)
    q = load("inspect")
    params = {"request_id": record["request_id"], "at": record["started_at"], "vec": vec,
              "limit": SIMILAR_LIMIT, **_scope(record, same_tenant)}
    with conn.cursor(row_factory=dict_row) as cur:
        if cur.execute(q.has_pgvector).fetchone()["?column?"]:  # type: ignore[index]
            neighbours = cur.execute(q.similar_pgvector, params).fetchall()
        else:
            candidates = cur.execute(q.similar_candidates, params).fetchall()
            for row in candidates:
                row["distance"] = _cosine_distance(vec, row.pop("vec"))
            neighbours = sorted(candidates, key=lambda r: (r["distance"], -r["at"].timestamp()))
            neighbours = neighbours[:SIMILAR_LIMIT]
        stats = cur.execute(q.signature_stats, {"signature": signature,
                                                "at": record["started_at"],
                                                **_scope(record, same_tenant)}).fetchone()
    near = [n for n in neighbours if n["distance"] is not None
            and n["distance"] <= SIMILAR_MAX_DISTANCE]
    assert stats is not None
    return {
        "signature": signature,
        "count": stats["count"],
        "first_seen": plain(stats["first_seen"]),
        "last_seen": plain(stats["last_seen"]),
        "nearest": [{"request_id": n["request_id"], "at": plain(n["at"]),
                     "function": n["function"], "class": n["class"],
                     "distance": round(float(n["distance"]), 4)} for n in near],
    }


def _cosine_distance(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return 1.0 - dot / norm if norm else 1.0


def _mutations(conn: psycopg.Connection[Any], request_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(load("inspect").mutations_of, {"request_id": request_id}).fetchall()
    return [plain({"table": r["table_name"] if r["table_schema"] == "public"
                   else f"{r['table_schema']}.{r['table_name']}",
                   "pk": r["pk"], "op": r["op"], "changes": r["changes"],
                   "rolled_back": r["rolled_back"], "span_id": r["span_id"],
                   "file": r["file"], "line": r["line"]}) for r in rows]


def _last_success(conn: psycopg.Connection[Any], record: dict[str, Any], same_tenant: bool
                  ) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(load("inspect").last_success, {
            "function": record["function"], "before": record["started_at"],
            **_scope(record, same_tenant)}).fetchone()
    if row is not None:
        row["request_id"] = str(row["request_id"])
    return row


def explain_failure(conn: psycopg.Connection[Any], prefix: str | dict[str, Any], *,
                    same_tenant: bool = False) -> dict[str, Any]:
    """Everything ``flux why`` prints, as JSON-able data (the ``--json`` document).

    ``prefix`` may be a record already fetched. With ``same_tenant``, everything read
    besides the record itself — the last success, earlier answers, similar failures — is
    the record's tenant's only (what flux why --ai sends out of the house)."""
    record = fetch_record(conn, prefix) if isinstance(prefix, str) else prefix
    if record["status"] == "ok":
        raise ConfigError(
            f"execution {record['request_id']} succeeded ({record['http_status']}); "
            "flux why explains failures", hint=f"flux trace {record['request_id'][:18]}")
    cause = classify(record, earlier_responses(conn, record, same_tenant=same_tenant)
                     if record["function"] else {})
    error = record.get("error") or {}
    good = _last_success(conn, record, same_tenant) if record["function"] else None
    alike = similar(conn, record, cause, same_tenant=same_tenant)
    site = (cause.span or {}) if cause.cls not in ("payload_shape", "exception") else error
    return plain({
        "request_id": record["request_id"],
        "function": record["function"],
        "status": record["status"],
        "http_status": record["http_status"],
        "kind": record["kind"],
        "method": record.get("method"),
        "route": record.get("route"),
        "started_at": record["started_at"],
        "duration_ms": round(float(record["duration_ms"]), 3),
        "input": (record.get("request") or {}).get("body"),
        "root_cause": cause.to_json(),
        # Where to look: the call that failed when the cause is IO; where the code broke on
        # a reshaped answer or raised on its own.
        "location": {"file": site.get("file") or error.get("file"),
                     "line": site.get("line") or error.get("line"),
                     "function": error.get("function") or record["function"],
                     "code_sha": record.get("code_sha"),
                     "code_dirty": record.get("code_dirty")},
        "error": {k: error.get(k) for k in ("type", "message", "code", "sqlstate",
                                            "constraint", "detail")},
        "mutations": _mutations(conn, record["request_id"]),
        "departure": ({"from": good["request_id"], "at": good["started_at"],
                       **(departure(record, good) or {"description": "none before the failure"}),
                       # the configuration it read differently (the A/B flag of a Saturday)
                       "config": config_changes(good, record)}
                      if good else None),
        "similar": alike["nearest"],
        "similar_summary": {k: v for k, v in alike.items() if k != "nearest"},
        "suggestion": cause.suggestion,
        "incomplete": incomplete(record["spans"]),
        "parent_id": record.get("parent_id"),
        "resumed_by": record.get("resumed_by"),  # already finished by a resume
        "pinned": record.get("pinned"),  # kept past retention (flux record pin)
        # from a record file (flux record import): what it knew, who imported it and when
        "imported": record.get("imported") is not None,
        "imported_from": record.get("imported"),
        "handoff": handoffs(conn, record),
        "spans": record["spans"],
    })
