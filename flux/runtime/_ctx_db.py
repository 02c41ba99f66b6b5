"""``ctx.db``: SQL inside the execution's one transaction, every statement recorded.

Each statement is sent prefixed with a ``/*flux:<span id>*/`` comment, which the capture
trigger reads through ``current_query()``: every change is stamped with the span that issued
it at no extra round trip. Once the execution has written something, each later statement is
guarded by a ``SAVEPOINT``:
if it fails, the transaction is rolled back to just before it, so the executor can still
read the mutations the earlier statements made (to store them marked rolled back) before it
rolls the whole transaction back. As with plain PostgreSQL, after a failed statement the
execution's transaction accepts no more statements.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import psycopg

from flux._jsoncodec import encode
from flux.runtime._callkey import db_key
from flux.runtime._execution import begin_statement, note_mode
from flux.runtime._recorder import CallSite
from flux.store._database import db_error
from flux.store._queries import load
from flux.store._record import forget_prepared
from flux.store._statement import SqlInfo, sql_info

if TYPE_CHECKING:
    from flux.runtime._execution import Execution

Params = list[Any] | tuple[Any, ...] | dict[str, Any] | None


class Database:
    """The ``ctx.db`` door. Methods are coroutines in async handlers and plain calls in
    sync handlers (which run in a thread)."""

    def __init__(self, execution: Execution) -> None:
        self._ex = execution

    def execute(self, query: str, params: Params = None) -> Any:
        """Run a statement; returns the number of rows it affected."""
        return self._ex.bridge(self._run("execute", query, params, self._ex.recorder.call_site()))

    def fetchone(self, query: str, params: Params = None) -> Any:
        """The first row as a dict, or None."""
        return self._ex.bridge(self._run("fetchone", query, params, self._ex.recorder.call_site()))

    def fetchall(self, query: str, params: Params = None) -> Any:
        """All rows, as dicts."""
        return self._ex.bridge(self._run("fetchall", query, params, self._ex.recorder.call_site()))

    def fetchval(self, query: str, params: Params = None) -> Any:
        """The first column of the first row, or None."""
        return self._ex.bridge(self._run("fetchval", query, params, self._ex.recorder.call_site()))

    async def _run(self, mode: str, query: str, params: Params, site: CallSite) -> Any:
        ex = self._ex
        rec = ex.recorder
        info = sql_info(query)
        encoded = encode(params)  # once: the span shows it, the key hashes it
        attrs = {"sql": query, "params": encoded, "tables": list(info.tables),
                 "verb": info.verb, "fingerprint": info.fingerprint}
        # secret parameters fingerprinted
        key = db_key(query, params, rec.secret_marks, encoded=encoded)
        with rec.span(info.span_name, "db", site, attrs) as span:
            if ex.replay is not None:  # replay and resume serve (some) calls from a tape
                served = await ex.replay.db(mode, query, params, span, site, key=key)
                if served is not None:
                    return served.value
            try:
                rows, rowcount, columns = await self._live(query, params, span.id, info)
            except psycopg.Error as exc:
                error = db_error(exc)
                span.error = error
                rec.tape_append("db", key, {"error": error}, site=site,
                                span_id=span.id)
                raise
            span.attrs["rowcount"] = rowcount
            value = {"rows": encode(rows), "rowcount": rowcount, "columns": columns}
            if ex.replay is not None and hasattr(ex.replay, "observed_db"):
                ex.replay.observed_db(span, value)  # resume compares reads with the tape
            rec.tape_append("db", key, ex.policy.cap(value), site=site,
                            span_id=span.id)
            return shape(mode, rows, rowcount)

    async def _live(self, query: str, params: Params, span_id: str, info: SqlInfo
                    ) -> tuple[list[dict[str, Any]] | None, int, list[str] | None]:
        ex = self._ex
        q = load("execution")
        # Once the execution has written something there is an attempt to salvage if a
        # statement fails: then, and only then, a savepoint guards each statement.
        writes = info.verb not in ("select",) or bool(info.written)
        protect = ex.has_written
        async with ex.db_lock:
            if ex.db_failed is not None:
                raise psycopg.errors.InFailedSqlTransaction(
                    "current transaction is aborted: an earlier ctx.db statement of this "
                    f"execution failed ({ex.db_failed})")
            conn = ex.conn
            try:
                # Plain round trips, not a pipeline: on loopback a round trip costs less
                # than psycopg's pipeline machinery does in Python (measured in bench/).
                if conn is None:
                    # BEGIN, the request GUC and the first statement in one simple query
                    # (psycopg binds the parameters client-side): a round trip saved.
                    cur = await ex.begin_with(
                        lambda c: _first_statement(c, ex, query, params, span_id))
                else:
                    cur = conn.cursor()
                    if protect:
                        # The previous statement's savepoint is released here, not after it.
                        await conn.execute(q.savepoint_next if ex.savepoint_open
                                           else q.savepoint)
                        ex.savepoint_open = True
                    await cur.execute(tagged(query, span_id), params)
                if ex.conn is not None and \
                        query[:16].lstrip().lower().startswith("deallocate"):
                    forget_prepared(ex.conn)  # the record's prepared statements went too
            except psycopg.Error as exc:
                ex.db_failed = type(exc).__name__
                if protect and conn is not None and not ex.broken(conn):
                    # Back to before this statement: the transaction stays readable, so
                    # the executor can salvage what the earlier statements changed.
                    await conn.execute(q.rollback_to)
                raise
            except asyncio.CancelledError:
                ex.mark_cancelled()
                raise
            if writes:
                ex.has_written = True
                # For WAL capture: which statement made which changes (sql/0008).
                kind = "truncate" if info.span_name.lower().startswith("truncate") else info.verb
                ex.statements.append([span_id, cur.rowcount,
                                      list(info.written or info.tables), kind])
            # Rows as tuples, made into dicts here: psycopg's dict_row would name the
            # columns once more than the record needs them, and each ``description`` read
            # builds its Column objects anew.
            description = cur.description
            if description is None:
                return None, cur.rowcount, None
            columns = [c.name for c in description]
            rows = [dict(zip(columns, row, strict=False)) for row in await cur.fetchall()]
            return rows, cur.rowcount, columns


async def _first_statement(conn: psycopg.AsyncConnection[Any], ex: Execution, query: str,
                           params: Params, span_id: str) -> psycopg.AsyncCursor[Any]:
    """Begin the execution's transaction with its first statement; return the cursor on
    that statement's result."""
    cur = psycopg.AsyncClientCursor(conn)
    begin = begin_statement(ex.request_id, ex.tenant, conn)
    # The statement is bound on its own (psycopg caches how to bind a text it has seen, and
    # the user's text repeats while the BEGIN, which holds the request id, never does), then
    # sent with the BEGIN as one text without parameters. The span comment goes first: the
    # capture trigger reads it from the start of current_query(), which is this whole
    # string (sql/0007).
    bound = query.encode() if params is None else \
        cur.mogrify(query, params).encode(conn.info.encoding)
    await cur.execute(f"/*flux:{span_id}*/ ".encode() + begin + b"; " + bound)
    note_mode(ex, cur)  # BEGIN and its SELECT come first
    while cur.nextset():
        pass  # the caller reads the last result
    return cur


def tagged(query: str, span_id: str) -> str:
    """The statement as sent: prefixed with the comment the capture trigger reads its span
    from (sql/0007). Span ids are positional (``s4``), so one code path sends one text and
    psycopg's prepared statements still apply."""
    return f"/*flux:{span_id}*/ {query}"


def shape(mode: str, rows: list[dict[str, Any]] | None, rowcount: int) -> Any:
    """What each ctx.db method returns, from the rows of a statement."""
    if mode == "execute":
        return rowcount
    if mode == "fetchall":
        return rows or []
    first = rows[0] if rows else None
    if mode == "fetchone":
        return first
    return next(iter(first.values())) if first else None


#END
