"""The ``flux`` command. It parses arguments, calls one function of ``flux`` and renders the
result; no logic and no SQL live here."""

from __future__ import annotations

import os
import sys

import typer

from cli import (
    bisect,
    capture,
    check,
    db,
    gc,
    incident,
    inspect,
    install,
    record,
    replay,
    serve,
    testgen,
)
from cli import queue as queue_cli  # flux queue …, flux worker
from cli._output import out, print_error
from cli._source import REMOTE_ENV, choose
from flux import FluxError

# The name on the package index (`pipx install flux-replay`); the command and the import
# name stay `flux`. "flux-runtime" there is another project (docs/decisions.md).
DISTRIBUTION = "flux-replay"

app = typer.Typer(
    name="flux",
    help="Flux — a backend runtime that records every execution so a failure can be "
         "explained, replayed, bisected, fixed and resumed.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"flux {installed_version()}")
        raise typer.Exit()


@app.callback()
def _options(ctx: typer.Context,
             version: bool = typer.Option(False, "--version", callback=_print_version,
                                          is_eager=True, help="Print the version and exit."),
             remote: str = typer.Option(
                 None, "--remote", envvar=REMOTE_ENV, metavar="URL",
                 help="Ask a running Flux's admin API (token: $FLUX_ADMIN_TOKEN) instead of "
                      "the database: ls, why, trace, state, resume, record export.")
             ) -> None:
    source = ctx.get_parameter_source("remote")
    choose(remote, ctx.invoked_subcommand,
           from_env=source is not None and source.name == "ENVIRONMENT")


def installed_version() -> str:
    """The installed distribution's version; the package's own when it is run from a source
    tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        from flux import __version__

        return __version__


app.add_typer(db.app, name="db")
app.command()(serve.init)
app.command()(install.install)
app.command()(serve.dev)
app.command(name="serve")(serve.serve_command)
app.command()(inspect.ls)
app.command()(inspect.why)
app.command()(replay.explain)
app.command()(replay.replay)
app.command()(replay.resume)
app.add_typer(record.app, name="record")
app.add_typer(incident.app, name="incident")
app.add_typer(inspect.state_app, name="state")
app.add_typer(bisect.app, name="bug")
app.add_typer(testgen.app, name="test")
app.command(help=inspect.TRACE_HELP)(inspect.trace)
app.add_typer(queue_cli.app, name="queue")
app.command()(queue_cli.worker)
app.add_typer(capture.app, name="capture")
app.command(help=check.CHECK_HELP)(check.check)
app.command(name="gc")(gc.gc)


def main() -> None:
    """Console entry point: a FluxError becomes one sentence and a non-zero exit."""
    try:
        app()
    except FluxError as error:
        print_error(error)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        # A database error that no module translated is a bug of ours; still, say it in one
        # sentence (FLUX_DEBUG=1 shows the traceback).
        if type(exc).__module__.startswith("psycopg") and not os.environ.get("FLUX_DEBUG"):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print_error(FluxError(f"PostgreSQL refused a query of Flux: {first}",
                                  hint="this is a bug in Flux: please report it "
                                       "(FLUX_DEBUG=1 shows the traceback)"))
            sys.exit(1)
        raise
