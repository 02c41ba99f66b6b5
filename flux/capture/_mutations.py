"""From a decoded transaction to the rows of flux.state_mutations: each row's image as
``to_jsonb`` shows it, the columns an update changed, and the span each change belongs to.

Pure: the WAL consumer (flux/_capture.py) looks up what needs the database (a relation's
primary key, its columns in collation order) and hands it in.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

import orjson

from flux.capture._pgjson import TypeCatalog
from flux.capture._pgoutput import UNCHANGED, Begin, Relation, Row

UNCHANGED_TOAST = "[unchanged TOAST value: not in the WAL]"

try:  # CPython's own MD5: for a key's few bytes, twice as fast as OpenSSL's (no EVP set-up)
    from _md5 import md5  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import md5


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
    changes: list[Change | Rendered] = field(default_factory=list)
    truncated: list[tuple[Relation, dict[str, Any] | None]] = field(default_factory=list)
    # The executions' records that travelled in this transaction's WAL, each a line of COPY
    # text for flux.trace_requests ('flux.record' messages: flux/capture/_records.py).
    records: list[bytes] = field(default_factory=list)
    # Rows the C decoder sent whole ('L' records: extension/flux_decode.c, as_lines), each
    # a piece of COPY lines, and how many lines they hold together.
    lines: list[bytes] = field(default_factory=list)
    line_count: int = 0


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
    return assign_spans_to([(c.relation.name.lower(), c.op) for c in changes], statements)


def assign_spans_to(changes: list[tuple[str, str]], statements: list[Any]
                    ) -> list[str | None]:
    """``assign_spans`` of changes given as (table name in lower case, operation)."""
    pending = deque(_Statement(*s) for s in statements)
    out: list[str | None] = []
    last: str | None = None
    for name, op in changes:
        if op == "TRUNCATE":
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


# -- the hot path: a change straight from its pgoutput bytes to its COPY text ---------------
#
# Most captured tables hold integers, text, numbers, booleans, timestamps and json: for
# them a change is rendered in one pass over the message's bytes — each value's JSON
# written from its text output as bytes, the image by one %-format, no per-change
# objects. Anything else (arrays, composites, an unchanged TOASTed value, a key or a
# changed column only PostgreSQL can judge) returns None and takes the general path above;
# both write the same bytes (tests/capture/test_mutations.py compares them).

_RAW, _NUMBER, _STRING, _BOOL, _TIMESTAMP, _TIMESTAMPTZ, _JSON = range(7)
_FAST_KINDS = {"string": _STRING, "date": _STRING, "bool": _BOOL, "timestamp": _TIMESTAMP,
               "timestamptz": _TIMESTAMPTZ, "json": _JSON}
_OPS = {"INSERT": b"INSERT", "UPDATE": b"UPDATE", "DELETE": b"DELETE"}
_JSON_SPECIAL = re.compile(rb'[\x00-\x1f"\\]')
_COPY_SPECIAL_BYTES = re.compile(rb"[\\\t\n\r]")
_TZ_BYTES = re.compile(rb"([+-]\d\d)(:\d\d)?(:\d\d)?$")
_NOT_JSON_NUMBERS = frozenset((b"NaN", b"Infinity", b"-Infinity"))
_NOT_XSD = frozenset((b"infinity", b"-infinity"))
_I16 = struct.Struct("!h").unpack_from
_I32 = struct.Struct("!i").unpack_from
_U32 = struct.Struct("!I").unpack_from
_NULL_BYTES = b"\\N"


def _copy_escape(m: re.Match[bytes]) -> bytes:
    return _COPY_ESCAPES_BYTES[m.group()]


_COPY_ESCAPES_BYTES = {k.encode(): v.encode() for k, v in _COPY_ESCAPES.items()}


class FastShape:
    """A relation whose changes ``render_change`` writes (``fast_shape`` decides)."""

    __slots__ = (
        "changed",
        "copy_relation",
        "count",
        "image",
        "insert_changed",
        "judged",
        "key",
        "key_positions",
        "kinds",
        "names",
        "oid_prefix",
        "rank",
        "relation",
        "render",
        "table",
    )

    def __init__(self, shape: Shape, kinds: list[int], key: KeyPlan) -> None:
        rel = shape.relation
        self.relation = rel
        self.table = rel.name.lower()
        self.count = len(rel.columns)
        self.kinds = kinds
        self.judged = frozenset(i for i, k in enumerate(kinds) if k in (_NUMBER, _JSON))
        self.names = [c.name for c in rel.columns]
        self.rank = [shape.rank[n] for n in self.names]
        # b'{"id":%b,"note":%b}': each column's JSON goes in its %b
        self.image = ("{" + ",".join(encode_basestring(n).replace("%", "%%") + ":%b"
                                     for n in self.names) + "}").encode()
        # jsonb's text output of the key, as key_text writes it: b'{"id": %b}'
        self.key = ("{" + ", ".join(q.replace("%", "%%") + ": %b" for q, _, _, _ in key)
                    + "}").encode()
        self.key_positions = [position for _, _, position, _ in key]
        self.oid_prefix = f"{rel.oid}:".encode()
        self.insert_changed = shape.all_literal.encode()
        self.copy_relation = shape.copy_relation.encode()
        self.changed: dict[tuple[int, ...], bytes] = {}  # changed columns → their literal
        self.render = _renderer(self)


def fast_shape(shape: Shape, types: TypeCatalog, plan: KeyPlan) -> FastShape | None:
    """The fast path for a relation, or None where its columns need the general one."""
    kinds = []
    for column in shape.relation.columns:
        t = types.get(column.type_oid)
        if t.kind == "number":
            kinds.append(_RAW if t.integer else _NUMBER)
        elif t.kind in _FAST_KINDS:
            kinds.append(_FAST_KINDS[t.kind])
        else:
            return None  # arrays, composites
    for _, _, position, integer in plan:
        # the key's text must be what jsonb writes: no non-integer number, no json
        if position < 0 or kinds[position] in (_NUMBER, _JSON) \
                or (kinds[position] == _RAW and not integer):
            return None
    return FastShape(shape, kinds, plan)


def _escaped(v: bytes) -> bytes:
    return encode_basestring(v.decode()).encode()  # type: ignore[no-any-return]


def _timestamp(v: bytes) -> bytes:
    """A timestamp's text output in the XSD form to_jsonb writes (_pgjson._xsd)."""
    if v in _NOT_XSD or v.endswith(b" BC"):
        return b'"' + v + b'"'
    return b'"' + v.replace(b" ", b"T", 1) + b'"'


