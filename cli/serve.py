"""``flux init``, ``flux dev`` and ``flux serve``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from cli._output import err, out
from flux._ids import short
from flux._project import load, with_asgi

if TYPE_CHECKING:
    from flux.runtime._loader import LoadError
    from flux.server._serve import ServeEvents, ServeInfo

WORKER_ENV = "FLUX_SERVE_WORKER"


def init(name: str = typer.Argument(..., help="Directory to create.")) -> None:
    """Create a new Flux project with a sample function and table."""
    from flux.server._scaffold import init_project

    target = Path(name).resolve()
    written = init_project(target)
    out.print(f"[green]✓[/] created {escape(name)}/ ({len(written)} files)")
    out.print(f"\n  cd {escape(name)}\n  flux dev\n  curl -s localhost:4000/create_user "
              "-d '{\"email\": \"ada@example.com\"}'\n")


ASGI_HELP = ("An ASGI app (FastAPI, Starlette) to serve every request no function takes, "
             "as module:attribute (default: [asgi] app in flux.toml).")


def dev(port: int = typer.Option(None, "--port", "-p", help="Port (default: flux.toml, 4000)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
        asgi: str = typer.Option(None, "--asgi", help=ASGI_HELP)) -> None:
    """Run the project locally: embedded PostgreSQL, reload on change, until Ctrl-C."""
    import asyncio

    from flux.server._serve import serve

    project = with_asgi(load(), asgi)
    events = _events(project.name, mode="dev")
    asyncio.run(serve(project, host=host, port=port or project.port, reload=True,
                      events=events, dev=True))
    out.print("[dim]stopped[/]")


def serve_command(
    port: int = typer.Option(None, "--port", "-p", help="Port (default: flux.toml, 4000)."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to bind."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, max=64,
                                help="Worker processes sharing the port."),
    asgi: str = typer.Option(None, "--asgi", help=ASGI_HELP),
) -> None:
    """Run the project in production: DATABASE_URL, no reload, several workers allowed."""
    import asyncio

    from flux.capture._schema import SchemaResult
    from flux.server._serve import prepare_database, serve

    project = with_asgi(load(), asgi)
    port = port or project.port
    if os.environ.get(WORKER_ENV):
        from flux.store._database import resolve

        prepared = (resolve(project, start=False), SchemaResult([], 0))
        asyncio.run(serve(project, host=host, port=port, reload=False, prepared=prepared,
                          reuse_port=True, stop_embedded=False,
                          events=_events(project.name, mode="worker")))
        return
    if not os.environ.get("DATABASE_URL"):
        err.print("[yellow]note:[/] DATABASE_URL is not set; using the embedded PostgreSQL")
    prepared = prepare_database(project)
    if workers == 1:
        asyncio.run(serve(project, host=host, port=port, reload=False, prepared=prepared,
                          events=_events(project.name, mode="serve")))
        return
    _supervise(workers, port, host, prepared[0].started, asgi)


def _supervise(workers: int, port: int, host: str, started_db: bool,
               asgi: str | None = None) -> None:
    """Run ``workers`` serving processes on one port (SO_REUSEPORT) until SIGINT/SIGTERM."""
    env = {**os.environ, WORKER_ENV: "1"}
    argv = [sys.executable, "-m", "cli", "serve", "--port", str(port), "--host", host,
            *(["--asgi", asgi] if asgi else [])]
    children = [subprocess.Popen(argv, env=env) for _ in range(workers)]
    out.print(f"[green]✓[/] {workers} workers serving on {host}:{port}")
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while not stopping and all(c.poll() is None for c in children):
        time.sleep(0.2)
    forward(signal.SIGTERM, None)
    codes = [c.wait() for c in children]
    if started_db:
        from flux.store._database import embedded_server

        embedded_server(load()).stop()
    if any(code not in (0, -signal.SIGTERM) for code in codes) and not stopping:
        raise typer.Exit(1)


def _events(name: str, *, mode: str) -> ServeEvents:
    from flux.server._serve import ServeEvents

    def ready(info: ServeInfo) -> None:
        if mode == "worker":
            return
        db = "embedded PostgreSQL" if info.embedded else "DATABASE_URL"
        out.print(f"\n  [bold]Flux {mode}[/] · {escape(name)}")
        out.print(f"  ➜ [bold cyan]{info.url}[/]   {db}"
                  + (f" · {escape(info.data_dir)}" if info.data_dir else ""))
        for file in info.schema.applied:
            out.print(f"  [green]✓[/] schema/{escape(file)} applied")
        if info.schema.captured:
            out.print(f"  [green]✓[/] capture installed on {info.schema.captured} table(s)")
        admin = {"open": "open to this machine (flux dev on loopback)",
                 "token": "needs Authorization: Bearer $FLUX_ADMIN_TOKEN",
                 "closed": "closed (set FLUX_ADMIN_TOKEN to open it)"}[info.admin]
        out.print(f"  [dim]admin API /_flux/ {admin}[/]")
        if info.admin != "closed":
            out.print(f"  ➜ web view [bold cyan]{info.url}/_flux/ui/[/]"
                      + ("" if info.admin == "open" else "  [dim](sign in with the token)[/]"))
        out.print(f"\n  {len({fn for _, _, fn in info.functions})} function(s)")
        for method, route, fn in info.functions:
            out.print(f"    {method:<4} {escape(route):<29} {escape(fn)}")
        if info.asgi is not None:
            out.print(f"    *    {'/…':<29} {escape(info.asgi)} (ASGI app: every other "
                      "request)")
        for error in info.load_errors:
            _load_error(error)
        out.print("\n  [dim]ready — Ctrl-C to stop[/]\n")

    def reloaded(fn: str | None, millis: float, error: LoadError | None, path: Path) -> None:
        if error is not None:
            _load_error(error)
        elif fn is None:
            out.print(f"  [yellow]−[/] {escape(path.name)} no longer holds a function")
        else:
            out.print(f"  [green]✓[/] {escape(fn)} reloaded ({millis:.0f} ms)")

    def request(method: str, path: str, status: int, millis: float, rid: str | None,
                error: str | None = None) -> None:
        colour = "green" if status < 400 else "yellow" if status < 500 else "red"
        rid = short(rid) if rid else ""
        # out draws control characters in the path and the error (attacker data) visibly
        failed = f"  [red]{escape(error)}[/]" if error else ""
        hint = f"  [dim]→ flux why {rid}[/]" if status >= 500 else ""
        out.print(f"  {time.strftime('%H:%M:%S')}  {method:<5} {escape(path):<28} "
                  f"[{colour}]{status}[/] {millis:6.0f} ms  [dim]{rid}[/]{failed}{hint}")

    def log(rid: str, level: str, message: str, fields: dict[str, Any]) -> None:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        out.print(f"  [dim]{short(rid)} {level:<7}[/] {escape(message)} [dim]{escape(extra)}[/]")

    def stopping() -> None:
        if mode != "worker":
            out.print("\n  [dim]stopping: finishing requests in flight…[/]")

    quiet = mode == "worker"
    return ServeEvents(ready=ready, reloaded=reloaded, request=None if quiet else request,
                       log=None if quiet else log, stopping=stopping)


def _load_error(error: LoadError) -> None:
    out.print(f"  [red]✗[/] {escape(error.file.name)}: {escape(error.message)}")
