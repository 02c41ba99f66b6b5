"""``flux gc``: drop the day partitions older than ``[record] retention``, keep pinned
executions."""

from __future__ import annotations

import typer
from rich.markup import escape

from cli._output import out, print_json
from flux._project import load


def gc(dry_run: bool = typer.Option(False, "--dry-run",
                                    help="Say what would be dropped; change nothing."),
       retention: str = typer.Option(None, "--retention",
                                     help='Instead of [record] retention: "14d", "36h", "2w".'),
       as_json: bool = typer.Option(False, "--json", help="Print one JSON document.")
       ) -> None:
    """Drop the records and changes older than the retention, but pinned executions."""
    from flux.store._retention import format_duration, gc_project

    report = gc_project(load(), retention=retention, dry_run=dry_run)
    if as_json:
        print_json(report.as_json())
        return
    verb = "would drop" if dry_run else "dropped"
    out.print(f"retention {format_duration(report.retention)}: older than "
              f"{report.cutoff:%Y-%m-%d %H:%M} UTC goes"
              + (" [dim](dry run: nothing changes)[/]" if dry_run else ""))
    for d in report.dropped:
        kept = f", {d.pinned:,} of pinned executions kept" if d.pinned else ""
        out.print(f"  [green]✓[/] {verb} {escape(d.partition)} ({d.rows:,} rows{kept})")
    for name in report.busy:
        out.print(f"  [yellow]![/] {escape(name)} was busy; the next gc drops it")
    rows = sum(report.expired_default.values())
    if rows:
        out.print(f"  [green]✓[/] {'would delete' if dry_run else 'deleted'} {rows:,} "
                  "expired row(s) of the default partitions")
    if report.signatures:
        out.print(f"  [green]✓[/] {'would delete' if dry_run else 'deleted'} "
                  f"{report.signatures:,} failure signature(s) of expired executions")
    if not report.dropped and not report.busy and not rows and not report.signatures:
        out.print("  nothing is older than the retention")
    if report.created:
        out.print(f"  [green]✓[/] {report.created} partition(s) made ahead")
