"""``flux trace``: the span tree of one execution, with latencies, errors and DB writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flux._tracecontext import of_record

WRITE_VERBS = frozenset({"insert", "update", "delete", "merge"})


@dataclass
class Node:
    span: dict[str, Any]
    children: list[Node] = field(default_factory=list)


def tree(spans: list[dict[str, Any]]) -> list[Node]:
    """Spans as a forest in execution order (a span whose parent is missing is a root)."""
    nodes = {s["id"]: Node(s) for s in spans}
    roots: list[Node] = []
    for span in spans:
        parent = nodes.get(span.get("parent_id") or "")
        (parent.children if parent else roots).append(nodes[span["id"]])
    for node in nodes.values():
        node.children.sort(key=lambda n: n.span.get("start_ms") or 0)
    return roots


def walk(roots: list[Node]) -> list[tuple[str, dict[str, Any], bool]]:
    """Rows to draw the tree: (guide prefix, span, whether the error is its own rather than
    one propagated from a child)."""
    rows: list[tuple[str, dict[str, Any], bool]] = []

    def visit(node: Node, lead: str, branch: str) -> None:
        span = node.span
        failed_child = any(c.span.get("status") == "error" for c in node.children)
        rows.append((lead + branch, span, span.get("status") == "error" and not failed_child))
        child_lead = lead + ("   " if branch in ("└─ ", "") else "│  ")
        for i, child in enumerate(node.children):
            visit(child, child_lead, "└─ " if i == len(node.children) - 1 else "├─ ")

    for root in roots:
        visit(root, "", "")
    return rows


def stats(spans: list[dict[str, Any]]) -> dict[str, int]:
    db_writes = sum(1 for s in spans if s.get("kind") == "db"
                    and (s.get("attrs") or {}).get("verb") in WRITE_VERBS
                    and s.get("status") == "ok")
    return {
        "spans": len(spans),
        "errors": sum(1 for s in spans if s.get("status") == "error"),
        "db_writes": db_writes,
        "db_calls": sum(1 for s in spans if s.get("kind") == "db"),
        "http_calls": sum(1 for s in spans if s.get("kind") == "http"),
    }


def flatten(nodes: list[dict[str, Any]], parent_id: str | None = None
            ) -> list[dict[str, Any]]:
    """The flat span list (each span with its ``parent_id``) of ``trace_json``'s tree, so a
    trace read from the admin API is drawn like one read from the database."""
    spans: list[dict[str, Any]] = []
    for node in nodes:
        spans.append({**{k: v for k, v in node.items() if k != "children"},
                      "parent_id": parent_id})
        spans.extend(flatten(node.get("children") or [], node.get("id")))
    return spans


def incomplete(spans: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Where the record is incomplete: each outside access no recorded path made (spans of
    kind ``unrecorded``, flux/runtime/_iowatch.py), with its file:line. Empty: nothing known."""
    return [{"what": (s.get("attrs") or {}).get("what") or s.get("name"),
             "file": s.get("file"), "line": s.get("line")}
            for s in spans or [] if s.get("kind") == "unrecorded"]


def trace_json(record: dict[str, Any], handoff: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """The facts ``flux trace --json`` prints."""

    def node_json(node: Node) -> dict[str, Any]:
        span = node.span
        return {**{k: span.get(k) for k in ("id", "name", "kind", "start_ms", "duration_ms",
                                             "status", "file", "line", "error")},
                "children": [node_json(c) for c in node.children]}

    return {
        "request_id": record["request_id"], "function": record["function"],
        "kind": record["kind"], "method": record.get("method"), "route": record.get("route"),
        "status": record["status"], "http_status": record["http_status"],
        "duration_ms": round(float(record["duration_ms"]), 3),
        "started_at": str(record["started_at"]),
        "code_sha": record.get("code_sha"), "parent_id": record.get("parent_id"),
        "trace_id": of_record(record).trace_id,
        "caller_span_id": of_record(record).parent_span_id,
        "stats": stats(record["spans"]),
        "spans": [node_json(n) for n in tree(record["spans"])],
        "jobs": (handoff or {}).get("jobs", []),
        "parent": (handoff or {}).get("parent"),
        "derived": (handoff or {}).get("derived", []),
        "incomplete": incomplete(record["spans"]),
    }
