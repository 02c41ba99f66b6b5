"""The execution record as written to ``flux.trace_requests``, and the writes that store it.

A record of an execution that committed data is written in the same transaction as that
data; a failed execution's record is written after the rollback, with the mutations it had
attempted copied back in, marked ``rolled_back``.
"""

from __future__ import annotations

import codecs
import datetime as dt
import functools
import hashlib
import json
import re
import uuid
import weakref
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection, generators, pq, sql
from psycopg.types.json import Json, Jsonb

from flux.store._queries import load


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
    sampled: bool = True  # False: an outline of a success that sampling left out
    mutations: list[dict[str, Any]] = field(default_factory=list)
    signature: dict[str, Any] | None = None  # a failure's, for "similar earlier failures"

    def as_row(self) -> dict[str, Any]:
        """The record as ``flux.trace_requests`` will return it (for pure readers)."""
        return {k: v for k, v in vars(self).items() if k not in ("mutations", "signature")}

    def params(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id, "kind": self.kind, "function": self.function,
            "runtime": self.runtime, "method": _text(self.method), "route": _text(self.route),
            "status": self.status, "http_status": self.http_status,
            "started_at": self.started_at, "duration_ms": self.duration_ms,
            "request": _json(self.request), "response": _json(self.response),
            "error": _json(self.error), "spans": _json(self.spans),
            "tape": _json(self.tape), "logs": _json(self.logs),
            "code_sha": self.code_sha, "code_dirty": self.code_dirty, "tenant": self.tenant,
            "parent_id": self.parent_id, "replay_of": self.replay_of,
            "resumed_from": self.resumed_from, "sampled": self.sampled,
        }


def _dumps(value: Any) -> bytes:
    """orjson: the record is encoded on every request's path, and this is where the
    recorder spends its time (several times faster than json.dumps). What orjson refuses
    (integers beyond 64 bits, unpaired surrogates) takes json.dumps, with surrogates
    replaced; U+0000, which jsonb refuses, becomes U+FFFD. A record is never lost to a
    value it carries."""
    try:  # without options first: a record's documents are plain JSON, and this is faster
        data = orjson.dumps(value)
    except TypeError:  # a key that is not text, a type orjson does not know: as before
        try:
            data = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            data = json.dumps(value, default=str, ensure_ascii=False).encode("utf-8",
                                                                             "replace")
    if data.find(b"\\u0000") >= 0:  # not "in": see _add_quoted
        data = _NUL_ESCAPE.sub(rb"\1\\ufffd", data)
    return data


# \u0000 not preceded by an odd number of backslashes (which would make it literal text)
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def _text(value: str | None) -> str | None:
    """A text column from the request (a route may hold %00): PostgreSQL's text has no NUL."""
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value, dumps=_dumps)


def _json(value: Any) -> Json | None:
    """A record document: json, stored as sent, not parsed into jsonb (sql/0019)."""
    return None if value is None else Json(value, dumps=_dumps)


_NAMED = re.compile(r"%\((\w+)\)s")


@functools.lru_cache(maxsize=16)
def _template(query: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A query's text around its ``%(name)s`` placeholders, and the names, in order."""
    parts = _NAMED.split(query)
    return tuple(p.replace("%%", "%") for p in parts[0::2]), tuple(parts[1::2])


def _literal(value: Any) -> str:
    """A record parameter as an SQL literal, typed as psycopg's client-side binding types
    it (by psycopg itself for a type a record rarely holds). Text goes dollar-quoted — read
    as is, no escaping to do or undo — unless it holds the tag, when it takes the E'' form
    (backslashes and quotes doubled), which reads the same whatever
    standard_conforming_strings says."""
    kind = type(value)  # by exact type first: a record has 25 parameters, mostly these
    if kind is str:
        return _quoted(value.replace("\x00", "\ufffd") if "\x00" in value else value, "")
    if kind is Json:  # the record's documents (sql/0019)
        return _quoted(_dumps(value.obj).decode("utf-8"), "::json")
    if kind is Jsonb:
        return _quoted(_dumps(value.obj).decode("utf-8"), "::jsonb")
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Jsonb):
        return _quoted(_dumps(value.obj).decode("utf-8"), "::jsonb")
    if isinstance(value, Json):
        return _quoted(_dumps(value.obj).decode("utf-8"), "::json")
    if isinstance(value, str):
        return _quoted(value.replace("\x00", "\ufffd"), "")  # text has no NUL (nor libpq)
    if isinstance(value, dt.datetime):
        return _quoted(value.isoformat(), "::timestamptz")
    if isinstance(value, float):
        return _quoted(repr(value), "::float8")
    # a uuid.UUID read back from a record (a replay's parent), anything else
    return sql.Literal(value).as_string(None)


