"""The replication stream of a slot, on the real server: the same messages the SQL functions
return, a confirmed position the server keeps, and a refusal named as such."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from flux.capture import _consumer, _mode
from flux.capture._consumer import APPLICATION_NAME
from flux.capture._pgoutput import Commit, Keepalive, XLogData, decode, parse_lsn
from flux.capture._walstream import ReplicationUnavailable, WalStream

PEEK = ("SELECT data FROM pg_logical_slot_peek_binary_changes('s_slot', NULL, NULL, "
        "'proto_version', '1', 'publication_names', 's_pub', 'messages', 'true')")


@pytest.fixture
def slot(db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        conn.execute("ALTER TABLE t REPLICA IDENTITY FULL")
        conn.execute("CREATE PUBLICATION s_pub FOR TABLE t")
        conn.execute("SELECT pg_create_logical_replication_slot('s_slot', 'pgoutput')")
        yield conn


def _write(conn: psycopg.Connection, first: int, count: int) -> None:
    for i in range(first, first + count):
        with conn.transaction():
            conn.execute("SELECT pg_logical_emit_message(true, 'flux', %s)", [f'{{"n": {i}}}'])
            conn.execute("INSERT INTO t VALUES (%s, 'a')", [i])
            conn.execute("UPDATE t SET name = 'b' WHERE id = %s", [i])


def _stream_until(stream: WalStream, lsn: int) -> list[bytes]:
    """The pgoutput messages the stream sends until the server says it has read to
    ``lsn`` (and nothing is half sent)."""
    payloads: list[bytes] = []
    open_txn = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        frames = stream.read(0.5)
        for f in frames:
            if isinstance(f, XLogData):
                payloads.append(f.payload)
                open_txn = f.payload[:1] != b"C"
            elif isinstance(f, Keepalive) and not open_txn and f.wal_end >= lsn:
                return payloads
        if not frames:
            stream.confirm(0, reply=True)  # ask where the server is
    raise AssertionError("the stream did not reach the current WAL position")


def _confirmed(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                       "WHERE slot_name = 's_slot'").fetchone()
    assert row is not None
    return parse_lsn(row[0])


def test_the_stream_sends_what_the_sql_functions_return(db: str,
                                                         slot: psycopg.Connection) -> None:
    _write(slot, 1, 20)
    peeked = [decode(bytes(r[0])) for r in slot.execute(PEEK).fetchall()]
    now = parse_lsn(slot.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]
    with WalStream.open(db, "s_slot", "s_pub", application_name=APPLICATION_NAME) as stream:
        streamed = [decode(p) for p in _stream_until(stream, now)]
    assert streamed == peeked
    assert sum(isinstance(m, Commit) for m in streamed) == 20


def test_the_server_resends_only_what_was_not_confirmed(db: str,
                                                        slot: psycopg.Connection) -> None:
    _write(slot, 1, 10)
    now = parse_lsn(slot.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]
    with WalStream.open(db, "s_slot", "s_pub", application_name=APPLICATION_NAME) as stream:
        first = [decode(p) for p in _stream_until(stream, now)]
        commits = [m for m in first if isinstance(m, Commit)]
        stored = commits[3].end_lsn  # say the first four transactions are stored
        stream.confirm(stored)
        deadline = time.monotonic() + 30
        while _confirmed(slot) != stored and time.monotonic() < deadline:
            time.sleep(0.05)  # the server takes the update in its own time
        assert _confirmed(slot) == stored
        stream.end()
    _write(slot, 11, 2)
    now = parse_lsn(slot.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]
    with WalStream.open(db, "s_slot", "s_pub", application_name=APPLICATION_NAME) as stream:
        again = [m for m in map(decode, _stream_until(stream, now)) if isinstance(m, Commit)]
        stream.end()
    assert [c.commit_lsn for c in again[:6]] == [c.commit_lsn for c in commits[4:]]
    assert len(again) == 6 + 2 and again[6].commit_lsn > commits[-1].commit_lsn
    # end() left the slot free: it can be dropped at once.
    slot.execute("SELECT pg_drop_replication_slot('s_slot')")


def test_a_role_without_replication_is_refused_in_one_sentence(
        db: str, slot: psycopg.Connection) -> None:
    slot.execute("DROP ROLE IF EXISTS flux_no_replication")
    slot.execute("CREATE ROLE flux_no_replication LOGIN")
    try:
        with pytest.raises(ReplicationUnavailable) as caught:
            WalStream.open(f"{db} user=flux_no_replication", "s_slot", "s_pub",
                           application_name=APPLICATION_NAME)
        assert "refused a replication connection" in str(caught.value)
        assert "REPLICATION" in (caught.value.hint or "")
    finally:
        slot.execute("SELECT pg_drop_replication_slot('s_slot')")
        slot.execute("DROP ROLE flux_no_replication")


def test_a_local_only_stream_leaves_out_what_a_session_with_an_origin_wrote(
        db: str, slot: psycopg.Connection) -> None:
    with psycopg.connect(db, autocommit=True) as other:
        other.execute("SELECT pg_replication_origin_create('s_origin')")
        other.execute("SELECT pg_replication_origin_session_setup('s_origin')")
        _write(other, 1, 3)  # stamped with the origin, as the consumer's own writes are
        other.execute("SELECT pg_replication_origin_session_reset()")
        _write(other, 10, 2)
    _write(slot, 20, 2)
    lsn = parse_lsn(slot.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]
    with WalStream.open(db, "s_slot", "s_pub", application_name=APPLICATION_NAME,
                        local_only=True) as stream:
        payloads = _stream_until(stream, lsn)
    inserted = [decode(p).new[0] for p in payloads if p[:1] == b"I"]  # type: ignore[union-attr]
    assert inserted == [b"10", b"11", b"20", b"21"]


def test_the_consumer_takes_its_origin_off_the_callers_connection(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
        _mode.switch(db, "wal")
        conn.execute("INSERT INTO accounts VALUES (1, 10)")
        assert _consumer.Consumer(db).drain(conn).applied == 1
        origin = conn.execute("SELECT pg_replication_origin_session_is_setup()").fetchone()
        assert origin == (False,)  # the caller's next writes are captured like any other
        conn.execute("UPDATE accounts SET balance = 11 WHERE id = 1")
        assert _consumer.Consumer(db).drain(conn).applied == 1
        stored = conn.execute("SELECT op FROM flux.state_mutations WHERE source = 'wal' "
                              "ORDER BY lsn, lsn_seq").fetchall()
        assert stored == [("INSERT",), ("UPDATE",)]
        used = conn.execute("SELECT count(*) FROM pg_replication_origin "
                            "WHERE roname = 'flux_capture'").fetchone()
        assert used == (1,)
