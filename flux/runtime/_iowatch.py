"""An honest record: outside access that went through no recorded path, noticed.

While a handler runs, Python's audit hooks (``sys.addaudithook``) report every socket
connection, DNS lookup, subprocess and file opened for writing; a database connection the
handler opens itself is reported by a thin wrapper around ``psycopg``'s ``connect`` (libpq
connects in C, where no audit event fires). Access made by a recorded path — ``ctx.http``,
a captured HTTP client (flux/runtime/_intercept.py), a ``ctx.step`` — is not reported: those mark
themselves as sending (``flux.runtime._ctx_http.sending``).

In serving, each such access is kept with its file:line and the record says it is
incomplete (a span of kind ``unrecorded``). Where nothing may leave the process — replay,
incident replay, resume, explain, generated tests — the access is refused before it
happens (the audit hook raises) and the run fails with ``unrecorded IO: <what> at
<file:line>``, even if the library that tried swallowed the exception.

What is *not* outside access (SDK incidentals) is decided by ``IOAllowance``: by default a
write under the temp dir, the project's ``.flux/``, ``__pycache__``, ``~/.config`` or
``~/.cache``, and the ``uname`` subprocess ``platform`` runs for SDK user agents; plus
what ``[io]`` in flux.toml adds (``allow_commands``, ``allow_writes``, ``allow_hosts``).
"""

from __future__ import annotations

import contextvars
import ipaddress
import os
import shlex
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from flux._errors import ConfigError, UnrecordedIO
from flux.runtime._ctx_http import is_sending
from flux.runtime._recorder import CallSite, Recorder

_FLUX_DIR = str(Path(__file__).resolve().parent.parent)  # all of flux/
DEFAULT_COMMANDS = ("uname",)
DEFAULT_WRITES = ("~/.config", "~/.cache")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_EVENTS = frozenset({
    "socket.connect", "socket.sendto", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.gethostbyname_ex", "socket.gethostbyaddr", "subprocess.Popen", "os.system",
    "os.exec", "os.posix_spawn", "os.spawn", "open", "flux.db.connect",
})


@dataclass(frozen=True)
class IOAllowance:
    """What a handler may do without it counting as outside access."""

    commands: frozenset[str] = frozenset(DEFAULT_COMMANDS)
    writes: tuple[str, ...] = ()  # absolute path prefixes
    hosts: frozenset[str] = frozenset()

    @classmethod
    def of(cls, root: Path, raw: Mapping[str, Any]) -> IOAllowance:
        """From flux.toml's ``[io]`` table, added to the defaults."""
        io = raw.get("io") or {}
        if not isinstance(io, dict):
            raise ConfigError("[io] in flux.toml must be a table")
        extra: dict[str, list[str]] = {}
        for key in ("allow_commands", "allow_writes", "allow_hosts"):
            value = io.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[io] {key} in flux.toml must be a list of strings")
            extra[key] = value
        writes = [tempfile.gettempdir(), str(root / ".flux"), *DEFAULT_WRITES,
                  *extra["allow_writes"]]
        return cls(
            commands=frozenset([*DEFAULT_COMMANDS, *extra["allow_commands"]]),
            writes=tuple(str(Path(os.path.expanduser(w)).resolve()) for w in writes),
            hosts=frozenset(extra["allow_hosts"]),
        )

    def host(self, host: str, port: Any = None) -> bool:
        return host in self.hosts or f"{host}:{port}" in self.hosts

    def write(self, path: str) -> bool:
        if "__pycache__" in path or path.startswith("/dev/"):
            return True
        return any(path == p or path.startswith(p + os.sep) for p in self.writes)


@dataclass
class Watch:
    """The unrecorded access of one execution; ``block`` where nothing may leave."""

    recorder: Recorder
    block: bool
    allow: IOAllowance = field(default_factory=IOAllowance)
    found: list[dict[str, Any]] = field(default_factory=list)

    def report(self, what: str, site: CallSite) -> None:
        entry = {"what": what, "file": site.file, "line": site.line}
        if entry not in self.found:
            self.found.append(entry)
            if not self.block:  # the record says where it is incomplete
                rec = self.recorder
                span = rec.open_span(f"unrecorded IO: {what}", "unrecorded", site,
                                     {"what": what})
                span.status = "incomplete"
                rec.close_span(span)
        if self.block:
            raise self.error(entry)

    @staticmethod
    def error(entry: Mapping[str, Any]) -> UnrecordedIO:
        return UnrecordedIO(
            f"unrecorded IO: {entry['what']} at {entry['file']}:{entry['line']}",
            hint="route it through ctx (ctx.http, ctx.db, ctx.step), or allow it in [io] "
                 "of flux.toml if it is harmless")


