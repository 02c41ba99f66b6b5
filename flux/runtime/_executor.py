"""The executor: run one function as one recorded execution.

One transaction per execution. On success the record is inserted in that transaction and
committed with the data (with WAL capture it travels in that transaction's WAL instead, as a
transactional logical message the WAL consumer writes); on failure the executor reads the
mutations the transaction had made, rolls back, and stores the record with those mutations
marked rolled back. Every path — success, exception, ctx.error, timeout, overload — ends in
exactly one record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import traceback
from collections.abc import Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq

from flux._errors import (
    DatabaseUnavailable,
    FunctionError,
    HttpError,
    HttpStatusError,
    Overloaded,
    UnrecordedIO,
    WasmError,
)
from flux._function import FunctionSpec, FunctionTimeout
from flux._ids import short
from flux._jsoncodec import encode, plain
from flux._tracecontext import TraceContext
from flux.inspect._signature import failure_signature
from flux.runtime._context import Context, NotAwaited, activate, call_handler
from flux.runtime._deadline import Deadline
from flux.runtime._execution import Execution, ReplaySource
from flux.runtime._iowatch import Watch, watching
from flux.runtime._recorder import CallSite, Recorder, _call_site
from flux.runtime._request import Request, recorded, synthetic
from flux.runtime._response import Answer, answer_of, json_bytes
from flux.runtime._sampling import keeps, outline_spans
from flux.runtime._sealed import sealed
from flux.store._availability import connection_lost
from flux.store._database import db_error
from flux.store._queries import load
from flux.store._record import (
    ExecutionRecord,
    attempted_mutations,
    store,
    store_and_commit,
)

if TYPE_CHECKING:
    from flux.runtime._runtime import Runtime


LOST = ("the database connection was lost while the request ran: nothing it wrote was kept, "
        "so it can be retried")
IN_DOUBT = ("the database connection was lost during the commit: whether the request's "
            "changes were stored is unknown until the database is back")


@sealed  # frozen to mypy; made at run time without a setattr per field
class Invocation:
    """Everything an execution starts from; frozen so replay can re-run it as it was."""

    request_id: str
    spec: FunctionSpec
    input: Any
    kind: str = "http"
    method: str | None = "POST"
    route: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    tenant: str | None = None
    parent_id: str | None = None
    replay_of: str | None = None
    resumed_from: str | None = None
    trace: TraceContext | None = None  # the caller's (a traceparent); None: a new trace
    request: Request | None = None  # as it came over HTTP; None: made from the input


@sealed  # frozen to mypy; made at run time without a setattr per field
class Outcome:
    """How an execution ended, for the gateway (or replay) to answer with."""

    request_id: str
    status: str  # ok | error
    http_status: int
    body: Any
    error: dict[str, Any] | None
    record: ExecutionRecord
    headers: Mapping[str, str] = field(default_factory=dict)  # a flux.Response's
    content_type: str | None = None  # None: JSON of ``body``
    raw: bytes | None = None  # the bytes to send when not JSON


async def execute(runtime: Runtime, inv: Invocation, *, replay: ReplaySource | None = None,
                  idempotency_prefix: str | None = None, persist: bool = True,
                  commit_data: bool = True) -> Outcome:
    """Run ``inv`` as one recorded execution and store its record (unless ``persist`` is
    false, as for a local replay that must touch nothing). With ``commit_data`` false the
    execution's own transaction is always rolled back (replays), and its record, if
    persisted, is stored in a transaction of its own."""
    spec = inv.spec
    rec = Recorder(inv.request_id, project_root=runtime.root,
                   functions_dir=runtime.functions_dir)
    rec.configured_secrets = frozenset(runtime.configured_secrets())
    ex = Execution(runtime, rec, replay=replay, idempotency_prefix=idempotency_prefix,
                   trace=inv.trace, tenant=inv.tenant)
    request = inv.request or synthetic(inv.method, inv.route or spec.route, inv.input,
                                       inv.headers)
    ctx = Context(ex, spec, headers=inv.headers, is_replay=replay is not None,
                  request=request)
    output = Answer()
    failure: BaseException | None = None
    # Outside access no recorded path made: noted in serving, refused where nothing may
    # leave (every run with a replay source).
    watch = Watch(rec, block=replay is not None, allow=runtime.io_allow)
    with activate(ctx), watching(watch):
        try:
            with rec.span(f"{inv.method or inv.kind} /{inv.route or spec.route}", "gateway",
                          attrs={"kind": inv.kind}), \
                 rec.span(spec.name, "function", _function_site(rec, spec)):
                deadline = Deadline(spec.timeout)  # no timer of its own: _deadline.py
                try:
                    with deadline:
                        # An async handler is awaited here, not through call_handler: one
                        # coroutine fewer for every resumption to pass through.
                        result = await (spec.handler(ctx, inv.input) if spec.is_async
                                        else call_handler(spec, ctx, inv.input))
                except TimeoutError as exc:
                    if deadline.expired():  # ours, not a TimeoutError the handler raised
                        raise FunctionTimeout(spec) from exc
                    raise
                if idle := ex.not_awaited():
                    error = NotAwaited.of(idle[0])
                    for coro in idle:
                        coro.close()
                    raise error
                output = answer_of(result, _json_output)
        except Exception as exc:
            failure = exc
            for coro in ex.not_awaited():  # a call the failure cut short: no second error
                coro.close()
    if watch.found:
        if watch.block and not isinstance(failure, UnrecordedIO):
            # refused, even if the library that tried swallowed the refusal
            failure = Watch.error(watch.found[0])
        elif not watch.block:
            for found in watch.found:
                runtime.echo_log(ex.request_id, "warning", f"unrecorded IO: {found['what']} at "
                                 f"{found['file']}:{found['line']} (the record is incomplete)",
                                 {})
    if failure is None:
        outcome = await _succeed(ex, inv, output, persist, commit_data)
    else:
        outcome = await _fail(ex, inv, failure, persist)
    if persist:  # what is stored is what is exported: a local replay sends nothing
        runtime.export_spans(outcome.record)
    return outcome


def _function_site(rec: Recorder, spec: FunctionSpec) -> CallSite:
    """The function span's call site, the handler's own line: made once per function, as
    a ctx call's is made once per line (not once per execution)."""
    return _call_site(spec.file, spec.line, spec.name, str(rec.project_root))


