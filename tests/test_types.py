"""flux/ and cli/ type-check with mypy, as configured in pyproject.toml ([tool.mypy]:
``check_untyped_defs``): a type error is a failing test, not a reviewer's catch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_flux_and_cli_type_check() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mypy found type errors:\n{result.stdout}{result.stderr}"
