"""``flux record export | import | pin``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli._output import out
from cli._source import refuse_remote, source
from flux._ids import short
from flux._project import load

app = typer.Typer(help="Portable record files, and keeping records past retention.",
                  no_args_is_help=True)


@app.command("export")
def export(request_id: str = typer.Argument(..., help="Execution id or a unique prefix."),
           output: Path = typer.Option(None, "--output", "-o", help="File (default: stdout).")
           ) -> None:
    """Write one execution — record, tape, spans, mutations — as a self-contained file."""
    document = source().record(request_id)
    text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    out.print(f"[green]✓[/] {short(document['record']['request_id'])} → {output}",
              highlight=False)


@app.command("import")
def import_(path: Path = typer.Argument(..., help="A file made by flux record export.")
            ) -> None:
    """Store a record file's execution here, so why, trace and replay can read it."""
    refuse_remote("record import")
    from flux._database import connect, resolve
    from flux._migrate import migrate
    from flux._portable import import_record, read_file

    document = read_file(path)
    project = load()
    target = resolve(project)
    migrate(target.conninfo)
    with connect(target.conninfo) as conn:
        new = import_record(conn, document)
    rid = short(document["record"]["request_id"])
    out.print(f"[green]✓[/] imported {rid}" if new else f"{rid} was already here")


@app.command("pin")
def pin(request_id: str = typer.Argument(..., help="Execution id or a unique prefix.")
        ) -> None:
    """Keep an execution past retention (an investigation needs it)."""
    refuse_remote("record pin")
    from flux._database import connect, resolve
    from flux._lookup import pin_record

    with connect(resolve(load(), create=False).conninfo, autocommit=True) as conn:
        full = pin_record(conn, request_id)
    out.print(f"[green]✓[/] {short(full)} is pinned")
