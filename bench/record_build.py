"""The record's own Python per request: building, redacting and encoding it, nothing else.

``recording_cpu.py`` measures a whole recorded request, where the record is a few tenths
of a millisecond among the gateway, the executor, psycopg and aiohttp, and the run-to-run
spread (±0.1 ms on a loaded machine) hides a 20 µs step. This harness runs only the record's
part of ``recording_overhead.py``'s request, in a loop, with Flux's own functions: the
recorder (five spans, their call sites, four tape entries), the call keys, the redaction of
three header sets and five bodies, the span tree and tape as documents, and ``bind`` of the
record's ``end_execution; INSERT; COMMIT``. No IO: what the request sends and receives is
given as the bench's handler sees it. It reports the fastest of ``--repeats`` rounds
(µs per request, thread CPU time), so another process's load shows less than in a rate.

    .venv/bin/python bench/record_build.py [--requests 2000] [--repeats 7] [--flux DIR]
        [--capture trigger|wal]

``--flux DIR`` imports Flux from ``DIR`` (an export of another commit, with its ``sql/``)
instead of this tree: run both, alternating, to compare two versions on one machine.
The last line is ``record: <µs> µs per request``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

SELECT_SQL = "SELECT count(*) FROM items WHERE id < %s"
INSERT_SQL = "INSERT INTO items (name) VALUES (%s) RETURNING id"
REQUEST_HEADERS = [
    ("Host", "127.0.0.1:38097"), ("Content-Type", "application/json"), ("Accept", "*/*"),
    ("Accept-Encoding", "gzip, deflate"), ("User-Agent", "Python/3.11 aiohttp/3.14.5"),
    ("Content-Length", "17"),
]
STUB_HEADERS = [
    ("Content-Type", "application/json"), ("Content-Length", "51"),
    ("Date", "Sun, 06 Dec 2026 02:07:33 GMT"), ("Server", "Python/3.11 aiohttp/3.14.5"),
]
STUB_BODY = b'{"ok": true, "service": "stub", "items": [1, 2, 3]}'


def stub_body(items: int) -> bytes:
    """The stub's answer: ``recording_overhead.py``'s own (3 items), or a longer one as an
    API might send (``--answer 80``: 4.5 KB of objects with ids, names and prices)."""
    if items == 3:
        return STUB_BODY
    return json.dumps({"ok": True, "service": "stub", "items": [
        {"id": 1000 + i, "name": f"item {i}", "price": i * 1.5, "tags": ["a", "b"]}
        for i in range(items)]}).encode()
STUB_URL = "http://127.0.0.1:35059/stub"

# The handler's lines, compiled as a file in functions/ so that call sites are found as
# they are when the bench's handler runs.
HANDLER = """
def select(db):
    return db(0)
def insert(db):
    return db(1)
def get(http):
    return http()
"""


def _request(f: Any, policy: Any, root: Path, handler: dict[str, Any]) -> bytes:
    """One request's record work, as the executor, ctx.db and ctx.http do it; what the
    record's commit sends."""
    encode, plain, TraceContext, db_key = f.encode, f.plain, f.TraceContext, f.db_key
    Exchange, Recorder, ExecutionRecord = f.Exchange, f.Recorder, f.ExecutionRecord
    sql_info = f.sql_info
    request_id = "0190a3f4-1234-7000-8000-000000000000"
    rec = Recorder(request_id, project_root=root, functions_dir=root / "functions")
    trace = TraceContext.start(request_id)
    ex = SimpleNamespace(recorder=rec, policy=policy, replay=None, trace=trace,
                         prepare_body=lambda body: policy.prepare(body, rec.secret_values),
                         traceparent=lambda span: trace.traceparent(span.id.rjust(16, "0")))
    results = ([{"count": 999}], [{"id": 1003}])

    def db(which: int) -> Any:  # ctx.db.fetchone's recording, without the round trip
        query, params = (SELECT_SQL, [1000]) if which == 0 else (INSERT_SQL, ["bench"])
        site = rec.call_site(2)
        info = sql_info(query)
        encoded = encode(params)
        attrs = {"sql": query, "params": encoded, "tables": list(info.tables),
                 "verb": info.verb, "fingerprint": info.fingerprint}
        key = db_key(query, params, rec.secret_marks, **({"encoded": encoded}
                                                          if f.key_takes_encoded else {}))
        with rec.span(info.span_name, "db", site, attrs) as span:
            rows = results[which]
            span.attrs["rowcount"] = 1
            value = {"rows": encode(rows), "rowcount": 1, "columns": list(rows[0])}
            rec.tape_append("db", key, policy.cap(value), site=site, span_id=span.id)
            return rows[0]

    def http() -> Any:  # ctx.http.get's recording, without the round trip
        site = rec.call_site(2)
        rec.tape_append("config", "stub_url", STUB_URL, site=site)
        with Exchange(ex, "GET", STUB_URL, {}, None, site, timeout=10.0) as call:  # type: ignore[arg-type]
            return call.answered(200, STUB_HEADERS, f.answer, STUB_URL).json()

    with rec.span("POST /bench_handler", "gateway", None, {"kind": "http"}), \
            rec.span("bench_handler", "function", rec.call_site(1)):
        row = handler["select"](db)
        item = handler["insert"](db)
        stub = handler["get"](http)
        output = plain({"count": row["count"], "id": item["id"], "stub": stub})
    # the executor's _record
    secrets = rec.secret_values
    spans = [s.to_json() for s in rec.spans]
    request = {"method": "POST", "route": "bench_handler",
               "headers": policy.redact_headers(REQUEST_HEADERS, secrets),
               "query": policy.scrub({}, secrets),
               "body": policy.prepare(encode({"name": "bench"}), secrets, **f.fresh),
               "trace": trace.to_json()}
    response = {"status": 200, "body": policy.prepare(output, secrets, **f.fresh)}
    record = ExecutionRecord(
        request_id=request_id, kind="http", function="bench_handler", status="ok",
        http_status=200, started_at=rec.started_at, duration_ms=rec.elapsed_ms(),
        request=request, response=response, error=policy.scrub(None, secrets),
        spans=policy.scrub(spans, secrets), tape=policy.scrub(rec.tape, secrets),
        logs=policy.scrub(rec.logs, secrets), code_sha="0" * 40, code_dirty=False,
        method="POST", route="bench_handler")
    return f.commit(record, [["s4", 1, ["items"], "insert"]])