def _timestamptz(v: bytes) -> bytes:
    if v in _NOT_XSD or v.endswith(b" BC"):
        return b'"' + v + b'"'
    v = v.replace(b" ", b"T", 1)
    m = _TZ_BYTES.search(v)
    if m and m.group(2) is None:
        v = v[:m.start()] + m.group(1) + b":00"
    return b'"' + v + b'"'


# Each kind's JSON {r} of a non-null value {v}, as a line of the generated renderer.
_RENDER = {
    _RAW: "{r} = {v}",
    _JSON: "{r} = {v}",
    _STRING: "{r} = b'\"' + {v} + b'\"' if special({v}) is None else escaped({v})",
    _NUMBER: "{r} = b'\"' + {v} + b'\"' if {v} in not_numbers else {v}",
    _BOOL: "{r} = b'true' if {v} == b't' else b'false'",
    _TIMESTAMP: "{r} = timestamp({v})",
    _TIMESTAMPTZ: "{r} = timestamptz({v})",
}


def _read_row(kinds: list[int], value: str, json: str) -> list[str]:
    """Lines reading a TupleData at ``pos`` into ``{value}0…`` (raw) and ``{json}0…``
    (each value's JSON); anything the general path must take returns None (an unchanged
    TOAST value, a binary value, anything malformed: the general decoder says what)."""
    lines = [f"    if i16(buf, pos)[0] != {len(kinds)}:",
             "        return None",
             "    pos += 2"]
    for i, kind in enumerate(kinds):
        lines += ["    t = buf[pos]",
                  "    if t == 116:",
                  "        n = i32(buf, pos + 1)[0]",
                  "        if n < 0:",
                  "            return None",
                  "        s = pos + 5",
                  "        pos = s + n",
                  f"        {value}{i} = buf[s:pos]",
                  "        " + _RENDER[kind].format(r=f"{json}{i}", v=f"{value}{i}"),
                  "    elif t == 110:",
                  "        pos += 1",
                  f"        {value}{i} = None",
                  f"        {json}{i} = b'null'",
                  "    else:",
                  "        return None"]
    return lines


