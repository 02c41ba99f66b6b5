"""The code version on every record: the git commit of the project and whether the work
tree had uncommitted changes to it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CodeVersion:
    sha: str | None  # None outside a git repository
    dirty: bool


def code_version(root: Path) -> CodeVersion:
    """Ask git once; callers cache the answer and ask again when files change."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if sha.returncode != 0:
            return CodeVersion(sha=None, dirty=False)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                 "."], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return CodeVersion(sha=None, dirty=False)
    return CodeVersion(sha=sha.stdout.strip(), dirty=bool(status.stdout.strip()))
