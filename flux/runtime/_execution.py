"""The resources of one running execution: its recorder, its database transaction, and the
bridge that lets a sync handler (running in a thread) use the async ctx doors.

The transaction is opened lazily, on the first ``ctx.db`` call or queue push, and held by
this object until the executor commits it (writing the record in it) or rolls it back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import re
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.abc import AdaptContext

from flux._tracecontext import TraceContext, span_id
from flux.runtime._recorder import CallSite, Recorder, Span
from flux.store._availability import connection_lost
from flux.store._queries import load

if TYPE_CHECKING:
    from flux.runtime._redact import RedactionPolicy
    from flux.runtime._runtime import Runtime

T = TypeVar("T")


@dataclass(frozen=True)
class Served:
    """A value a replay source answered with (``value`` may itself be None)."""

    value: Any


class ReplaySource(Protocol):
    """Where replay and resume take outside values from instead of the world. A method
    returns None to let the call run live."""

    async def db(self, mode: str, query: str, params: Any, span: Span, site: CallSite, *,
                 key: str) -> Served | None: ...

    async def http(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                   span: Span, site: CallSite, *, key: str) -> Served | None: ...
    # ``key``: the call's tape key, made by flux.runtime._callkey over its redacted form.

    def value(self, kind: str, key: str, site: CallSite) -> Served | None: ...


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def begin_statement(request_id: str, tenant: str | None = None,
                    context: AdaptContext | None = None, *, ask: bool = True) -> bytes:
    """BEGIN and the execution's GUCs, as one simple query; with ``ask`` (every execution)
    it also reads the capture mode under the switch's lock (``note_mode`` reads the
    answer)."""
    # Only a real UUID ever reaches the SQL text: Flux's own ids are its canonical text
    # (checked by a pattern, a fifth of what parsing costs); anything else is parsed.
    rid = request_id if _CANONICAL_UUID.fullmatch(request_id) else str(uuid.UUID(request_id))
    text = _begin_template(tenant is not None, ask).replace("{request_id}", rid)
    if tenant is not None:
        # The tenant comes from a request: quoted by psycopg, put in last.
        text = text.replace("{tenant}", sql.Literal(tenant).as_string(context))
    return text.encode()


@functools.cache
def _begin_template(tenant: bool, ask: bool = True) -> str:
    """The BEGIN statement's text without its comment lines (made once: each execution
    that uses the database sends it)."""
    q = load("execution")
    if ask:
        template = q.begin_mode_tenant if tenant else q.begin_mode
    else:
        template = q.begin_tenant if tenant else q.begin
    return "\n".join(line for line in template.splitlines() if not line.startswith("--"))


def note_mode(ex: Execution, cur: psycopg.AsyncCursor[Any]) -> None:
    """What the BEGIN (``cur`` on its first result) read under the switch's lock: the
    record may travel in the WAL (capture mode "wal" and a project that captures by WAL),
    and whether the commit must stamp the transaction with end_execution (the mode was
    not read as another than "wal"). Leaves ``cur`` on the BEGIN's last result."""
    if not cur.nextset():  # BEGIN → the SELECT
        ex.wal_record, ex.stamp = False, True
        return
    result = cur.pgresult
    value = result.get_value(0, 0) if result is not None and result.ntuples == 1 else None
    ex.wal_record = value == b"t" and ex.wal_project
    ex.stamp = value != b"f"


