"""``flux queue ls | show | retry | dead`` and ``flux worker``: parse, call one function of
``flux``, render with rich or print JSON."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cli._output import out, print_json
from flux._ids import short
from flux._project import load

JSON = typer.Option(False, "--json", help="Print one JSON document.")
COLOURS = {"queued": "yellow", "running": "cyan", "done": "green", "dead": "red"}

app = typer.Typer(help="The built-in queue: jobs, their attempts, the dead-letter list.",
                  no_args_is_help=True)


@contextlib.contextmanager
def _writer() -> Iterator[Any]:
    from flux.store._database import connect, resolve

    with connect(resolve(load(), create=False).conninfo, autocommit=True) as conn:
        yield conn


@app.command("ls")
def ls(status: str = typer.Option(None, "--status", "-s",
                                  help="queued, running, done or dead."),
       function: str = typer.Option(None, "--function", "-f", help="Only this function."),
       limit: int = typer.Option(50, "--limit", "-n", help="At most this many."),
       as_json: bool = JSON) -> None:
    """Jobs, newest first."""
    from flux.jobs._queue import list_jobs
    from flux.store._database import reader

    with reader(load()) as conn:
        rows = list_jobs(conn, status=status, function=function, limit=limit)
    _render_list(rows, as_json)


@app.command("dead")
def dead(function: str = typer.Option(None, "--function", "-f", help="Only this function."),
         limit: int = typer.Option(50, "--limit", "-n", help="At most this many."),
         as_json: bool = JSON) -> None:
    """Jobs that spent every attempt, newest first."""
    from flux.jobs._queue import dead_jobs
    from flux.store._database import reader

    with reader(load()) as conn:
        rows = dead_jobs(conn, function=function, limit=limit)
    _render_list(rows, as_json)


@app.command("show")
def show(job: str = typer.Argument(..., help="Job id or a unique prefix."),
         as_json: bool = JSON) -> None:
    """A job, each of its attempts with its execution, and the request that pushed it."""
    from flux.jobs._queue import show_job
    from flux.store._database import reader

    with reader(load()) as conn:
        document = show_job(conn, job)
    _render_job(document, as_json)


@app.command("retry")
def retry(job: str = typer.Argument(..., help="Job id or a unique prefix."),
          as_json: bool = JSON) -> None:
    """Queue a dead (or failed) job to run now, its attempts reset."""
    from flux.jobs._queue import retry_job

    with _writer() as conn:
        document = retry_job(conn, job)
    if as_json:
        print_json(document)
        return
    out.print(f"[green]✓[/] job {short(document['id'])} ({escape(document['function'])}) "
              "queued again")


def worker(concurrency: int = typer.Option(None, "--concurrency", "-c", min=1,
                                           help="Jobs at once (default: flux.toml, 4)."),
           cron: bool = typer.Option(True, "--cron/--no-cron",
                                     help="Also schedule cron ticks.")) -> None:
    """Run the queue worker (and cron) alone, without serving HTTP, until Ctrl-C."""
    import asyncio
    import logging

    from flux.jobs._worker import run_worker
    from flux.store._database import resolve
    from flux.store._migrate import migrate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    project = load()
    target = resolve(project, start=True)
    migrate(target.conninfo)
    out.print(f"[bold]Flux worker[/] · {escape(project.name)} · {escape(target.display)}")
    asyncio.run(run_worker(project, target.conninfo, concurrency=concurrency, cron=cron))
    out.print("[dim]stopped[/]")


def _render_list(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json({"jobs": rows})
        return
    if not rows:
        out.print("no jobs match")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("id", "function", "status", "attempts", "run at", "parent", "last error"):
        table.add_column(column, no_wrap=column != "last error")
    for r in rows:
        colour = COLOURS.get(r["status"], "white")
        error = (r.get("last_error") or {}).get("message") or ""
        table.add_row(short(r["id"]), escape(r["function"]), f"[{colour}]{r['status']}[/]",
                      f"{r['attempts']}/{r['max_attempts']}", (r["run_at"] or "")[:19],
                      short(r["parent_id"]) if r["parent_id"] else "",
                      escape(error.splitlines()[0] if error else ""))
    out.print(table)


def _render_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(job)
        return
    colour = COLOURS.get(job["status"], "white")
    out.print(f"[bold]job {job['id']}[/] · {escape(job['function'])} ({job['kind']}) · "
              f"[{colour}]{job['status']}[/] · attempt {job['attempts']}/{job['max_attempts']}")
    parent = job.get("parent")
    if parent:
        what = parent["function"] or f"{parent['method'] or ''} /{parent['route']}"
        out.print(f"  pushed by {parent['request_id']} ({parent['kind']} {escape(what)}, "
                  f"{parent['status']} {parent['http_status']})")
    elif job.get("parent_id"):
        out.print(f"  pushed by {job['parent_id']} (no record)")
    for ex in job["executions"]:
        if ex["status"] is None:
            ending = "[yellow]no record[/] (its worker stopped mid-attempt)"
        else:
            c = "green" if ex["status"] == "ok" else "red"
            ending = f"[{c}]{ex['status']} {ex['http_status']}[/]"
            if ex["error_message"]:
                ending += f" {escape(ex['error_message'].splitlines()[0])}"
        out.print(f"  #{ex['attempt']}  {ex['request_id']}  {ex['claimed_at'][:19]}  {ending}")
    if job["status"] == "queued" and job["attempts"]:
        out.print(f"  next attempt at {job['run_at'][:19]}")
    if job["status"] == "dead":
        out.print(f"  [dim]→ flux why {short(job['last_request_id'] or '')}   "
                  f"flux queue retry {short(job['id'])}[/]")