def _quoted(text: str, cast: str) -> str:
    # ...and the tag cannot begin inside the text's end: no "$" among its last 5 characters.
    if _TAG not in text and "$" not in text[-5:]:
        return f"{_TAG}{text}{_TAG}{cast}"
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'" + cast


_TAG = "$flux$"


def bind(query: str, params: dict[str, Any], encoding: str = "utf-8") -> bytes:
    """``query`` with the record's parameters inlined, ready to send as one simple query.

    This is client-side binding, as psycopg's ``ClientCursor`` does, for the few types a
    record holds (text, numbers, booleans, timestamps, jsonb): psycopg adapts each of the
    record's 25 parameters through its generic machinery, which measured several times the
    cost of serialising the record itself (docs/decisions.md, "What recording costs").
    On a UTF-8 connection (every one Flux opens) the text is built as bytes: the record's
    documents go from orjson into the query as they are, never decoded and encoded again."""
    if not _utf8(encoding):
        return _bind_text(query, params, encoding)
    parts, names = _template_bytes(query)
    out = [parts[0]]
    add = out.append
    for name, part in zip(names, parts[1:], strict=True):
        value = params[name]
        kind = type(value)  # by exact type first: a record has 25 parameters, mostly these
        if kind is str:
            if "$" not in value and "\x00" not in value:  # ids, names: the tag cannot clash
                out += (_TAG_BYTES, value.encode("utf-8", "replace"), _TAG_BYTES)
            else:
                _add_quoted(out, (value.replace("\x00", "\ufffd") if "\x00" in value
                                  else value).encode("utf-8", "replace"), b"")
        elif kind is Json:
            _add_quoted(out, _dumps(value.obj), b"::json")
        elif value is None:
            add(b"NULL")
        elif kind is Jsonb:
            _add_quoted(out, _dumps(value.obj), b"::jsonb")
        elif kind is bool:
            add(b"true" if value else b"false")
        elif kind is int:
            add(str(value).encode())
        elif kind is dt.datetime:
            _add_quoted(out, value.isoformat().encode(), b"::timestamptz")
        elif kind is float:
            _add_quoted(out, repr(value).encode(), b"::float8")
        else:
            add(_literal(value).encode("utf-8", "replace"))
        add(part)
    return b"".join(out)


def _bind_text(query: str, params: dict[str, Any], encoding: str) -> bytes:
    """``bind`` as text, encoded at the end: any connection encoding."""
    literals, names = _template(query)
    text = [literals[0]]
    for name, literal in zip(names, literals[1:], strict=True):
        text.append(_literal(params[name]))
        text.append(literal)
    return "".join(text).encode(encoding, "replace")


def _add_quoted(out: list[bytes], data: bytes, cast: bytes) -> None:
    """``_quoted`` on UTF-8 bytes (quotes and backslashes are single bytes in UTF-8)."""
    # find, not "in": bytes' "in" first tries the needle as an integer, and the TypeError
    # it raises and clears costs more than the search.
    if data.find(b"$") < 0 or (data.find(_TAG_BYTES) < 0 and data.find(b"$", -5) < 0):
        out += (_TAG_BYTES, data, _TAG_BYTES, cast)
    else:
        out += (b"E'", data.replace(b"\\", b"\\\\").replace(b"'", b"''"), b"'", cast)


_TAG_BYTES = _TAG.encode()


@functools.lru_cache(maxsize=16)
def _utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


@functools.lru_cache(maxsize=16)
def _template_bytes(query: str) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
    literals, names = _template(query)
    return tuple(p.encode("utf-8") for p in literals), names


async def store(conn: AsyncConnection[Any], record: ExecutionRecord) -> None:
    """Insert the record (and a failed execution's rolled-back mutations) on ``conn``
    inside its current transaction; the caller commits."""
    q = load("execution")
    await conn.execute(q.insert_record, record.params())
    if record.signature is not None:
        await conn.execute(load("inspect").insert_signature, record.signature)
    if record.mutations:
        async with conn.cursor() as cur:
            await cur.executemany(q.insert_rolled_back, [
                {**m, "pk": _jsonb(m["pk"]), "old": _jsonb(m["old"]), "new": _jsonb(m["new"]),
                 "tenant": m.get("tenant", record.tenant)}
                for m in record.mutations])


