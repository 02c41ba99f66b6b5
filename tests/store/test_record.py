"""The record's write path: its parameters inlined by ``bind`` (one simple query with the
COMMIT), read back by PostgreSQL exactly as given, whatever the text holds; and records
stored uncompressed up to a page (sql/0014)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import psycopg
import pytest
from psycopg.types.json import Json, Jsonb

from flux.store._record import _bind_text, _dumps, bind

AWKWARD = [
    "plain",
    "it's",
    "back\\slash \\' \\\\",
    "$flux$",
    "end$",
    "a$flux",
    "x$fl",
    "$",
    "$$",
    "",
    "ünïcode ☃ 𝄞",
    "'; DROP TABLE flux.trace_requests; --",
    "E'\\'",
    "$flux$'); DROP TABLE x; --",
    "tab\tnew\nline",
]


@pytest.mark.parametrize("conforming", ["on", "off"])
def test_bind_reads_back_every_text_as_given(conn: psycopg.Connection, conforming: str) -> None:
    conn.execute(f"SET standard_conforming_strings = {conforming}")
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    for text in AWKWARD:
        query = bind(
            "SELECT %(t)s::text, %(j)s, %(f)s, %(d)s, %(b)s, %(n)s, %(i)s, '100%%'",
            {
                "t": text,
                "j": Jsonb({"k": text, text: [1, None]}, dumps=_dumps),
                "f": 1.25,
                "d": at,
                "b": False,
                "n": None,
                "i": 7,
            },
        )
        row = conn.execute(query).fetchone()
        assert row == (text, {"k": text, text: [1, None]}, 1.25, at, False, None, 7, "100%"), text


def test_bind_turns_nul_into_the_replacement_character(conn: psycopg.Connection) -> None:
    query = bind(
        "SELECT %(t)s::text, %(j)s", {"t": "a\x00b", "j": Jsonb({"v": "a\x00b"}, dumps=_dumps)}
    )
    assert conn.execute(query).fetchone() == ("a\ufffdb", {"v": "a\ufffdb"})


def test_bind_quotes_other_types_as_psycopg_does(conn: psycopg.Connection) -> None:
    # a replay's or resume's parent id is the uuid.UUID read back from its record
    parent = uuid.UUID("01f00000-0000-7000-8000-0000000000aa")
    query = bind("SELECT %(u)s, %(d)s", {"u": parent, "d": decimal.Decimal("1.50")})
    assert conn.execute(query).fetchone() == (parent, decimal.Decimal("1.50"))


def test_record_partitions_keep_rows_uncompressed_up_to_a_page(conn: psycopg.Connection) -> None:
    made = conn.execute(
        "SELECT flux.ensure_partition('trace_requests', '2031-03-04'),"
        " flux.ensure_partition('state_mutations', '2031-03-04')"
    ).fetchone()
    assert made == (True, True)
    options = dict(
        conn.execute(
            "SELECT c.relname, c.reloptions FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent IN ('flux.trace_requests'::regclass,"
            " 'flux.state_mutations'::regclass)"
        ).fetchall()
    )
    assert options["trace_requests_20310304"] == ["toast_tuple_target=8160"]
    assert options["trace_requests_default"] == ["toast_tuple_target=8160"]
    assert options["state_mutations_20310304"] is None  # captured rows are small
    # A 3 KB record is stored as it came: no compression on the request path.
    request_id = str(uuid.UUID("01f00000-0000-7000-8000-000000000001"))
    spans = [
        {"id": f"s{i}", "name": "db.select(items)", "attrs": {"sql": "x" * 500 + str(i)}}
        for i in range(6)
    ]
    conn.execute(
        "INSERT INTO flux.trace_requests (request_id, status, started_at, spans)"
        " VALUES (%s, 'ok', now(), %s)",
        [request_id, Jsonb(spans)],
    )
    compressed = conn.execute(
        "SELECT pg_column_compression(spans) FROM flux.trace_requests WHERE request_id = %s",
        [request_id],
    ).fetchone()
    assert compressed == (None,)


def test_bind_builds_the_bytes_the_text_form_builds() -> None:
    # On a UTF-8 connection bind builds bytes directly; any other encoding takes the text
    # form. Both give the same query for every awkward text and every type a record holds.
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    for text in [*AWKWARD, "a\x00b", "\ud800 lone", "ends in $fl", "ends in $"]:
        params = {
            "t": text,
            "j": Json({"k": text, text: [1, None, 2.5]}, dumps=_dumps),
            "b": Jsonb([text, {"deep": text}], dumps=_dumps),
            "f": 1.25, "d": at, "no": False, "yes": True, "n": None, "i": 7,
            "u": uuid.UUID("01f00000-0000-7000-8000-0000000000aa"),
        }
        query = ("SELECT %(t)s, %(j)s, %(b)s, %(f)s, %(d)s, %(no)s, %(yes)s, %(n)s, %(i)s, "
                 "%(u)s, '%%'")
        assert bind(query, params) == _bind_text(query, params, "utf-8"), text
        assert bind(query, params, "UTF8") == bind(query, params), text
