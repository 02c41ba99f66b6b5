"""The inspect commands' facts, from a database or from a remote Flux's admin API.

``Local`` reads the database the way each command always has (flux/inspect/_ls.py, _why.py,
_trace.py, _state.py, _portable.py); the admin API serves exactly what ``Local`` returns;
``flux.server._remote.Remote`` asks the admin API for it. The CLI renders whichever it was given,
so ``flux why ID`` and ``flux --remote URL why ID`` print the same thing.

Each method imports what it reads when it is called: ``flux ls`` must not pay at start-up for
why's classifier, resume's runtime (aiohttp, the executor) or the embedded server.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from flux._errors import ConfigError

if TYPE_CHECKING:
    from flux._project import Project

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


class Inspector(Protocol):
    """Where the inspect commands get their facts."""

    def executions(self, *, function: str | None = None, status: str | None = None,
                   since: str | None = None, window: str | None = None,
                   limit: int = 20) -> list[dict[str, Any]]: ...

    def record(self, prefix: str) -> dict[str, Any]: ...

    def why(self, prefix: str) -> dict[str, Any]: ...

    def trace(self, prefix: str) -> dict[str, Any]: ...

    def history(self, table: str, key: str) -> dict[str, Any]: ...

    def blame(self, table: str, key: str | None, *, limit: int = 50) -> dict[str, Any]: ...

    def resume(self, prefix: str, *, dry_run: bool = False, strict: bool = False
               ) -> dict[str, Any]: ...


class Local:
    """The facts read from a database, one read-only connection per call."""

    def __init__(self, connect: Connect, project: Project | None = None) -> None:
        self._connect = connect
        self._project = project

    @classmethod
    def of_project(cls, project: Project) -> Local:
        # lazy: only what this command reads (module docstring)
        from flux.store._database import reader

        return cls(lambda: reader(project), project)

    @classmethod
    def of_conninfo(cls, conninfo: str) -> Local:
        # lazy: only what this command reads (module docstring)
        from flux.store._database import read_only

        return cls(lambda: read_only(conninfo))

    def executions(self, *, function: str | None = None, status: str | None = None,
                   since: str | None = None, window: str | None = None,
                   limit: int = 20) -> list[dict[str, Any]]:
        """``flux ls``: recent executions, newest first."""
        # lazy: only what this command reads (module docstring)
        from flux.inspect._ls import list_executions

        with self._connect() as conn:
            return list_executions(conn, function=function, status=status, since=since,
                                   window=window, limit=limit)

    def record(self, prefix: str) -> dict[str, Any]:
        """``flux record export``: the portable record of one execution."""
        # lazy: only what this command reads (module docstring)
        from flux.store._portable import export_record

        with self._connect() as conn:
            return export_record(conn, prefix)

    def why(self, prefix: str) -> dict[str, Any]:
        """``flux why``: the whole report, spans included (``--json`` leaves them out)."""
        # lazy: only what this command reads (module docstring)
        from flux.inspect._why import explain_failure

        with self._connect() as conn:
            return explain_failure(conn, prefix)

    def trace(self, prefix: str) -> dict[str, Any]:
        """``flux trace``: the span tree and its facts."""
        # lazy: only what this command reads (module docstring)
        from flux.inspect._trace import trace_json
        from flux.store._lookup import fetch_record, handoffs

        with self._connect() as conn:
            record = fetch_record(conn, prefix)
            return trace_json(record, handoffs(conn, record))

    def history(self, table: str, key: str) -> dict[str, Any]:
        """``flux state history``."""
        # lazy: only what this command reads (module docstring)
        from flux.inspect._state import history

        with self._connect() as conn:
            return history(conn, table, key)

    def blame(self, table: str, key: str | None, *, limit: int = 50) -> dict[str, Any]:
        """``flux state blame``."""
        # lazy: only what this command reads (module docstring)
        from flux.inspect._state import blame

        with self._connect() as conn:
            return blame(conn, table, key, limit=limit)

    def resume(self, prefix: str, *, dry_run: bool = False, strict: bool = False
               ) -> dict[str, Any]:
        """``flux resume`` with this project's code."""
        # lazy: only what this command reads (module docstring)
        from flux.replay._resume import resume_command

        if self._project is None:
            raise ConfigError("resume needs the project's code")
        return resume_command(self._project, prefix, dry_run=dry_run, strict=strict)
