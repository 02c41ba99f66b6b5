"""From decoded rows to state_mutations rows, without a server: images, changed columns."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from flux.capture._decoding import Batch, Decoder
from flux.capture._mutations import (
    UNCHANGED_TOAST,
    Change,
    Shape,
    changed_columns,
    fast_shape,
    image,
    key_plan,
    render_change,
)
from flux.capture._pgjson import TypeCatalog
from flux.capture._pgoutput import UNCHANGED, Column, Relation

TYPES = {"int4": 23, "text": 25, "numeric": 1700, "jsonb": 3802, "bool": 16}


def _catalog() -> TypeCatalog:
    catalog = TypeCatalog()
    catalog.load([{"oid": oid, "typtype": "b", "typcategory": "X", "typelem": 0,
                   "typdelim": ",", "typbasetype": 0, "typlen": -1, "field_names": None,
                   "field_types": None} for oid in TYPES.values()])
    return catalog


def _shape(**columns: str) -> Shape:
    relation = Relation(1, "public", "t", "f", tuple(
        Column(name, TYPES[kind], -1, False) for name, kind in columns.items()))
    # The database's collation decides the order of changed_cols: here, "Zeta" first.
    return Shape(relation, _catalog(), sorted(columns, key=lambda c: (c != "Zeta", c)))


def test_an_update_lists_what_changed_in_the_database_order() -> None:
    shape = _shape(id="int4", note="text", Zeta="bool", amount="numeric")
    old = (b"1", b"a", b"t", b"10.5")
    assert changed_columns(shape, old, (b"1", b"b", b"f", b"10.50")) == ["Zeta", "note"]
    assert changed_columns(shape, old, (b"1", b"a", b"t", b"10.50")) == []  # a no-op
    assert changed_columns(shape, old, (b"1", None, b"t", b"11")) == ["amount", "note"]


def test_an_unchanged_toast_value_is_the_old_one() -> None:
    shape = _shape(id="int4", note="text")
    old_row = (b"1", b"long text")
    new_row = (b"2", UNCHANGED)
    assert changed_columns(shape, old_row, new_row) == ["id"]
    old = image(shape, old_row)
    new = image(shape, new_row, old)
    assert orjson.dumps(new) == b'{"id":2,"note":"long text"}'
    assert image(shape, new_row)["note"] == UNCHANGED_TOAST  # no old row to take it from


def test_json_whose_text_changed_is_left_to_postgres() -> None:
    shape = _shape(id="int4", meta="jsonb")
    assert changed_columns(shape, (b"1", b'{"a": 1.0}'), (b"1", b'{"a": 1.00}')) is None
    assert changed_columns(shape, (b"1", b'{"a": 1}'), (b"1", b'{"a": 1}')) == []


# -- the hot path writes what the general path writes ----------------------------------------

FAST_TYPES = {"int4": 23, "text": 25, "numeric": 1700, "jsonb": 3802, "bool": 16,
              "float8": 701, "date": 1082, "timestamp": 1114, "timestamptz": 1184}
_text = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=8)
TEXT_OUTPUT: dict[str, Any] = {
    "int4": st.integers(-2**31, 2**31 - 1).map(str),
    "text": _text | st.sampled_from(['a"b', "a\\b", "tab\there", "line\nbreak", "\r", "%s",
                                     "\x01", "é"]),
    "numeric": st.sampled_from(["1", "10.5", "10.50", "-0.000", "NaN", "Infinity", "1e3"]),
    "jsonb": st.sampled_from(['{"a": 1}', '{"a": 1.0}', '[1, "x\\ty"]', "null", '"s"']),
    "bool": st.sampled_from(["t", "f"]),
    "float8": st.sampled_from(["1.5", "-Infinity", "NaN", "0"]),
    "date": st.sampled_from(["2026-12-06", "infinity", "0044-03-15 BC"]),
    "timestamp": st.sampled_from(["2026-12-06 02:07:44.961321", "-infinity",
                                  "0044-03-15 12:00:00 BC"]),
    "timestamptz": st.sampled_from(["2026-12-06 02:07:44.961321+00", "2026-12-06 02:07:44+05:30",
                                    "1900-01-01 00:00:00+00:09:21", "infinity"]),
}


def _tuple_data(row: tuple[bytes | None, ...]) -> bytes:
    out = struct.pack("!h", len(row))
    for v in row:
        out += b"n" if v is None else b"t" + struct.pack("!i", len(v)) + v
    return out


@st.composite
def fast_cases(draw: st.DrawFn) -> tuple[Relation, list[str], bytes, Change]:
    kinds = draw(st.lists(st.sampled_from(sorted(FAST_TYPES)), min_size=1, max_size=5))
    names = draw(st.lists(st.sampled_from(["id", "note", "Zeta", "a b", '"q"', "tab\t",
                                           "per%cent", "é"]),
                          min_size=len(kinds), max_size=len(kinds), unique=True))
    relation = Relation(16385, "public", "T", "f", tuple(
        Column(n, FAST_TYPES[k], -1, False) for n, k in zip(names, kinds, strict=True)))
    key = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))

    def row() -> tuple[bytes | None, ...]:
        return tuple(draw(st.none() | TEXT_OUTPUT[k].map(str.encode)) for k in kinds)

    op = draw(st.sampled_from(["INSERT", "UPDATE", "DELETE"]))
    old, new = row(), row()
    if op == "UPDATE" and draw(st.booleans()):  # few columns changed, or none
        new = tuple(a if draw(st.booleans()) else b for a, b in zip(old, new, strict=True))
    head = struct.pack("!I", relation.oid)
    if op == "INSERT":
        return relation, key, b"I" + head + b"N" + _tuple_data(new), Change(
            relation, op, None, new, None)
    if op == "UPDATE":
        return relation, key, (b"U" + head + b"O" + _tuple_data(old) + b"N"
                               + _tuple_data(new)), Change(relation, op, old, new, None)
    return relation, key, b"D" + head + b"O" + _tuple_data(old), Change(
        relation, op, old, None, None)


@settings(max_examples=120, deadline=None)
@given(fast_cases())
def test_a_change_rendered_from_its_bytes_is_what_the_general_path_writes(
        case: tuple[Relation, list[str], bytes, Change]) -> None:
    relation, key, message, change = case
    catalog = TypeCatalog()
    catalog.load([{"oid": oid, "typtype": "b", "typcategory": "X", "typelem": 0,
                   "typdelim": ",", "typbasetype": 0, "typlen": -1, "field_names": None,
                   "field_types": None} for oid in FAST_TYPES.values()])
    decoder = Decoder()
    decoder.types = catalog
    shape = Shape(relation, catalog, sorted(c.name for c in relation.columns))
    decoder._shapes[relation.oid] = shape
    decoder._keys[relation.oid] = key
    decoder._plan(None, shape)  # type: ignore[arg-type]  # cached: no server asked
    general = decoder._body(None, change, Batch())  # type: ignore[arg-type]
    fast = fast_shape(shape, catalog, shape.key_plan or [])
    rendered = render_change(fast, message) if fast is not None else None
    if rendered is None:  # the general path's: a key or a change only the server can judge
        assert fast is None or any(c.type_oid in (1700, 701, 3802) for c in relation.columns)
        return
    op, body = rendered
    assert op == change.op
    assert body == (general[0] if general is not None else None)


def test_pgbench_shaped_changes_take_the_hot_path() -> None:
    catalog = TypeCatalog()
    catalog.load([{"oid": oid, "typtype": "b", "typcategory": "X", "typelem": 0,
                   "typdelim": ",", "typbasetype": 0, "typlen": -1, "field_names": None,
                   "field_types": None} for oid in FAST_TYPES.values()])
    relation = Relation(7, "public", "accounts", "f", (
        Column("aid", 23, -1, True), Column("abalance", 23, -1, False),
        Column("filler", 25, -1, False)))
    shape = Shape(relation, catalog, ["abalance", "aid", "filler"])
    fast = fast_shape(shape, catalog, key_plan(shape, ["aid"]))
    assert fast is not None
    message = (b"U" + struct.pack("!I", 7) + b"O" + _tuple_data((b"1", b"0", b"x\ty"))
               + b"N" + _tuple_data((b"1", b"-5", b"x\ty")))
    assert render_change(fast, message) == ("UPDATE", (
        b"%b\t{\"aid\": 1}\tUPDATE\t{\"aid\":1,\"abalance\":0,\"filler\":\"x\\\\ty\"}\t"
        b"{\"aid\":1,\"abalance\":-5,\"filler\":\"x\\\\ty\"}\t{abalance}\t"
        % hashlib.md5(b'7:{"aid": 1}').hexdigest().encode()))
    same = (b"U" + struct.pack("!I", 7) + b"O" + _tuple_data((b"1", b"0", None))
            + b"N" + _tuple_data((b"1", b"0", None)))
    assert render_change(fast, same) == ("UPDATE", None)  # a no-op update is not stored
    toast = same[:-1] + b"u"  # an unchanged TOAST value: the general path's
    assert render_change(fast, toast) is None
