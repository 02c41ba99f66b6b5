"""``flux trace debug ID|FILE``: the facts the terminal UI shows, without a terminal.

One execution record (read by id prefix from the store, or from a record file — a file
never starts a database) with its spans in execution order, and for each span what went
in and what came out: the request and response of a function, the SQL (pretty-printed)
and its result rows, the HTTP exchange, the rows it changed, its log lines and its
file:line. Also the two actions the UI offers: a diff against another execution and a
replay of this one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flux._project import load
from flux.inspect._compare import compare, mutations
from flux.inspect._diff import diff, to_json
from flux.inspect._trace import tree, walk
from flux.replay._replay import replay_command
from flux.store._database import reader
from flux.store._lookup import fetch_record
from flux.store._portable import read_file
from flux.store._statement import to_dollar_params

Span = dict[str, Any]


def is_file_target(target: str) -> bool:
    """Whether ``target`` names a record file rather than an execution id prefix."""
    path = Path(target)
    return path.suffix == ".json" or path.is_file()


def pretty_sql(sql: str) -> str:
    """The statement laid out by pglast; the statement as written if it does not parse."""
    # pglast (~60 ms): only when a statement is pretty-printed
    import pglast

    try:
        return str(pglast.prettify(to_dollar_params(sql), comma_at_eoln=True))
    except Exception:  # pglast raises several kinds; a bad parse must not break the UI
        return sql


def mutation_changes(m: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Old → new per column of one row mutation (INSERT: from nothing; DELETE: to nothing)."""
    old, new = m.get("old") or {}, m.get("new") or {}
    op = (m.get("op") or "").upper()
    if op == "INSERT":
        return {c: (None, v) for c, v in sorted(new.items())}
    if op == "DELETE":
        return {c: (v, None) for c, v in sorted(old.items())}
    columns = m.get("changed_cols") or sorted(set(old) | set(new))
    return {c: (old.get(c), new.get(c)) for c in columns}


@dataclass
class DebugData:
    """An execution as the debugger steps through it."""

    record: dict[str, Any]
    mutations: list[dict[str, Any]]
    target: str
    from_file: bool
    rows: list[tuple[str, Span, bool]] = field(init=False)
    by_span_mutations: dict[str, list[dict[str, Any]]] = field(init=False)
    by_span_logs: dict[str, list[dict[str, Any]]] = field(init=False)
    by_span_tape: dict[str, list[dict[str, Any]]] = field(init=False)
    culprits: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = walk(tree(self.record.get("spans") or []))
        self.culprits = _culprits(self.spans)
        self.by_span_mutations = _group(self.mutations)
        self.by_span_logs = _group(self.record.get("logs") or [])
        self.by_span_tape = _group(self.record.get("tape") or [])

    @property
    def spans(self) -> list[Span]:
        """Every span in execution order (a parent before its children, siblings by start)."""
        return [span for _, span, _ in self.rows]

    @property
    def total_ms(self) -> float:
        ends = [(s.get("start_ms") or 0) + (s.get("duration_ms") or 0) for s in self.spans]
        return max([self.record.get("duration_ms") or 0, *ends]) or 1.0

    def first_error(self) -> int | None:
        """The index of the first span where an error began: it failed, and nothing it
        called (however deep) failed."""
        return next((i for i, (_, span, _) in enumerate(self.rows)
                     if span.get("id") in self.culprits), None)

    def search(self, text: str, after: int = -1) -> int | None:
        """The index of the next span after ``after`` whose name contains ``text``
        (case-insensitive), wrapping around; None if no span matches."""
        needle = text.lower().strip()
        if not needle:
            return None
        n = len(self.rows)
        for step in range(1, n + 1):
            i = (after + step) % n
            if needle in self.rows[i][1].get("name", "").lower():
                return i
        return None

    def detail(self, span: Span) -> dict[str, Any]:
        """What the UI shows for one span."""
        sid = str(span.get("id"))
        kind = span.get("kind")
        attrs = span.get("attrs") or {}
        tape = self.by_span_tape.get(sid, [])
        facts: dict[str, Any] = {
            "id": sid, "name": span.get("name"), "kind": kind, "status": span.get("status"),
            "start_ms": span.get("start_ms"), "duration_ms": span.get("duration_ms"),
            "where": f"{span['file']}:{span['line']}" if span.get("file") else None,
            "error": span.get("error"),
            "input": None, "output": None, "sql": None, "http": None,
        }
        if kind in ("function", "gateway"):
            facts["input"] = (self.record.get("request") or {}).get("body")
            facts["output"] = (self.record.get("response") or {}).get("body")
        if kind == "db":
            entry = next((e for e in tape if e.get("kind") == "db"), None)
            value = (entry or {}).get("value") or {}
            facts["sql"] = {
                "text": pretty_sql(attrs["sql"]) if attrs.get("sql") else None,
                "params": attrs.get("params"), "verb": attrs.get("verb"),
                "tables": attrs.get("tables") or [],
                "rowcount": value.get("rowcount", attrs.get("rowcount")),
                "columns": value.get("columns") or [], "rows": value.get("rows") or [],
            }
        if kind == "http":
            entry = next((e for e in tape if e.get("kind") == "http"), None)
            request = attrs.get("request") or {}
            answer = (entry or {}).get("value") or attrs.get("response") or {}
            facts["http"] = {
                "method": attrs.get("method"), "url": attrs.get("url"),
                "headers": request.get("headers") or {}, "body": request.get("body"),
                "response": {"status": answer.get("status", attrs.get("status")),
                             "headers": answer.get("headers") or {},
                             "body": answer.get("body")},
            }
        facts["mutations"] = [
            {"table": f"{m.get('table_schema') or 'public'}.{m.get('table_name')}",
             "pk": m.get("pk") or {}, "op": m.get("op"),
             "rolled_back": bool(m.get("rolled_back")), "changes": mutation_changes(m)}
            for m in self.by_span_mutations.get(sid, [])]
        facts["logs"] = self.by_span_logs.get(sid, [])
        facts["tape"] = [e for e in tape if e.get("kind") not in ("db", "http")]
        return facts