def _commit(record: Any, load: Any, capture: str) -> Any:
    """What the runtime's commit of a record sends, in this version of Flux: its logical
    message (WAL capture) or the prepared statements' parameters (since issue 21, "rec", built
    in one pass by ``commit_values``; before, from ``params()`` by ``_values``)."""
    if capture == "wal":
        return lambda rec, statements: record.wal_payload(rec, statements) or b""
    if hasattr(record, "commit_values"):
        return lambda rec, statements: record.commit_values(rec, statements, "utf-8")
    q = load("execution")
    return lambda rec, statements: record._values(
        {**rec.params(), "statements": record._jsonb(statements)},
        (q.end_execution, q.insert_record), "utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--repeats", type=int, default=7, help="rounds; the fastest counts")
    parser.add_argument("--flux", metavar="DIR", help="import Flux from DIR")
    parser.add_argument("--capture", choices=("trigger", "wal"), default="trigger",
                        help="the record's commit as each capture mode sends it")
    parser.add_argument("--answer", type=int, default=3, metavar="ITEMS",
                        help="items in the outbound call's answer (3: recording_overhead's)")
    parser.add_argument("--show", action="store_true", help="print one request's record")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.repeats < 1:
        parser.error("--requests and --repeats must be at least 1")
    if args.flux:
        sys.path.insert(0, str(Path(args.flux).resolve()))
    import flux
    from flux._jsoncodec import encode, plain
    from flux._tracecontext import TraceContext
    from flux.runtime._callkey import db_key
    from flux.runtime._ctx_http import Exchange
    from flux.runtime._recorder import Recorder
    from flux.runtime._redact import RedactionPolicy
    from flux.store import _record
    from flux.store._queries import load
    from flux.store._record import ExecutionRecord
    from flux.store._statement import sql_info

    f = SimpleNamespace(key_takes_encoded="encoded" in inspect.signature(db_key).parameters,
                        encode=encode, plain=plain, TraceContext=TraceContext, db_key=db_key,
                        Exchange=Exchange, Recorder=Recorder, ExecutionRecord=ExecutionRecord,
                        sql_info=sql_info, commit=_commit(_record, load, args.capture),
                        answer=stub_body(args.answer),
                        fresh={"fresh": True} if "fresh" in inspect.signature(
                            RedactionPolicy.prepare).parameters else {})

    policy = RedactionPolicy(key=b"0" * 64)
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as tmp:
        root = Path(tmp).resolve()
        (root / "functions").mkdir()
        handler: dict[str, Any] = {}
        exec(compile(HANDLER, str(root / "functions" / "bench_handler.py"), "exec"), handler)
        query = _request(f, policy, root, handler)
        if args.show:
            print(query.decode() if isinstance(query, bytes) else query)
        rounds = []
        for _ in range(args.repeats):
            started = time.thread_time()
            for _ in range(args.requests):
                _request(f, policy, root, handler)
            rounds.append((time.thread_time() - started) / args.requests * 1e6)
    print(f"flux from {Path(flux.__file__).parent.parent}; {args.capture} commit; "
          f"rounds: {', '.join(f'{r:.1f}' for r in rounds)} µs; {dt.datetime.now(dt.UTC):%H:%M}")
    print(f"record: {min(rounds):.1f} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
