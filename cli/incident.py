"""``flux incident replay``."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.markup import escape

from cli._output import out, print_json
from flux._ids import short
from flux._project import load

app = typer.Typer(help="Re-run the executions of an incident against today's code.",
                  no_args_is_help=True)


@app.command("replay")
def replay(window: str = typer.Option(None, "--window", help="START..END, e.g. 14:20..14:25."),
           ids: str = typer.Option(None, "--ids", help="ID,ID,… (prefixes work)."),
           function: str = typer.Option(None, "--function", "-f", help="Only this function."),
           status: str = typer.Option(None, "--status", "-s", help="ok, error, 4xx, 5xx …"),
           db: str = typer.Option("live", "--db", help="live (rolled back) or tape."),
           as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")
           ) -> None:
    """Replay an incident: outbound calls answered from the tapes, never sent."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from flux._errors import ConfigError
    from flux.replay._incident import replay_incident, select
    from flux.store._database import reader, resolve

    if db not in ("live", "tape"):
        raise ConfigError(f"--db takes live or tape, not {db!r}")
    project = load()
    with reader(project) as conn:
        chosen = select(conn, window=window, ids=ids.split(",") if ids else None,
                        function=function, status=status)
    if not chosen:
        if as_json:
            print_json({"replayed": 0, "passing": 0, "failing": 0, "results": []})
        else:
            out.print("no executions match")
        return
    started = time.perf_counter()
    if not as_json:
        out.print(f"\n  [bold]Replay[/]  {len(chosen)} execution(s)  [dim](db {db}; outbound "
                  "calls answered from the tape, never sent; x-flux-replay: true)[/]\n")
    progress = Progress(TextColumn("  replaying"), BarColumn(), MofNCompleteColumn(),
                        console=out, transient=True, disable=as_json or len(chosen) < 20)

    def line(result: dict[str, Any]) -> None:
        progress.advance(task)
        if as_json:
            return
        mark = "[green]✓[/]" if result["passed"] else "[red]✗[/]"
        shown = result["status"] if result["status"] is not None else "—"
        note = "" if result["passed"] else f"  [dim]{escape(str(result['error'] or ''))}[/]"
        if result.get("divergence"):
            d = result["divergence"]
            note += f"  [yellow]diverged at {escape(str(d['file']))}:{d['line']}[/]"
        progress.console.print(
            f"  {mark} {short(result['request_id'])}  {escape(result['function'] or ''):<20}"
            f" {result['original_status']} → {shown}{note}", highlight=False)

    with progress:
        task = progress.add_task("replay", total=len(chosen))
        summary = replay_incident(project, resolve(project, create=False).conninfo, chosen,
                                  db_mode=db, on_result=line)
    if as_json:
        print_json(summary)
    else:
        seconds = time.perf_counter() - started
        colour = "green" if summary["failing"] == 0 else "red"
        out.print(f"\n  [{colour}]{summary['replayed']} replayed · {summary['passing']} "
                  f"passing · {summary['failing']} still failing[/]  [dim]({seconds:.1f}s)[/]")
        if summary["failing"]:
            first = next(r for r in summary["results"] if not r["passed"])
            out.print(f"  [dim]flux replay {short(first['request_id'])} to see one[/]\n")
    raise typer.Exit(1 if summary["failing"] else 0)
