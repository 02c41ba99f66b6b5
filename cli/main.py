"""The ``flux`` command. It parses arguments, calls one function of ``flux`` and renders the
result; no logic and no SQL live here."""

from __future__ import annotations

import sys

import typer

from cli import db, serve
from cli._output import print_error
from flux import FluxError

app = typer.Typer(
    name="flux",
    help="Flux — a backend runtime that records every execution so a failure can be "
         "explained, replayed, bisected, fixed and resumed.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db.app, name="db")
app.command()(serve.init)
app.command()(serve.dev)
app.command(name="serve")(serve.serve_command)


def main() -> None:
    """Console entry point: a FluxError becomes one sentence and a non-zero exit."""
    try:
        app()
    except FluxError as error:
        print_error(error)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
