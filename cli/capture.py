"""``flux capture run | switch MODE``: the WAL capture consumer, and moving between trigger
and WAL capture."""

from __future__ import annotations

import time

import typer
from rich.markup import escape

from cli._output import out, print_json
from flux._project import load

app = typer.Typer(help="How row changes are captured: row triggers or the WAL.",
                  no_args_is_help=True)


@app.command()
def run() -> None:
    """Run the WAL capture consumer in the foreground until Ctrl-C (flux dev and flux serve
    run one themselves; one consumer at a time is elected per database)."""
    from flux.capture._running import run_until_signal
    from flux.server._db import start

    target, _ = start(load())
    last = [0.0]

    def step(result: object) -> None:
        applied = getattr(result, "applied", 0)
        now = time.monotonic()
        if applied and now - last[0] > 1.0:
            out.print(f"  applied {applied:,} change(s)")
            last[0] = now
        if getattr(result, "finished", False):
            out.print("  the switch back to triggers is applied: slot dropped")

    def error(exc: BaseException) -> None:
        out.print(f"  [yellow]![/] {escape(str(exc).splitlines()[0])}; retrying")

    def ready() -> None:
        out.print(f"[bold]Flux capture[/] · {escape(target.display)} · slot flux_capture")

    run_until_signal(target.conninfo, step, error, ready)
    out.print("[dim]stopped[/]")


@app.command()
def switch(mode: str = typer.Argument(..., help="trigger or wal."),
           as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")
           ) -> None:
    """Move between trigger and WAL capture without losing or doubling a change."""
    from flux.capture._mode import switch as do_switch
    from flux.server._db import start

    project = load()
    target, _ = start(project)
    result = do_switch(target.conninfo, mode)
    if as_json:
        print_json({"previous": result.previous, "mode": result.mode, "tables": result.tables,
                    "applied": result.applied})
        return
    if result.previous == result.mode:
        out.print(f"capture is already {result.mode}")
        return
    out.print(f"[green]✓[/] capture: {result.previous} → {result.mode} "
              f"({result.tables} table(s))")
    if result.mode == "trigger" and result.applied:
        out.print(f"  {result.applied:,} change(s) still in the slot were applied first")
    if project.capture != result.mode:
        out.print(f'  set [bold]capture = "{result.mode}"[/] in flux.toml, or the next '
                  f"flux dev / flux serve switches back to {project.capture}")
