"""``flux record export | import | pin``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli._output import out, print_json
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
    from flux.store._database import connect, resolve
    from flux.store._migrate import migrate
    from flux.store._portable import import_record, read_file

    document = read_file(path)
    project = load()
    target = resolve(project)
    migrate(target.conninfo)
    with connect(target.conninfo) as conn:
        new = import_record(conn, document)
    rid = short(document["record"]["request_id"])
    out.print(f"[green]✓[/] imported {rid}" if new else f"{rid} was already here")


@app.command("pin")
def pin(request_id: str = typer.Argument(..., help="Execution id or a unique prefix."),
        note: str = typer.Option(None, "--note", help="Why it is kept (shown by --json)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")
        ) -> None:
    """Keep an execution past retention (an investigation needs it): flux gc keeps its
    record and its changes."""
    refuse_remote("record pin")
    from flux.store._database import connect, resolve
    from flux.store._retention import pin as do_pin

    with connect(resolve(load(), create=False).conninfo, autocommit=True) as conn:
        pinned = do_pin(conn, request_id, note)
    if as_json:
        print_json(pinned)
        return
    out.print(f"[green]✓[/] {short(pinned['request_id'])} is pinned: flux gc keeps it",
              highlight=False)


@app.command("unpin")
def unpin(request_id: str = typer.Argument(..., help="Execution id or a unique prefix."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")
          ) -> None:
    """Let retention take a pinned execution again."""
    refuse_remote("record unpin")
    from flux.store._database import connect, resolve
    from flux.store._retention import unpin as do_unpin

    with connect(resolve(load(), create=False).conninfo, autocommit=True) as conn:
        full, was = do_unpin(conn, request_id)
    if as_json:
        print_json({"request_id": full, "was_pinned": was})
        return
    out.print(f"[green]✓[/] {short(full)} is no longer pinned" if was
              else f"{short(full)} was not pinned", highlight=False)
