"""Tape matching: which recorded value answers each call a replayed function makes.

DESIGN.md's rules, exactly. Each tape entry has a kind (db, http, clock, random, uuid,
secret, queue, invoke, step) and a key (for SQL the pglast fingerprint plus a hash of the
parameters, for HTTP the method and URL). New calls are matched to the tape in order per
kind. The first call that has no match is the divergence, reported with the entry that was
expected, the call that was made and its file:line.

Calls that ran concurrently in the original (their spans overlapped in time, as under
``asyncio.gather``) may finish — and so be replayed — in any order: among the entries of
such a cluster, a call matches by key. Outside a cluster order is strict, so a reordered,
added or removed call is a divergence, not a silent re-pairing.

After the divergence the matcher keeps going (a fixed function often takes another path):
a later call still takes the first unconsumed entry with its key anywhere in the tape, and
a call with none is *beyond the tape*. Pure logic, no IO.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flux.runtime._callkey import describe_difference

KINDS = ("db", "http", "clock", "random", "uuid", "secret", "queue", "invoke", "step",
         "config")
# Kinds matched by key wherever they are: reading a configuration value is no event whose
# order matters, and each key is read from the world once per execution.
UNORDERED = frozenset({"config"})
NEVER = 10**9


def failure_point(record: Mapping[str, Any]) -> int:
    """The tape position of the call that failed (an HTTP error or 4xx/5xx answer, a
    database error). NEVER when no IO failed (a bug in the code after the calls)."""
    for entry in record.get("tape") or []:
        value = entry.get("value")
        if not isinstance(value, dict):
            continue
        if "error" in value:
            return int(entry.get("seq") or 0)
        if entry.get("kind") == "http" and int(value.get("status") or 0) >= 400:
            return int(entry.get("seq") or 0)
    return NEVER


@dataclass(frozen=True)
class Call:
    """A call the replayed code made."""

    kind: str
    key: str
    file: str | None = None
    line: int | None = None
    describe: str = ""  # for people: "INSERT INTO orders …", "POST http://…/v1/charges"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "file": self.file, "line": self.line,
                "call": self.describe or self.key}


@dataclass(frozen=True)
class Divergence:
    """The first call of the replay that the tape could not answer in order."""

    expected: dict[str, Any] | None  # the tape entry that was due (None: the tape had ended)
    actual: Call | None  # the call that was made (None: an expected call never came)
    reason: str

    @property
    def file(self) -> str | None:
        if self.actual is not None and self.actual.file:
            return self.actual.file
        return (self.expected or {}).get("file")

    @property
    def line(self) -> int | None:
        if self.actual is not None and self.actual.line:
            return self.actual.line
        return (self.expected or {}).get("line")

    def to_json(self) -> dict[str, Any]:
        return {
            "expected": None if self.expected is None else _entry_json(self.expected),
            "actual": None if self.actual is None else self.actual.to_json(),
            "file": self.file, "line": self.line, "reason": self.reason,
        }


@dataclass(frozen=True)
class Match:
    entry: dict[str, Any] | None  # None: beyond the tape
    in_order: bool


@dataclass
class Tape:
    """The entries of one record, consumed as the replay makes its calls."""

    entries: list[dict[str, Any]]
    spans: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # With the database live, a statement's parameters may come from live results (a new
    # id) and differ from the tape's: then statements match by fingerprint alone.
    loose_db: bool = False
    # The kinds whose changed sequence is a divergence; a call of another kind matches by
    # key wherever it is (resume re-executes statements, so only outside calls count).
    watched: frozenset[str] = frozenset(KINDS) - UNORDERED
    divergence: Divergence | None = None
    _pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for entry in sorted(self.entries, key=lambda e: e.get("seq") or 0):
            self._pending.setdefault(str(entry.get("kind")), []).append(entry)

    @classmethod
    def of(cls, record: Mapping[str, Any], *, loose_db: bool = False,
           watched: Iterable[str] | None = None) -> Tape:
        spans = {str(s.get("id")): s for s in record.get("spans") or []}
        return cls(list(record.get("tape") or []), spans, loose_db=loose_db,
                   watched=frozenset(KINDS if watched is None else watched) - UNORDERED)

    def _same(self, entry: Mapping[str, Any], call: Call) -> bool:
        key = str(entry.get("key"))
        if self.loose_db and call.kind == "db":
            return key.split(":")[0] == call.key.split(":")[0]
        return key == call.key

    def take(self, call: Call) -> Match:
        """The entry that answers ``call``, consumed; ``Match(None, …)`` beyond the tape."""
        queue = self._pending.get(call.kind, [])
        if not queue:
            return Match(None, in_order=self.divergence is None)
        if call.kind not in self.watched:
            index = next((i for i, e in enumerate(queue) if self._same(e, call)), None)
            return Match(None if index is None else queue.pop(index), in_order=True)
        due = queue[0]
        if self._same(due, call):
            return Match(queue.pop(0), in_order=True)
        for i, entry in enumerate(queue[1:], 1):
            if not self._same(entry, call):
                continue
            if self.divergence is None and not self._concurrent(due, entry):
                break  # a match exists, but out of order: that is the divergence
            return Match(queue.pop(i), in_order=self.divergence is None)
        if self.divergence is None:
            self.divergence = Divergence(
                expected=due, actual=call,
                reason=self._reason(due, call, any(self._same(e, call) for e in queue)))
        index = next((i for i, e in enumerate(queue) if self._same(e, call)), None)
        return Match(None if index is None else queue.pop(index), in_order=False)

    def finish(self) -> Divergence | None:
        """At the end of the replay: an expected call that never came is a divergence too
        (a removed call at the end of a function)."""
        if self.divergence is None:
            left = [e for q in self._pending.values() for e in q
                    if e.get("kind") not in ("invoke",) and e.get("kind") in self.watched]
            if left:
                first = min(left, key=lambda e: e.get("seq") or 0)
                self.divergence = Divergence(expected=first, actual=None,
                                             reason="the replay ended before this call")
        return self.divergence

    def remaining(self) -> list[dict[str, Any]]:
        return sorted((e for q in self._pending.values() for e in q),
                      key=lambda e: e.get("seq") or 0)

    def _concurrent(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
        """Whether two entries' spans overlapped in time in the original execution."""
        sa, sb = self.spans.get(str(a.get("span_id"))), self.spans.get(str(b.get("span_id")))
        if not sa or not sb or sa is sb:
            return False
        start_a, start_b = sa.get("start_ms") or 0.0, sb.get("start_ms") or 0.0
        end_a = start_a + (sa.get("duration_ms") or 0.0)
        end_b = start_b + (sb.get("duration_ms") or 0.0)
        return start_a < end_b and start_b < end_a

    @staticmethod
    def _reason(due: Mapping[str, Any], call: Call, later: bool) -> str:
        if due.get("kind") == call.kind and \
                (secret := describe_difference(str(due.get("key", "")), call.key)):
            return secret
        if later:
            return "the call comes earlier than in the original (reordered, or a call " \
                   "before it was removed)"
        if due.get("kind") == "db" and str(due.get("key", "")).split(":")[0] == \
                call.key.split(":")[0]:
            return "the same statement with different parameters"
        return "the original made another call here (a call was added or changed)"


def _entry_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in ("seq", "kind", "key", "file", "line")}


def summarize(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tape entries without their values, for reports."""
    return [_entry_json(e) for e in entries]