_watch: contextvars.ContextVar[Watch | None] = contextvars.ContextVar("flux_io_watch",
                                                                     default=None)


class watching:
    """Watch what runs inside (and the threads and tasks it starts from here). A class
    rather than a generator: every execution enters one."""

    __slots__ = ("_token", "_watch")

    def __init__(self, watch: Watch) -> None:
        self._watch = watch

    def __enter__(self) -> Watch:
        if not _installed:
            install()
        self._token = _watch.set(self._watch)
        return self._watch

    def __exit__(self, *exc: object) -> None:
        _watch.reset(self._token)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event not in _EVENTS:
        return
    watch = _watch.get()
    if watch is None or is_sending():
        return
    what = _describe(event, args, watch.allow)
    if what is not None:
        watch.report(what, watch.recorder.call_site(2))


def _describe(event: str, args: tuple[Any, ...], allow: IOAllowance) -> str | None:
    """What the event does to the outside, or None when it is not outside access."""
    if event in ("socket.connect", "socket.sendto"):
        address = args[1] if event == "socket.connect" else args[-1]
        if isinstance(address, tuple) and allow.host(str(address[0]), address[1]):
            return None
        target = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        kind = "socket connection" if event == "socket.connect" else "datagram"
        return f"{kind} to {target}"
    if event.startswith("socket."):
        host = args[0]
        if host is None:
            return None
        host = host.decode() if isinstance(host, bytes) else str(host)
        if _literal(host) or allow.host(host):
            return None
        return f"DNS lookup of {host}"
    if event == "open":
        return _write(args, allow)
    if event == "flux.db.connect":
        return f"a database connection of its own ({args[0]})"
    command = _command(event, args)
    if command is None or Path(command[0]).name in allow.commands:
        return None
    return "subprocess " + shlex.join(command)[:200]


def _literal(host: str) -> bool:
    """An address that needs no lookup (getaddrinfo of an IP literal sends nothing)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _write(args: tuple[Any, ...], allow: IOAllowance) -> str | None:
    path, mode, flags = args
    if isinstance(path, int) or path is None:
        return None
    writes = any(c in mode for c in "wax+") if isinstance(mode, str) else \
        bool((flags or 0) & _WRITE_FLAGS)
    if not writes:
        return None
    name = os.fsdecode(path)
    full = os.path.realpath(name)
    if allow.write(full):
        return None
    return f"file {name} opened for writing"


def _command(event: str, args: tuple[Any, ...]) -> list[str] | None:
    if event == "os.system":
        return shlex.split(os.fsdecode(args[0])) or [os.fsdecode(args[0])]
    if event == "subprocess.Popen":
        argv = args[1]
        if isinstance(argv, str | bytes):
            argv = shlex.split(os.fsdecode(argv))
        return [os.fsdecode(a) for a in argv or [args[0]]]
    if event in ("os.exec", "os.posix_spawn"):
        return [os.fsdecode(a) for a in args[1] or [args[0]]]
    if event == "os.spawn":
        return [os.fsdecode(a) for a in args[2] or [args[1]]]
    return None


_installed: list[bool] = []


def install() -> None:
    """Add the audit hook (once per process: hooks cannot be removed, and cost one set
    lookup per audited event outside executions) and the database-connection wrapper."""
    if _installed:
        return
    _installed.append(True)
    sys.addaudithook(_hook)
    _wrap_psycopg()


def _wrap_psycopg() -> None:
    def wrap(cls: Any, asynchronous: bool) -> None:
        original = cls.__dict__["connect"].__func__

        def own(conninfo: str) -> None:
            if _watch.get() is None or is_sending():
                return
            caller = sys._getframe(2).f_code.co_filename
            # Flux's own connections (its pool, its probes) are not the handler's.
            if caller.startswith(_FLUX_DIR) or "psycopg_pool" in caller:
                return
            sys.audit("flux.db.connect", f"psycopg {_where(conninfo)}")

        if asynchronous:
            async def connect_async(klass: Any, conninfo: str = "", **kwargs: Any) -> Any:
                own(conninfo)
                return await original(klass, conninfo, **kwargs)
            cls.connect = classmethod(connect_async)
        else:
            def connect(klass: Any, conninfo: str = "", **kwargs: Any) -> Any:
                own(conninfo)
                return original(klass, conninfo, **kwargs)
            cls.connect = classmethod(connect)

    wrap(psycopg.Connection, False)
    wrap(psycopg.AsyncConnection, True)
    psycopg.connect = psycopg.Connection.connect  # bound at import to the original


def _where(conninfo: str) -> str:
    """host/dbname of a connection string, without its password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "(unparsable address)"
    host = str(params.get("host") or "local socket")
    return f"to {host}" + (f"/{params['dbname']}" if params.get("dbname") else "")