# The record's columns in the order of its line of COPY text in the WAL (wal_payload), the
# order in which the consumer copies them (sql/queries/capture.sql: copy_records).
RECORD_COLUMNS = (
    "request_id", "kind", "function", "runtime", "method", "route", "status", "http_status",
    "started_at", "duration_ms", "request", "response", "error", "spans", "tape", "logs",
    "code_sha", "code_dirty", "tenant", "parent_id", "replay_of", "resumed_from", "sampled",
    "recorded_at")


def wal_payload(record: ExecutionRecord, statements: list[list[Any]]) -> bytes | None:
    """The executor's part of the record's logical message (sql/queries/execution.sql:
    emit_record): a line of JSON with the request id and the statements that wrote (what
    end_execution's message carries, for the consumer to stamp the changes with), then the
    record as one line of COPY text in ``RECORD_COLUMNS`` order — what the consumer copies
    into flux.trace_requests as it is. None for a value with no text form (the caller
    inserts the record instead)."""
    values = record_values(record)
    if values is None:
        return None
    values.append(dt.datetime.now(dt.UTC).isoformat().encode())  # recorded_at
    head = _dumps({"request_id": record.request_id, "statements": statements})
    if _escapes(b"".join([v for v in values if v is not None])):
        values = [None if v is None else _copy_escape(v) for v in values]
    # COPY's NULL is \N; a value never holds a raw NUL (text's is replaced, JSON escapes it)
    return b"".join((head, b"\n", b"\t".join([b"\\N" if v is None else v for v in values])))


def _copy_escape(data: bytes) -> bytes:
    """A value as COPY's text format writes it: backslashes doubled, then tab, newline and
    CR escaped (a document from orjson holds none of those three raw: its backslashes
    only)."""
    if data.find(b"\\") >= 0:
        data = data.replace(b"\\", b"\\\\")
    if data.find(b"\t") >= 0 or data.find(b"\n") >= 0 or data.find(b"\r") >= 0:
        data = data.replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    return data


def _escapes(data: bytes) -> bool:
    """Whether ``data`` holds a byte COPY's text format escapes (``find`` is a memchr: a
    regular expression's character class steps through a record's KB in Python's engine,
    ~10 µs a KB)."""
    return data.find(b"\\") >= 0 or data.find(b"\t") >= 0 or data.find(b"\n") >= 0 or \
        data.find(b"\r") >= 0


def record_values(record: ExecutionRecord, encoding: str = "utf-8"
                  ) -> list[bytes | None] | None:
    """The record's values in PostgreSQL's text format, in ``RECORD_COLUMNS`` order without
    ``recorded_at``: the prepared INSERT's parameters and the WAL's line of COPY text, built
    in one pass from the record (each document serialised once, no parameter dict, no
    wrappers). None for a value with no text form (the caller binds the record as literals
    instead)."""
    r = record
    try:
        return [
            _value(r.request_id, encoding), _value(r.kind, encoding),
            _value(r.function, encoding), _value(r.runtime, encoding),
            _value(r.method, encoding), _value(r.route, encoding), _value(r.status, encoding),
            _value(r.http_status, encoding), _value(r.started_at, encoding),
            _value(r.duration_ms, encoding),
            _document(r.request, encoding), _document(r.response, encoding),
            _document(r.error, encoding), _document(r.spans, encoding),
            _document(r.tape, encoding), _document(r.logs, encoding),
            _value(r.code_sha, encoding), _value(r.code_dirty, encoding),
            _value(r.tenant, encoding), _value(r.parent_id, encoding),
            _value(r.replay_of, encoding), _value(r.resumed_from, encoding),
            _value(r.sampled, encoding)]
    except TypeError:
        return None


def _document(value: Any, encoding: str) -> bytes | None:
    if value is None:
        return None
    data = _dumps(value)
    return data if encoding == "utf-8" else data.decode("utf-8").encode(encoding, "replace")


