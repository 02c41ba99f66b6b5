"""Portable records: ``flux record export`` / ``flux record import``.

A versioned, self-contained JSON file — the execution record (request, response, error,
spans, tape, logs, code version) and its mutations — so a production failure can be
replayed on a laptop with no access to production. Redaction is preserved: what was
redacted in the store stays redacted in the file. An imported execution is pinned
(``flux.pins``, note "imported"): retention goes by an execution's own time, and an imported
one is usually older than any retention.

A file is input from elsewhere, so it is checked field by field and capped in size
(``[record] import_max_bytes``), and an imported execution is marked as such
(``trace_requests.imported``, sql/0012) and kept apart from this database's history: it
has the tenant the operator gives (or none), no links to local executions, and changes
that no local row's history or blame ever shows.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from flux._errors import FluxError
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


DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # [record] import_max_bytes
_KINDS = ("http", "job", "cron", "replay", "resume", "invoke")
_OPS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
_SOURCES = ("trigger", "wal", "executor")
_LINKS = ("parent_id", "replay_of", "resumed_from")


class RecordFileError(FluxError):
    """A record file that is not one (unreadable, not JSON, a field an export would not
    write, over the size cap), or that this database refused to store: exit 1, one
    sentence, nothing stored."""

    code = "record_file"


class _Bad(Exception):
    """One field of a record file that is not what an export writes."""


def read_file(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """A record file, checked field by field: one clear sentence for anything that is not
    one (never a traceback), and nothing read past ``max_bytes``."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise RecordFileError(f"{path} is {size:,} bytes, over the {max_bytes:,} a record "
                              "file may have", hint="raise [record] import_max_bytes in "
                              "flux.toml if the file is yours")
        with path.open("rb") as handle:  # the file may grow after stat: read no further
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise RecordFileError(f"{path} is over the {max_bytes:,} bytes a record file may have")
        document = json.loads(data.decode("utf-8"))
    except FileNotFoundError as exc:
        raise RecordFileError(f"no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise RecordFileError(f"{path} is a directory, not a record file") from exc
    except UnicodeDecodeError as exc:
        raise RecordFileError(f"{path} is not UTF-8 text: {exc.reason}") from exc
    except OSError as exc:
        raise RecordFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except RecursionError as exc:
        raise RecordFileError(f"{path} is not a record file: its JSON nests too deeply") from exc
    except ValueError as exc:
        raise RecordFileError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise RecordFileError(f"{path} is not a Flux record file (made by flux record export)")
    if document.get("version") != VERSION:
        raise RecordFileError(f"{path} is a version {_shown(document.get('version'))} record "
                          f"file; this Flux reads version {VERSION}")
    try:
        document["record"] = _checked_record(document.get("record"))
        mutations = document.get("mutations")
        if mutations is None:
            mutations = []
        if not isinstance(mutations, list):
            raise _Bad("mutations is not a list")
        document["mutations"] = [_checked_mutation(m, i) for i, m in enumerate(mutations)]
    except _Bad as exc:
        raise RecordFileError(f"{path} is not a valid record file: {exc}") from None
    return document


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _checked_record(record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise _Bad("it lacks its record")
    if not isinstance(record.get("tape"), list):
        raise _Bad("it lacks its record or tape")
    out = dict(record)
    out["request_id"] = _uuid(record.get("request_id"), "record.request_id", required=True)
    for link in _LINKS:
        out[link] = _uuid(record.get(link), f"record.{link}")
    _choice(record.get("kind"), _KINDS, "record.kind")
    _choice(record.get("runtime"), ("python", "wasm"), "record.runtime")
    _choice(record.get("status"), ("ok", "error"), "record.status")
    for name in ("function", "method", "route", "code_sha", "tenant"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise _Bad(f"record.{name} is not text")
    status = record.get("http_status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)
                               or not 100 <= status <= 999):
        raise _Bad(f"record.http_status is not an HTTP status: {_shown(status)}")
    duration = record.get("duration_ms")
    if isinstance(duration, bool) or not isinstance(duration, int | float) or \
            not 0 <= duration < 1e15:
        raise _Bad(f"record.duration_ms is not a duration: {_shown(duration)}")
    out["started_at"] = _time(record.get("started_at"), "record.started_at")
    for name, kind in (("request", dict), ("spans", list), ("logs", list)):
        if not isinstance(record.get(name), kind):
            raise _Bad(f"record.{name} is not a{'n object' if kind is dict else ' list'}")
    if record.get("error") is not None and not isinstance(record["error"], dict):
        raise _Bad("record.error is not an object")
    if not all(isinstance(e, dict) for e in (*record["tape"], *record["spans"])):
        raise _Bad("record.tape and record.spans hold objects only")
    for name in ("code_dirty", "sampled"):
        if record.get(name) is not None and not isinstance(record[name], bool):
            raise _Bad(f"record.{name} is not true or false")
    return out


def _checked_mutation(m: Any, i: int) -> dict[str, Any]:
    where = f"mutations[{i}]"
    if not isinstance(m, dict):
        raise _Bad(f"{where} is not an object")
    for name in ("table_schema", "table_name"):
        if not isinstance(m.get(name), str) or not m[name]:
            raise _Bad(f"{where}.{name} is not a name")
    _choice(m.get("op"), _OPS, f"{where}.op")
    for name in ("pk", "old", "new"):
        if m.get(name) is not None and not isinstance(m[name], dict):
            raise _Bad(f"{where}.{name} is not an object")
    cols = m.get("changed_cols") or []
    if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
        raise _Bad(f"{where}.changed_cols is not a list of column names")
    if m.get("span_id") is not None and not isinstance(m["span_id"], str):
        raise _Bad(f"{where}.span_id is not text")
    if not isinstance(m.get("rolled_back", False), bool):
        raise _Bad(f"{where}.rolled_back is not true or false")
    source = m.get("source") or "trigger"
    _choice(source, _SOURCES, f"{where}.source")
    return {**m, "changed_cols": cols, "rolled_back": bool(m.get("rolled_back")),
            "source": source, "committed_at": _time(m.get("committed_at"),
                                                    f"{where}.committed_at")}


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise _Bad(f"{where} is {_shown(value)}, not one of {', '.join(allowed)}")


def _uuid(value: Any, where: str, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    try:
        return str(uuid.UUID(value))
    except (TypeError, ValueError, AttributeError):
        raise _Bad(f"{where} is not a request id: {_shown(value)}") from None


def _time(value: Any, where: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise _Bad(f"{where} is not an ISO time: {_shown(value)}") from None
    if moment.tzinfo is None:
        raise _Bad(f"{where} has no time zone: {_shown(value)}")
    return moment


def import_record(conn: psycopg.Connection[Any], document: dict[str, Any], *,
                  tenant: str | None = None) -> bool:
    """Store a checked record file's execution (and its changes); False if an execution
    with its id is here already. All or nothing, in one transaction.

    What the file says is not trusted to speak for this database: the record belongs to
    ``tenant`` (the importing operator's choice) or to none, never to the file's tenant; its
    links to other executions are kept aside in ``imported``, not in the columns that join
    local executions; its changes carry no row identity (record_id, table_oid), so state
    history and blame of a local row never show them."""
    record = document["record"]
    q = load("portable")
    json_fields = ("request", "response", "error", "spans", "tape", "logs")
    params = {k: (Jsonb(record.get(k)) if k in json_fields and record.get(k) is not None
                  else record.get(k)) for k in _RECORD_FIELDS}
    params["sampled"] = record.get("sampled") is not False  # files made before sampling
    params["code_dirty"] = bool(record.get("code_dirty"))
    params["tenant"] = tenant
    params.update(dict.fromkeys(_LINKS))
    imported = {"file_tenant": record.get("tenant"),
                "links": {k: record[k] for k in _LINKS if record.get(k)},
                "exported_at": document.get("exported_at"),
                "flux_version": document.get("flux_version")}
    # The executor's insert, made idempotent: importing the same file twice is harmless.
    insert = load("execution").insert_record + \
        "\nON CONFLICT (request_id) DO NOTHING RETURNING request_id"
    try:
        with conn.transaction():
            conn.execute(q.narrow, {"tenant": tenant or ""})
            row = conn.execute(insert.encode(), params).fetchone()
            if row is None:
                return False
            conn.execute(q.mark_imported, {"request_id": record["request_id"],
                                           "imported": Jsonb(imported)})
            # Imported to be looked at: pinned, so that retention (which goes by the
            # execution's own time, likely long past) does not take it at the next gc.
            conn.execute(load("retention").pin, {"request_id": record["request_id"],
                                                 "note": "imported"})
            for m in document.get("mutations") or []:
                conn.execute(q.insert_mutation, {
                    **{k: m.get(k) for k in _MUTATION_FIELDS},
                    **{k: Jsonb(m.get(k)) if m.get(k) is not None else None
                       for k in ("pk", "old", "new")},
                    "request_id": record["request_id"], "tenant": tenant})
    except psycopg.errors.InsufficientPrivilege as exc:
        raise RecordFileError(f"the role {conn.info.user} may not import records "
                          f"({exc.diag.message_primary})",
                          hint="import as the owner of the flux schema") from exc
    except psycopg.Error as exc:
        raise RecordFileError("the record file cannot be stored, and nothing of it was: "
                          f"{(exc.diag.message_primary or str(exc)).strip()}") from exc
    return True
