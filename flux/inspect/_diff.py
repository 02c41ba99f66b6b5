"""Comparing two recorded executions: ``flux trace diff A B`` and the departure that
``flux why`` reports (where a failed execution left the path of the last success).

Pure logic: callers pass ``flux.trace_requests`` rows (as dicts) and mutation rows in, and
get data back. Spans are aligned in execution order by what they *are* (``span_key``: a
query's fingerprint, a request's method, host and path), not by their position, so one
inserted call shows as one added span instead of shifting everything after it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any
from urllib.parse import urlsplit

from flux._jsoncodec import plain

Span = dict[str, Any]
Changes = dict[str, list[Any]]

MISSING = "<missing>"
_ABSENT = object()  # a key or list item one side lacks
_ENVELOPE = frozenset({"gateway", "function"})  # one per execution, whatever its name
_NOISY_HEADERS = frozenset({"content-length", "date", "x-flux-request-id", "x-request-id",
                            "traceparent", "tracestate"})
_NOISY_ATTRS = frozenset({"job_id"})  # new on every push, never a difference that matters
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class SpanChange:
    """One aligned pair: ``a`` and ``b`` are the spans of either execution (None on the side
    that made no such call); ``changes`` maps a field to ``[a value, b value]``."""

    status: str  # same | changed | added | removed
    a: Span | None
    b: Span | None
    latency_delta_ms: float | None
    changes: Changes


@dataclass(frozen=True)
class TraceDiff:
    """Execution b against execution a. ``input``, ``output`` and ``error`` are JSON diffs
    of the request, the answer and the error; ``summary`` counts the span statuses."""

    a_id: str
    b_id: str
    spans: list[SpanChange]
    input: Changes
    output: Changes
    error: Changes
    mutations: dict[str, dict[str, Any]]  # added / removed / changed, keyed "table pk op"
    summary: dict[str, Any]


# -- JSON ---------------------------------------------------------------------------------


def json_diff(a: Any, b: Any) -> Changes:
    """Every place where two JSON values differ, as ``{"$.card.brand": [old, new]}``; a
    side without that key or item reads ``"<missing>"``. Lists are aligned as sequences, so
    an inserted item is one difference; a list index names the item's place in the side it
    is on. ``1`` and ``1.0`` are the same number; ``1`` and ``true`` differ."""
    found: Changes = {}
    _walk(a, b, "$", found)
    return found


def _walk(a: Any, b: Any, path: str, found: Changes) -> None:
    if a is _ABSENT or b is _ABSENT:
        _put(found, path, a, b)
    elif a == b and _canon(a) == _canon(b):  # == alone takes True for 1
        return
    elif isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys(), key=str):
            _walk(a.get(key, _ABSENT), b.get(key, _ABSENT), _child(path, key), found)
    elif isinstance(a, list) and isinstance(b, list):
        _walk_list(a, b, path, found)
    else:
        _put(found, path, a, b)


def _walk_list(a: list[Any], b: list[Any], path: str, found: Changes) -> None:
    matcher = SequenceMatcher(None, [_canon(x) for x in a], [_canon(x) for x in b],
                              autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        paired = 0  # objects (or lists) in place of objects: say which of their fields differ
        while tag == "replace" and paired < min(i2 - i1, j2 - j1) and \
                _alike(a[i1 + paired], b[j1 + paired]):
            _walk(a[i1 + paired], b[j1 + paired], f"{path}[{j1 + paired}]", found)
            paired += 1
        for i in range(i1 + paired, i2):
            _put(found, f"{path}[{i}]", a[i], _ABSENT)
        for j in range(j1 + paired, j2):
            _put(found, f"{path}[{j}]", _ABSENT, b[j])


def _alike(a: Any, b: Any) -> bool:
    return (isinstance(a, dict) and isinstance(b, dict)) or \
        (isinstance(a, list) and isinstance(b, list))


def _put(found: Changes, path: str, old: Any, new: Any) -> None:
    before = found.pop(path, None)
    if before is not None:  # an item only a has and one only b has, at the same index
        old = before[0] if old is _ABSENT else old
        new = before[1] if new is _ABSENT else new
        if old == new and _canon(old) == _canon(new):
            return  # the same item sits there in both: aligned elsewhere, not a difference
    found[path] = [MISSING if old is _ABSENT else old, MISSING if new is _ABSENT else new]


def _canon(value: Any) -> str:
    """A text equal for equal JSON values: keys sorted, 1.0 written as 1, true not 1."""
    return _dump(_integral(value))


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_integral(v) for v in value]
    return value


def _dump(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):  # keys of mixed types: not JSON, compare as Python
        return repr(value)


def _child(path: str, key: Any) -> str:
    key = str(key)
    return f"{path}.{key}" if _IDENTIFIER.match(key) else f"{path}[{json.dumps(key)}]"


def _under(prefix: str, changes: Changes) -> Changes:
    """``{"$.id": …}`` as ``{"<prefix>.id": …}``, so several JSON diffs share one dict."""
    return {prefix + path[1:]: values for path, values in changes.items()}


# -- alignment ----------------------------------------------------------------------------


def span_key(span: Span) -> tuple[str, str, str]:
    """What a span is, independent of when it ran: ``(kind, name, target)`` with the
    target the SQL fingerprint for db spans (literals and whitespace ignored), ``"METHOD
    host/path"`` for http spans and the name for the others."""
    kind = str(span.get("kind") or "")
    name = str(span.get("name") or "")
    attrs = span.get("attrs") or {}
    if kind == "db" and isinstance(attrs.get("fingerprint"), str):
        return kind, name, attrs["fingerprint"]  # recorded with the span
    if kind == "db" and isinstance(attrs.get("sql"), str):
        from flux.store._statement import sql_info  # pglast: only for spans recorded without one

        return kind, name, sql_info(attrs["sql"]).fingerprint
    if kind == "http" and isinstance(attrs.get("url"), str):
        return kind, name, _http_target(attrs)
    return kind, name, name


