"""Screenshots of the debugger compared with the accepted ones in ``__snapshots__``
(pytest-textual-snapshot; ``--snapshot-update`` accepts a change after looking at it).
The records are fixed files, so the screens are the same on every run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input

from cli.tui.app import DebugApp
from flux.replay._debug import diff_against, load_debug

HERE = Path(__file__).resolve().parent
FAILED = str(HERE / "checkout_failed.json")
OK = str(HERE / "checkout_ok.json")


def failed_app() -> DebugApp:
    data = load_debug(None, FAILED)
    return DebugApp(data, on_diff=lambda other: diff_against(None, data, other))


def test_failed_execution_main_screen(snap_compare: Any) -> None:
    """The failing HTTP call selected (e): tree with ✗ marks, the 429 exchange, timeline."""
    assert snap_compare(failed_app(), press=["e"], terminal_size=(100, 32))


def test_failed_execution_at_80x24(snap_compare: Any) -> None:
    """A narrow terminal: the tree narrower, the detail pane scrolls."""
    assert snap_compare(failed_app(), press=["n", "n", "n"], terminal_size=(80, 24))


def test_diff_view(snap_compare: Any) -> None:
    """d, then the id of the successful checkout: the diff summary in its screen."""

    async def diff_against_ok(pilot: Pilot[None]) -> None:
        await pilot.press("d")
        pilot.app.query_one("#prompt", Input).value = OK
        await pilot.press("enter")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(failed_app(), run_before=diff_against_ok, terminal_size=(100, 32))
