"""Column values in PostgreSQL's text output, turned into what ``to_jsonb`` makes of them.

The capture trigger stores a row as ``to_jsonb(NEW)``; the WAL consumer receives the same
row as each column's text output. For the two modes to store identical rows this module
applies ``to_jsonb``'s rules (PostgreSQL's ``json_categorize_type``), by the column's base
type: booleans and numbers become JSON literals (numbers verbatim, so ``10.50`` keeps its
scale; NaN and infinities become strings, as ``to_jsonb`` writes them), ``json``/``jsonb``
are embedded, ``date``/``timestamp``/``timestamptz`` take the XSD form
(``2026-11-21T07:30:00+00:00``), arrays become (nested) JSON arrays, composites become
objects, and every other type its text output as a JSON string.

The result is a tree of Python values with ``orjson.Fragment`` for numbers and JSON, ready
for ``orjson.dumps``. Timestamps with time zone are rendered in the decoding session's
TimeZone, as ``to_jsonb`` renders them in the writer's: both are the server's default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

BOOL, NUMBER, JSON, DATE, TIMESTAMP, TIMESTAMPTZ, ARRAY, COMPOSITE, STRING = (
    "bool", "number", "json", "date", "timestamp", "timestamptz", "array", "composite",
    "string")

_NUMBERS = {20, 21, 23, 700, 701, 1700}  # int8 int2 int4 float4 float8 numeric
_INTEGERS = {20, 21, 23}  # never NaN nor infinite: their text is the JSON number
_BY_OID = {16: BOOL, 114: JSON, 3802: JSON, 1082: DATE, 1114: TIMESTAMP, 1184: TIMESTAMPTZ}
_NOT_NUMBERS = {b"NaN", b"Infinity", b"-Infinity"}
_TZ = re.compile(r"([+-]\d\d)(:\d\d)?(:\d\d)?$")


@dataclass
class PgType:
    """What the conversion needs of one type (its base type, for a domain)."""

    oid: int
    kind: str
    element: int = 0  # arrays: the element type
    delimiter: str = ","  # arrays: the element type's delimiter
    fields: list[tuple[str, int]] = field(default_factory=list)  # composites
    integer: bool = False  # numbers: int2, int4, int8 (or a domain over one)


class TypeCatalog:
    """Types by oid, as rows of ``sql/queries/capture.sql`` ``types`` describe them."""

    def __init__(self) -> None:
        self._types: dict[int, PgType] = {}

    def __contains__(self, oid: int) -> bool:
        return oid in self._types

    def load(self, rows: list[dict[str, Any]]) -> None:
        raw = {int(r["oid"]): r for r in rows}
        for oid in raw:
            self._types[oid] = self._describe(oid, raw)

    def _describe(self, oid: int, raw: dict[int, dict[str, Any]]) -> PgType:
        row = raw[oid]
        base = oid
        for _ in range(32):  # domains over domains
            if raw.get(base, {}).get("typtype") != "d":
                break
            base = int(raw[base]["typbasetype"])
        info = raw.get(base, row)
        if base in _INTEGERS:
            return PgType(oid, NUMBER, integer=True)
        if base in _NUMBERS:
            return PgType(oid, NUMBER)
        if base in _BY_OID:
            return PgType(oid, _BY_OID[base])
        element = int(info.get("typelem") or 0)
        if info.get("typcategory") == "A" and element and int(info.get("typlen", -1)) == -1:
            delimiter = str(raw.get(element, {}).get("typdelim") or ",")
            return PgType(oid, ARRAY, element=element, delimiter=delimiter)
        if info.get("typtype") == "c":
            names = info.get("field_names") or []
            types = info.get("field_types") or []
            return PgType(oid, COMPOSITE, fields=list(zip(names, map(int, types), strict=True)))
        return PgType(oid, STRING)

    def get(self, oid: int) -> PgType:
        return self._types.get(oid) or PgType(oid, STRING)

    def value(self, oid: int, text: bytes) -> Any:
        """One column's text output as ``to_jsonb`` shows it."""
        return self.converter(oid)(text.decode())

    def converter(self, oid: int) -> Any:
        """The conversion of one type's text output, for a column (the hot path: resolved
        once per relation, not per value)."""
        t = self.get(oid)
        kind = t.kind
        if kind in (STRING, DATE):
            return _same
        if kind == NUMBER:
            return orjson.Fragment if t.integer else _number
        if kind == BOOL:
            return _bool
        if kind == JSON:
            return orjson.Fragment
        return lambda text: self._convert(t, text)

    def distinct(self, oid: int) -> Callable[[bytes, bytes], bool | None]:
        """Whether two *different* text outputs of a type are different ``to_jsonb`` values
        (``IS DISTINCT FROM`` on jsonb, as ``flux.changed_columns`` compares them); None
        where only PostgreSQL can say cheaply (json, arrays, composites: ``1.0`` and
        ``1.00`` are equal numbers inside them)."""
        kind = self.get(oid).kind
        if kind == NUMBER:
            return _numbers_distinct
        if kind in (JSON, ARRAY, COMPOSITE):
            return _undecided
        return _texts_distinct  # strings, booleans, dates, timestamps: text is the value

    def _convert(self, t: PgType, text: str) -> Any:
        kind = t.kind
        if kind == STRING:
            return text
        if kind == NUMBER:
            if text in ("NaN", "Infinity", "-Infinity"):
                return text
            return orjson.Fragment(text)
        if kind == BOOL:
            return text == "t"
        if kind == JSON:
            return orjson.Fragment(text)
        if kind == TIMESTAMPTZ:
            return _xsd(text, zone=True)
        if kind == TIMESTAMP:
            return _xsd(text, zone=False)
        if kind == DATE:
            return text
        if kind == ARRAY:
            return self._array(t, text)
        return self._composite(t, text)

    def _array(self, t: PgType, text: str) -> Any:
        if text.startswith("["):  # dimension decoration of a non-default lower bound
            text = text[text.index("=") + 1:]
        element = self.get(t.element)
        parsed, end = _parse_array(text, 0, t.delimiter)
        if end != len(text):
            raise ValueError(f"array literal has trailing text: {text!r}")
        return _map_nested(parsed, lambda v: self._convert(element, v))

    def _composite(self, t: PgType, text: str) -> Any:
        values = _parse_composite(text)
        if len(values) != len(t.fields):
            return text  # a type changed under us: keep the text rather than guess
        return {name: None if v is None else self._convert(self.get(oid), v)
                for (name, oid), v in zip(t.fields, values, strict=True)}