async def store_and_commit(conn: AsyncConnection[Any], record: ExecutionRecord,
                           statements: list[list[Any]], *, wal: bool = False,
                           stamp: bool = True) -> None:
    """Store a committing execution's record and commit its transaction, in one round trip:
    ``end_execution`` (WAL capture's stamp), the INSERT and the COMMIT as one simple query
    (client-side binding, psycopg's quoting); if a statement fails the COMMIT does not run.
    A failed execution's record (with a signature or salvaged mutations) is stored by
    ``store`` instead. An HTTP execution's outline (``sampled`` false) is stored only if
    the transaction wrote something (flux/runtime/_sampling.py).

    With ``wal`` (the transaction's BEGIN read capture mode "wal" under its lock) an HTTP
    request's record goes as one transactional logical message instead of the INSERT and
    end_execution — the WAL consumer writes it (sql/queries/execution.sql: emit_record).
    Without ``stamp`` (the BEGIN read another capture mode than "wal" under the switch's
    lock: sql/queries/execution.sql, begin_mode) end_execution is not sent: it would do
    nothing."""
    q = load("execution")
    # HTTP requests only: a job's success must be a fact in flux.trace_requests when it
    # commits (the worker's crash recovery reads it: sql/queries/jobs.sql, claim), and a
    # resume's marks its original by its record (sql/0012, mark_resumed).
    if wal and record.kind == "http" and record.sampled and record.signature is None and \
            not record.mutations and conn.info.encoding == "utf-8":
        payload = wal_payload(record, statements)
        if payload is not None:
            if isinstance(conn, RecordingConnection):
                await prepared_commit(conn, (q.emit_record,), [[payload]])
            else:
                text = f"{q.emit_record}; {q.commit}"
                await simple_query(conn, bind(text, {"payload": payload.decode()}))
            return
    outline = not record.sampled and record.kind == "http"
    end = (q.end_execution,) if stamp else ()
    if not outline and record.signature is None and not record.mutations and \
            isinstance(conn, RecordingConnection):  # where DEALLOCATE ALL is seen
        values = commit_values(record, statements, conn.info.encoding)
        if values is not None:
            await prepared_commit(conn, (*end, q.insert_record),
                                  values if stamp else values[1:])
            return
    params = {**record.params(), "statements": _jsonb(statements)}
    if outline:
        text = "; ".join((q.insert_outline, *end, q.commit))
        await simple_query(conn, bind(text, params, conn.info.encoding))
        return
    if record.signature is None and not record.mutations:
        text = "; ".join((*end, q.insert_record, q.commit))
        await simple_query(conn, bind(text, params, conn.info.encoding))
        return
    await conn.execute(q.end_execution, params)
    await store(conn, record)
    await conn.commit()


async def simple_query(conn: AsyncConnection[Any], text: bytes) -> None:
    """Send ``text`` (statements with their values inlined, no result wanted) as one
    simple query and wait for all of its results. What ``conn.execute(text,
    prepare=False)`` does, without the cursor it builds around the results — which cost
    more client CPU than the send (docs/decisions.md, "The app's Python per recorded
    request"). The first statement that failed is raised as psycopg raises it; after it
    PostgreSQL ran none of the rest."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    async with conn.lock:
        conn.pgconn.send_query(text)
        results = await conn.wait(generators.execute(conn.pgconn))
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)


# -- the record's commit round trip, prepared -------------------------------------------
#
# end_execution, the record's INSERT and the COMMIT go as one pipeline of the extended
# protocol: the two statements prepared once per connection, their values sent as text
# parameters. The server then neither scans the record's few KB as SQL literals nor parses
# and plans the INSERT again for every request (docs/decisions.md, "What a recorded request
# costs PostgreSQL, statement by statement"). This is libpq's pipeline mode driven
# directly: psycopg's Pipeline object costs the client about what it saves the server.

# The statements prepared on each connection, by name. A statement's name holds a hash of
# its text, so a changed text is a new statement; DEALLOCATE through ctx.db forgets them
# (flux/runtime/_ctx_db.py), and a commit that found its statement missing forgets them too.
_PREPARED: weakref.WeakKeyDictionary[AsyncConnection[Any], set[bytes]] = \
    weakref.WeakKeyDictionary()


def forget_prepared(conn: AsyncConnection[Any]) -> None:
    """The connection's prepared statements are gone (DEALLOCATE): prepare them again."""
    _PREPARED.pop(conn, None)


class RecordingConnection(AsyncConnection[Any]):
    """The runtime's connections (its pool's ``connection_class``): the record's commit is
    sent prepared only on these. psycopg, once it has prepared statements of its own,
    answers every rollback with ``DEALLOCATE ALL``, which takes the record's statements
    too: this connection forgets them when that has run."""

    def _deallocate(self, name: bytes | None) -> Generator[Any, Any, None]:
        yield from super()._deallocate(name)
        if name is None:
            forget_prepared(self)


