"""The package's public face and house rules, checked like any behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import flux

REPO = Path(__file__).resolve().parents[1]


def test_exported_members() -> None:
    assert flux.__all__ == [
        "AmbiguousId", "ConfigError", "Context", "DatabaseError", "EmbeddedServerError",
        "FluxError", "FunctionError", "HttpConnectionError", "HttpError", "HttpStatusError",
        "HttpTimeout", "MigrationError", "NotFound", "Overloaded", "Response", "__version__",
        "context", "current", "function",
    ]
    for name in flux.__all__:
        assert hasattr(flux, name)


def test_every_flux_error_has_a_distinct_code() -> None:
    def tree(cls: type) -> list[type]:
        return [cls, *(c for sub in cls.__subclasses__() for c in tree(sub))]

    classes = [c for c in tree(flux.FluxError) if c.__module__.startswith("flux.")]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), codes


def test_ruff_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", str(REPO)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_holds_no_sql() -> None:
    import re

    pattern = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b.*\b(FROM|INTO|SET)\b")
    offenders = [p.name for p in (REPO / "cli").glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_help_lists_the_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "cli", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0
    for command in ("init", "dev", "serve", "db"):
        assert command in result.stdout
