"""The ``lean`` side of bench/recording_overhead.py: the plain app's handler with recording
written by hand, as small as it can be while storing the same facts as Flux's record.

What a request stores is what Flux stores for the bench's handler (checked at the end of
each run by ``record_shape``: the same columns and the same JSON shape, key for key): the
request (method, route, path, headers redacted, query, body, content type, trace id, the
body's spelling), the answer, five spans with their timings, call sites and attributes, the
tape (both statements' rows, row counts, columns and keys; the config read; the outbound
GET's answer with its headers redacted), and the capture trigger's request id and span id
for the data it writes. The record is written in the data's transaction:

- capture by trigger: the BEGIN sets ``flux.request_id`` (as Flux's does), each statement
  carries its ``/*flux:sN*/`` comment, and the record goes by one prepared INSERT into
  flux.trace_requests, pipelined with the COMMIT (one round trip, as the plain app's COMMIT);
- capture by WAL: the same BEGIN, and the record goes as Flux's ``flux.record`` logical
  message (the statements line, then the record as one line of COPY text:
  flux/store/_record.py ``wal_payload``'s format), prepared, pipelined with the COMMIT.

Its round trips are the plain app's four: BEGIN (with the GUC), SELECT, INSERT, and the
record with the COMMIT. What it leaves out that Flux sends (docs/decisions.md, "floor, issue
21"): ``end_execution`` in trigger mode (a no-op there), the capture-mode read under the
switch lock in WAL mode (only needed while a mode switch can happen), and everything that
makes a general runtime (replay sources, savepoints after a write, failure salvage).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import psycopg
from aiohttp import web
from psycopg import generators, pq
from psycopg_pool import AsyncConnectionPool

from flux._ids import new_request_id_text
from flux.store._queries import load
from flux.store._statement import sql_info

HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization",
                     "x-api-key", "x-auth-token"})  # Flux's default RedactionPolicy
FIELDS = frozenset({"password", "secret", "token", "api_key", "card_number", "cvc",
                    "access_token", "refresh_token", "client_secret"})
MAX_BODY = 64 * 1024
# A sensitive field as a key anywhere in a body's JSON text, lower-cased: one scan in C of
# the bytes as they came (the request's body, the GET's answer) and of the answer's record
# document; only a match walks the values (_body). A false match (the text inside a string
# value) only costs the walk.
SENSITIVE = re.compile(rb'"(?:' + b"|".join(f.encode() for f in sorted(FIELDS)) + rb')"\s*:')
FILE = "functions/bench_handler.py"  # the handler's call sites, known where it is written
LINE_DEF, LINE_SELECT, LINE_INSERT, LINE_GET = 6, 8, 9, 10

RECORD_SQL = (
    b"INSERT INTO flux.trace_requests (request_id, function, method, route, status, "
    b"http_status, started_at, duration_ms, request, response, spans, tape) VALUES "
    b"($1, $2, $3, $4, $5, $6, to_timestamp($7::float8), $8, $9, $10, $11, $12)")


def _emit_sql() -> bytes:
    """Flux's own emit_record (sql/queries/execution.sql), its one parameter as ``$1``."""
    return load("execution").emit_record.replace("%(payload)s", "$1").encode()


