"""From decoded rows to state_mutations rows, without a server: images, changed columns."""

from __future__ import annotations

import orjson

from flux.capture._mutations import UNCHANGED_TOAST, Shape, changed_columns, image
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
