"""The executions' records that travel in the WAL (capture mode "wal").

In WAL mode the executor sends a committing execution's record as one transactional logical
message, prefix ``flux.record`` (sql/queries/execution.sql: emit_record), instead of
inserting it: the message commits if and only if its transaction does. Its content is three
lines: the session's actor (JSON, written by the server), the request id and the statements
that wrote (JSON, what end_execution's ``flux`` message carries), and the record as one line
of COPY text for flux.trace_requests (flux/store/_record.py: wal_payload). The consumer
(flux/capture/_consumer.py) keeps the line with its transaction and copies it into
flux.trace_requests in the same apply transaction as that transaction's changes, under the
same progress row: a record is written exactly once, however often the consumer is killed.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg

from flux.capture._mutations import Transaction
from flux.store._queries import load

PREFIX = "flux.record"


def take_record(txn: Transaction, content: bytes) -> None:
    """Keep a ``flux.record`` message's record with its transaction, and its request and
    statements as the transaction's request (the changes are stamped with them)."""
    actor_end = content.index(b"\n")
    request_end = content.index(b"\n", actor_end + 1)
    request = orjson.loads(content[actor_end + 1:request_end])
    request.update(orjson.loads(content[:actor_end]))
    txn.request = request
    txn.records.append(content[request_end + 1:] + b"\n")


class RecordWriter:
    """Writes records' COPY lines into flux.trace_requests on the apply session: by COPY
    where row-level security does not apply to the session (COPY FROM refuses it), else
    through a session-local table and one ``INSERT … SELECT``."""

    def __init__(self) -> None:
        self._copy_for: tuple[tuple[int, int], bool] | None = None
        self._stage_for: tuple[int, int] | None = None

    def write(self, conn: psycopg.Connection[Any], lines: list[bytes], *,
              tolerant: bool = False) -> int:
        """Store ``lines`` inside the caller's transaction; how many. ``tolerant``: a record
        whose request id is already stored is left as it is (the batch is tried so after
        COPY met one; it should not happen — a request's record is either inserted or in
        the WAL — but a consumer must never stop on it)."""
        if not lines:
            return 0
        q = load("capture")
        key = (id(conn), conn.info.backend_pid)
        if self._copy_for is None or self._copy_for[0] != key:
            row = conn.execute(q.record_copy_allowed).fetchone()
            self._copy_for = (key, bool(row and row[0]))
        data = b"".join(lines)
        if self._copy_for[1] and not tolerant:
            with conn.cursor().copy(q.copy_records) as copy:
                copy.write(data)
            return len(lines)
        if self._stage_for != key:
            conn.execute(q.create_record_stage)
            self._stage_for = key
        with conn.cursor().copy(q.copy_record_stage) as copy:
            copy.write(data)
        return max(conn.execute(q.apply_record_stage).rowcount, 0)

