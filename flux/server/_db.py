"""What ``flux db start | stop | status | url | psql | migrate`` do, for the CLI to render."""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flux._errors import DatabaseError
from flux._project import Project, database_url_from_env
from flux.capture._mode import status as capture_status
from flux.store._database import Target, connect, embedded_server, redact_url, resolve
from flux.store._embedded import install_dir
from flux.store._migrate import Migration, applied_versions, migrate, migrations
from flux.store._queries import load

CAPTURE_SCHEMA = 8  # sql/0008_wal_capture.sql


@dataclass(frozen=True)
class DbStatus:
    """Facts about the project's database, as ``flux db status`` shows them."""

    mode: str  # "embedded" or "external"
    running: bool
    url: str | None
    version: str | None = None
    wal_level: str | None = None
    database: str | None = None
    database_size: int | None = None
    data_dir: str | None = None
    real_data_dir: str | None = None
    data_dir_size: int | None = None
    pid: int | None = None
    port: int | None = None
    socket_dir: str | None = None
    log_file: str | None = None
    run_as: str | None = None
    schema_version: int | None = None
    schema_latest: int | None = None
    capture: dict[str, Any] | None = None  # mode, slot, lag, warnings (flux/_capture.py)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def start(project: Project) -> tuple[Target, list[Migration]]:
    """Start the embedded server if need be, create the database, migrate the schema."""
    target = resolve(project, start=True)
    return target, migrate(target.conninfo)


def stop(project: Project) -> bool:
    """Stop the embedded server. False if it was not running."""
    if database_url_from_env():
        raise DatabaseError("DATABASE_URL is set: Flux did not start that server and will "
                            "not stop it")
    return embedded_server(project).stop()


def status(project: Project) -> DbStatus:
    latest = max((m.version for m in migrations()), default=0)
    url = database_url_from_env()
    if url is not None:
        facts = _server_facts(url)
        return DbStatus(mode="external", running=True, url=redact_url(url),
                        schema_latest=latest, **facts)
    server = embedded_server(project)
    state = server.status()
    common: dict[str, Any] = {
        "mode": "embedded",
        "data_dir": str(state.data_dir),
        "real_data_dir": str(state.real_data_dir),
        "data_dir_size": _tree_size(state.real_data_dir) if state.initialized else None,
        "log_file": str(state.log_file),
        "run_as": state.run_as,
        "schema_latest": latest,
        "version": state.version,
    }
    if state.info is None:
        return DbStatus(running=False, url=None, **common)
    conninfo = state.info.conninfo(project.database.name)
    try:
        facts = _server_facts(conninfo)
    except DatabaseError:
        # Running, but the project's database does not exist yet (never migrated).
        facts = _server_facts(state.info.conninfo("postgres"))
        facts["schema_version"] = None
    common.update(facts)
    return DbStatus(running=True, url=state.info.url(project.database.name),
                    pid=state.info.pid, port=state.info.port,
                    socket_dir=str(state.info.socket_dir), **common)


def url(project: Project, *, socket: bool = False) -> str:
    """A connection URL for other tools: TCP with the generated password, or the socket."""
    env_url = database_url_from_env()
    if env_url is not None:
        return env_url
    target = resolve(project, start=True)
    assert target.server is not None and target.embedded is not None
    if socket:
        return target.server.url(project.database.name)
    password = target.embedded.password()
    return (f"postgresql://postgres:{password}@127.0.0.1:{target.server.port}/"
            f"{project.database.name}")


def psql_argv(project: Project, args: list[str]) -> list[str]:
    """The argv that runs psql (the one shipped with the embedded server) on the database."""
    target = resolve(project, start=True)
    return [str(install_dir() / "bin" / "psql"), "-d", target.conninfo, *args]


def exec_psql(project: Project, args: list[str]) -> None:
    """Replace this process with psql, so that an interactive session behaves normally."""
    argv = psql_argv(project, args)
    os.execv(argv[0], argv)


def _server_facts(conninfo: str) -> dict[str, Any]:
    with connect(conninfo, autocommit=True) as conn:
        row = conn.execute(load("database").server_facts).fetchone()
    assert row is not None
    version, wal_level, size, database, _user = row
    versions = applied_versions(conninfo)
    capture = None
    if versions and max(versions) >= CAPTURE_SCHEMA:

        with connect(conninfo, autocommit=True) as conn:
            capture = capture_status(conn).as_json()
    return {"version": version, "wal_level": wal_level, "database": database,
            "database_size": size, "schema_version": max(versions) if versions else None,
            "capture": capture}


def _tree_size(root: Path) -> int:
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total
