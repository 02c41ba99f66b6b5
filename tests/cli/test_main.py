"""The `flux` command itself: its version and its shell completion, through the installed
console entry point as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from cli.main import DISTRIBUTION


def _console_script() -> Path:
    """The installed ``flux`` entry point next to this interpreter."""
    script = Path(sys.executable).with_name("flux")
    # The README's test command installs Flux into the venv first: the script is there.
    assert script.exists(), f"no flux console script at {script}: install Flux (pip install -e .)"
    return script


def test_version_from_the_console_entry_point() -> None:
    result = subprocess.run([str(_console_script()), "--version"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"flux {version(DISTRIBUTION)}\n"


def test_shell_completion_script_and_completions() -> None:
    flux = str(_console_script())
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = subprocess.run([flux, "--show-completion", "bash"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert script.returncode == 0, script.stderr
    assert "_FLUX_COMPLETE=complete_bash" in script.stdout
    assert "complete -o default -F _flux_completion flux" in script.stdout
    # what the installed script asks the program when the user presses Tab
    asked = subprocess.run([flux], capture_output=True, text=True, timeout=60, env={
        **os.environ, "_FLUX_COMPLETE": "complete_bash", "COMP_WORDS": "flux state ",
        "COMP_CWORD": "2"})
    assert asked.stdout.split() == ["history", "blame"]
