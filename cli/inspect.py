"""``flux ls``, ``flux why``, ``flux trace``, ``flux state``, ``flux explain``: parse, call
one function of ``flux``, render with rich or print JSON."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cli._output import out, print_json
from flux._ids import short
from flux._project import load

JSON = typer.Option(False, "--json", help="Print one JSON document.")

state_app = typer.Typer(help="The history of rows: every change, and who wrote each value.",
                        no_args_is_help=True)


def ls(function: str = typer.Option(None, "--function", "-f", help="Only this function."),
       status: str = typer.Option(None, "--status", "-s",
                                  help="ok, error, 4xx, 5xx or an HTTP status."),
       since: str = typer.Option(None, "--since", help="15m, 2h, 14:05 or an ISO time."),
       window: str = typer.Option(None, "--window", help="START..END, e.g. 14:00..14:05."),
       limit: int = typer.Option(20, "--limit", "-n", help="At most this many."),
       as_json: bool = JSON) -> None:
    """Recent executions, newest first."""
    from flux._inspectdb import reader
    from flux._ls import list_executions

    with reader(load()) as conn:
        rows = list_executions(conn, function=function, status=status, since=since,
                               window=window, limit=limit)
    if as_json:
        print_json({"executions": rows})
        return
    if not rows:
        out.print("no executions match")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=18)
    table.add_column("when", no_wrap=True, min_width=14)
    table.add_column("function", no_wrap=True, overflow="ellipsis", min_width=8,
                     max_width=24)
    table.add_column("status", no_wrap=True, justify="right", min_width=6)
    table.add_column("ms", no_wrap=True, justify="right", min_width=5)
    table.add_column("error")
    room = max(16, out.width - 66)
    for r in rows:
        colour = "green" if r["status"] == "ok" else "red"
        what = r["function"] or f"{r['method'] or ''} /{r['route']}"
        error = (r["error_message"] or "").splitlines()[0] if r["error_message"] else ""
        table.add_row(short(r["request_id"]), _local(r["started_at"]), escape(what),
                      f"[{colour}]{r['http_status']}[/]", f"{r['duration_ms']:.0f}",
                      escape(_fit(error, room)))
    out.print(table)


def _fit(text: str, width: int, *, left: bool = False) -> str:
    """``text`` cut to ``width`` characters with an ellipsis (on the left for paths, whose
    end is the part that matters)."""
    if len(text) <= width:
        return text
    return "…" + text[-(width - 1):] if left else text[: width - 1] + "…"


def _local(iso: str) -> str:
    """A stored UTC time as local 'MM-DD HH:MM:SS'."""
    import datetime as dt

    return dt.datetime.fromisoformat(iso).astimezone().strftime("%m-%d %H:%M:%S")


def _history_change(changes: dict[str, Any]) -> list[str]:
    lines = []
    for column, (old, new) in sorted(changes.items()):
        if old is None:
            lines.append(f"  [green]+[/] {escape(column):<12} → {escape(_show(new))}")
        elif new is None:
            lines.append(f"  [red]-[/] {escape(column):<12} {escape(_show(old))} → null")
        else:
            lines.append(f"  [yellow]~[/] {escape(column):<12} {escape(_show(old))} → "
                         f"{escape(_show(new))}")
    return lines


def _show(value: Any) -> str:
    text = str(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "…"


@state_app.command("history")
def state_history(table: str = typer.Argument(..., help="Table, e.g. users or app.users."),
                  id: str = typer.Option(..., "--id", help="Primary key: 42, a=1,b=2 or JSON."),
                  as_json: bool = JSON) -> None:
    """Every INSERT, UPDATE and DELETE of one row, linked to the request that made it."""
    from flux._inspectdb import reader
    from flux._state import history

    with reader(load()) as conn:
        result = history(conn, table, id)
    if as_json:
        print_json(result)
        return
    key = ", ".join(f"{k} = {v}" for k, v in result["pk"].items())
    out.print(f"\n  [bold]Row[/]  {escape(result['table'])} / {escape(key)}")
    out.print("  " + "─" * 60)
    if not result["rows"]:
        out.print("  no recorded changes")
    for row in result["rows"]:
        who = f"req:{short(row['request_id'])}" if row["request_id"] else \
            f"[magenta]{escape(row['actor'] or '?')}[/] (outside Flux)"
        where = f"  {escape(row['function'] or '')}" + (
            f" · {escape(row['file'])}:{row['line']}" if row["file"] else "")
        flag = "  [red](rolled back)[/]" if row["rolled_back"] else ""
        out.print(f"\n  [dim]{_local(row['at'])}[/]  {row['op']:<6} {who}"
                  f"[dim]{where}[/]{flag}")
        for line in _history_change(row["changes"]):
            out.print(line if not row["rolled_back"] else f"[dim]{line}[/]")
    out.print("")


@state_app.command("blame")
def state_blame(table: str = typer.Argument(..., help="Table, e.g. users."),
                id: str = typer.Option(None, "--id", help="Primary key: 42, a=1,b=2 or JSON."),
                limit: int = typer.Option(50, "--limit", "-n", help="Rows, without --id."),
                as_json: bool = JSON) -> None:
    """Which request, function, commit and line wrote each column's current value."""
    from flux._inspectdb import reader
    from flux._state import blame

    with reader(load()) as conn:
        result = blame(conn, table, id, limit=limit)
    if as_json:
        print_json(result)
        return
    rows = [result] if "columns" in result else result["rows"]
    if not rows:
        out.print(f"no recorded changes in {escape(result['table'])}")
    for row in rows:
        key = ", ".join(f"{k} = {v}" for k, v in row["pk"].items())
        out.print(f"\n  [bold]{escape(result['table'])}[/] / {escape(key)}")
        grid = Table(box=None, pad_edge=False, header_style="bold")
        grid.add_column("column", no_wrap=True, min_width=6)
        grid.add_column("value", no_wrap=True, overflow="ellipsis", min_width=8, max_width=28)
        grid.add_column("written by", no_wrap=True, min_width=22)
        grid.add_column("where")
        grid.add_column("commit", no_wrap=True)
        for column, fact in row["columns"].items():
            who = f"req:{short(fact['request_id'])}" if fact["request_id"] else \
                f"[magenta]{escape(fact['actor'] or '?')}[/]"
            where = escape(fact["function"] or "—")
            if fact["file"]:
                site = _fit(f"{fact['file']}:{fact['line']}", max(12, out.width - 90), left=True)
                where += f" [dim]{escape(site)}[/]"
            grid.add_row(escape(column), escape(_show(fact["value"])), who, where,
                         (fact["code_sha"] or "")[:8])
        out.print(grid)
    out.print("")


