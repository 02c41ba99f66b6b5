"""``flux ls``, ``flux why``, ``flux trace``, ``flux state``, ``flux explain``: parse, call
one function of ``flux``, render with rich or print JSON."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cli._output import out, print_json, shorten
from cli._source import refuse_remote, remote_url, source, web_link
from flux._ids import short
from flux._project import load

JSON = typer.Option(False, "--json", help="Print one JSON document.")
WINDOW_HELP = "START..END or START-END: 14:00..14:05, 2026-03-10 14:20-14:25, 1h..now."


def one_window(argument: str | None, option: str | None) -> str | None:
    """The window given as the argument or as --window (not both)."""
    from flux._errors import ConfigError

    if argument is not None and option is not None:
        raise ConfigError("give the window once: as an argument or with --window")
    return argument if argument is not None else option


def print_window(facts: dict[str, Any], label: str = "Window") -> None:
    """The interpretation of a window, above the results it chose."""
    out.print(f"\n  [bold]{label}[/]  {escape(facts['text'])}")
    indent = " " * (len(label) + 4)
    if facts.get("server_text"):
        out.print(f"{indent}[dim]{escape(facts['server_text'])} on the database server[/]")
    for note in facts.get("notes") or []:
        out.print(f"{indent}[dim]{escape(note)}[/]")

state_app = typer.Typer(help="The history of rows: every change, and who wrote each value.",
                        no_args_is_help=True)


def ls(when: str = typer.Argument(None, metavar="[WINDOW]",
                                  help="START..END or START-END, like --window."),
       function: str = typer.Option(None, "--function", "-f", help="Only this function."),
       status: str = typer.Option(None, "--status", "-s",
                                  help="ok, error, 4xx, 5xx or an HTTP status."),
       since: str = typer.Option(None, "--since", help="15m, 2h, 14:05 or an ISO time."),
       window: str = typer.Option(None, "--window", help=WINDOW_HELP),
       limit: int = typer.Option(20, "--limit", "-n", help="At most this many."),
       kind: str = typer.Option(None, "--kind",
                                help="http, job, cron, replay, resume or invoke."),
       as_json: bool = JSON) -> None:
    """Recent executions, newest first."""
    chosen = one_window(when, window)
    facts = source().window(chosen) if chosen else None
    rows = source().executions(function=function, status=status, since=since,
                               window=chosen, limit=limit, kind=kind)
    if as_json:
        print_json({"executions": rows, **({"window": facts} if facts else {})})
        return
    if facts:
        print_window(facts)
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
    table.add_column("error", no_wrap=True, overflow="ellipsis")
    whats = [(r["function"] or f"{r['method'] or ''} /{r['route']}")
             + (" (imported)" if r.get("imported") else "")
             + (" (resume)" if r.get("resumed_from") else "") for r in rows]
    # what the other columns take, the function column as wide as its longest name
    room = max(16, out.width - 58 - min(24, max(8, *map(len, whats))))
    for r, what in zip(rows, whats, strict=True):
        colour = "green" if r["status"] == "ok" else "red"
        error = error_cell(r.get("error_type"), r["error_message"])
        if r.get("resumed_by"):  # a failure already finished (by whom: --json, why)
            error = f"resumed · {error}"
        table.add_row(short(r["request_id"]), _local(r["started_at"]), escape(what),
                      f"[{colour}]{r['http_status']}[/]", f"{r['duration_ms']:.0f}",
                      escape(_fit(error, room)))
    out.print(table)


def error_cell(kind: str | None, message: str | None) -> str:
    """An execution's error in one line, named by its type: a KeyError's message alone is
    a bare ``'amount_cents'`` that says nothing at 3 a.m. A ``ctx.error`` answer
    (FunctionError) and the gateway's refusals (GatewayError: "no function is routed at
    /nope") speak for themselves."""
    line = message.splitlines()[0] if message else ""
    if not kind or kind in ("FunctionError", "GatewayError") or line.startswith(kind):
        return line
    return f"{kind}: {line}" if line else kind


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
            lines.append(f"  [green]+[/] {escape(column):<12} → {escape(shorten(new))}")
        elif new is None:
            lines.append(f"  [red]-[/] {escape(column):<12} {escape(shorten(old))} → null")
        else:
            lines.append(f"  [yellow]~[/] {escape(column):<12} {escape(shorten(old))} → "
                         f"{escape(shorten(new))}")
    return lines


