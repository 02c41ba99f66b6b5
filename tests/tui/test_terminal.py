"""``flux trace debug FILE`` in a real terminal: tmux, 80×24, keys sent with send-keys and
the screen read with capture-pane. The record is a file and the directory holds no
project, so no database is started.

When tmux is not installed (CI machines have only Python and pip) the same scenario runs
through Textual's headless driver at 80×24 instead, reading the composed screen: the
test never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from cli.tui.app import DebugApp
from flux.replay._debug import load_debug

REPO = Path(__file__).resolve().parents[2]
RECORD = Path(__file__).resolve().parent / "checkout_failed.json"
FAILING = "http.post 127.0.0.1:4010"


def wait_for(check: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def run_in_tmux(tmux: str, cwd: Path) -> None:
    socket = f"flux-debug-{uuid.uuid4().hex[:8]}"  # a private tmux server, ended below

    def tmux_(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tmux, "-L", socket, *args], capture_output=True, text=True,
                              timeout=10)

    def screen() -> str:
        return tmux_("capture-pane", "-p", "-t", "debug").stdout

    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TMUX")}
    environ.update({"PYTHONPATH": str(REPO), "TERM": "xterm-256color"})
    command = f"{sys.executable} -m cli trace debug {RECORD}; sleep 30"
    started = subprocess.run([tmux, "-L", socket, "-f", os.devnull, "new-session", "-d",
                              "-s", "debug", "-x", "80", "-y", "24", "-c", str(cwd), command],
                             env=environ, capture_output=True, text=True, timeout=10)
    assert started.returncode == 0, started.stderr
    try:
        assert wait_for(lambda: "q Quit" in screen()), screen()
        assert "POST /checkout" in screen()
        tmux_("send-keys", "-t", "debug", "n")
        assert wait_for(lambda: "checkout  function" in screen()), screen()
        tmux_("send-keys", "-t", "debug", "e")
        assert wait_for(lambda: "HTTP request" in screen()), screen()
        shown = screen()
        assert FAILING in shown  # the failing span: in the tree and atop the detail
        assert "answered 429" in shown
        tmux_("send-keys", "-t", "debug", "q")
        # the app ended: the pane is back to the shell command's `sleep`, the UI gone
        assert wait_for(lambda: "q Quit" not in screen()), screen()
    finally:
        tmux_("kill-server")


async def run_headless() -> None:
    app = DebugApp(load_debug(None, str(RECORD)))

    def screen() -> str:
        strips = app.screen._compositor.render_strips()
        return "\n".join(strip.text for strip in strips)

    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert "q Quit" in screen() and "POST /checkout" in screen()
        await pilot.press("n")
        await pilot.pause()
        assert "checkout  function" in screen()
        await pilot.press("e")
        await pilot.pause()
        shown = screen()
        assert FAILING in shown and "answered 429" in shown and "HTTP request" in shown
        await pilot.press("q")
    assert app.return_code == 0


async def test_debug_in_a_terminal_80x24(tmp_path: Path) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        await run_headless()
    else:
        run_in_tmux(tmux, tmp_path)
        await run_headless()  # both paths stay exercised where tmux exists