@functools.lru_cache(maxsize=16)
def _numbered(query: str) -> tuple[bytes, bytes, tuple[str, ...]]:
    """A named query's prepared statement: its name, its text with ``$n`` placeholders
    instead of ``%(name)s``, and the parameters' names in ``$n`` order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    text = _NAMED.sub(number, query).replace("%%", "%")
    name = "flux_" + hashlib.sha1(text.encode()).hexdigest()[:16]
    return name.encode(), text.encode(), tuple(names)


def _value(value: Any, encoding: str) -> bytes | None:
    """A parameter in PostgreSQL's text format, typed by the column or argument it goes
    to. What a record rarely holds raises TypeError (the caller then binds the record as
    literals instead)."""
    kind = type(value)
    if kind is str:
        return (value.replace("\x00", "\ufffd") if "\x00" in value else value).encode(
            encoding, "replace")
    if kind is Json or kind is Jsonb:
        data = _dumps(value.obj)
        return data if encoding == "utf-8" else data.decode("utf-8").encode(encoding, "replace")
    if value is None:
        return None
    if kind is bool:
        return b"true" if value else b"false"
    if kind is int:
        return str(value).encode()
    if kind is float:
        return repr(value).encode()
    if kind is dt.datetime:
        return value.isoformat().encode()
    if kind is uuid.UUID:
        return str(value).encode()
    raise TypeError(f"no text form for a record parameter of type {kind.__name__}")


def commit_values(record: ExecutionRecord, statements: list[list[Any]], encoding: str
                  ) -> list[list[bytes | None]] | None:
    """The prepared commit's parameters: end_execution's (the request id, the statements
    that wrote) and insert_record's; None for a value with no text form."""
    values = record_values(record, encoding)
    if values is None:
        return None
    return [[values[0], _document(statements, encoding)], _insert_order(values)]


def _insert_order(values: list[bytes | None]) -> list[bytes | None]:
    """``record_values`` in the order of insert_record's parameters: the same order, as
    tests/store/test_record.py checks, unless the query's text has been changed."""
    names = _numbered(load("execution").insert_record)[2]
    if names == RECORD_COLUMNS[:-1]:
        return values
    index = {name: i for i, name in enumerate(RECORD_COLUMNS)}
    return [values[index[name]] for name in names]


async def prepared_commit(conn: AsyncConnection[Any], queries: tuple[str, ...],
                          values: list[list[bytes | None]]) -> None:
    """Run each named query, prepared, with its text-format ``values``, then COMMIT — one
    round trip. As with one simple query, nothing after a failed statement runs (the
    pipeline is aborted), and the first failure is raised as psycopg raises it."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    encoding = conn.info.encoding
    async with conn.lock:
        pgconn = conn.pgconn
        known = _PREPARED.setdefault(conn, set())
        sent: list[bytes | None] = []  # per result: the name being prepared, or None
        pgconn.enter_pipeline_mode()
        try:
            for query, params in zip(queries, values, strict=True):
                name, text, _ = _numbered(query)
                if name not in known:
                    pgconn.send_prepare(name, text)
                    sent.append(name)
                pgconn.send_query_prepared(name, params)
                sent.append(None)
            pgconn.send_query_params(load("execution").commit.encode(), None)
            sent.append(None)
            pgconn.pipeline_sync()
            results = await conn.wait(_pipeline_results(pgconn))
        finally:
            _leave_pipeline(pgconn)
    failure = None
    for preparing, result in zip(sent, results, strict=False):
        if result.status == pq.ExecStatus.FATAL_ERROR:
            failure = failure or result
        elif preparing is not None and result.status == pq.ExecStatus.COMMAND_OK:
            known.add(preparing)
    if failure is not None:
        if failure.error_field(pq.DiagnosticField.SQLSTATE) == b"26000":
            forget_prepared(conn)  # a statement deallocated behind our back
        raise psycopg.errors.error_from_result(failure, encoding=encoding)


def _pipeline_results(pgconn: pq.abc.PGconn) -> Generator[Any, Any, list[pq.abc.PGresult]]:
    """Flush the pipeline and read every statement's result up to its sync point (an
    aborted statement's result has the status PIPELINE_ABORTED)."""
    yield from generators.send(pgconn)
    out: list[pq.abc.PGresult] = []
    while True:
        results = yield from generators.fetch_many(pgconn)
        if results and results[0].status == pq.ExecStatus.PIPELINE_SYNC:
            return out
        out.extend(results)


def _leave_pipeline(pgconn: pq.abc.PGconn) -> None:
    """Back to ordinary mode; a connection left with results unread (the wait was
    interrupted and psycopg could not finish it) is closed: its state is unknown."""
    if pgconn.pipeline_status == pq.PipelineStatus.OFF:
        return
    try:
        pgconn.exit_pipeline_mode()
    except psycopg.Error:
        pgconn.finish()


async def attempted_mutations(conn: AsyncConnection[Any], request_id: str
                              ) -> list[dict[str, Any]]:
    """The changes this execution's transaction made so far (read before the rollback)."""
    async with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        await cur.execute(load("execution").attempted_mutations, {"request_id": request_id})
        return list(await cur.fetchall())