def _renderer(fs: FastShape) -> Callable[[bytes], tuple[str, bytes | None] | None]:
    """``render_change`` for one relation, unrolled over its columns. The source holds only
    positions and kinds; names, templates and helpers are passed in."""
    count = len(fs.kinds)
    new = "(" + "".join(f"r{i}, " for i in range(count)) + ")"
    old = "(" + "".join(f"p{i}, " for i in range(count)) + ")"
    new_key = "(" + "".join(f"r{i}, " for i in fs.key_positions) + ")"
    escape = ["    if copy_special({0}) is not None:",
              "        {0} = copy_sub(copy_escape, {0})"]

    def escaped(name: str) -> list[str]:
        return [line.format(name) for line in escape]

    lines = ["def render(buf):",
             "    kind = buf[0]",
             "    if kind == 73:",  # I(nsert)
             "        if buf[5] != 78:",
             "            return None",
             "        pos = 6"]
    body = [
        *_read_row(fs.kinds, "v", "r"),
        "    if pos != len(buf):",
        "        return None",
        f"    row = image % {new}",
        *escaped("row"),
        f"    key = key_template % {new_key}",
        "    rid = md5(oid_prefix + key).hexdigest().encode()",
        *escaped("key")]
    lines += ["    " + line for line in body] + [
        "        return 'INSERT', b'%b\\t%b\\tINSERT\\t\\\\N\\t%b\\t%b\\t' % ("
        "rid, key, row, all_changed)",
        "    if kind == 68:",  # D(elete)
        "        if buf[5] != 79:",
        "            return None",
        "        pos = 6"]
    lines += ["    " + line for line in body] + [
        "        return 'DELETE', b'%b\\t%b\\tDELETE\\t%b\\t\\\\N\\t%b\\t' % ("
        "rid, key, row, all_changed)",
        "    if kind != 85 or buf[5] != 79:",  # U(pdate) with the old row whole (FULL)
        "        return None",
        "    pos = 6"]
    lines += _read_row(fs.kinds, "a", "p")
    lines += ["    if buf[pos] != 78:",
              "        return None",
              "    pos += 1"]
    lines += _read_row(fs.kinds, "v", "r")
    lines += ["    if pos != len(buf):",
              "        return None",
              "    columns = []"]
    for i in range(count):
        lines += [f"    if a{i} != v{i}:", f"        columns.append({i})"]
    olds = "(" + "".join(f"a{i}, " for i in range(count)) + ")"
    news = "(" + "".join(f"v{i}, " for i in range(count)) + ")"
    lines += ["    if not columns:",
              "        return 'UPDATE', None",  # a no-op update: the trigger's WHEN skips it
              "    if judged and not judged.isdisjoint(columns):",
              f"        columns = judge(fs, columns, {olds}, {news})",
              "        if columns is None:",
              "            return None",
              "        if not columns:",
              "            return 'UPDATE', None",
              "    changed = changed_literal(fs, columns)",
              f"    before = image % {old}",
              *escaped("before"),
              f"    row = image % {new}",
              *escaped("row"),
              f"    key = key_template % {new_key}",
              "    rid = md5(oid_prefix + key).hexdigest().encode()",
              *escaped("key"),
              "    return 'UPDATE', b'%b\\t%b\\tUPDATE\\t%b\\t%b\\t%b\\t' % ("
              "rid, key, before, row, changed)"]
    namespace: dict[str, Any] = {
        "i16": _I16, "i32": _I32, "special": _JSON_SPECIAL.search, "escaped": _escaped,
        "not_numbers": _NOT_JSON_NUMBERS, "timestamp": _timestamp, "timestamptz": _timestamptz,
        "copy_special": _COPY_SPECIAL_BYTES.search, "copy_sub": _COPY_SPECIAL_BYTES.sub,
        "copy_escape": _copy_escape, "md5": md5, "image": fs.image, "key_template": fs.key,
        "oid_prefix": fs.oid_prefix, "all_changed": fs.insert_changed, "judged": fs.judged,
        "judge": _judged, "changed_literal": _changed_literal, "fs": fs}
    exec("\n".join(lines), namespace)  # generated from positions and kinds alone
    return namespace["render"]  # type: ignore[no-any-return]