def _same(text: str) -> str:
    return text


def _number(text: str) -> Any:
    return text if text in ("NaN", "Infinity", "-Infinity") else orjson.Fragment(text)


def _bool(text: str) -> bool:
    return text == "t"


def _texts_distinct(a: bytes, b: bytes) -> bool:
    return True


def _undecided(a: bytes, b: bytes) -> None:
    return None


def _numbers_distinct(a: bytes, b: bytes) -> bool:
    # jsonb compares numbers by value (10.5 = 10.50, -0 = 0); NaN and the infinities are
    # strings there, equal only to themselves — and equal texts never get here.
    try:
        return Decimal(a.decode()) != Decimal(b.decode())
    except InvalidOperation:
        return True


def _xsd(text: str, *, zone: bool) -> str:
    """ISO text output → the XSD form to_jsonb uses (``T``; a zone always with minutes)."""
    if text in ("infinity", "-infinity") or text.endswith(" BC"):
        return text
    text = text.replace(" ", "T", 1)
    if zone:
        m = _TZ.search(text)
        if m and m.group(2) is None:
            text = text[:m.start()] + m.group(1) + ":00"
    return text


def _map_nested(value: Any, convert: Any) -> Any:
    if isinstance(value, list):
        return [_map_nested(v, convert) for v in value]
    return None if value is None else convert(value)


def _parse_array(text: str, pos: int, delim: str) -> tuple[list[Any], int]:
    """Parse ``{…}`` at ``pos``; elements are str, None (NULL) or nested lists."""
    if text[pos] != "{":
        raise ValueError(f"array literal expected at {pos}: {text!r}")
    pos += 1
    items: list[Any] = []
    if text[pos] == "}":
        return items, pos + 1
    while True:
        ch = text[pos]
        if ch == "{":
            nested, pos = _parse_array(text, pos, delim)
            items.append(nested)
        elif ch == '"':
            value, pos = _quoted(text, pos)
            items.append(value)
        else:
            start = pos
            while text[pos] not in (delim, "}"):
                pos += 1
            # array_out quotes any element with PostgreSQL whitespace, so an unquoted
            # element is taken verbatim (str.strip would also eat U+0085 and friends).
            raw = text[start:pos]
            items.append(None if raw.upper() == "NULL" else raw)
        if text[pos] == delim:
            pos += 1
            continue
        if text[pos] == "}":
            return items, pos + 1
        raise ValueError(f"bad array literal at {pos}: {text!r}")


def _quoted(text: str, pos: int) -> tuple[str, int]:
    out: list[str] = []
    pos += 1
    while True:
        ch = text[pos]
        if ch == "\\":
            out.append(text[pos + 1])
            pos += 2
        elif ch == '"':
            if text.startswith('""', pos):  # composites double a quote inside quotes
                out.append('"')
                pos += 2
                continue
            return "".join(out), pos + 1
        else:
            out.append(ch)
            pos += 1


def _parse_composite(text: str) -> list[str | None]:
    """``(1,"a b",)`` → ["1", "a b", None]: an empty field is NULL."""
    values: list[str | None]
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError(f"composite literal expected: {text!r}")
    body, pos, values = text, 1, []
    while True:
        if body[pos] == '"':
            value, pos = _quoted(body, pos)
            values.append(value)
        else:
            start = pos
            while body[pos] not in (",", ")"):
                pos += 1
            values.append(body[start:pos] or None)
        if body[pos] == ",":
            pos += 1
            continue
        return values