@state_app.command("history")
def state_history(table: str = typer.Argument(..., help="Table, e.g. users or app.users."),
                  id: str = typer.Option(..., "--id", help="Primary key: 42, a=1,b=2 or JSON."),
                  as_json: bool = JSON) -> None:
    """Every INSERT, UPDATE and DELETE of one row, linked to the request that made it."""
    result = source().history(table, id)
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
    result = source().blame(table, id, limit=limit)
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
            grid.add_row(escape(column), escape(shorten(fact["value"])), who, where,
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

    if args[0] in ("diff", "debug"):
        refuse_remote(f"trace {args[0]}")
    if args[0] == "diff":
        if len(args) != 3:
            raise ConfigError("flux trace diff takes two execution ids: flux trace diff A B")
        trace_diff(args[1], args[2], as_json)
        return
    if args[0] == "debug":
        from cli.tui import debug
        return debug(args[1:])
    if len(args) != 1:
        raise ConfigError("flux trace takes one execution id")
    show_trace(args[0], as_json)


def show_trace(request_id: str, as_json: bool) -> None:
    """The span tree of one execution, with latencies and errors."""
    from flux.inspect._trace import flatten, tree, walk

    record = source().trace(request_id)
    if as_json:
        print_json(record)
        return
    status = record["http_status"]
    colour = "green" if record["status"] == "ok" else "red"
    title = (f"[bold]Trace Graph[/]  {short(record['request_id'])}\n"
             f"  {escape(record.get('method') or record['kind'])} /{escape(record['route'] or '')}"
             f" · [{colour}]{status}[/] · {record['duration_ms']:.0f}ms"
             f" · {escape(record['function'] or '—')}")
    out.print(f"\n  {title}\n")
    rows = walk(tree(flatten(record["spans"])))
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
    facts = record["stats"]
    out.print(f"\n  ── Spans: {facts['spans']}  ·  Errors: {facts['errors']}  ·  "
              f"DB writes: {facts['db_writes']}")
    joined = f"  [dim]joined from caller span {record['caller_span_id']}[/]" \
        if record.get("caller_span_id") else ""
    out.print(f"  ── Trace id: {record['trace_id']}{joined}")
    _render_handoff({"jobs": record.get("jobs") or [], "parent": record.get("parent")})
    _render_incomplete(record.get("incomplete") or [],
                       lambda label, text: out.print(f"  ── {label}: {text}"))
    link = web_link(record["request_id"])
    if link:
        out.print(f"  ── Web: [cyan]{escape(link)}[/]", soft_wrap=True)
    out.print("")


def _render_incomplete(found: list[dict[str, Any]], row: Any) -> None:
    """The record is incomplete: outside access no recorded path made, each with its line."""
    for i, f in enumerate(found):
        row("INCOMPLETE" if i == 0 else "",
            f"[yellow]unrecorded IO: {escape(str(f['what']))} at "
            f"{escape(str(f['file']))}:{f['line']}[/]")


def _render_handoff(handoff: dict[str, Any]) -> None:
    parent = handoff.get("parent")
    if parent:
        what = f"{parent.get('function') or ''} {parent.get('method') or ''} " \
               f"/{parent.get('route') or ''}".strip()
        out.print(f"  ── Enqueued by {short(parent['request_id'])}  [dim]{escape(what)}[/]")
    for job in handoff.get("jobs") or []:
        colour = {"done": "green", "dead": "red"}.get(job["status"], "yellow")
        last = f" · last run {short(job['last_request_id'])}" if job["last_request_id"] else ""
        error = f" · {escape(shorten(job['last_error']))}" if job["last_error"] else ""
        out.print(f"  ── Job {escape(job['function'])} [{colour}]{job['status']}[/] after "
                  f"{job['attempts']}/{job['max_attempts']} attempt(s){last}{error}")


def trace_diff(a: str, b: str, as_json: bool) -> None:
    """Two executions aligned span by span."""
    from flux.inspect._compare import compare
    from flux.store._database import reader

    with reader(load()) as conn:
        result = compare(conn, a, b)
    if as_json:
        print_json(result)
        return
    summary = result["summary"]
    delta = summary.get("latency_delta_ms")
    out.print(f"\n  [bold]Trace diff[/]  A {short(result['a_id'])}  →  B {short(result['b_id'])}")
    out.print(f"  [dim]{summary['same']} same · {summary['changed']} changed · "
              f"{summary['added']} added · {summary['removed']} removed"
              + (f" · latency {delta:+.0f}ms" if delta is not None else "") + "[/]\n")
    marks = {"same": "[dim] [/]", "changed": "[yellow]~[/]", "added": "[green]+[/]",
             "removed": "[red]-[/]"}
    for change in result["spans"]:
        span = change["b"] or change["a"] or {}
        delta = change["latency_delta_ms"]
        shown = f"{delta:+.0f}ms" if delta is not None and abs(delta) >= 1 else ""
        out.print(f"  {marks[change['status']]} {escape(span.get('name', '?')):<44} "
                  f"[dim]{shown:>8}[/]")
        for field, (old, new) in list(change["changes"].items())[:6]:
            out.print(f"      [dim]{escape(field)}:[/] {escape(shorten(old))} → "
                      f"{escape(shorten(new))}")
    for title, changes in (("input", result["input"]), ("output", result["output"]),
                           ("error", result["error"]), ("config", result.get("config") or {})):
        if changes:
            out.print(f"\n  [bold]{title}[/]")
            for field, (old, new) in list(changes.items())[:10]:
                out.print(f"    {escape(field)}: {escape(shorten(old))} → {escape(shorten(new))}")
    mutations = result["mutations"]
    if any(mutations.values()):
        out.print("\n  [bold]mutations[/]")
        for kind, mark in (("added", "+"), ("removed", "-"), ("changed", "~")):
            for key in mutations[kind]:
                out.print(f"    {mark} {escape(key)}")
    if summary.get("identical"):
        out.print("  [green]the two executions did the same things[/]")
    out.print("")


def why(request_id: str = typer.Argument(..., help="Execution id or a unique prefix."),
        ai: bool = typer.Option(False, "--ai", help="Also ask the model set up in flux.toml "
                                "(its ai table) to read the record and propose a fix."),
        show_prompt: bool = typer.Option(False, "--show-prompt", help="Show what --ai sends "
                                         "(without --ai: show it and send nothing)."),
        as_json: bool = JSON) -> None:
    """The root cause of a failed execution, where it happened, and what to do."""
    inspector = source()
    if ai:  # a missing [ai] or API key is one sentence before anything is read
        from flux.inspect._ai import api_key, require

        if remote_url() is None:
            project = load()
            require(project.ai)
            api_key(project)
    report = inspector.why(request_id)
    if not (ai or show_prompt):
        if as_json:
            print_json({k: v for k, v in report.items() if k != "spans"})
        else:
            _render_why(report)
        return
    if as_json:
        reading = inspector.ai_reading(request_id, send=ai, show_prompt=show_prompt)
        print_json({**{k: v for k, v in report.items() if k != "spans"}, "ai": reading["ai"]})
        return
    _render_why(report)
    _render_ai(inspector, request_id, send=ai, show_prompt=show_prompt)


def _render_ai(inspector: Any, request_id: str, *, send: bool, show_prompt: bool) -> None:
    """The model's answer under its heading, written as it arrives; the prompt first when
    asked. A model that fails is one sentence here, and the exit code stays 0."""
    from flux.inspect._ai import HEADING

    if show_prompt:  # the prompt is built (and shown) before the model is asked
        shown = inspector.ai_reading(request_id, send=False, show_prompt=True)["ai"]
        out.print(f"  [bold]Prompt[/]  [dim]{'sent to' if send else 'that --ai would send'}"
                  f" the model{' (cut to the size cap)' if shown['truncated'] else ''}[/]")
        for message in shown["prompt"]:
            out.print(f"\n  [dim]── {escape(message['role'])} ──[/]")
            out.print(message["content"], markup=False)
        out.print("")
        if not send:
            return
    streamed: list[str] = []

    def on_text(text: str) -> None:
        if not streamed:
            out.print(f"  [bold]{HEADING}[/]  [dim]from the record only; check it before "
                      "you apply it[/]\n")
        streamed.append(text)
        out.file.write(text)
        out.file.flush()

    reading = inspector.ai_reading(request_id, send=True, on_text=on_text)["ai"]
    if streamed:
        out.print("")
    else:
        out.print(f"  [bold]{HEADING}[/]")
    if reading["error"]:
        out.print(f"  [yellow]{escape(reading['error'])}[/]")
    out.print(f"  [dim]{escape(reading['model'] or '')} at {escape(reading['endpoint'] or '')}"
              f" · a prompt of {reading['sent_chars']} characters"
              f"{' (cut to the size cap)' if reading['truncated'] else ''}[/]\n")


def _render_why(r: dict[str, Any]) -> None:
    from flux.inspect._trace import tree, walk

    cause = r["root_cause"]
    where = f"{r.get('method') or r['kind']} /{r.get('route') or ''}"
    out.print(f"\n  [bold]Execution[/]  {short(r['request_id'])}")
    out.print(f"  {escape(where)}  →  function: {escape(r['function'] or '—')}")
    out.print(f"  [dim]{_local(r['started_at'])} · {r['duration_ms']:.0f}ms ·[/] "
              f"[red]{r['http_status']}[/]")
    if r.get("imported"):
        out.print("  [yellow]imported[/] [dim]from a record file (flux record import); its "
                  "changes are its own, not this database's[/]")
    out.print("")

    def row(label: str, text: str) -> None:
        out.print(f"  [bold]{label:<13}[/]{text}")

    row("ROOT CAUSE", f"[red]{escape(cause['message'])}[/]  [dim]\\[{cause['class']}][/]")
    loc = r["location"]
    if loc.get("file"):
        sha = (loc.get("code_sha") or "")[:8]
        version = f" · code {sha}{' (dirty)' if loc.get('code_dirty') else ''}" if sha else ""
        fn = escape(loc.get("function") or "")
        row("LOCATION", f"{escape(loc['file'])}:{loc['line']}  [dim]({fn}{version})[/]")
    changes = r["mutations"]
    if changes:
        for i, m in enumerate(changes[:8]):
            key = ",".join(f"{k}={v}" for k, v in (m["pk"] or {}).items())
            diff = "  ".join(f"{c}: {shorten(old)} → {shorten(new)}" if old is not None
                             else f"{c}: {shorten(new)}"
                             for c, (old, new) in sorted(m["changes"].items())[:4])
            flag = " [red](rolled back)[/]" if m["rolled_back"] else ""
            row("DATA CHANGES" if i == 0 else "",
                f"{escape(m['table'])}.{escape(key)} {m['op'].lower()} {escape(diff)}{flag}")
        if len(changes) > 8:
            row("", f"[dim]… {len(changes) - 8} more (flux trace {short(r['request_id'])})[/]")
    else:
        row("DATA CHANGES", "[dim]none[/]")
    dep = r.get("departure")
    if dep:
        row("DEPARTED", f"from the last success {short(dep['from'])}: "
            f"{escape(dep['description'])}")
        for key, (then, now) in (dep.get("config") or {}).items():
            row("", f"config {escape(key)} was {escape(shorten(then))}, here "
                f"{escape(shorten(now))}")
    summary = r.get("similar_summary") or {}
    same = [short(n["request_id"]) for n in r["similar"] if n["distance"] == 0][:3]
    alike = [short(n["request_id"]) for n in r["similar"] if n["distance"] != 0][:3]
    lines = [f"{label} {', '.join(ids)}" for label, ids in
             (("the same failure:", same), ("alike, not the same:", alike)) if ids]
    if summary.get("count"):
        seen = f"first {_local(summary['first_seen'])} · last {_local(summary['last_seen'])}"
        lines.insert(0, f"seen {summary['count']} time(s), this one included · {seen}")
    row("SIMILAR", f"\n{'':15}".join(lines) if lines else "[dim]first time seen[/]")
    row("SUGGESTION", f"[green]→[/] {escape(r['suggestion'])}")
    if r.get("resumed_by"):
        row("RESUMED", f"[green]finished by {short(r['resumed_by'])}[/] "
            f"(flux trace {short(r['resumed_by'])})")
    _render_incomplete(r.get("incomplete") or [], row)
    if r.get("handoff"):
        _render_handoff(r["handoff"])
    out.print("\n  [bold]Spans[/]")
    failing = (cause.get("span") or {}).get("id")
    for prefix, span, _own in walk(tree(r["spans"])):
        latency = "—" if span.get("duration_ms") is None else f"{span['duration_ms']:.0f}ms"
        mark = "  [red]✗[/]" if span["id"] == failing else ""
        out.print(f"  {prefix}{escape(span['name'])}  [dim]{latency}[/]{mark}")
    link = web_link(r["request_id"])
    if link:
        out.print(f"\n  [bold]{'WEB':<13}[/][cyan]{escape(link)}[/]", soft_wrap=True)
    out.print("")