def _changed_literal(fs: FastShape, columns: list[int]) -> bytes:
    """The changed columns' text[] in the database's collation order (cached)."""
    ident = tuple(columns)
    literal = fs.changed.get(ident)
    if literal is None:
        ordered = sorted(columns, key=fs.rank.__getitem__)
        literal = fs.changed[ident] = array_literal([fs.names[i] for i in ordered]).encode()
    return literal


def _judged(fs: FastShape, columns: list[int], old: tuple[bytes | None, ...],
            new: tuple[bytes | None, ...]) -> list[int] | None:
    """The columns whose values differ in text and in value (numbers: 10.5 = 10.50), or
    None where only jsonb can tell (json: 1.0 and 1.00 inside it)."""
    out = []
    for i in columns:
        a, b = old[i], new[i]
        if a is not None and b is not None:
            kind = fs.kinds[i]
            if kind == _JSON:
                return None
            if kind == _NUMBER:
                try:
                    if Decimal(a.decode()) == Decimal(b.decode()):
                        continue
                except InvalidOperation:
                    pass
        out.append(i)
    return out


def _copy_bytes(text: bytes) -> bytes:
    if _COPY_SPECIAL_BYTES.search(text) is None:
        return text
    return _COPY_SPECIAL_BYTES.sub(_copy_escape, text)


def render_change(fs: FastShape, buf: bytes) -> tuple[str, bytes | None] | None:
    """An Insert, Update or Delete message of ``fs``'s relation as its operation and the
    first six COPY columns of its row (record_id, pk, op, old, new, changed_cols, each
    followed by a tab); the body is None for an update that changed nothing (stored by
    neither capture). None: the general path must take it (an update without the whole
    old row, an unchanged TOAST value, a json column that changed)."""
    return fs.render(buf)


class NativeRelation:
    """A relation as the C decoder (extension/flux_decode.c) names it in its 'R' record:
    what the consumer adds to its changes' rows."""

    __slots__ = ("copy_relation", "table")

    def __init__(self, oid: int, namespace: str, name: str) -> None:
        self.table = name.lower()
        self.copy_relation = (f"{oid}\t{copy_text(namespace or 'pg_catalog')}"
                              f"\t{copy_text(name)}").encode()


# A change ``render_change`` (or the C decoder) wrote, as the consumer keeps it until its
# transaction commits: its table (lower case, for the spans), operation, body (None: a
# no-op update), the actor in effect and its relation's plan.
Rendered = tuple[str, str, bytes | None, dict[str, Any] | None, FastShape | NativeRelation]