def _http_target(attrs: dict[str, Any]) -> str:
    parts = urlsplit(attrs["url"])
    return f"{str(attrs.get('method') or '').upper()} {parts.netloc}{parts.path}"


def _match_key(span: Span) -> tuple[str, str, str]:
    kind, name, target = span_key(span)
    return (kind, "", "") if kind in _ENVELOPE else (kind, name, target)


def align(a_spans: Sequence[Span], b_spans: Sequence[Span]
          ) -> list[tuple[Span | None, Span | None]]:
    """The spans of two executions side by side, in execution order. Pairs share a
    ``span_key`` (gateway and function spans pair whatever their names); a span without
    a partner is paired with None. Each side, read down its column, is its own list."""
    a, b = list(a_spans), list(b_spans)
    ka, kb = [_match_key(s) for s in a], [_match_key(s) for s in b]
    # Most diffs compare near-identical runs: strip the common ends first, which keeps the
    # quadratic matcher off long identical loops.
    short = min(len(a), len(b))
    head = 0
    while head < short and ka[head] == kb[head]:
        head += 1
    tail = 0
    while tail < short - head and ka[-1 - tail] == kb[-1 - tail]:
        tail += 1
    pairs: list[tuple[Span | None, Span | None]] = list(zip(a[:head], b[:head], strict=True))
    matcher = SequenceMatcher(None, ka[head:len(a) - tail], kb[head:len(b) - tail],
                              autojunk=False)  # autojunk would drop a loop's repeated key
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        left, right = a[head + i1:head + i2], b[head + j1:head + j2]
        if tag == "equal":
            pairs.extend(zip(left, right, strict=True))
        else:  # different calls: what only a did, then what only b did
            pairs.extend((span, None) for span in left)
            pairs.extend((None, span) for span in right)
    pairs.extend(zip(a[len(a) - tail:], b[len(b) - tail:], strict=True))
    return pairs


# -- span changes -------------------------------------------------------------------------


