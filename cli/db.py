"""``flux db start | stop | status | url | psql | migrate``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from cli._output import out, print_json
from flux._project import load

if TYPE_CHECKING:
    from flux.server._db import DbStatus

app = typer.Typer(help="The project's PostgreSQL: the embedded server, or DATABASE_URL.",
                  no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print one JSON document.")


@app.command()
def start(as_json: bool = JSON) -> None:
    """Start the embedded PostgreSQL (reusing a running one) and migrate the flux schema."""
    from flux.server import _db as _dbadmin

    project = load()
    target, applied = _dbadmin.start(project)
    if as_json:
        print_json({"url": target.display, "started": target.started,
                    "migrations_applied": [m.path.name for m in applied]})
        return
    if target.embedded is None:
        out.print(f"using DATABASE_URL {target.display}")
    elif target.started:
        out.print(f"[green]✓[/] embedded PostgreSQL started · {target.display}")
    else:
        out.print(f"[green]✓[/] embedded PostgreSQL already running · {target.display}")
    for migration in applied:
        out.print(f"  applied {migration.path.name}")


@app.command()
def stop() -> None:
    """Stop the embedded PostgreSQL (fast shutdown: sessions are rolled back)."""
    from flux.server import _db as _dbadmin

    if _dbadmin.stop(load()):
        out.print("[green]✓[/] embedded PostgreSQL stopped")
    else:
        out.print("embedded PostgreSQL was not running")


@app.command()
def status(as_json: bool = JSON) -> None:
    """Server, version, data directory, size, wal_level and schema version."""
    from flux.server import _db as _dbadmin

    facts = _dbadmin.status(load())
    if as_json:
        print_json(facts.to_json())
        return
    state = "[green]running[/]" if facts.running else "[yellow]stopped[/]"
    rows: list[tuple[str, str | None]] = [
        ("server", f"{facts.mode} · {state}" + (f" · pid {facts.pid}" if facts.pid else "")),
        ("version", facts.version),
        ("url", facts.url),
        ("data dir", _data_dir(facts)),
        ("log", facts.log_file),
        ("runs as", facts.run_as),
        ("wal_level", facts.wal_level),
        ("database", f"{facts.database} · {_size(facts.database_size)}" if facts.database
         else None),
        ("schema", _schema(facts)),
        ("capture", _capture(facts.capture)),
    ]
    for label, value in rows:
        if value:
            out.print(f"  [bold]{label:<10}[/] {value}")
    for warning in (facts.capture or {}).get("warnings", []):
        out.print(f"  [yellow]![/] {escape(warning)}")


def _capture(capture: dict[str, Any] | None) -> str | None:
    if capture is None:
        return None
    if capture["mode"] != "wal":
        return "trigger (row triggers, in each writing transaction)"
    slot = capture["slot"]
    if slot is None:
        return "wal · [red]no slot[/]"
    lag = capture["lag_bytes"] or 0
    seconds = capture["lag_seconds"]
    return (f"wal · slot {slot['name']} ({slot['wal_status']}) · lag {_size(lag)}"
            + (f" / {seconds:.0f} s" if seconds else "")
            + f" · {capture['applied_changes']:,} changes applied")


@app.command()
def url(socket: bool = typer.Option(False, "--socket", help="The Unix-socket URL instead of "
                                    "TCP with password.")) -> None:
    """Print a connection URL for other tools (e.g. as DATABASE_URL)."""
    from flux.server import _db as _dbadmin

    typer.echo(_dbadmin.url(load(), socket=socket))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def psql(ctx: typer.Context) -> None:
    """Open psql on the project's database; extra arguments go to psql (e.g. -c "select 1")."""
    from flux.server import _db as _dbadmin

    _dbadmin.exec_psql(load(), list(ctx.args))


@app.command()
def migrate(as_json: bool = JSON) -> None:
    """Apply the flux schema migrations that are not applied yet (idempotent)."""
    from flux.server import _db as _dbadmin

    _target, applied = _dbadmin.start(load())
    if as_json:
        print_json({"applied": [m.path.name for m in applied]})
        return
    if not applied:
        out.print("[green]✓[/] flux schema is up to date")
    for migration in applied:
        out.print(f"[green]✓[/] applied {migration.path.name}")


def _data_dir(facts: DbStatus) -> str | None:
    if facts.data_dir is None:
        return None
    shown = facts.data_dir
    if facts.real_data_dir and facts.real_data_dir != facts.data_dir:
        shown += f" → {facts.real_data_dir}"
    return f"{shown} · {_size(facts.data_dir_size)}" if facts.data_dir_size else shown


def _schema(facts: DbStatus) -> str | None:
    if not facts.running:
        return None
    if facts.schema_version is None:
        return "not migrated (run `flux db migrate`)"
    if facts.schema_version < (facts.schema_latest or 0):
        return f"version {facts.schema_version}, {facts.schema_latest} available (flux db migrate)"
    return f"version {facts.schema_version} (up to date)"


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