def _json_output(result: Any) -> tuple[Any, bytes]:
    """The handler's value as JSON can hold it, and the bytes the answer sends: encoded
    once, here, by the check that it encodes (flux/runtime/_response.py: json_bytes)."""
    value = plain(result)
    try:
        return value, json_bytes(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the function returned a value JSON cannot encode: {exc}") from exc


def _record(ex: Execution, inv: Invocation, *, status: str, http_status: int,
            body: Any, error: dict[str, Any] | None, outline: bool = False,
            answer: Answer | None = None) -> ExecutionRecord:
    """The execution's record; with ``outline``, the outline of a success that sampling
    left out (flux/runtime/_sampling.py): no bodies, tape or logs, spans without attributes."""
    rec = ex.recorder
    runtime = ex.runtime
    for span in rec.spans:
        rec.close_span(span)
    version = runtime.code_version
    scrub = ex.policy.scrub
    secrets = rec.secret_values
    route = inv.route or inv.spec.route
    spans = [s.to_json() for s in rec.spans]
    if outline:
        request: dict[str, Any] = {"method": inv.method, "route": route}
        response: dict[str, Any] = {"status": http_status}
        spans, tape, logs = outline_spans(spans), [], []
    else:
        request = {"method": inv.method, "route": route,
                   "headers": ex.policy.redact_headers(inv.headers, secrets),
                   "query": scrub(dict(inv.query), secrets),
                   "body": ex.policy.prepare(encode(inv.input), secrets, fresh=True),
                   "trace": ex.trace.to_json()}
        if inv.request is not None:
            request.update(recorded(inv.request, inv.input, ex.policy, secrets, scrub))
        # the answer's body is Flux's own copy of what the handler returned (plain(), an
        # ASGI app's bytes decoded): the record need not copy it again
        response = {"status": http_status, "body": ex.policy.prepare(body, secrets, fresh=True)}
        if answer is not None and answer.headers:
            response["headers"] = ex.policy.redact_headers(answer.headers, secrets)
        if answer is not None and answer.content_type is not None:
            response["content_type"] = answer.content_type
        tape, logs = scrub(rec.tape, secrets), scrub(rec.logs, secrets)
    return ExecutionRecord(
        request_id=inv.request_id, kind=inv.kind, function=inv.spec.name, status=status,
        http_status=http_status, started_at=rec.started_at, duration_ms=round(rec.elapsed_ms(), 3),
        request=request, response=response, error=scrub(error, secrets),
        spans=scrub(spans, secrets), tape=tape, logs=logs,
        code_sha=version.sha, code_dirty=version.dirty, method=inv.method,
        route=route, runtime=inv.spec.runtime, tenant=inv.tenant,
        parent_id=inv.parent_id, replay_of=inv.replay_of, resumed_from=inv.resumed_from,
        sampled=not outline,
    )


async def _succeed(ex: Execution, inv: Invocation, answer: Answer, persist: bool,
                   commit_data: bool = True) -> Outcome:
    # Sampling ([record] sample_rate) applies to live executions only, never to replays.
    outline = ex.replay is None and persist and commit_data and \
        not keeps(inv.request_id, ex.runtime.sample_rate)
    output, status = answer.body, answer.status
    record = _record(ex, inv, status="ok", http_status=status, body=output, error=None,
                     outline=outline, answer=answer)

    def done() -> Outcome:
        return Outcome(inv.request_id, "ok", status, output, None, record,
                       answer.headers, answer.content_type, answer.raw)

    if outline and ex.conn is None and inv.kind == "http":  # it wrote nothing: no record
        return done()
    if not persist or not commit_data:
        mutations = await _salvage(ex, ex.conn) if ex.conn is not None else []
        record.mutations = [{**m, "request_id": inv.request_id} for m in mutations]
        await _discard(ex)
        if persist:  # a replay's record, with the mutations it would have made
            await ex.runtime.store_record(record)
        return done()
    conn = ex.conn
    try:
        if conn is not None:
            async with ex.db_lock:
                await store_and_commit(conn, record, ex.statements, wal=ex.wal_record,
                                       stamp=ex.stamp)
        else:
            await ex.runtime.store_record(record)
    except psycopg.Error as exc:
        # COMMIT itself failed (a deferred constraint, a serialization failure): nothing was
        # committed, so this is a failed execution after all — unless the connection died
        # during that round trip, when the COMMIT may have happened. Storing the failure
        # record settles it: the request id is its key, so a duplicate means it committed.
        # Not when the record travelled in the WAL: a committed one is not in the table
        # yet, and a failure record beside it would contradict it — in doubt it stays.
        if ex.wal_record and connection_lost(exc):
            ex.runtime.availability.lost(exc)
            raise DatabaseUnavailable(IN_DOUBT, in_doubt=True) from exc
        try:
            return await _fail(ex, inv, exc, persist, transaction_lost=True)
        except psycopg.errors.UniqueViolation:
            if not connection_lost(exc):
                raise
            return done()
        except Exception as again:
            if connection_lost(exc):
                raise DatabaseUnavailable(IN_DOUBT, in_doubt=True) from again
            raise
    finally:
        await ex.release()
    return done()


async def _fail(ex: Execution, inv: Invocation, failure: BaseException, persist: bool, *,
                transaction_lost: bool = False) -> Outcome:
    scrub = lambda text: ex.policy.scrub_text(text, ex.recorder.secret_values)  # noqa: E731
    error = describe_error(failure, ex.recorder, scrub)
    http_status, body = _answer(inv, failure, stored=persist)
    error["http_status"] = http_status
    mutations: list[dict[str, Any]] = []
    conn = ex.conn
    if connection_lost(failure):
        ex.runtime.availability.lost(failure)
    if conn is not None and not transaction_lost:
        mutations = await _salvage(ex, conn)
    record = _record(ex, inv, status="error", http_status=http_status, body=body, error=error)
    record.mutations = [{**m, "request_id": inv.request_id} for m in mutations]
    record.signature = failure_signature(record)
    if not persist:
        await _discard(ex)
        return Outcome(inv.request_id, "error", http_status, body, error, record)
    try:
        if conn is not None and not conn.closed:
            if conn.info.transaction_status == pq.TransactionStatus.INERROR:
                await conn.rollback()  # the record's own INSERT failed before its COMMIT
            async with conn.transaction():
                await store(conn, record)
        else:
            await ex.runtime.store_record(record)
    finally:
        await ex.release()
    return Outcome(inv.request_id, "error", http_status, body, error, record)


async def _salvage(ex: Execution, conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Read the mutations of the failing transaction, then roll it back."""
    mutations: list[dict[str, Any]] = []
    state = conn.info.transaction_status
    with contextlib.suppress(psycopg.Error):
        if state == pq.TransactionStatus.ACTIVE:  # a query still running (timeout, cancel)
            await conn.cancel_safe(timeout=5)
            with contextlib.suppress(psycopg.Error):
                await conn.rollback()
            return mutations
        if state == pq.TransactionStatus.INERROR and ex.savepoint_open:
            # A guarded statement cut short by the function's timeout (psycopg cancelled it
            # in the server): back to before it, to read what the earlier ones changed.
            await conn.execute(load("execution").rollback_to)
            state = conn.info.transaction_status
        if state == pq.TransactionStatus.INTRANS:
            mutations = await attempted_mutations(conn, ex.request_id)
            if not mutations and ex.statements and await _wal_mode(conn):
                mutations = _statement_summaries(ex)
    with contextlib.suppress(psycopg.Error):
        await conn.rollback()
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        await conn.close()  # unusable: the pool will replace it
    return mutations


async def _wal_mode(conn: psycopg.AsyncConnection[Any]) -> bool:
    row = await (await conn.execute(load("execution").capture_mode)).fetchone()
    return bool(row and row[0] == "wal")


def _statement_summaries(ex: Execution) -> list[dict[str, Any]]:
    """With WAL capture a rolled-back transaction never reaches the decoder, and no trigger
    saw its rows: what is left to store is each writing statement — its table, its verb,
    how many rows — keyed ``{"rows": n}`` instead of a primary key, without row images."""
    now = dt.datetime.now(dt.UTC)
    out = []
    for span_id, rowcount, tables, verb in ex.statements:
        schema, _, table = (tables[0] if tables else "?").rpartition(".")
        op = verb.upper() if verb.upper() in ("INSERT", "UPDATE", "DELETE", "TRUNCATE") \
            else "UPDATE"
        out.append({"record_id": None, "table_oid": None, "table_schema": schema or "public",
                    "table_name": table, "pk": {"rows": rowcount}, "op": op, "old": None,
                    "new": None, "changed_cols": [], "request_id": ex.request_id,
                    "span_id": span_id, "actor": None, "application_name": None,
                    "txid": None, "committed_at": now})
    return out


async def _discard(ex: Execution) -> None:
    if ex.conn is not None:
        with contextlib.suppress(psycopg.Error):
            await ex.conn.rollback()
    await ex.release()


def _answer(inv: Invocation, failure: BaseException, *, stored: bool = True
            ) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body the client gets for a failure. A local replay is not
    stored, so its hint names the original (``flux why`` could not find the replay)."""
    hint = f"flux why {short(inv.request_id if stored else inv.replay_of or inv.request_id)}"
    if isinstance(failure, FunctionError):
        return failure.status, {"error": {"code": failure.error_code,
                                          "message": failure.message},
                                "request_id": inv.request_id}
    if isinstance(failure, FunctionTimeout):
        return 504, {"error": {"code": "timeout", "message": str(failure)},
                     "request_id": inv.request_id, "hint": hint}
    if isinstance(failure, Overloaded):
        return 503, {"error": {"code": "overloaded", "message": failure.message},
                     "request_id": inv.request_id}
    if connection_lost(failure):  # rolled back with its connection: safe to retry
        return 503, {"error": {"code": "unavailable", "message": LOST},
                     "request_id": inv.request_id}
    if isinstance(failure, psycopg.errors.QueryCanceled) and "timeout" in str(failure):
        return 504, {"error": {"code": "timeout",
                               "message": f"a database statement ran too long: {failure}"},
                     "request_id": inv.request_id, "hint": hint}
    return 500, {"error": {"code": "internal_error",
                           "message": f"{inv.spec.name} failed: {type(failure).__name__}"},
                 "request_id": inv.request_id, "hint": hint}


def describe_error(exc: BaseException, recorder: Recorder, scrub: Any) -> dict[str, Any]:
    """The structured error of a failed execution: type, message, codes, the user's
    file:line, the failing span and a scrubbed stack."""
    # Code without Python frames (a Wasm guest) says where it failed on the exception.
    site = getattr(exc, "flux_site", None) or recorder.site_of_traceback(exc.__traceback__)
    error: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": scrub(str(exc) or type(exc).__name__),
        "file": site.file, "line": site.line, "function": site.function,
    }
    if isinstance(exc, FunctionError):
        error.update(code=exc.error_code, http_status=exc.status)
    elif isinstance(exc, HttpStatusError):
        error.update(http_code=exc.status, url=exc.url)
    elif isinstance(exc, HttpError):
        error.update(url=exc.url, method=exc.method, code=exc.code)
    elif isinstance(exc, psycopg.Error):
        error.update({k: v for k, v in db_error(exc).items() if k not in ("type", "message")})
        if error.get("detail"):
            error["detail"] = scrub(error["detail"])
    elif isinstance(exc, Overloaded | WasmError):
        error["code"] = exc.code
    failing = [s for s in recorder.spans if s.status == "error"
               and s.kind not in ("gateway", "function")]
    if failing:
        error["span_id"] = failing[-1].id
    wasm = getattr(exc, "flux_wasm", None)
    if wasm:
        error["wasm"] = wasm  # the guest's frames: function names and offsets
        error["stack"] = [{"file": site.file, "line": site.line, "function": f["function"],
                           "code": f"offset {f['offset']:#x}"} for f in wasm["frames"]][:20]
        return error
    error["stack"] = [
        {"file": recorder.relative(f.filename), "line": f.lineno, "function": f.name,
         "code": scrub(f.line or "")}
        for f in traceback.extract_tb(exc.__traceback__)
    ][-20:]
    return error