class Execution:
    """One execution's transaction and recorder, shared by its ctx doors."""

    def __init__(self, runtime: Runtime, recorder: Recorder, *,
                 replay: ReplaySource | None = None,
                 idempotency_prefix: str | None = None,
                 trace: TraceContext | None = None, tenant: str | None = None) -> None:
        self.runtime = runtime
        self.policy: RedactionPolicy = runtime.policy  # read a dozen times per request
        self.tenant = tenant
        self.recorder = recorder
        self.request_id = recorder.request_id
        # The caller's trace (a traceparent the gateway accepted), else one of our own.
        self.trace = trace or TraceContext.start(self.request_id)
        self.replay = replay
        self.conn: AsyncConnection[Any] | None = None
        self.savepoint_open = False  # released lazily, before the next statement
        # The BEGIN read capture mode "wal" under its shared lock: the record may travel in
        # the transaction's WAL (sql/queries/execution.sql: begin, emit_record).
        self.wal_record = False
        # The project captures by WAL: a "wal" answer sends the record in the WAL.
        self.wal_project = runtime.project.capture == "wal"
        # The commit sends end_execution (WAL capture's stamp) unless the BEGIN read
        # another mode than "wal" under the switch's lock (no switch commits before it).
        self.stamp = True
        # [span id, row count, tables, verb] of each statement that wrote, in order
        self.statements: list[list[Any]] = []
        self.has_written = False  # a statement that can write has succeeded
        self.db_failed: str | None = None  # the error that aborted the transaction
        self.cancelled = False
        self.db_lock = asyncio.Lock()
        self.loop = asyncio.get_running_loop()
        self._idempotency_prefix = idempotency_prefix or self.request_id
        self._handed: list[Coroutine[Any, Any, Any]] = []  # ctx calls given to async code

    def prepare_body(self, body: Any) -> Any:
        """Redact, scrub secret values and cap a body before it is recorded."""
        return self.policy.prepare(body, self.recorder.secret_values)

    def idempotency_key(self, call_seq: int) -> str:
        return f"{self._idempotency_prefix}-{call_seq}"

    def traceparent(self, span: Span) -> str:
        """The ``traceparent`` an outgoing call made under ``span`` sends: this trace, and
        the id ``span`` is exported with."""
        return self.trace.traceparent(span_id(self.request_id, span.id))

    async def connection(self) -> AsyncConnection[Any]:
        """The execution's connection, taken from the pool and its transaction begun on
        first use."""
        if self.conn is None:
            # The transaction and the request GUC the capture triggers read, in one round
            # trip (a simple query; the id is a UUID Flux made, so the literal is safe).
            statement = begin_statement(self.request_id, self.tenant)

            async def run(conn: AsyncConnection[Any]) -> None:
                note_mode(self, await conn.execute(statement, prepare=False))

            self.conn = await self.runtime.begin(run)
        return self.conn

    async def begin_with(self, first: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Take the connection and begin the transaction with the execution's first
        statement, in one round trip: ``first`` sends both on the connection it is given.
        If nothing began, the connection goes back to the pool."""
        results: list[T] = []
        failed: list[BaseException] = []

        async def run(conn: AsyncConnection[Any]) -> None:
            try:
                results.append(await first(conn))
            except BaseException as exc:
                if (conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                        or connection_lost(exc)):
                    raise  # nothing began, or the connection is gone: runtime.begin decides
                # The transaction began and its first statement failed (or was cancelled):
                # the execution keeps the connection, to roll back and record as after any
                # failed statement.
                failed.append(exc)

        self.conn = await self.runtime.begin(run)
        if failed:
            raise failed[0]
        return results[-1]

    def broken(self, conn: AsyncConnection[Any]) -> bool:
        return conn.closed or conn.info.transaction_status == psycopg.pq.TransactionStatus.UNKNOWN

    def mark_cancelled(self) -> None:
        self.cancelled = True

    async def release(self) -> None:
        """Give the connection back to the pool (rolled back if anything is left open)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            await self.runtime.pool.putconn(conn)

    def not_awaited(self) -> list[Coroutine[Any, Any, Any]]:
        """The ctx calls an async handler was handed and never ran (a missing ``await``).
        The caller closes them (so Python does not warn about them later)."""
        if not self._handed:
            return []
        idle = [c for c in self._handed
                if inspect.getcoroutinestate(c) == inspect.CORO_CREATED]
        self._handed.clear()
        return idle

    def bridge(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Return the coroutine to an async caller; run it to completion for a sync handler
        calling from its worker thread, in the caller's context (so spans nest right)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            self._handed.append(coro)
            return coro
        context = contextvars.copy_context()
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def start() -> None:
            task = self.loop.create_task(coro, context=context)

            def finish(t: asyncio.Task[Any]) -> None:
                if t.cancelled():
                    done.cancel()
                elif (exc := t.exception()) is not None:
                    done.set_exception(exc)
                else:
                    done.set_result(t.result())

            task.add_done_callback(finish)

        self.loop.call_soon_threadsafe(start)
        return done.result()
