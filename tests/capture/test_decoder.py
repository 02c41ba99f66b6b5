"""WAL capture's C decoder (extension/flux_decode.c): the slot gets it where the server can
load it, and the rows it gives are pgoutput's, column by column, for the same WAL."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import psycopg
import pytest

from flux.capture import _consumer, _mode
from flux.store import _native as native

REQ = uuid.UUID("01900000-0000-7000-8000-0000000000d1")

# Every path of a row: a one-column key, a composite key, no key (the whole row), a dropped
# column, numbers equal as JSON but not as bytes (an update that changed nothing), nulls,
# jsonb, arrays, timestamps, COPY's and JSON's special characters, non-ASCII names and
# values, an unchanged TOASTed value, a key that changes, a truncate, a request's message
# with its statements (spans), writes from outside Flux (the actor's messages).
SETUP = """
CREATE TABLE one (id bigint PRIMARY KEY, "Zeta" text, amount numeric, tags text[],
                  doc jsonb, gone int, "émoji" text, note text, at timestamptz, ok boolean);
ALTER TABLE one DROP COLUMN gone;
CREATE TABLE two (a int, b text, v numeric, PRIMARY KEY (b, a));
CREATE TABLE keyless (x int, y text);
CREATE TABLE "Ünï" (id int PRIMARY KEY);
"""
WORKLOAD = [
    [
        "INSERT INTO one VALUES (1, 'z', 1.0, '{a,\"b c\"}', '{\"k\": [1, null]}', "
        "E'\\u00e9\\t\\\\', NULL, '2024-01-02 03:04:05+02', true)"
    ],
    ["UPDATE one SET amount = 1.00 WHERE id = 1"],  # equal as JSON: no row
    ["UPDATE one SET amount = 2.50, note = E'line\\nnext \"q\"' WHERE id = 1"],
    ['UPDATE one SET "Zeta" = NULL, doc = \'{"k": 2}\', "émoji" = \'😀\', ok = NULL WHERE id = 1'],
    [
        "INSERT INTO one (id, note) VALUES (2, repeat(md5('x'), 800))",
        "UPDATE one SET \"Zeta\" = 'toast kept' WHERE id = 2",
    ],
    ["INSERT INTO two VALUES (1, 'x', 2), (2, 'x', 3), (3, 'y', 1.5)"],
    ["UPDATE two SET v = v * 10 WHERE a = 2", "UPDATE two SET a = 4 WHERE a = 3"],
    ["INSERT INTO keyless VALUES (1, 'a'), (NULL, NULL)", "DELETE FROM keyless WHERE x IS NULL"],
    ["DELETE FROM two WHERE a = 1", "DELETE FROM one"],
    ["TRUNCATE keyless"],
    ['INSERT INTO "Ünï" VALUES (1)'],  # a name only Python lowers: the rows go as changes
]
# A request whose statements claim rows as the consumer's spans do (flux/capture/_mutations.py:
# assign_spans_to): counts, a change no statement claims, a schema-qualified and upper-case
# table, a statement without a kind, a truncate's own statement, one that touches any table.
SPANS = (
    [
        "INSERT INTO two VALUES (10, 'p', 1), (11, 'p', 1), (12, 'p', 1)",
        "INSERT INTO keyless VALUES (5, 'k')",
        "TRUNCATE keyless",
        "INSERT INTO one (id) VALUES (7)",
    ],
    [
        ["p1", 2, ["public.TWO"], "insert"],
        ["p2", 1, ["KEYLESS"]],
        ["p3", 0, ["keyless"], "truncate"],
        ["p4", 1, [], "insert"],
    ],
)
COMPARED = (
    "record_id",
    "table_oid",
    "table_schema",
    "table_name",
    "pk",
    "op",
    "old",
    "new",
    "changed_cols",
    "request_id",
    "span_id",
    "actor",
    "application_name",
    "tenant",
    "txid",
    "committed_at",
    "source",
    "lsn",
    "lsn_seq",
)


def _workload(conn: psycopg.Connection[Any]) -> None:
    for number, statements in enumerate(WORKLOAD):
        with conn.transaction():
            if number % 3 == 1:  # as a Flux execution's end: its request and statements
                conn.execute(
                    "SELECT pg_logical_emit_message(true, 'flux', %s::text)",
                    [
                        orjson.dumps(
                            {
                                "request_id": str(REQ),
                                "actor": "tester",
                                "application_name": "flux",
                                "tenant": "acme",
                                "statements": [
                                    [
                                        f"s{number}{i}",
                                        -1 if i else 1,
                                        ["one", "two", "keyless"],
                                        "write",
                                    ]
                                    for i in range(len(statements))
                                ],
                            }
                        ).decode()
                    ],
                )
            for statement in statements:
                conn.execute(statement)
    with conn.transaction():
        message = {"request_id": str(REQ), "actor": "tab\there", "application_name": None,
                   "statements": SPANS[1]}
        conn.execute("SELECT pg_logical_emit_message(true, 'flux', %s::text)",
                     [orjson.dumps(message).decode()])
        for statement in SPANS[0]:
            conn.execute(statement)


def _stored(conn: psycopg.Connection[Any], after: int) -> list[str]:
    rows = conn.execute(
        f"SELECT {', '.join(COMPARED)} FROM flux.state_mutations "
        "WHERE source = 'wal' AND id > %s ORDER BY lsn, lsn_seq",
        [after],
    ).fetchall()
    return [orjson.dumps(dict(zip(COMPARED, r, strict=True)), default=str).decode() for r in rows]


def test_the_c_decoder_stores_what_pgoutput_stores(db: str) -> None:
    """One WAL, two slots (the C decoder's, which the switch creates, and a pgoutput one
    beside it), each drained by its consumer: the same rows, value for value."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(SETUP)
        _mode.switch(db, "wal")
        plugin = conn.execute(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", [_consumer.SLOT]
        ).fetchone()
        assert plugin is not None and _consumer.is_native(plugin[0]), plugin
        start = conn.execute(
            "SELECT lsn::text FROM pg_create_logical_replication_slot("
            "'flux_capture_pg', 'pgoutput')"
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO flux.capture_state (slot, wal_from) VALUES "
            "('flux_capture_pg', %s::pg_lsn)",
            [start],
        )
        _workload(conn)
        pg = _consumer.Consumer(db, slot="flux_capture_pg")
        pg_result = pg.drain(conn)
        assert not pg.native
        by_pgoutput = _stored(conn, 0)
        last = conn.execute("SELECT max(id) FROM flux.state_mutations").fetchone()[0]  # type: ignore[index]
        c = _consumer.Consumer(db)
        c_result = c.drain(conn)
        assert c.native
        by_c = _stored(conn, last)
        conn.execute("SELECT pg_drop_replication_slot('flux_capture_pg')")
    assert len(by_pgoutput) == pg_result.applied == c_result.applied == 24
    assert by_c == by_pgoutput
    # Every transaction's rows came whole from the C decoder but the non-ASCII table's.
    assert c.decoder.whole == len(WORKLOAD)
    ops = [orjson.loads(r)["op"] for r in by_c]
    assert ops.count("TRUNCATE") == 2 and ops.count("DELETE") == 4
    assert any('"span_id":"s40"' in r and str(REQ) in r for r in by_c)  # its statement's
    spans = [(r["table_name"], r["span_id"], r["actor"]) for r in map(orjson.loads, by_c[-6:])]
    assert spans == [("two", "p1", "tab\there")] * 3 + [
        ("keyless", "p2", "tab\there"), ("keyless", "p3", "tab\there"), ("one", "p4", "tab\there")]
    assert all('"pk":null' not in r for r in by_c if '"op":"TRUNCATE"' not in r)


def test_the_slot_keeps_pgoutput_where_the_decoder_cannot_load(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FLUX_NATIVE_CAPTURE=0 (or no superuser, no compiler, a remote server): pgoutput, and
    capture goes on as before."""
    monkeypatch.setenv(native.ENV, "0")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(SETUP)
        _mode.switch(db, "wal")
        plugin = conn.execute(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", [_consumer.SLOT]
        ).fetchone()
        assert plugin == ("pgoutput",)
        _workload(conn)
        consumer = _consumer.Consumer(db)
        assert consumer.drain(conn).applied == 24
        assert not consumer.native
