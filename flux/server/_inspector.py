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
    from flux.inspect._ai import Prompt

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


class Inspector(Protocol):
    """Where the inspect commands get their facts."""

    def executions(self, *, function: str | None = None, status: str | None = None,
                   since: str | None = None, window: str | None = None,
                   limit: int = 20, kind: str | None = None) -> list[dict[str, Any]]: ...

    def window(self, text: str) -> dict[str, Any]: ...

    def record(self, prefix: str) -> dict[str, Any]: ...

    def why(self, prefix: str) -> dict[str, Any]: ...

    def trace(self, prefix: str) -> dict[str, Any]: ...

    def history(self, table: str, key: str) -> dict[str, Any]: ...

    def diff(self, a: str, b: str) -> dict[str, Any]: ...

    def blame(self, table: str, key: str | None, *, limit: int = 50) -> dict[str, Any]: ...

    def resume(self, prefix: str, *, dry_run: bool = False, strict: bool = False
               ) -> dict[str, Any]: ...

    def ai_reading(self, prefix: str, *, send: bool = True, show_prompt: bool = False,
                   on_text: Callable[[str], None] | None = None) -> dict[str, Any]: ...


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
    def of_conninfo(cls, conninfo: str, project: Project | None = None) -> Local:
        # lazy: only what this command reads (module docstring)
        from flux.store._database import read_only

        return cls(lambda: read_only(conninfo), project)

    def executions(self, *, function: str | None = None, status: str | None = None,
                   since: str | None = None, window: str | None = None,
                   limit: int = 20, kind: str | None = None) -> list[dict[str, Any]]:
        """``flux ls``: recent executions, newest first."""
        # lazy: only what this command reads (module docstring)
        from flux.inspect._ls import list_executions

        with self._connect() as conn:
            return list_executions(conn, function=function, status=status, since=since,
                                   window=window, limit=limit, kind=kind)

    def window(self, text: str) -> dict[str, Any]:
        """How a window is read: in this machine's zone, and the database server's."""
        # lazy: only what this command reads (module docstring)
        from flux.inspect._ls import describe_window

        with self._connect() as conn:
            return describe_window(conn, text)

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

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """``flux trace diff``: execution ``b`` against execution ``a``."""
        # lazy: only what this command reads (module docstring)
        from flux.inspect._compare import compare

        with self._connect() as conn:
            return compare(conn, a, b)

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

    def ai_prompt(self, prefix: str) -> tuple[str, Prompt]:
        """The request id and the redacted, capped prompt ``flux why --ai`` sends."""
        # lazy: only what this command reads (module docstring)
        from flux.inspect import _ai

        project = self._need_project("flux why --ai")
        with self._connect() as conn:
            facts = _ai.gather(conn, prefix, project.root)
        redact = redactor(project, _ai.secret_values(project, facts["secret_names"]))
        prompt = _ai.build_prompt(facts, redact=redact,
                                  max_chars=project.ai.max_prompt_chars)
        return str(facts["report"]["request_id"]), prompt

    def ai_reading(self, prefix: str, *, send: bool = True, show_prompt: bool = False,
                   on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
        """``flux why --ai``: the model's reading (streamed to ``on_text``), or with
        ``send`` false only the prompt it would get. A model that fails is one sentence in
        the document's ``error``, never an exception."""
        # lazy: only what this command reads (module docstring)
        from flux.inspect import _ai

        project = self._need_project("flux why --ai")
        key = None
        if send:
            _ai.require(project.ai)
            key = _ai.api_key(project)
        request_id, prompt = self.ai_prompt(prefix)
        answer = _ai.ask_sync(project.ai, key, prompt, on_text) if send else None
        return {"request_id": request_id,
                "ai": _ai.reading(project.ai, prompt, answer, show_prompt=show_prompt)}

    def _need_project(self, what: str) -> Project:
        if self._project is None:
            raise ConfigError(f"{what} needs the project's flux.toml")
        return self._project


def redactor(project: Project, secrets: set[str]) -> Callable[[Any], Any]:
    """The store's redaction over anything about to leave the house: sensitive fields
    fingerprinted with the project's key, every secret value in ``secrets`` scrubbed."""
    # lazy: only what this command reads (module docstring)
    from flux.runtime._redact import load_policy

    policy = load_policy(project.state_dir, project.raw, keep_key=False)
    return lambda value: policy.scrub(policy.redact_body(value), secrets)
