"""The pgoutput decoder on real server output and on generated messages, and the text →
to_jsonb conversion against PostgreSQL's own to_jsonb."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import random
import string
import struct
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux.capture._mutations import Shape, image, key_plan, key_text
from flux.capture._pgjson import TypeCatalog
from flux.capture._pgoutput import (
    PG_EPOCH,
    UNCHANGED,
    Begin,
    Column,
    Commit,
    DecodeError,
    Delete,
    Insert,
    Keepalive,
    Message,
    Relation,
    Truncate,
    Update,
    XLogData,
    decode,
    format_lsn,
    frame,
    parse_lsn,
    standby_status,
)

PEEK = ("SELECT data FROM pg_logical_slot_peek_binary_changes('t_slot', NULL, NULL, "
        "'proto_version', '1', 'publication_names', 't_pub', 'messages', 'true')")


def test_real_server_output_decodes_to_what_was_written(conn: psycopg.Connection) -> None:
    conn.autocommit = True
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text, big text, n numeric)")
    conn.execute("ALTER TABLE t REPLICA IDENTITY FULL")
    conn.execute("CREATE PUBLICATION t_pub FOR TABLE t")
    conn.execute("SELECT pg_create_logical_replication_slot('t_slot', 'pgoutput')")
    rng = random.Random(5)
    big = "".join(rng.choices(string.ascii_letters, k=40_000))  # TOASTed out of line
    with conn.transaction():
        conn.execute("SELECT pg_logical_emit_message(true, 'flux', '{\"r\": 1}')")
        conn.execute("INSERT INTO t VALUES (1, 'a', %s, 10.50), (2, NULL, 'x', -1)", [big])
    conn.execute("UPDATE t SET name = 'b' WHERE id = 1")  # big stays: unchanged TOAST
    conn.execute("DELETE FROM t WHERE id = 2")
    conn.execute("TRUNCATE t")
    messages = [decode(bytes(r[0])) for r in conn.execute(PEEK).fetchall()]
    kinds = [type(m).__name__ for m in messages]
    assert kinds == ["Begin", "Message", "Relation", "Insert", "Insert", "Commit",
                     "Begin", "Update", "Commit", "Begin", "Delete", "Commit",
                     "Begin", "Relation", "Truncate", "Commit"]
    begin, message, relation, first, second, commit = messages[:6]
    update = messages[7]
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
    assert begin.commit_time == commit.commit_time
    assert isinstance(message, Message) and message.transactional
    assert (message.prefix, message.content) == ("flux", b'{"r": 1}')
    assert isinstance(relation, Relation)
    assert (relation.namespace, relation.name, relation.replica_identity) == ("public", "t", "f")
    assert [(c.name, c.type_oid) for c in relation.columns] == [
        ("id", 23), ("name", 25), ("big", 25), ("n", 1700)]
    assert isinstance(first, Insert) and first.new == (b"1", b"a", big.encode(), b"10.50")
    assert isinstance(second, Insert) and second.new == (b"2", None, b"x", b"-1")
    assert isinstance(update, Update) and not update.old_is_key
    assert update.old == (b"1", b"a", big.encode(), b"10.50")
    assert update.new == (b"1", b"b", UNCHANGED, b"10.50")
    delete = messages[10]
    assert isinstance(delete, Delete) and delete.old == (b"2", None, b"x", b"-1")
    truncate = messages[14]
    assert isinstance(truncate, Truncate) and truncate.relation_oids == (relation.oid,)
    conn.execute("SELECT pg_drop_replication_slot('t_slot')")


# -- generated messages: an encoder of the protocol, and decode(encode(m)) == m ---------------

def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def _time(value: dt.datetime) -> bytes:
    return struct.pack("!q", (value - PG_EPOCH) // dt.timedelta(microseconds=1))


def _row(row: tuple[Any, ...]) -> bytes:
    out = struct.pack("!h", len(row))
    for v in row:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            out += b"t" + struct.pack("!i", len(v)) + v
    return out


def encode(m: Any) -> bytes:
    if isinstance(m, Begin):
        return b"B" + struct.pack("!Q", m.final_lsn) + _time(m.commit_time) + struct.pack(
            "!I", m.xid)
    if isinstance(m, Commit):
        return b"C" + struct.pack("!BQQ", m.flags, m.commit_lsn, m.end_lsn) + _time(
            m.commit_time)
    if isinstance(m, Relation):
        out = b"R" + struct.pack("!I", m.oid) + _s(m.namespace) + _s(m.name)
        out += m.replica_identity.encode() + struct.pack("!h", len(m.columns))
        for c in m.columns:
            out += struct.pack("!B", int(c.key)) + _s(c.name) + struct.pack(
                "!Ii", c.type_oid, c.type_mod)
        return out
    if isinstance(m, Insert):
        return b"I" + struct.pack("!I", m.relation_oid) + b"N" + _row(m.new)
    if isinstance(m, Update):
        old = b"" if m.old is None else (b"K" if m.old_is_key else b"O") + _row(m.old)
        return b"U" + struct.pack("!I", m.relation_oid) + old + b"N" + _row(m.new)
    if isinstance(m, Delete):
        return (b"D" + struct.pack("!I", m.relation_oid) + (b"K" if m.old_is_key else b"O")
                + _row(m.old))
    if isinstance(m, Truncate):
        return b"T" + struct.pack("!ib", len(m.relation_oids),
                                  int(m.cascade) | 2 * int(m.restart_identity)) + b"".join(
            struct.pack("!I", o) for o in m.relation_oids)
    assert isinstance(m, Message)
    return (b"M" + struct.pack("!BQ", int(m.transactional), m.lsn) + _s(m.prefix)
            + struct.pack("!i", len(m.content)) + m.content)


names = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)),
                max_size=20)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
times = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2200, 1, 1),
                     timezones=st.just(dt.UTC))
values = st.one_of(st.none(), st.just(UNCHANGED), st.binary(max_size=50))
rows = st.lists(values, max_size=8).map(tuple)
messages = st.one_of(
    st.builds(Begin, u64, times, u32),
    st.builds(Commit, st.just(0), u64, u64, times),
    st.builds(Relation, u32, names, names, st.sampled_from("dnfi"),
              st.lists(st.builds(Column, names, u32, st.integers(-1, 2**31 - 1),
                                 st.booleans()), max_size=6).map(tuple)),
    st.builds(Insert, u32, rows),
    st.builds(Update, u32, st.none() | rows, st.booleans(), rows).map(
        lambda u: Update(u.relation_oid, u.old, u.old_is_key and u.old is not None, u.new)),
    st.builds(Delete, u32, rows, st.booleans()),
    st.builds(Truncate, st.lists(u32, max_size=5).map(tuple), st.booleans(), st.booleans()),
    st.builds(Message, st.booleans(), u64, names, st.binary(max_size=100)),
)


@given(messages)
def test_decode_inverts_encode(message: Any) -> None:
    assert decode(encode(message)) == message


@given(messages, st.data())
def test_a_cut_or_padded_message_is_a_decode_error_never_a_crash(message: Any,
                                                                 data: st.DataObject) -> None:
    raw = encode(message)
    cut = data.draw(st.integers(0, len(raw) - 1))
    for broken in (raw[:cut], raw + b"\x01"):
        with contextlib.suppress(DecodeError):
            decode(broken)


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(raw)


@given(u64)
def test_lsn_text_round_trips(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn


# -- the replication stream's frames --------------------------------------------------------

i64 = st.integers(-2**63, 2**63 - 1)


@given(u64, u64, i64, st.binary(max_size=60))
def test_xlogdata_frames_carry_their_message(start: int, end: int, sent: int,
                                             payload: bytes) -> None:
    raw = b"w" + struct.pack("!QQq", start, end, sent) + payload
    assert frame(raw) == XLogData(start, end, payload)


@given(u64, i64, st.booleans())
def test_keepalives_say_where_the_server_is(end: int, sent: int, reply: bool) -> None:
    assert frame(b"k" + struct.pack("!Qq?", end, sent, reply)) == Keepalive(end, reply)


@given(st.binary(max_size=40))
def test_any_bytes_frame_or_raise_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        frame(raw)


@given(u64, times, st.booleans())
def test_standby_status_reports_one_position_for_all_three(lsn: int, now: dt.datetime,
                                                           reply: bool) -> None:
    raw = standby_status(lsn, now, reply=reply)
    kind, written, flushed, applied, micros, asked = struct.unpack("!cQQQq?", raw)
    assert (kind, written, flushed, applied, asked) == (b"r", lsn, lsn, lsn, reply)
    assert PG_EPOCH + dt.timedelta(microseconds=micros) == now


# -- text output → to_jsonb, against PostgreSQL itself -------------------------------------

safe_text = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)),
                    max_size=12)
SAMPLES: list[tuple[str, Any]] = [
    ("int4", st.integers(-2**31, 2**31 - 1)),
    ("int8", st.integers(-2**63, 2**63 - 1)),
    ("numeric", st.decimals(allow_nan=False, allow_infinity=False, places=3,
                            min_value=Decimal("-1e12"), max_value=Decimal("1e12"))
     | st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"),
                        Decimal("10.50"), Decimal("-0.000")])),
    ("float8", st.floats(allow_nan=True, allow_infinity=True)),
    ("bool", st.booleans()),
    ("text", safe_text),
    ("timestamptz", st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 1, 1),
                                 timezones=st.just(dt.UTC))),
    ("timestamp", st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 1, 1))),
    ("date", st.dates(min_value=dt.date(1, 1, 2))),
    ("jsonb", st.recursive(st.none() | st.booleans() | st.integers() | safe_text,
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(
                               safe_text, c, max_size=3), max_leaves=6).map(
        lambda v: psycopg.types.json.Jsonb(v))),
    ("text[]", st.lists(st.none() | safe_text, max_size=4)),
    ("int4[]", st.lists(st.none() | st.integers(-1000, 1000), max_size=4)),
    ("timestamptz[]", st.lists(st.datetimes(min_value=dt.datetime(1970, 1, 1),
                                            timezones=st.just(dt.UTC)), max_size=3)),
]


@pytest.fixture(scope="module")
def catalog_conn(pg_server: Any) -> Any:
    from tests.fixtures.postgres import create_database, drop_database

    name = create_database(pg_server)
    with psycopg.connect(pg_server.conninfo(name), autocommit=True) as conn:
        conn.execute("CREATE TYPE money_pair AS (amount numeric, note text)")
        catalog = TypeCatalog()
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            from flux.store._queries import load

            catalog.load(list(cur.execute(load("capture").types)))
        yield conn, catalog
    drop_database(pg_server, name)


@pytest.mark.parametrize(("type_name", "strategy"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_text_output_becomes_what_to_jsonb_makes(catalog_conn: Any, type_name: str,
                                                 strategy: Any) -> None:
    conn, catalog = catalog_conn

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(strategy)
    def check(value: Any) -> None:
        text, oid = conn.execute(
            f"SELECT format('%%s', v), pg_typeof(v)::oid FROM (SELECT %s::{type_name} AS v) "
            "AS x", [value]).fetchone()
        mine = orjson.dumps(catalog.value(oid, text.encode())).decode()
        assert conn.execute(f"SELECT to_jsonb(%s::{type_name}) = %s::jsonb",
                            [value, mine]).fetchone()[0], (type_name, text, mine)

    check()


def test_composites_become_objects(catalog_conn: Any) -> None:
    conn, catalog = catalog_conn
    text, oid = conn.execute("SELECT v::text, pg_typeof(v)::oid FROM (SELECT "
                             "ROW(10.50, 'a \"b\", c')::money_pair AS v) AS x").fetchone()
    mine = orjson.dumps(catalog.value(oid, text.encode())).decode()
    assert conn.execute("SELECT to_jsonb(ROW(10.50, 'a \"b\", c')::money_pair) = %s::jsonb",
                        [mine]).fetchone()[0], (text, mine)


@pytest.mark.parametrize("element", ["\x85", "\u00a0", "\u2003x", "a\u3000", "\x1c"])
def test_array_elements_keep_whitespace_that_postgres_does_not_quote(
        catalog_conn: Any, element: str) -> None:
    # Python calls these whitespace; array_out does not, so they arrive unquoted and must survive.
    conn, catalog = catalog_conn
    text, oid = conn.execute("SELECT format('%%s', v), pg_typeof(v)::oid "
                             "FROM (SELECT %s::text[] AS v) AS x", [[element]]).fetchone()
    assert catalog.value(oid, text.encode()) == [element]


EQUAL_TEXTS_APART = [("numeric", "10.5", "10.50"), ("numeric", "-0.000", "0"),
                     ("float8", "-0", "0"), ("numeric", "1e3", "1000.0"),
                     ("jsonb", '{"a": 1.0}', '{"a": 1.00}'), ("numeric[]", "{1.0}", "{1.00}"),
                     ("numeric", "NaN", "Infinity"), ("text", "a", "a ")]


def _verdicts(conn: Any, catalog: TypeCatalog, type_name: str, a: Any, b: Any
              ) -> tuple[bool | None, bool]:
    """(the consumer's verdict on two values' texts, PostgreSQL's) — equal texts aside."""
    ta, tb, oid, apart = conn.execute(
        f"SELECT format('%%s', x), format('%%s', y), pg_typeof(x)::oid, "
        f"to_jsonb(x) IS DISTINCT FROM to_jsonb(y) "
        f"FROM (SELECT %s::{type_name} AS x, %s::{type_name} AS y) AS v", [a, b]).fetchone()
    if ta == tb:
        return False, apart
    return catalog.distinct(oid)(ta.encode(), tb.encode()), apart


@pytest.mark.parametrize(("type_name", "a", "b"), EQUAL_TEXTS_APART)
def test_a_column_changed_exactly_when_to_jsonb_says_so(catalog_conn: Any, type_name: str,
                                                        a: str, b: str) -> None:
    conn, catalog = catalog_conn
    mine, postgres = _verdicts(conn, catalog, type_name, a, b)
    assert mine is None or mine == postgres, (type_name, a, b)


@pytest.mark.parametrize(("type_name", "strategy"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_changed_columns_decided_in_python_agree_with_postgres(catalog_conn: Any,
                                                               type_name: str,
                                                               strategy: Any) -> None:
    conn, catalog = catalog_conn

    @settings(max_examples=30, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(strategy, strategy)
    def check(a: Any, b: Any) -> None:
        mine, postgres = _verdicts(conn, catalog, type_name, a, b)
        assert mine is None or mine == postgres, (type_name, a, b)

    check()


@pytest.mark.parametrize("kinds", [("int4",), ("text",), ("int8", "text"), ("bool", "date", "int2"),
                                   ("numeric",), ("jsonb", "int4")],
                         ids=lambda k: "+".join(k))
def test_a_key_rendered_in_python_is_what_postgres_hashes(catalog_conn: Any,
                                                          kinds: tuple[str, ...]) -> None:
    """The WAL consumer hashes a key's jsonb text itself (flux/capture/_mutations.py:
    key_text): for every key it renders, the record id is the one PostgreSQL computes from
    the stored jsonb — names and strings with any character, in jsonb's key order."""
    conn, catalog = catalog_conn
    names = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)),
                    min_size=1, max_size=6)
    strategies = {"int4": st.integers(-2**31, 2**31 - 1), "int8": st.integers(-2**63, 2**63 - 1),
                  "int2": st.integers(-2**15, 2**15 - 1), "text": safe_text,
                  "bool": st.booleans(), "date": st.dates(min_value=dt.date(1, 1, 2)),
                  "numeric": st.decimals(allow_nan=False, allow_infinity=False, places=2),
                  "jsonb": st.integers().map(lambda v: psycopg.types.json.Jsonb({"v": v}))}

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(names, min_size=len(kinds), max_size=len(kinds), unique=True),
           st.tuples(*(st.none() | strategies[k] for k in kinds)))
    def check(columns: list[str], values: tuple[Any, ...]) -> None:
        oids = [conn.execute("SELECT %s::regtype::oid", [k]).fetchone()[0] for k in kinds]
        relation = Relation(16384, "public", "t", "f", tuple(
            Column(name, oid, -1, False) for name, oid in zip(columns, oids, strict=True)))
        shape = Shape(relation, catalog, sorted(columns))
        # concat() writes a value with its type's output function, as pgoutput does.
        texts = conn.execute(
            "SELECT " + ", ".join(f"concat(%s::{k})" for k in kinds), list(values)).fetchone()
        row = tuple(None if v is None else t.encode()
                    for v, t in zip(values, texts, strict=True))
        rendered = key_text(key_plan(shape, columns), image(shape, row), row)
        if "numeric" in kinds or "jsonb" in kinds:
            non_null = [v for v, k in zip(values, kinds, strict=True)
                        if k in ("numeric", "jsonb") and v is not None]
            if non_null:
                assert rendered is None  # left to the server
                return
        assert rendered is not None
        pairs = ", ".join(f"%s::text, %s::{k}" for k in kinds)
        args = [a for pair in zip(columns, values, strict=True) for a in pair]
        expected = conn.execute(
            f"SELECT jsonb_build_object({pairs})::text, "
            f"flux.record_id(16384, jsonb_build_object({pairs}))::text", args + args).fetchone()
        assert rendered == expected[0]
        assert _uuid_of(f"16384:{rendered}") == expected[1]

    check()


def _uuid_of(text: str) -> str:
    h = hashlib.md5(text.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
