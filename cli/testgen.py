"""``flux test generate``: parse, call ``flux.replay._testgen.generate``, say what was written."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from cli._output import out
from flux._ids import short
from flux._project import load

app = typer.Typer(help="Regression tests made from recorded executions.",
                  no_args_is_help=True)


@app.command("generate")
def generate(request_id: str = typer.Argument(..., help="Execution id or a unique prefix."),
             output: Path = typer.Option(None, "--output", "-o", help="Test file (default: "
                                         "tests/test_replay_<id>.py in the project)."),
             expect: str = typer.Option(None, "--expect", help="same: assert the original "
                                        "outcome, even a failure (default for a failure: "
                                        "assert the replay now passes)."),
             force: bool = typer.Option(False, "--force", help="Overwrite existing files.")
             ) -> None:
    """Write a pytest test that replays an execution and asserts its outcome."""
    from flux._errors import ConfigError
    from flux.replay._testgen import generate as generate_test

    if expect not in (None, "same"):
        raise ConfigError("--expect takes only: same")
    result = generate_test(load(), request_id, output=output, expect_same=expect == "same",
                           force=force)
    asserts = "reproduces the original" if result["expect"] == "same" else "now passes"
    out.print(f"[green]✓[/] {escape(result['file'])}  [dim](record in "
              f"{escape(Path(result['record_file']).name)})[/]")
    out.print(f"  replays {short(result['request_id'])} ({escape(result['function'] or '')}, "
              f"{result['original_status']}) and asserts the replay {asserts}")
