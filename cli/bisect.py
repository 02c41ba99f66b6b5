"""``flux bug bisect``: parse, call ``flux.replay._bisect.bisect``, print each tested commit as it
completes, then the first bad commit (or one JSON document)."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from cli._output import out, print_json
from flux._ids import short
from flux._project import load

app = typer.Typer(help="Find the commit that broke a recorded request.", no_args_is_help=True)

_MARKS = {"good": "[green]✓ good[/]", "bad": "[red]✗ bad [/]", "skip": "[yellow]– skip[/]"}


@app.command("bisect")
def bisect(request: list[str] = typer.Option(..., "--request", "-r",
                                             help="Execution id or prefix; repeat for several "
                                                  "(a commit is bad if any fails)."),
           good: str = typer.Option(None, "--good", help="A commit where it worked (default: "
                                    "the function's last successful execution)."),
           bad: str = typer.Option(None, "--bad", help="A commit where it fails (default: "
                                   "HEAD)."),
           as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")
           ) -> None:
    """Replay the request at commits between good and bad; print the first bad one."""
    from flux.replay._bisect import bisect as run_bisect

    if as_json:
        print_json(run_bisect(load(), request, good=good, bad=bad))
        return
    result = run_bisect(load(), request, good=good, bad=bad, on_start=_start,
                        on_tested=_tested)
    _render(result)


def _start(plan: dict[str, Any]) -> None:
    ids = ", ".join(short(r) for r in plan["requests"])
    out.print(f"\n  [bold]Bisect[/]  {ids}  good {plan['good'][:12]} → bad {plan['bad'][:12]}"
              f"  [dim]({plan['candidates']} commits, about {plan['steps']} replays)[/]\n")


def _tested(step: Any) -> None:
    reason = (step.reason or "").strip().splitlines()[:1]  # a DB error's DETAIL: not here
    why = f"  [dim]{escape(reason[0])}[/]" if reason and step.verdict != "good" else ""
    out.print(f"  {_MARKS[step.verdict]}  {step.sha[:12]}  {escape(step.subject)}{why}")


def _render(r: dict[str, Any]) -> None:
    first = r["first_bad"]
    out.print(f"\n  [bold]First bad commit[/]  [red]{first['sha'][:12]}[/]  "
              f"{escape(first['subject'])}")
    for name in first["files"]:
        out.print(f"    {escape(name)}")
    if r["undecided"]:
        shas = ", ".join(sha[:12] for sha in r["undecided"])
        out.print(f"  [yellow]or one of the commits before it that could not be replayed:[/]"
                  f" {shas}")
    out.print(f"\n  [dim]tested {len(r['tested'])} of {r['candidates']} commits[/]\n")