def _span_changes(a: Span, b: Span) -> Changes:
    changes: Changes = {}
    for field in ("name", "status"):
        if a.get(field) != b.get(field):
            changes[field] = [a.get(field), b.get(field)]
    kind = a.get("kind")
    aa, ba = a.get("attrs") or {}, b.get("attrs") or {}
    if kind == "db":
        if _squash(aa.get("sql")) != _squash(ba.get("sql")):
            changes["sql"] = [aa.get("sql"), ba.get("sql")]
        for field in ("params", "rowcount"):
            if json_diff(aa.get(field), ba.get(field)):
                changes[field] = [aa.get(field), ba.get(field)]
    elif kind == "http":
        for field, label in (("url", "url"), ("status", "http_status"),
                             ("timeout_s", "timeout_s")):
            if json_diff(aa.get(field), ba.get(field)):
                changes[label] = [aa.get(field), ba.get(field)]
        for side, part in (("request", "params"), ("request", "body"), ("response", "body")):
            changes.update(_under(f"{side}.{part}", json_diff(
                (aa.get(side) or {}).get(part), (ba.get(side) or {}).get(part))))
    else:
        changes.update(_under("attrs", json_diff(
            {k: v for k, v in aa.items() if k not in _NOISY_ATTRS},
            {k: v for k, v in ba.items() if k not in _NOISY_ATTRS})))
    if json_diff(a.get("error"), b.get("error")):
        changes["error"] = [a.get("error"), b.get("error")]
    return changes


def _squash(sql: Any) -> Any:
    return " ".join(sql.split()) if isinstance(sql, str) else sql


def _latency_delta(a: Span | None, b: Span | None) -> float | None:
    if a is None or b is None:
        return None
    da, db = a.get("duration_ms"), b.get("duration_ms")
    return None if da is None or db is None else round(db - da, 3)


def _compare(a: Span | None, b: Span | None) -> SpanChange:
    if a is None:
        return SpanChange("added", None, b, None, {})
    if b is None:
        return SpanChange("removed", a, None, None, {})
    changes = _span_changes(a, b)
    return SpanChange("changed" if changes else "same", a, b, _latency_delta(a, b), changes)


# -- mutations ----------------------------------------------------------------------------


def _mutation_key(m: dict[str, Any]) -> str:
    pk = m.get("pk")
    shown = ",".join(f"{k}={_dump(v)}" for k, v in pk.items()) if isinstance(pk, dict) \
        else _dump(pk)
    return f"{m.get('table_name')} {shown} {m.get('op')}"


