"""The record's write path: its parameters inlined by ``bind`` (one simple query with the
COMMIT), read back by PostgreSQL exactly as given, whatever the text holds; and records
stored uncompressed up to a page (sql/0014)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import orjson
import psycopg
import pytest
from psycopg.types.json import Json, Jsonb

from flux._ids import new_request_id
from flux.store._queries import load
from flux.store._record import (
    RECORD_COLUMNS,
    ExecutionRecord,
    RecordingConnection,
    _bind_text,
    _dumps,
    _numbered,
    _value,
    bind,
    forget_prepared,
    record_values,
    simple_query,
    store_and_commit,
    wal_payload,
)

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


# -- the commit round trip, prepared (prepared_commit) ---------------------------------------


def _record(request_id: str, text: str) -> ExecutionRecord:
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    return ExecutionRecord(
        request_id=request_id, kind="http", function=text, status="ok", http_status=200,
        started_at=at, duration_ms=1.25, request={"body": {text: [text, None, 1.5]}},
        response={"body": text}, error=None, spans=[{"id": "s1", "attrs": {"sql": text}}],
        tape=[], logs=[], code_sha=None, code_dirty=False, route=f"/r/{text}",
        parent_id=uuid.UUID("01f00000-0000-7000-8000-0000000000aa"))  # type: ignore[arg-type]


def _stored(conn: psycopg.Connection, request_id: str) -> tuple[object, ...]:
    row = conn.execute(
        "SELECT function, route, started_at, duration_ms, request::text, response::text,"
        " spans::text, parent_id, code_dirty, sampled FROM flux.trace_requests"
        " WHERE request_id = %s", [request_id]).fetchone()
    assert row is not None
    return tuple(row)


async def test_prepared_commit_stores_what_bind_stores(db: str, conn: psycopg.Connection) -> None:
    """The prepared path and the literal path store the same row, for every awkward text;
    the statements are prepared once per connection, the COMMIT goes with them."""
    n = 0
    async with await RecordingConnection.connect(db) as aconn:
        for text in [*AWKWARD, "nul\x00here"]:
            ids = [str(new_request_id()) for _ in range(2)]
            for request_id, prepared in zip(ids, (True, False), strict=True):
                await aconn.execute("BEGIN")  # the execution's transaction
                record = _record(request_id, text)
                if prepared:
                    await store_and_commit(aconn, record, [["s1", 1, ["t"], "insert"]])
                else:
                    q = load("execution")
                    params = {**record.params(), "statements": Jsonb([])}
                    await simple_query(aconn, bind(f"{q.end_execution}; {q.insert_record};"
                                                   f" {q.commit}", params))
                assert aconn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                n += 1
            assert _stored(conn, ids[0]) == _stored(conn, ids[1]), text
        names = await (await aconn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'flux_%'")).fetchone()
        assert names == (2,)  # end_execution and the INSERT, prepared once
    assert conn.execute("SELECT count(*) FROM flux.trace_requests").fetchone() == (n,)


async def test_prepared_commit_runs_nothing_after_a_failure(db: str, conn: psycopg.Connection
                                                            ) -> None:
    """A failing record INSERT (here a duplicate id) is raised, the COMMIT does not run,
    and the connection is back in ordinary mode, its transaction to roll back."""
    request_id = str(new_request_id())
    async with await RecordingConnection.connect(db) as aconn:
        await aconn.execute("BEGIN")
        await store_and_commit(aconn, _record(request_id, "first"), [])
        await aconn.execute("BEGIN")
        await aconn.execute("CREATE TABLE t (x int)")  # would commit with the record
        with pytest.raises(psycopg.errors.UniqueViolation):
            await store_and_commit(aconn, _record(request_id, "again"), [])
        assert aconn.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
        assert aconn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        await aconn.rollback()
        assert await (await aconn.execute("SELECT 1")).fetchone() == (1,)
    assert conn.execute("SELECT to_regclass('t')").fetchone() == (None,)
    assert _stored(conn, request_id)[0] == "first"


async def test_prepared_commit_prepares_again_after_deallocate(db: str) -> None:
    """DEALLOCATE ALL drops the prepared statements: a commit that finds them gone fails
    (nothing committed) and the next prepares them again; forget_prepared (called by ctx.db
    after a DEALLOCATE) avoids the failure."""
    async with await RecordingConnection.connect(db) as aconn:
        await aconn.execute("BEGIN")
        await store_and_commit(aconn, _record(str(new_request_id()), "a"), [])
        await aconn.execute("DEALLOCATE ALL")
        await aconn.execute("BEGIN")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            await store_and_commit(aconn, _record(str(new_request_id()), "b"), [])
        await aconn.rollback()
        await aconn.execute("BEGIN")
        await store_and_commit(aconn, _record(str(new_request_id()), "c"), [])
        await aconn.execute("BEGIN")
        await aconn.execute("DEALLOCATE ALL")
        forget_prepared(aconn)
        await store_and_commit(aconn, _record(str(new_request_id()), "d"), [])
        # psycopg prepares a statement it ran five times, and then answers a rollback with
        # DEALLOCATE ALL: the connection sees it and prepares the record's statements again.
        for _ in range(6):
            await aconn.execute("SELECT %s::int", [1], prepare=True)
        await aconn.execute("BEGIN")
        await aconn.rollback()
        await aconn.execute("BEGIN")
        await store_and_commit(aconn, _record(str(new_request_id()), "e"), [])
        functions = await (await aconn.execute(
            "SELECT function FROM flux.trace_requests ORDER BY request_id")).fetchall()
    assert functions == [("a",), ("c",), ("d",), ("e",)]


def test_the_wal_line_stores_what_the_insert_stores(conn: psycopg.Connection) -> None:
    """A record's line of COPY text (wal_payload: what travels in the WAL and the consumer
    copies as it is) stores the same row as the INSERT, for every awkward text; its first
    line is the request and its statements."""
    q = load("execution")
    for text in [*AWKWARD, "nul\x00here", "cr\rand\\t"]:
        ids = [str(new_request_id()) for _ in range(2)]
        record = _record(ids[0], text)
        payload = wal_payload(record, [["s1", 1, ["t"], "insert"]])
        assert payload is not None
        head, line = payload.split(b"\n", 1)
        assert orjson.loads(head) == {"request_id": ids[0],
                                      "statements": [["s1", 1, ["t"], "insert"]]}
        with conn.cursor().copy(load("capture").copy_records) as copy:
            copy.write(line + b"\n")
        record.request_id = ids[1]
        conn.execute(bind(q.insert_record, record.params()))
        assert _stored(conn, ids[0]) == _stored(conn, ids[1]), text
    conn.commit()


def test_the_wal_line_has_the_consumers_columns() -> None:
    copy = " ".join(load("capture").copy_records.split())
    assert ", ".join(RECORD_COLUMNS) in copy


def test_record_values_are_the_insert_parameters_in_order() -> None:
    """record_values builds in one pass the bytes the prepared INSERT's parameters were
    built from params() one by one: the same, in insert_record's order, in any encoding;
    a value with no text form gives None (the record is then bound as literals)."""
    assert _numbered(load("execution").insert_record)[2] == RECORD_COLUMNS[:-1]
    for text in [*AWKWARD, "a\x00b", "\u00e9t\u00e9 \u2603"]:
        record = _record(str(new_request_id()), text)
        params = record.params()
        for encoding in ("utf-8", "latin-1"):
            assert record_values(record, encoding) == \
                [_value(params[name], encoding) for name in RECORD_COLUMNS[:-1]], text
    odd = _record(str(new_request_id()), "x")
    odd.tenant = decimal.Decimal(1)  # type: ignore[assignment]
    assert record_values(odd) is None and wal_payload(odd, []) is None
