"""From a decoded transaction to the rows of flux.state_mutations: each row's image as
``to_jsonb`` shows it, the columns an update changed, and the span each change belongs to.

Pure: the WAL consumer (flux/_capture.py) looks up what needs the database (a relation's
primary key, its columns in collation order) and hands it in.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

import orjson

from flux.capture._pgjson import TypeCatalog
from flux.capture._pgoutput import UNCHANGED, Begin, Relation, Row

UNCHANGED_TOAST = "[unchanged TOAST value: not in the WAL]"


@dataclass(slots=True)
class Change:
    relation: Relation
    op: str
    old: Row | None
    new: Row | None
    actor: dict[str, Any] | None  # the last 'flux.actor' message before it, if any


@dataclass
class Transaction:
    begin: Begin
    request: dict[str, Any] | None = None
    switch: str | None = None
    actor: dict[str, Any] | None = None
    changes: list[Change] = field(default_factory=list)
    truncated: list[tuple[Relation, dict[str, Any] | None]] = field(default_factory=list)


class Shape:
    """What storing one relation's rows needs, resolved once per Relation message: each
    column's conversion to what to_jsonb makes of it, and how to tell whether an update
    changed it — so that flux.changed_columns (jsonb key by key, sorted by the database's
    collation) runs only where Python cannot decide."""

    __slots__ = ("all_columns", "all_literal", "converters", "copy_relation", "deciders",
                 "integers", "key_plan", "rank", "relation")

    def __init__(self, relation: Relation, types: TypeCatalog, collated: list[str]) -> None:
        self.relation = relation
        self.converters = [(c.name, types.converter(c.type_oid)) for c in relation.columns]
        self.deciders = [(c.name, types.distinct(c.type_oid)) for c in relation.columns]
        self.all_columns = collated
        self.rank = {name: i for i, name in enumerate(collated)}
        # For COPY (flux/capture/_consumer.py): the changed columns of an insert or delete,
        # the relation's three columns, which columns are integers (their text is their
        # jsonb text), and the key's rendering plan, filled in by the consumer.
        self.all_literal = array_literal(collated)
        self.copy_relation = (f"{relation.oid}\t{copy_text(relation.namespace or 'pg_catalog')}"
                              f"\t{copy_text(relation.name)}")
        self.integers = {c.name: types.get(c.type_oid).integer for c in relation.columns}
        self.key_plan: KeyPlan | None = None


NULL = "\\N"  # COPY's text format: NULL
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ARRAY_PLAIN = re.compile(r"[^\s{}\",\\]+")


def copy_text(value: str | None) -> str:
    """A text value in COPY's text format."""
    if value is None:
        return NULL
    if _COPY_SPECIAL.search(value) is None:
        return value
    return _COPY_SPECIAL.sub(lambda m: _COPY_ESCAPES[m.group()], value)


def copy_json(value: Any) -> str:
    """A JSON value in COPY's text format (orjson escapes every control character, so only
    a backslash needs doubling)."""
    text = orjson.dumps(value).decode()
    return text.replace("\\", "\\\\") if "\\" in text else text


