"""``flux check``: parse the paths, call ``flux.inspect._check``, render the findings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from cli._output import out, print_json

if TYPE_CHECKING:
    from flux.inspect._check import CheckResult

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


FORMATS = ("human", "github", "json")


def check(paths: list[Path] = typer.Argument(
              None, metavar="PATH", show_default=False,
              help="Files or directories (default: the project's functions/)."),
          output_format: str = typer.Option(
              "human", "--format", metavar="FORMAT",
              help="human (default), github (workflow annotations on the lines, for GitHub "
                   "Actions) or json (rule, file, line, col, message, fix)."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON document "
                                       "(--format json).")
          ) -> None:
    """Print each finding with the ctx call to use, or the findings as JSON or as GitHub
    annotations; exit with the result's code (its help is CHECK_HELP)."""
    from flux._errors import ConfigError
    from flux.inspect._check import check_paths

    if output_format not in FORMATS:
        raise ConfigError(f"--format takes {', '.join(FORMATS)}, not {output_format!r}")
    if as_json:
        output_format = "json"
    result = check_paths(paths or [])
    if output_format == "json":
        document = result.to_json()
        for finding in document["findings"]:
            finding.setdefault("fix", finding.get("suggestion"))
        print_json(document)
    elif output_format == "github":
        for f in result.findings:
            typer.echo(github_annotation(_in_workspace(f.file), f.line, f.col, f.rule,
                                         f.message, f.suggestion))
    else:
        _human(result)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _human(result: CheckResult) -> None:
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


def github_annotation(file: str, line: int, col: int, rule: str, message: str,
                      fix: str) -> str:
    """One GitHub Actions workflow command, ``::error file=…,line=…,col=…,title=…::…``,
    escaped as the Actions toolkit escapes it (``%``, CR and LF in the message; those and
    ``:`` and ``,`` in properties), so the annotation lands on the line in the diff."""
    title = f"flux check: {rule}"
    text = message if rule == "syntax" else f"{message} → use {fix}"
    props = ",".join(f"{k}={_escape_property(str(v))}" for k, v in (
        ("file", file), ("line", line), ("col", col), ("title", title)))
    return f"::error {props}::{_escape_data(text)}"


def _in_workspace(file: str) -> str:
    """A finding's path as GitHub places annotations: relative to the checked-out
    repository (``GITHUB_WORKSPACE``), which may be above the project being checked."""
    workspace = os.environ.get("GITHUB_WORKSPACE")
    path = (Path.cwd() / file).resolve()
    if workspace and path.is_relative_to(Path(workspace).resolve()):
        return path.relative_to(Path(workspace).resolve()).as_posix()
    return file


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
