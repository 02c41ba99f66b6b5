"""Records that travel in the WAL (flux/capture/_records.py): the message's three lines, and
the writer that stores them — never twice, and never stopping the consumer on a record
already stored."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from flux._ids import new_request_id_text
from flux.capture._mutations import Transaction
from flux.capture._pgoutput import Begin
from flux.capture._records import RecordWriter, take_record
from flux.store._record import ExecutionRecord, wal_payload


def _line(request_id: str) -> bytes:
    record = ExecutionRecord(
        request_id=request_id, kind="http", function="f\tg", status="ok", http_status=200,
        started_at=dt.datetime.now(dt.UTC), duration_ms=1.5, request={"body": "a\\b\n"},
        response={"status": 200}, error=None, spans=[], tape=[], logs=[], code_sha=None,
        code_dirty=False)
    payload = wal_payload(record, [["s1", 2, ["orders"], "insert"]])
    assert payload is not None
    return payload


def test_a_record_message_gives_its_transaction_the_request_and_the_line() -> None:
    rid = new_request_id_text()
    payload = _line(rid)
    actor = b'{"actor":"app","application_name":"flux","tenant":null}'
    txn = Transaction(Begin(0, dt.datetime.now(dt.UTC), 1))
    take_record(txn, actor + b"\n" + payload)
    assert txn.request == {"request_id": rid, "statements": [["s1", 2, ["orders"], "insert"]],
                           "actor": "app", "application_name": "flux", "tenant": None}
    assert txn.records == [payload.split(b"\n", 1)[1] + b"\n"]


def test_a_record_already_stored_stops_copy_and_is_kept_when_tolerant(
        conn: psycopg.Connection) -> None:
    first, second = new_request_id_text(), new_request_id_text()
    lines = [_line(first).split(b"\n", 1)[1] + b"\n"]
    writer = RecordWriter()
    with conn.transaction():
        assert writer.write(conn, lines) == 1
    both = [*lines, _line(second).split(b"\n", 1)[1] + b"\n"]
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        writer.write(conn, both)
    with conn.transaction():
        assert writer.write(conn, both, tolerant=True) == 1  # the new one only
    rows = conn.execute("SELECT request_id::text, function, request::text FROM "
                        "flux.trace_requests ORDER BY request_id").fetchall()
    assert rows == [(first, "f\tg", '{"body":"a\\\\b\\n"}'),
                    (second, "f\tg", '{"body":"a\\\\b\\n"}')]