class Lean:
    """The handler and its recording; one per server process."""

    def __init__(self, pool: AsyncConnectionPool, session: aiohttp.ClientSession,
                 stub_url: str, route: str, select_sql: str, insert_sql: str,
                 count_below: int, wal: bool) -> None:
        self.pool, self.session, self.stub_url, self.route = pool, session, stub_url, route
        self.count_below, self.wal = count_below, wal
        self.select_sql, self.insert_sql = select_sql, insert_sql
        self.select = f"/*flux:s3*/ {select_sql}"  # the span the capture trigger stamps
        self.insert = f"/*flux:s4*/ {insert_sql}"
        self.select_info, self.insert_info = sql_info(select_sql), sql_info(insert_sql)
        self.key = os.urandom(32)  # the redaction key (Flux: the project's)
        host = stub_url.split("://", 1)[1]
        self.http_name = f"http.get {host}"
        self.http_key = f"GET {stub_url}"

    # -- the record's few helpers ---------------------------------------------------------

    def _headers(self, headers: Any) -> dict[str, str]:
        """Lower-cased, repeated ones joined, sensitive values fingerprinted."""
        out: dict[str, str] = {}
        for name, value in headers.items():
            name = name.lower()
            if name in HEADERS:
                value = "[redacted hmac-sha256:" + hmac.new(
                    self.key, value.encode(), hashlib.sha256).hexdigest()[:16] + "]"
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out

    def _body(self, body: Any) -> Any:
        """The body as recorded: sensitive fields' values fingerprinted (a copy only then)."""
        if type(body) is dict:
            if any(k.lower() in FIELDS or type(v) in (dict, list) for k, v in body.items()):
                return {k: (self._mark(v) if k.lower() in FIELDS else self._body(v))
                        for k, v in body.items()}
            return body
        if type(body) is list:
            return [self._body(v) for v in body]
        return body

    def _mark(self, value: Any) -> str:
        return "[redacted hmac-sha256:" + hmac.new(
            self.key, orjson.dumps(value), hashlib.sha256).hexdigest()[:16] + "]"

    @staticmethod
    def _key(fingerprint: str, params: list[Any]) -> str:
        """The tape key Flux gives a statement: fingerprint, hash of the parameters."""
        blob = orjson.dumps(params, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        return f"{fingerprint}:{hashlib.sha256(blob).hexdigest()[:16]}"

    # -- the handler ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        wall, t0 = time.time(), time.perf_counter_ns()
        rid = new_request_id_text()
        trace_id = rid.replace("-", "")
        raw = await request.read()
        payload = json.loads(raw)
        name = payload.get("name", "bench")
        t_fn = time.perf_counter_ns()
        async with self.pool.connection() as conn:
            # BEGIN with the capture trigger's request id, as one simple query straight to
            # libpq (the plain app's BEGIN round trip, carrying the GUC)
            conn.pgconn.send_query(
                f"BEGIN; SELECT set_config('flux.request_id', '{rid}', true)".encode())
            for res in await conn.wait(generators.execute(conn.pgconn)):
                if res.status == pq.ExecStatus.FATAL_ERROR:
                    raise psycopg.errors.error_from_result(res, encoding="utf-8")
            t_s3 = time.perf_counter_ns()
            cur = await conn.execute(self.select, [self.count_below])
            rows3 = await cur.fetchall()
            cols3 = [c.name for c in cur.description or ()]
            n3 = cur.rowcount
            t_s4 = time.perf_counter_ns()
            cur = await conn.execute(self.insert, [name])
            rows4 = await cur.fetchall()
            cols4 = [c.name for c in cur.description or ()]
            n4 = cur.rowcount
            t_s5 = time.perf_counter_ns()
            span5 = hashlib.blake2b(f"{rid}/s5".encode(), digest_size=8).hexdigest()
            traceparent = f"00-{trace_id}-{span5}-01"
            async with self.session.get(self.stub_url, headers={"traceparent": traceparent},
                                        timeout=aiohttp.ClientTimeout(total=10)) as answer:
                stub_raw = await answer.read()
                stub_status, stub_headers = answer.status, answer.headers
            stub = json.loads(stub_raw)
            t_end5 = time.perf_counter_ns()
            r3 = [dict(zip(cols3, r, strict=True)) for r in rows3]
            r4 = [dict(zip(cols4, r, strict=True)) for r in rows4]
            result = {"count": r3[0]["count"], "id": r4[0]["id"], "stub": stub}
            t_end = time.perf_counter_ns()
            await self._commit(conn, rid, trace_id, wall, t0, t_fn, t_s3, t_s4, t_s5, t_end5,
                               t_end, request, raw, stub_raw, payload, name, (r3, n3, cols3),
                               (r4, n4, cols4), traceparent, stub_status, stub_headers, stub,
                               result)
        return web.json_response(result)

    async def _commit(self, conn: psycopg.AsyncConnection[Any], rid: str, trace_id: str,
                      wall: float, t0: int, t_fn: int, t_s3: int, t_s4: int,
                      t_s5: int, t_end5: int, t_end: int, request: web.Request,
                      raw: bytes, stub_raw: bytes, payload: Any, name: str,
                      db3: tuple[Any, int, list[str]],
                      db4: tuple[Any, int, list[str]], traceparent: str, stub_status: int,
                      stub_headers: Any, stub: Any, result: Any) -> None:
        """Build the record (one dict per document, orjson once each) and send it with the
        COMMIT in one round trip."""
        def ms(ns: int) -> float:  # a span's times: ms with 3 decimals, as Flux rounds them
            return ns // 1000 / 1000
        route, sel, ins = self.route, self.select_info, self.insert_info
        params3, params4 = [self.count_below], [name]
        record_request = {
            "method": request.method, "route": route, "headers": self._headers(request.headers),
            "query": dict(request.query) if request.query_string else {}, "body": payload,
            "trace": {"trace_id": trace_id, "sampled": True}, "path": request.path,
            "content_type": request.content_type}
        if raw != orjson.dumps(payload) and raw == json.dumps(payload).encode():
            record_request["raw"] = {"json": "spaced"}  # replay sends json.dumps' bytes
        response = {"status": 200, "body": result}
        spans = [
            {"id": "s1", "parent_id": None, "name": f"{request.method} {request.path}",
             "kind": "gateway", "start_ms": 0.0, "duration_ms": ms(t_end - t0),
             "status": "ok", "file": None, "line": None, "attrs": {"kind": "http"},
             "error": None},
            {"id": "s2", "parent_id": "s1", "name": route, "kind": "function",
             "start_ms": ms(t_fn - t0), "duration_ms": ms(t_end - t_fn),
             "status": "ok", "file": FILE, "line": LINE_DEF, "attrs": {}, "error": None},
            {"id": "s3", "parent_id": "s2", "name": sel.span_name, "kind": "db",
             "start_ms": ms(t_s3 - t0), "duration_ms": ms(t_s4 - t_s3),
             "status": "ok", "file": FILE, "line": LINE_SELECT,
             "attrs": {"sql": self.select_sql, "params": params3, "tables": list(sel.tables),
                       "verb": sel.verb, "fingerprint": sel.fingerprint,
                       "rowcount": db3[1]}, "error": None},
            {"id": "s4", "parent_id": "s2", "name": ins.span_name, "kind": "db",
             "start_ms": ms(t_s4 - t0), "duration_ms": ms(t_s5 - t_s4),
             "status": "ok", "file": FILE, "line": LINE_INSERT,
             "attrs": {"sql": self.insert_sql, "params": params4, "tables": list(ins.tables),
                       "verb": ins.verb, "fingerprint": ins.fingerprint,
                       "rowcount": db4[1]}, "error": None},
            {"id": "s5", "parent_id": "s2", "name": self.http_name, "kind": "http",
             "start_ms": ms(t_s5 - t0),
             "duration_ms": ms(t_end5 - t_s5), "status": "ok", "file": FILE,
             "line": LINE_GET,
             "attrs": {"method": "GET", "url": self.stub_url, "call_seq": 1, "timeout_s": 10.0,
                       "request": {"headers": {"traceparent": traceparent}, "params": None,
                                   "body": None},
                       "status": stub_status}, "error": None}]
        tape = [
            {"seq": 1, "kind": "db", "key": self._key(sel.fingerprint, params3),
             "value": {"rows": db3[0], "rowcount": db3[1], "columns": db3[2]},
             "span_id": "s3", "file": FILE, "line": LINE_SELECT},
            {"seq": 2, "kind": "db", "key": self._key(ins.fingerprint, params4),
             "value": {"rows": db4[0], "rowcount": db4[1], "columns": db4[2]},
             "span_id": "s4", "file": FILE, "line": LINE_INSERT},
            {"seq": 3, "kind": "config", "key": "stub_url", "value": self.stub_url,
             "span_id": "s2", "file": FILE, "line": LINE_GET},
            {"seq": 4, "kind": "http", "key": self.http_key,
             "value": {"status": stub_status, "headers": self._headers(stub_headers),
                       "body": stub},
             "span_id": "s5", "file": FILE, "line": LINE_GET, "call_seq": 1}]
        docs = [orjson.dumps(record_request), orjson.dumps(response), orjson.dumps(spans),
                orjson.dumps(tape)]
        if SENSITIVE.search(raw.lower()) or SENSITIVE.search(stub_raw.lower()) or \
                SENSITIVE.search(docs[1].lower()):
            # a field to hide (spans hold no body): the documents walked and encoded again
            record_request["body"] = self._body(payload)
            response["body"] = self._body(result)
            tape[3]["value"] = {**tape[3]["value"], "body": self._body(stub)}  # type: ignore[dict-item]
            docs = [orjson.dumps(record_request), orjson.dumps(response), docs[2],
                    orjson.dumps(tape)]
        if sum(map(len, docs)) > 4 * MAX_BODY:
            raise RuntimeError("the lean record has no cap: this bench never reaches one")
        duration = (t_end - t0) / 1e6
        if self.wal:
            statement, values = b"lean_emit", [self._payload(
                rid, route, request.method, wall, duration, docs, db4[1])]
        else:
            statement = b"lean_record"
            values = [rid.encode(), route.encode(), request.method.encode(), route.encode(),
                      b"ok", b"200", repr(wall).encode(), repr(duration).encode(), *docs]
        pgconn = conn.pgconn
        pgconn.enter_pipeline_mode()
        try:
            pgconn.send_query_prepared(statement, values)
            pgconn.send_query_params(b"COMMIT", None)
            pgconn.pipeline_sync()
            results = await conn.wait(_pipeline(pgconn))
        finally:
            pgconn.exit_pipeline_mode()
        for res in results:
            if res.status == pq.ExecStatus.FATAL_ERROR:
                raise psycopg.errors.error_from_result(res, encoding="utf-8")

    @staticmethod
    def _payload(rid: str, route: str, method: str, wall: float, duration: float,
                 docs: list[bytes], inserted: int) -> bytes:
        """The ``flux.record`` message's part after the actor line: the statements that
        wrote, then the record as one line of COPY text in RECORD_COLUMNS order."""
        statements = orjson.dumps({"request_id": rid,
                                   "statements": [["s4", inserted, ["items"], "insert"]]})
        started = datetime.fromtimestamp(wall, UTC).isoformat().encode()
        recorded = datetime.now(UTC).isoformat().encode()
        esc = [d.replace(b"\\", b"\\\\") if d.find(b"\\") >= 0 else d for d in docs]
        line = b"\t".join((rid.encode(), b"http", route.encode(), b"python", method.encode(),
                           route.encode(), b"ok", b"200", started, repr(duration).encode(),
                           esc[0], esc[1], b"\\N", esc[2], esc[3], b"[]", b"\\N", b"false",
                           b"\\N", b"\\N", b"\\N", b"\\N", b"true", recorded))
        return statements + b"\n" + line


def _pipeline(pgconn: pq.abc.PGconn) -> Generator[Any, Any, list[pq.abc.PGresult]]:
    """Flush, then read every result up to the sync point."""
    yield from generators.send(pgconn)
    out: list[pq.abc.PGresult] = []
    while True:
        results = yield from generators.fetch_many(pgconn)
        if results and results[0].status == pq.ExecStatus.PIPELINE_SYNC:
            return out
        out.extend(results)


async def prepare(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's ``configure``: the record's statement prepared once per connection. (The
    bench never rolls back, so psycopg's DEALLOCATE ALL after a rollback never takes it;
    Flux's RecordingConnection handles that at no cost per request.)"""
    await conn.execute(b"PREPARE lean_record AS " + RECORD_SQL)
    await conn.execute(b"PREPARE lean_emit AS " + _emit_sql())


def record_shape(value: Any) -> Any:
    """A record's JSON with every leaf replaced by its type: two records of the same
    handler have the same shape when they hold the same facts."""
    if isinstance(value, dict):
        return {k: record_shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [record_shape(v) for v in value]
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) \
        else type(value).__name__