TRACE_HELP = """The span tree of an execution.

    flux trace ID            spans with latencies, errors and DB writes
    flux trace diff A B      two executions aligned span by span
    flux trace debug ID      step through the spans in a terminal UI
"""


TRACE_ARGS = typer.Argument(..., metavar="ID | diff A B | debug ID")


def trace(args: list[str] = TRACE_ARGS, as_json: bool = JSON) -> None:
    from flux._errors import ConfigError

    if args[0] == "diff":
        if len(args) != 3:
            raise ConfigError("flux trace diff takes two execution ids: flux trace diff A B")
        trace_diff(args[1], args[2], as_json)
        return
    if args[0] == "debug":
        raise ConfigError("flux trace debug is not built yet (issue 7)")
    if len(args) != 1:
        raise ConfigError("flux trace takes one execution id")
    show_trace(args[0], as_json)


def show_trace(request_id: str, as_json: bool) -> None:
    """The span tree of one execution, with latencies and errors."""
    from flux._inspectdb import reader
    from flux._lookup import fetch_record
    from flux._trace import stats, trace_json, tree, walk

    with reader(load()) as conn:
        record = fetch_record(conn, request_id)
    if as_json:
        print_json(trace_json(record))
        return
    status = record["http_status"]
    colour = "green" if record["status"] == "ok" else "red"
    title = (f"[bold]Trace Graph[/]  {short(record['request_id'])}\n"
             f"  {escape(record.get('method') or record['kind'])} /{escape(record['route'] or '')}"
             f" · [{colour}]{status}[/] · {record['duration_ms']:.0f}ms"
             f" · {escape(record['function'] or '—')}")
    out.print(f"\n  {title}\n")
    rows = walk(tree(record["spans"]))
    widest = max((len(prefix) + len(span["name"]) + 2 for prefix, span, _ in rows), default=10)
    grid = Table(box=None, pad_edge=False, show_header=False, padding=(0, 1))
    grid.add_column("span", no_wrap=True, overflow="ellipsis", min_width=min(widest, 48))
    grid.add_column("latency", justify="right", no_wrap=True, min_width=7)
    grid.add_column("mark", no_wrap=True)
    grid.add_column("where", style="dim")
    room = max(12, out.width - min(widest, 48) - 24)
    for prefix, span, own_error in rows:
        latency = "—" if span.get("duration_ms") is None else f"{span['duration_ms']:.0f}ms"
        mark = ""
        if own_error:
            error = span.get("error") or {}
            code = error.get("status") or error.get("sqlstate") or error.get("type") or "error"
            mark = f"[red]✗ {escape(str(code))}[/]"
        where = f"{span['file']}:{span['line']}" if span.get("file") else ""
        grid.add_row(f"  {prefix}{escape(span['name'])}", latency, mark,
                     escape(_fit(where, room, left=True)))
    out.print(grid)
    facts = stats(record["spans"])
    out.print(f"\n  ── Spans: {facts['spans']}  ·  Errors: {facts['errors']}  ·  "
              f"DB writes: {facts['db_writes']}\n")


def trace_diff(a: str, b: str, as_json: bool) -> None:
    """Two executions aligned span by span."""
    from flux._errors import ConfigError

    raise ConfigError("flux trace diff is not wired yet")
