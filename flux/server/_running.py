"""Where a running ``flux dev`` of a project can be reached, so ``flux why`` and ``flux
trace`` can print the web view's link to the execution they show.

``flux dev`` writes ``.flux/dev.json`` (its URL and process id) once it listens and removes
it when it stops; a file left by a process that died is ignored (its pid is gone). ``flux
serve`` writes nothing: a production server's address is what ``--remote`` names.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from flux._project import Project

FILE = "dev.json"
WEB = "/_flux/ui/"


def announce(project: Project, url: str) -> None:
    """Called by ``flux dev`` once it listens on ``url``."""
    with contextlib.suppress(OSError):
        project.state_dir.mkdir(parents=True, exist_ok=True)
        (project.state_dir / FILE).write_text(json.dumps({"url": url, "pid": os.getpid()}))


def withdraw(project: Project) -> None:
    """Called by ``flux dev`` when it stops (only the file it wrote)."""
    path = project.state_dir / FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def dev_url(state_dir: Path) -> str | None:
    """The URL of this project's running ``flux dev``, or None."""
    try:
        found = json.loads((state_dir / FILE).read_text())
        pid, url = int(found["pid"]), str(found["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return url


def web_link(base: str, request_id: str) -> str:
    """The web view's page of one execution on the server at ``base``."""
    return f"{base.rstrip('/')}{WEB}x/{request_id}"