def array_literal(items: list[str]) -> str:
    """A text[] literal, in COPY's text format: an element quoted where array_in needs it."""
    parts = []
    for item in items:
        if _ARRAY_PLAIN.fullmatch(item) and item.upper() != "NULL":
            parts.append(item)
        else:
            parts.append('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return copy_text("{" + ",".join(parts) + "}")


KeyPlan = list[tuple[str, str, int, bool]]  # per key column: quoted name, name, position, integer


def key_plan(shape: Shape, columns: list[str]) -> KeyPlan:
    """How ``key_text`` renders a relation's key: its primary key ``columns`` (none: the
    whole row, as triggers take it) in jsonb's key order — shorter first, then by bytes."""
    positions = {c.name: i for i, c in enumerate(shape.relation.columns)}
    names = sorted(columns or [c.name for c in shape.relation.columns],
                   key=lambda n: (len(n.encode()), n.encode()))
    return [(encode_basestring(n), n, positions.get(n, -1), shape.integers.get(n, False))
            for n in names]


def key_text(plan: KeyPlan, image: dict[str, Any], row: Row) -> str | None:
    """A row's key as jsonb's text output writes it — what flux.record_id hashes — or None
    where only PostgreSQL can say (a number that is not an integer, json, an array, a
    composite). Strings are escaped as PostgreSQL's escape_json escapes them (json's
    encode_basestring: the same short escapes, ``\\u00XX`` for other control characters,
    everything else as it is)."""
    parts = []
    for quoted, name, position, integer in plan:
        value = image.get(name)
        if value is None:
            text = "null"
        elif integer and 0 <= position < len(row) and row[position].__class__ is bytes:
            text = row[position].decode()  # type: ignore[union-attr]
        elif value.__class__ is str:
            text = encode_basestring(value)
        elif value is True or value is False:
            text = "true" if value else "false"
        else:
            return None
        parts.append(f"{quoted}: {text}")
    return "{" + ", ".join(parts) + "}"


def image(shape: Shape, row: Row, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """A row as to_jsonb(NEW) shows it; an unchanged TOASTed value is taken from ``old``."""
    out: dict[str, Any] = {}
    for (name, convert), raw in zip(shape.converters, row, strict=False):
        if raw.__class__ is bytes:
            out[name] = convert(raw.decode())
        elif raw is None:
            out[name] = None
        else:  # UNCHANGED: REPLICA IDENTITY FULL sends the old row whole, it is there
            out[name] = (old or {}).get(name, UNCHANGED_TOAST)
    return out


def changed_columns(shape: Shape, old: Row, new: Row) -> list[str] | None:
    """The columns an update changed, as flux.changed_columns(old, new) would list them;
    None when a value's text alone cannot say (json, arrays, composites)."""
    if len(old) != len(new):
        return None
    changed: list[str] = []
    for (name, distinct), a, b in zip(shape.deciders, old, new, strict=False):
        if a == b or b is UNCHANGED:
            continue
        if a is None or b is None:
            changed.append(name)  # SQL NULL against a value
            continue
        if a is UNCHANGED:
            return None
        verdict = distinct(a, b)  # type: ignore[arg-type]
        if verdict is None:
            return None
        if verdict:
            changed.append(name)
    changed.sort(key=shape.rank.__getitem__)
    return changed


def assign_spans(changes: list[Change], statements: list[Any]) -> list[str | None]:
    """The span of each change, from the statements that wrote, in order: a statement
    takes as many changes of its tables as it reported rows; a change no statement claims
    (one a user trigger made) belongs to the statement before it."""
    pending = deque(_Statement(*s) for s in statements)
    out: list[str | None] = []
    last: str | None = None
    for change in changes:
        name = change.relation.name.lower()
        if change.op == "TRUNCATE":
            claim = next((s for s in pending if s.rows <= 0 and s.touches(name)), None)
            if claim is not None:
                pending.remove(claim)
                last = claim.span_id
            out.append(last)
            continue
        while pending and pending[0].rows <= 0 and pending[0].kind != "truncate":
            pending.popleft()
        head = pending[0] if pending else None
        if head is not None and head.rows > 0 and head.touches(name):
            head.rows -= 1
            last = head.span_id
            if head.rows == 0:
                pending.popleft()
        out.append(last)
    return out


class _Statement:
    __slots__ = ("kind", "rows", "span_id", "tables")

    def __init__(self, span_id: str, rows: int, tables: list[str], kind: str = "") -> None:
        self.span_id = span_id
        self.rows = rows
        self.tables = {t.lower().rsplit(".", 1)[-1] for t in tables}
        self.kind = kind

    def touches(self, table: str) -> bool:
        return not self.tables or table in self.tables
