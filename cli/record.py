"""``flux record export | import | pin``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from cli._output import out, print_json
from cli._source import refuse_remote, source
from flux._errors import ConfigError
from flux._ids import short
from flux._project import load

app = typer.Typer(help="Portable record files, and keeping records past retention.",
                  no_args_is_help=True)


@app.command("export")
def export(request_id: str = typer.Argument(None, help="Execution id or a unique prefix "
                                            "(or select several with the options below)."),
           output: Path = typer.Option(None, "--output", "-o", help="File (default: stdout); "
                                       "with a selection, the directory to write."),
           window: str = typer.Option(None, "--window", help="Every execution in A..B."),
           function: str = typer.Option(None, "--function", help="Only this function's."),
           status: str = typer.Option(None, "--status", help="ok, error, 5xx, 4xx or a "
                                      "code."),
           expect: str = typer.Option(None, "--expect", help="Written into each file of a "
                                      "selection: same (default) or pass (fixed failures)."),
           as_json: bool = typer.Option(False, "--json", help="Print one JSON document "
                                        "(a selection).")
           ) -> None:
    """Write one execution — record, tape, spans, mutations — as a self-contained file; or,
    with --window/--function/--status, a directory of them (pytest --flux-records DIR)."""
    selecting = window is not None or function is not None or status is not None
    if selecting or request_id is None:
        _export_selection(request_id, output, window, function, status, expect, as_json)
        return
    if expect is not None:
        raise ConfigError("--expect applies to a selection (--window/--function/--status)")
    document = source().record(request_id)
    text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    out.print(f"[green]✓[/] {short(document['record']['request_id'])} → {output}",
              highlight=False)


def _export_selection(request_id: str | None, output: Path | None, window: str | None,
                      function: str | None, status: str | None, expect: str | None,
                      as_json: bool) -> None:
    if request_id is not None:
        raise ConfigError("give an id or a selection (--window/--function/--status), not both")
    if not (window or function or status):
        raise ConfigError("say which execution: an id, or --window A..B, --function F or "
                          "--status S with -o DIR")
    if output is None:
        raise ConfigError("a selection is written as a directory of files: pass -o DIR")
    refuse_remote("record export --window/--function/--status")
    from flux.replay._testgen import export_records

    result = export_records(load(), output, window=window, function=function, status=status,
                            expect=expect)
    if as_json:
        print_json(result)
        return
    for r in result["records"]:
        out.print(f"  {short(r['request_id'])}  {escape(r['function'] or '')}  "
                  f"{r['http_status']}  → {escape(Path(r['file']).name)}", highlight=False)
    count = result["exported"]
    out.print(f"[green]✓[/] {count} record{'s' if count != 1 else ''} → {escape(str(output))}"
              f"  [dim](pytest --flux-records {escape(str(output))})[/]", highlight=False)


@app.command("import")
def import_(path: Path = typer.Argument(..., help="A file made by flux record export."),
            tenant: str = typer.Option(None, "--tenant", help="The tenant the imported "
                                       "execution belongs to here (default: none; the "
                                       "file's own tenant is never taken)."),
            as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")
            ) -> None:
    """Store a record file's execution here, marked imported, so why, trace and replay can
    read it. Its changes are its own: no local row's history or blame shows them."""
    refuse_remote("record import")
    from flux.runtime._tenants import TenantRefused, check
    from flux.store._database import connect, resolve
    from flux.store._migrate import migrate
    from flux.store._portable import import_record, read_file

    if tenant is not None:
        try:
            tenant = check(tenant)
        except TenantRefused as exc:
            raise ConfigError(f"--tenant: {exc}") from None
    project = load()
    document = read_file(path, max_bytes=project.record.import_max_bytes)
    target = resolve(project)
    migrate(target.conninfo)
    with connect(target.conninfo) as conn:
        new = import_record(conn, document, tenant=tenant)
    rid = document["record"]["request_id"]
    if as_json:
        print_json({"request_id": rid, "imported": True, "new": new, "tenant": tenant,
                    "mutations": len(document["mutations"]) if new else 0})
        return
    out.print(f"[green]✓[/] imported {short(rid)}" if new else f"{short(rid)} was already here")


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
