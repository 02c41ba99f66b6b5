"""The lines of a project's code around a location, for the web view's location panel.

Only the project's own source files are shown: a path relative to the project root that
stays inside it, outside hidden directories (``.flux`` holds the database and the keys), with
a source suffix. Anything else is "not found", whatever it is.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from flux._errors import NotFound

SUFFIXES = frozenset({".py", ".wat", ".c", ".sql"})
CONTEXT = 3  # lines either side


def code_around(root: Path, file: str, line: int, context: int = CONTEXT) -> dict[str, Any]:
    """``{"file", "line", "lines": [{"line", "text"}]}`` for ``file`` (project-relative)."""
    missing = NotFound(f"no source file {file!r} in this project")
    relative = PurePosixPath(file)
    if (
        relative.is_absolute()
        or relative.suffix not in SUFFIXES
        or any(part.startswith(".") or part == "" for part in relative.parts)
    ):
        raise missing
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise missing
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        raise missing from None
    first = max(1, line - context)
    last = min(len(text), line + context)
    return {
        "file": file,
        "line": line,
        "lines": [{"line": n, "text": text[n - 1]} for n in range(first, last + 1)],
    }
