"""Portable records: ``flux record export`` / ``flux record import``.

A versioned, self-contained JSON file — the execution record (request, response, error,
spans, tape, logs, code version) and its mutations — so a production failure can be
replayed on a laptop with no access to production. Redaction is preserved: what was
redacted in the store stays redacted in the file. An imported execution is pinned
(``flux.pins``, note "imported"): retention goes by an execution's own time, and an imported
one is usually older than any retention.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from flux._errors import ConfigError
from flux._jsoncodec import plain
from flux._version import __version__
from flux.store._lookup import fetch_record
from flux.store._queries import load

FORMAT = "flux-record"
VERSION = 1
_RECORD_FIELDS = (
    "request_id", "kind", "function", "runtime", "method", "route", "status", "http_status",
    "started_at", "duration_ms", "request", "response", "error", "spans", "tape", "logs",
    "code_sha", "code_dirty", "tenant", "parent_id", "replay_of", "resumed_from", "sampled",
)
_MUTATION_FIELDS = ("table_schema", "table_name", "pk", "op", "old", "new", "changed_cols",
                    "rolled_back", "span_id", "committed_at", "source")


def export_record(conn: psycopg.Connection[Any], prefix: str) -> dict[str, Any]:
    record = fetch_record(conn, prefix)
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        mutations = cur.execute(load("portable").mutations_of,
                                {"request_id": record["request_id"]}).fetchall()
    for span in record.get("spans") or []:  # fetch_record joined HTTP answers in; undo
        if span.get("kind") == "http":
            (span.get("attrs") or {}).pop("response", None)
    return plain({
        "format": FORMAT, "version": VERSION, "flux_version": __version__,
        "exported_at": dt.datetime.now(dt.UTC),
        "record": {k: record.get(k) for k in _RECORD_FIELDS},
        "mutations": [{k: m.get(k) for k in _MUTATION_FIELDS} for m in mutations],
    })


def read_file(path: Path) -> dict[str, Any]:
    """A record file, checked: one clear sentence for anything that is not one."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"no such file: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a Flux record file (made by flux record export)")
    if document.get("version") != VERSION:
        raise ConfigError(f"{path} is a version {document.get('version')} record file; this "
                          f"Flux reads version {VERSION}")
    record = document.get("record")
    if not isinstance(record, dict) or not record.get("request_id") or \
            not isinstance(record.get("tape"), list):
        raise ConfigError(f"{path} lacks its record or tape")
    record["started_at"] = dt.datetime.fromisoformat(record["started_at"])
    return document


def import_record(conn: psycopg.Connection[Any], document: dict[str, Any]) -> bool:
    """Store a record file's execution (and mutations). False if it was there already."""
    record = document["record"]
    q = load("portable")
    json_fields = ("request", "response", "error", "spans", "tape", "logs")
    params = {k: (Jsonb(record.get(k)) if k in json_fields and record.get(k) is not None
                  else record.get(k)) for k in _RECORD_FIELDS}
    params["sampled"] = record.get("sampled") is not False  # files made before sampling
    # The executor's insert, made idempotent: importing the same file twice is harmless.
    insert = load("execution").insert_record + \
        "\nON CONFLICT (request_id) DO NOTHING RETURNING request_id"
    with conn.transaction():
        row = conn.execute(insert.encode(), params).fetchone()
        if row is None:
            return False
        # Imported to be looked at: pinned, so that retention (which goes by the
        # execution's own time, likely long past) does not take it at the next gc.
        conn.execute(load("retention").pin, {"request_id": record["request_id"],
                                             "note": "imported"})
        for m in document.get("mutations") or []:
            conn.execute(q.insert_mutation, {
                **{k: m.get(k) for k in _MUTATION_FIELDS},
                **{k: Jsonb(m.get(k)) if m.get(k) is not None else None
                   for k in ("pk", "old", "new")},
                "request_id": record["request_id"], "tenant": record.get("tenant")})
    return True
