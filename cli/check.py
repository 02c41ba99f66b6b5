"""``flux check``: parse the paths, call ``flux.inspect._check``, render the findings."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from cli._output import out, print_json

CHECK_HELP = (
    "Flag code in functions, and the project modules they import, that reads the time, "
    "randomness, the environment, files or the network behind ctx's back, or uses a library "
    "whose traffic Flux cannot capture (databases, Redis, SMTP, gRPC…): a replay cannot "
    "reproduce it.\n\n"
    "PATH is a file, a directory or a project (default: the functions/ of the project around "
    "the current directory). Exit 1 on findings, 0 when clean, 2 for a path that does not "
    "exist or a file that is not valid Python.\n\n"
    "Mark a deliberate line with a comment: # flux: allow (every rule), or "
    "# flux: allow\\[env,file] (those rules)."
)


def check(paths: list[Path] = typer.Argument(
              None, metavar="PATH", show_default=False,
              help="Files or directories (default: the project's functions/)."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")
          ) -> None:
    """Print each finding with the ctx call to use, or the findings as JSON; exit with the
    result's code (its help is CHECK_HELP)."""
    from flux.inspect._check import check_paths

    result = check_paths(paths or [])
    if as_json:
        print_json(result.to_json())
    else:
        for f in result.findings:
            out.print(f"[bold]{escape(f.file)}:{f.line}:{f.col}[/]  [red]{f.rule}[/]  "
                      f"{escape(f.message)}")
            out.print(f"    [dim]→ use[/] [cyan]{escape(f.suggestion)}[/]"
                      if f.rule != "syntax" else f"    [dim]→ {escape(f.suggestion)}[/]")
        files = f"{result.files_checked} file{'s' if result.files_checked != 1 else ''}"
        if result.findings:
            count = len(result.findings)
            out.print(f"\n[red]✗[/] {count} finding{'s' if count != 1 else ''} in {files}: "
                      "use the ctx call shown, or mark a deliberate line `# flux: allow`")
        else:
            out.print(f"[green]✓[/] {files} checked: no outside access found that Flux cannot "
                      "record")
            out.print("  [dim]HTTP through httpx, requests, aiohttp or urllib (and the SDKs "
                      "built on them) is captured; libraries' own code is not read here — at "
                      "run time Flux notes any access that no recorded path makes[/]")
    if result.exit_code:
        raise typer.Exit(result.exit_code)
