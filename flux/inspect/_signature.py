"""A failure's signature: what makes two failures "the same bug", as a set of features, a
vector for nearest-neighbour search (pgvector cosine distance), and a text for exact
grouping.

A feature is ``family:value`` — ``class:rate_limit``, ``dep:POST 127.0.0.1:4010/v1/charges``,
``constraint:users_email_key``. Only what stays the same from one occurrence of a bug to the
next goes in: never the request id, the time, the duplicate e-mail or the order id, and
messages and SQL with their numbers and quoted values blanked out. So the same bug on other
data at another time gives the very same features, hence the very same vector.

The vector is signed feature hashing (the "hashing trick") into ``DIM`` floats: a stable
hash (SHA-256, not Python's per-process salted ``hash()``) picks a slot and a sign for each
feature, its family's weight is added there, and the result is scaled to unit length so
cosine distance compares what failed, not how much is known about it. The class, the one
feature every failure has and the one that matters most, is not hashed: each of the six
gets a slot of its own, so two classes never collide and make a rate limit look like a
timeout; the other features share the remaining slots. Families weigh what they say about
sameness: the class and the constraint or dependency most; the file:line least among the
locations, since an unrelated edit above it moves it.

Stored vectors are compared with new ones, so ``DIM``, the weights, the hash and the slot
layout are a format: changing them means recomputing ``flux.failure_signatures.vec``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from flux.inspect._classify import CLASSES, RootCause, classify, dependency_key

if TYPE_CHECKING:
    from flux.store._record import ExecutionRecord

DIM = 64

WEIGHTS: Mapping[str, float] = {
    "class": 3.0,       # the kind of failure dominates
    "constraint": 4.0,  # the same constraint is the same bug, whatever the value; another
                        # constraint is another bug, however alike the rest
    "dep": 2.5,         # the same dependency …
    "status": 2.0,      # … failing the same way
    "sqlstate": 2.0,
    "type": 2.0,        # the exception type
    "code": 2.0,        # a ctx.error code, an HttpError code
    "field": 2.0,       # the key a KeyError names
    "missing": 2.0,     # what a payload lost …
    "retyped": 2.0,     # … or what changed type in it
    "fn": 1.5,          # the same function, light: one outage hits several functions
    "in": 1.5,          # file and function of the failure: survives edits to other lines
    "span": 1.0,        # the failing span by name
    "sql": 1.0,         # its statement, values blanked
    "table": 1.0,
    "at": 1.0,          # file:line: exact, but moves when lines above it change
    "msg": 0.5,         # a plain exception's message, values blanked: a tie-breaker
}
# Left out of the exact-grouping text: a line number moves with edits that fix nothing.
_UNGROUPED = ("at",)

_BLANKS = (
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "#"),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "?"),
    (re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""), "?"),
    (re.compile(r"\b[0-9a-f]{12,}\b", re.I), "#"),
    (re.compile(r"\d+(?:\.\d+)?"), "#"),
    (re.compile(r"\s+"), " "),
)


def features(record: Mapping[str, Any], cause: RootCause) -> list[str]:
    """The sorted, distinct ``family:value`` features of a failed ``record`` whose root
    cause is ``cause`` (see ``WEIGHTS`` for the families)."""
    error = _map(record.get("error"))
    details = cause.details if isinstance(cause.details, Mapping) else {}
    span = cause.span if isinstance(cause.span, Mapping) else None
    found = {
        "fn": record.get("function"), "class": cause.cls, "type": error.get("type"),
        "code": error.get("code"),
        "sqlstate": details.get("sqlstate") or error.get("sqlstate"),
        "constraint": details.get("constraint") or error.get("constraint"),
        "table": details.get("table") if cause.cls == "constraint" else None,
        "dep": details.get("dependency"), "field": details.get("field"),
        "status": details.get("status") if details.get("dependency") else None,
        "msg": _blank(_first_line(error.get("message")), 120)
        if _plain(cause, error) and not details.get("field") else None,
    }
    out = {f"{family}:{value}" for family, value in found.items()
           if value is not None and value != ""}
    if span is not None:
        out.add(f"span:{_span_name(span)}")
        if span.get("kind") == "db" and (sql := _blank(_map(span.get("attrs")).get("sql"))):
            out.add(f"sql:{sql}")
    # Where: the failing call for a failure that has one (a 429 is the same bug whichever
    # line then raised), else the line that raised.
    site = span if span is not None and span.get("kind") in ("db", "http") \
        and span.get("file") else error if error.get("file") else span or {}
    if site.get("file"):
        out.add(f"at:{site['file']}:{site.get('line')}")
        out.add(f"in:{site['file']}:{error.get('function') or record.get('function') or '?'}")
    for path in _list(details.get("missing")):
        out.add(f"missing:{path}")
    retyped = details.get("retyped")
    for path, change in (retyped.items() if isinstance(retyped, Mapping) else ()):
        out.add(f"retyped:{path}:{'>'.join(map(str, _list(change)))}")
    return sorted(out)


def vector(features: Iterable[str]) -> list[float]:
    """``DIM`` floats of unit length for ``features``; equal feature sets (in any order,
    with repeats) give equal vectors, in every process. Never all zeros: if the hashed
    features happen to cancel out, the vector points at one slot chosen by the whole set."""
    slots = [0.0] * DIM
    distinct = sorted(set(features))  # one summation order: bit-for-bit equal results
    for feature in distinct:
        index, sign = _slot(feature)
        slots[index] += sign * WEIGHTS.get(feature.split(":", 1)[0], 1.0)
    norm = math.sqrt(sum(x * x for x in slots))
    if norm < 1e-9:
        slots = [0.0] * DIM
        slots[_slot("\n".join(distinct))[0]] = 1.0
        return slots
    return [x / norm for x in slots]


def signature_text(features: Iterable[str]) -> str:
    """The exact-grouping key: the distinct features, sorted, joined by `` | ``, without
    the file:line ones (an edit above the line would split one bug into two groups)."""
    return " | ".join(sorted({f for f in features if f.split(":", 1)[0] not in _UNGROUPED}))


def _plain(cause: RootCause, error: Mapping[str, Any]) -> bool:
    """Whether the message is worth a feature: only for a plain Python exception, whose
    message is all that tells one TypeError from another and quotes its values (blanked;
    a KeyError's key is a ``field`` feature instead).
    Elsewhere the code, constraint or dependency says it, and free text such as "no user
    named bob" or a constraint's DETAIL would carry the very values that must not count."""
    return cause.cls == "exception" and not error.get("sqlstate") and \
        error.get("type") not in ("FunctionError", "GatewayError")


def _first_line(value: Any) -> str:
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return text.strip().split("\n", 1)[0]


def _slot(feature: str) -> tuple[int, float]:
    """Where a feature goes: a class to its own slot, anything else to a hashed one."""
    family, _, value = feature.partition(":")
    if family == "class" and value in CLASSES:
        return CLASSES.index(value), 1.0
    digest = hashlib.sha256(feature.encode("utf-8", "surrogatepass")).digest()
    index = len(CLASSES) + int.from_bytes(digest[:4], "big") % (DIM - len(CLASSES))
    return index, 1.0 if digest[4] & 1 else -1.0


def _span_name(span: Mapping[str, Any]) -> str:
    """The span's name with the ids it may carry normalised: an http span by its
    dependency (``http.post host/v1/customers/:id``), others with numbers blanked."""
    if span.get("kind") == "http":
        method, _, target = dependency_key(span).partition(" ")
        return f"http.{method.lower()} {target}"
    return _blank(span.get("name"), 120)


def _blank(value: Any, limit: int = 200) -> str:
    """``value`` as one line with its data blanked: quoted strings and e-mails become ?,
    numbers, UUIDs and hex ids #."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    for pattern, mark in _BLANKS:
        text = pattern.sub(mark, text)
    return text.strip()[:limit]


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def failure_signature(record: ExecutionRecord) -> dict[str, Any] | None:
    """The signature row of a failed execution; None if it cannot be classified (a bug in
    the classifier must never cost a record)."""
    try:
        row = record.as_row()
        cause = classify(row)
        feats = features(row, cause)
    except Exception:
        return None
    return {"request_id": record.request_id, "function": record.function, "class": cause.cls,
            "signature": signature_text(feats), "vec": vector(feats),
            "at": record.started_at, "tenant": record.tenant}