def _keyed(mutations: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mutations by "table pk op"; a second change of the same row by the same op gets
    " #2" and so on, so a loop's writes pair up in order."""
    seen: Counter[str] = Counter()
    keyed: dict[str, dict[str, Any]] = {}
    for m in mutations:
        key = _mutation_key(m)
        seen[key] += 1
        keyed[key if seen[key] == 1 else f"{key} #{seen[key]}"] = m
    return keyed


def _mutation_changes(a: dict[str, Any], b: dict[str, Any]) -> Changes:
    changes: Changes = {}
    for field in ("pk", "changed_cols", "rolled_back"):
        if json_diff(a.get(field), b.get(field)):
            changes[field] = [a.get(field), b.get(field)]
    for field in ("old", "new"):
        changes.update(_under(field, json_diff(a.get(field), b.get(field))))
    return changes


def _diff_mutations(a_mutations: Iterable[dict[str, Any]],
                    b_mutations: Iterable[dict[str, Any]],
                    pairs: list[tuple[Span | None, Span | None]]) -> dict[str, dict[str, Any]]:
    """Pair mutations by "table pk op"; then pair what is left when the same aligned span
    wrote the same table by the same op (two runs' INSERTs get different ids but are the
    same step), reporting the pk among the changes."""
    a_keyed, b_keyed = _keyed(a_mutations), _keyed(b_mutations)
    matched = [(key, a_keyed.pop(key), b_keyed.pop(key)) for key in list(a_keyed)
               if key in b_keyed]
    partner = {a["id"]: b["id"] for a, b in pairs
               if a is not None and b is not None and "id" in a and "id" in b}
    for a_key, a_m in list(a_keyed.items()):
        span = partner.get(a_m.get("span_id"))
        if span is None:
            continue
        for b_key, b_m in b_keyed.items():
            if b_m.get("span_id") == span and b_m.get("table_name") == a_m.get("table_name") \
                    and b_m.get("op") == a_m.get("op"):
                matched.append((a_key, a_keyed.pop(a_key), b_keyed.pop(b_key)))
                break
    changed = {key: c for key, a_m, b_m in matched if (c := _mutation_changes(a_m, b_m))}
    return {"added": b_keyed, "removed": a_keyed, "changed": changed}


# -- the diff -----------------------------------------------------------------------------


def _input(record: dict[str, Any]) -> dict[str, Any]:
    request = record.get("request") or {}
    headers = request.get("headers") or {}
    return {
        "function": record.get("function"), "method": request.get("method"),
        "route": request.get("route"), "query": request.get("query"),
        "headers": {k: v for k, v in headers.items() if k.lower() not in _NOISY_HEADERS},
        "body": request.get("body"),
    }


def _output(record: dict[str, Any]) -> dict[str, Any]:
    return {"status": record.get("status"), "http_status": record.get("http_status"),
            "body": (record.get("response") or {}).get("body")}


def _spans(record: dict[str, Any]) -> list[Span]:
    """The record's spans, each HTTP span with its answer: the recorder keeps an answer
    once, on the tape, and a reader may not have put it back into the span (copies are
    made for those; the record is not changed)."""
    answers = {e.get("span_id"): e.get("value") for e in record.get("tape") or []
               if e.get("kind") == "http"}
    spans = []
    for span in record.get("spans") or []:
        attrs = span.get("attrs") or {}
        answer = answers.get(span.get("id"))
        if span.get("kind") == "http" and "response" not in attrs and \
                isinstance(answer, dict) and "status" in answer:
            span = {**span, "attrs": {**attrs, "response": answer}}
        spans.append(span)
    return spans


def diff(a_record: dict[str, Any], b_record: dict[str, Any],
         a_mutations: Iterable[dict[str, Any]] = (),
         b_mutations: Iterable[dict[str, Any]] = ()) -> TraceDiff:
    """Execution ``b`` compared with execution ``a``: "added" is what only b did."""
    pairs = align(_spans(a_record), _spans(b_record))
    spans = [_compare(a, b) for a, b in pairs]
    mutations = _diff_mutations(a_mutations, b_mutations, pairs)
    inputs = json_diff(_input(a_record), _input(b_record))
    outputs = json_diff(_output(a_record), _output(b_record))
    errors = json_diff(a_record.get("error"), b_record.get("error"))
    counts = Counter(change.status for change in spans)
    da, db = a_record.get("duration_ms"), b_record.get("duration_ms")
    summary: dict[str, Any] = {
        **{status: counts[status] for status in ("same", "changed", "added", "removed")},
        "latency_delta_ms": None if da is None or db is None else round(db - da, 3),
        "mutations": {k: len(v) for k, v in mutations.items()},
    }
    summary["identical"] = counts["same"] == len(spans) and not (
        inputs or outputs or errors or any(mutations.values()))
    return TraceDiff(_id(a_record), _id(b_record), spans, inputs, outputs, errors, mutations,
                     summary)


def _id(record: dict[str, Any]) -> str:
    request_id = record.get("request_id")
    return "" if request_id is None else str(request_id)


def to_json(diff: TraceDiff) -> dict[str, Any]:
    """The diff as plain JSON (ids, timestamps and the like as strings)."""
    out: dict[str, Any] = plain({
        "a_id": diff.a_id, "b_id": diff.b_id, "summary": diff.summary,
        "input": diff.input, "output": diff.output, "error": diff.error,
        "mutations": diff.mutations,
        "spans": [{"status": c.status, "key": list(span_key(c.a or c.b or {})),
                   "latency_delta_ms": c.latency_delta_ms, "changes": c.changes,
                   "a": c.a, "b": c.b} for c in diff.spans],
    })
    return out


# -- departure ----------------------------------------------------------------------------


def _signature(span: Span) -> tuple[Any, ...]:
    """The facts of a span's outcome that make a run go another way (not ids or messages,
    which differ from run to run)."""
    error = span.get("error") or {}
    http_status = (span.get("attrs") or {}).get("status") if span.get("kind") == "http" \
        else None
    return (span.get("status"), http_status, error.get("type"), error.get("sqlstate"),
            error.get("constraint"))


def _departs(good: Span | None, failed: Span | None) -> bool:
    if good is None or failed is None:
        return True
    return _signature(good) != _signature(failed)


def departure(failed: dict[str, Any], good: dict[str, Any]) -> dict[str, Any] | None:
    """Where ``failed`` first left the path of ``good`` (the last success of the same
    function): the first aligned pair, gateway and function spans aside, with another
    outcome or a call only one of them made. ``index`` points into
    ``align(good spans, failed spans)`` (and ``diff(good, failed).spans``). None when the
    two made the same calls with the same outcomes (the failure came after them)."""
    pairs = align(_spans(good), _spans(failed))
    parents = {s.get("id"): s.get("parent_id") for s in failed.get("spans") or []}
    departing = [i for i, (g, f) in enumerate(pairs)
                 if (g or f or {}).get("kind") not in _ENVELOPE and _departs(g, f)]
    if not departing:
        return None
    index = departing[0]
    # A custom or invoke span fails because a call inside it failed; name that call.
    expected, actual = pairs[index]
    while expected is not None and actual is not None:
        outer = actual.get("id")
        inner = next((i for i in departing if i > index
                      and _inside((pairs[i][1] or {}).get("id"), outer, parents)), None)
        if inner is None:
            break
        index = inner
        expected, actual = pairs[index]
    status = "removed" if actual is None else "added" if expected is None else "changed"
    return {"index": index, "status": status,
            "expected": None if expected is None else _summary(expected),
            "actual": None if actual is None else _summary(actual),
            "description": _describe(expected, actual)}


def _inside(span_id: Any, ancestor: Any, parents: dict[Any, Any]) -> bool:
    for _ in range(len(parents)):  # bounded: a corrupt record must not loop forever
        span_id = parents.get(span_id)
        if span_id is None:
            return False
        if span_id == ancestor:
            return True
    return False


def _summary(span: Span) -> dict[str, Any]:
    attrs = span.get("attrs") or {}
    out = {"id": span.get("id"), "kind": span.get("kind"), "name": span.get("name"),
           "call": _label(span), "status": span.get("status"), "file": span.get("file"),
           "line": span.get("line"), "duration_ms": span.get("duration_ms")}
    if span.get("kind") == "http":
        out.update(url=attrs.get("url"), http_status=attrs.get("status"))
    elif span.get("kind") == "db":
        out.update(sql=attrs.get("sql"), rowcount=attrs.get("rowcount"))
    if span.get("error"):
        out["error"] = span["error"]
    return out


def _label(span: Span) -> str:
    """How a sentence names a call: ``POST host/path``, ``INSERT INTO orders …``."""
    kind = span.get("kind")
    attrs = span.get("attrs") or {}
    if kind == "http" and isinstance(attrs.get("url"), str):
        return _http_target(attrs)
    if kind == "db" and isinstance(attrs.get("sql"), str):
        return _sql_head(attrs["sql"], attrs.get("tables") or [])
    if kind == "custom":
        return f"span {span.get('name')!r}"
    return str(span.get("name"))


def _sql_head(sql: str, tables: Sequence[str]) -> str:
    """A statement up to its first table (``INSERT INTO orders …``), or its first words."""
    words = sql.split()
    names = {t.lower() for t in tables} | {t.rsplit(".", 1)[-1].lower() for t in tables}
    end = next((i + 1 for i, w in enumerate(words[:12])
                if w.strip('",();').lower() in names), min(len(words), 5))
    return " ".join(words[:end]) + (" …" if end < len(words) else "")


def _outcome(span: Span) -> str:
    """What happened to a call, as a verb phrase of the failed run."""
    error = span.get("error") or {}
    status = (span.get("attrs") or {}).get("status")
    if span.get("kind") == "http" and status is not None:
        return f"answered {status}"
    if error.get("type") == "timeout":
        return f"timed out ({error.get('message')})"
    if error:
        facts = ", ".join(str(x) for x in (error.get("sqlstate"), error.get("constraint")) if x)
        detail = f" ({facts})" if facts else f": {str(error.get('message') or '')[:80]}"
        return f"failed with {error.get('type') or 'an error'}{detail}"
    return "failed" if span.get("status") == "error" else "succeeded"


def _expected(span: Span) -> str:
    """What happened to the same call in the last success, after "where the last success"."""
    status = (span.get("attrs") or {}).get("status")
    if span.get("kind") == "http" and status is not None:
        return f"got {status}"
    outcome = _outcome(span)
    return "ran it without error" if outcome == "succeeded" else f"saw it {outcome}"


def _describe(expected: Span | None, actual: Span | None) -> str:
    if actual is None:
        assert expected is not None
        return f"{_label(expected)} was not reached (the last success ran it next)"
    if expected is None:
        return f"{_label(actual)} was called where the last success made no such call"
    return f"{_label(actual)} {_outcome(actual)} where the last success {_expected(expected)}"
