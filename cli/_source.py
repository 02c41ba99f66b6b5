"""Where the inspect commands get their facts: the project's database, or — with the global
``--remote URL`` (or ``FLUX_REMOTE``) — a running Flux's admin API, with the token from
``FLUX_ADMIN_TOKEN``. The commands render the same documents either way."""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import TYPE_CHECKING

from rich.markup import escape

from flux._errors import ConfigError

if TYPE_CHECKING:
    from flux.server._inspector import Inspector

REMOTE_ENV = "FLUX_REMOTE"
# Top-level commands that can ask a remote Flux (trace: not diff/debug; record: export).
REMOTE_COMMANDS = frozenset({"ls", "why", "trace", "state", "resume", "record"})

_remote: ContextVar[str | None] = ContextVar("flux_remote", default=None)


def choose(remote: str | None, command: str | None, *, from_env: bool) -> None:
    """Called by the root callback: remember ``--remote`` for the command about to run. Given
    on the command line to a command that cannot use it, it is an error; set in the
    environment, it only applies where it can."""
    if remote and command not in REMOTE_COMMANDS:
        if not from_env:
            raise ConfigError(f"flux {command} works on the local project; --remote "
                              f"applies to {', '.join(sorted(REMOTE_COMMANDS))}")
        remote = None
    _remote.set(remote or None)


def remote_url() -> str | None:
    return _remote.get()


def refuse_remote(what: str) -> None:
    """For a sub-command of a remote-capable command that has no remote form."""
    if _remote.get():
        raise ConfigError(f"flux {what} works on the local project, not with --remote")


def source() -> Inspector:
    """The inspector the command reads through."""
    url = _remote.get()
    if url:
        from flux.runtime._access import TOKEN_ENV
        from flux.server._remote import Remote

        remote = Remote(url, os.environ.get(TOKEN_ENV))
        if remote.warning:
            from cli._output import err

            err.print(f"[yellow]warning:[/] {escape(remote.warning)}")
        return remote
    from flux._project import load
    from flux.server._inspector import Local

    return Local.of_project(load())


def web_link(request_id: str) -> str | None:
    """The web view's page of an execution on the server that is known: ``--remote``, or
    this project's running ``flux dev``; None when there is neither."""
    from flux.server._running import dev_url
    from flux.server._running import web_link as link

    base = _remote.get()
    if not base:
        from flux._project import find_root

        root = find_root()
        base = dev_url(root / ".flux") if root is not None else None
    return link(base, request_id) if base else None