def _culprits(spans: list[Span]) -> set[str]:
    """Ids of the failed spans none of whose descendants failed."""
    parents = {s.get("id"): s.get("parent_id") for s in spans}
    failed = {s.get("id") for s in spans if s.get("status") == "error"}
    above: set[Any] = set()
    for sid in failed:
        seen: set[Any] = set()
        parent = parents.get(sid)
        while parent is not None and parent not in seen:
            seen.add(parent)
            above.add(parent)
            parent = parents.get(parent)
    return {str(sid) for sid in failed - above}


def _group(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        grouped[item.get("span_id") or ""].append(item)
    return dict(grouped)


def _project(project: Any) -> Any:
    if project is not None:
        return project

    return load()


def load_debug(project: Any, target: str) -> DebugData:
    """The execution ``target`` names: a record file, or an id prefix looked up in the
    project's store (``project`` may be None for a file)."""
    if is_file_target(target):

        document = read_file(Path(target))
        return DebugData(document["record"], document.get("mutations") or [], target, True)

    with reader(_project(project)) as conn:
        record = fetch_record(conn, target)
        changes = mutations(conn, record["request_id"])
    return DebugData(record, changes, target, False)


def diff_records(a: DebugData, b: DebugData) -> dict[str, Any]:
    """B against A, as ``flux trace diff --json`` prints it."""

    return to_json(diff(a.record, b.record, a.mutations, b.mutations))


def diff_against(project: Any, data: DebugData, other: str) -> dict[str, Any]:
    """This execution against ``other`` (an id prefix or a record file)."""
    if not data.from_file and not is_file_target(other):

        with reader(_project(project)) as conn:
            return compare(conn, data.record["request_id"], other)
    return diff_records(data, load_debug(project, other))


def replay_debug(project: Any, data: DebugData) -> dict[str, Any]:
    """Replay the execution against today's code; ``passed`` says whether it matched."""

    return replay_command(_project(project), data.target, expect_same=True)
