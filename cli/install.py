"""``flux install``: Flux on an existing PostgreSQL, after showing what it will do."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from cli._output import err, out, print_json

if TYPE_CHECKING:
    from flux.server._install import Step, Survey


def install(
    yes: bool = typer.Option(False, "--yes", "-y", help="Install without asking."),
    check: bool = typer.Option(False, "--check", help="Report what is missing; change nothing."),
    database_url: str = typer.Option(None, "--database-url", metavar="URL",
                                     help="The server to install on (default: DATABASE_URL)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Put Flux on the existing PostgreSQL of DATABASE_URL: the flux schema, the roles, capture
    on the application's tables. Shows the plan and asks first; idempotent."""
    from flux._errors import ConfigError
    from flux.server._install import install as do_install
    from flux.server._install import require_url, survey

    url = require_url(database_url or os.environ.get("DATABASE_URL"))
    capture, has_project = _project_capture()
    before = survey(url, capture=capture, has_project=has_project)
    if check:
        if as_json:
            print_json(before.to_json())
        else:
            _render(before, checking=True)
        raise typer.Exit(0 if before.ready else 1)
    if not before.todo:
        if as_json:
            print_json({**before.to_json(), "applied": []})
        else:
            _render(before, checking=False)
        raise typer.Exit(0 if before.ready else 1)
    if not as_json:
        _render(before, checking=False)
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("flux install asks before it changes the database: run it in a "
                              "terminal, or pass --yes")
        if not typer.confirm(f"  Install Flux on {before.database}?", default=False):
            out.print("  [dim]nothing changed[/]")
            raise typer.Exit(1)

    def done(step: Step) -> None:
        if not as_json:
            out.print(f"  [green]✓[/] {escape(step.what)}")

    after, applied = do_install(url, capture=capture, has_project=has_project, on_step=done)
    if as_json:
        print_json({**after.to_json(), "applied": applied})
    elif after.ready:
        out.print(f"\n  [green]Flux is installed on {escape(after.database)}[/]: `flux serve` "
                  "with this DATABASE_URL is ready.\n")
    else:
        _blocked(after)
    raise typer.Exit(0 if after.ready else 1)


def _project_capture() -> tuple[str, bool]:
    """The capture mode of the project here (flux.toml), or trigger when there is none."""
    from flux._project import find_root, load

    if find_root() is None:
        return "trigger", False
    return load().capture, True


def _render(s: Survey, *, checking: bool) -> None:
    role = f"{s.role} (superuser)" if s.superuser else s.role
    out.print(f"\n  [bold]Flux install[/]  {escape(s.url)}")
    out.print(f"  [dim]PostgreSQL {escape(s.version)} · database {escape(s.database)} · as "
              f"{escape(role)} · capture {s.capture}[/]")
    if s.tables:
        shown = ", ".join((t["name"] if t["schema"] == "public" else f"{t['schema']}.{t['name']}")
                          + (f" ({t['rows']} rows)" if t["rows"] >= 0 else "")
                          for t in s.tables[:12])
        more = f" and {len(s.tables) - 12} more" if len(s.tables) > 12 else ""
        out.print(f"  [dim]tables[/] {escape(shown)}{more}")
    in_place = [st for st in s.steps if st.done]
    if in_place:
        out.print("\n  [bold]In place[/]")
        for step in in_place:
            out.print(f"    [green]✓[/] {escape(step.what)}")
    if s.todo:
        out.print("\n  [bold]Missing[/]" if checking else "\n  [bold]Will do[/]")
        for step in s.todo:
            out.print(f"    [yellow]•[/] {escape(step.what)}")
    _blocked(s)
    out.print("\n  [bold]What the application must change to run under Flux[/]")
    for i, change in enumerate(s.changes, 1):
        out.print(f"    {i}. {escape(change)}")
    if not s.todo and s.ready:
        out.print(f"\n  [green]Flux is installed on {escape(s.database)}[/]: nothing to do.")
    elif checking:
        out.print("\n  [dim]flux install shows this and asks before doing it[/]")
    out.print("")


def _blocked(s: Survey) -> None:
    if not s.blocked:
        return
    err.print(f"\n  [bold]Not possible as {escape(s.role)}[/]")
    for step in s.blocked:
        mark = "[red]✗[/]" if step.required else "[yellow]![/]"
        err.print(f"    {mark} {escape(step.what)}: {escape(step.blocked or '')}")
