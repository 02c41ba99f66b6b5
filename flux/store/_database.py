"""Which PostgreSQL a project uses, and connecting to it with clear errors.

With ``DATABASE_URL`` set, Flux uses that server and never starts one. Otherwise it uses the
project's embedded server (see ``_embedded``), starting it on first use.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from flux._errors import DatabaseError
from flux._project import Project, database_url_from_env
from flux.store._embedded import EmbeddedServer, ServerInfo
from flux.store._pending import wait_for_records
from flux.store._queries import load


@dataclass(frozen=True)
class Target:
    """A database to connect to: its connection string and, if embedded, its server."""

    conninfo: str
    display: str
    embedded: EmbeddedServer | None = None
    server: ServerInfo | None = None
    started: bool = False


def embedded_server(project: Project) -> EmbeddedServer:
    return EmbeddedServer(project.state_dir, port=project.database.port)


def resolve(project: Project, *, start: bool = True, create: bool = True) -> Target:
    """The database of ``project``: DATABASE_URL, or the embedded server (started if need be
    and ``start`` is true; its database created if missing and ``create`` is true)."""
    url = database_url_from_env()
    if url is not None:
        return Target(conninfo=url, display=redact_url(url))
    server = embedded_server(project)
    info: ServerInfo | None
    if start:
        info, started = server.start()
    else:
        info, started = server.running(), False
        if info is None:
            raise DatabaseError(
                "the embedded PostgreSQL is not running", hint="start it with `flux db start`"
            )
    if create or started:
        ensure_database(info.conninfo("postgres"), project.database.name)
    return Target(conninfo=info.conninfo(project.database.name),
                  display=info.url(project.database.name), embedded=server, server=info,
                  started=started)


def connect(conninfo: str, *, autocommit: bool = False, **kwargs: object) -> psycopg.Connection:
    """Open a connection, turning every way it can fail into one sentence."""
    try:
        return psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=10,
                               **kwargs)  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise DatabaseError(
            f"cannot connect to PostgreSQL at {redact_url(conninfo)}: {first_line(exc)}",
            hint="check that the server is up and DATABASE_URL is right",
        ) from exc
    except psycopg.ProgrammingError as exc:
        raise DatabaseError(f"invalid database address {redact_url(conninfo)!r}: "
                            f"{first_line(exc)}") from exc


def ensure_database(admin_conninfo: str, name: str) -> None:
    """Create database ``name`` on the embedded server if it does not exist yet."""
    with connect(admin_conninfo, autocommit=True) as conn:
        exists = conn.execute(load("database").database_exists, {"name": name}).fetchone()
        if not exists:
            # Another process may create it between our check and ours: that is fine.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL(load("database").create_database).format(
                    name=sql.Identifier(name)))


def redact_url(url: str) -> str:
    """The address without its password, for messages and logs."""
    url = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", url)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__


def db_error(exc: psycopg.Error) -> dict[str, Any]:
    """The facts of a database error that `flux why` classifies by."""
    diag = exc.diag
    return {
        "type": type(exc).__name__,
        "sqlstate": exc.sqlstate,
        "message": (diag.message_primary or str(exc)).strip(),
        "detail": diag.message_detail,
        "constraint": diag.constraint_name,
        "table": diag.table_name,
        "column": diag.column_name,
        "schema": diag.schema_name,
    }


@contextlib.contextmanager
def read_only(conninfo: str, display: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection in a read-only session: whoever reads through it (the inspect
    commands, the admin API) can never write. A missing or old flux schema is one sentence."""
    with connect(conninfo, autocommit=True) as conn:
        conn.execute(load("database").read_only)
        try:
            # With WAL capture the latest records may still be in the WAL: wait for them.
            wait_for_records(conn)
            yield conn
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as exc:
            where = display or redact_url(conninfo)
            raise DatabaseError(f"the flux schema is missing or old in {where}",
                                hint="run `flux db migrate`") from exc


@contextlib.contextmanager
def reader(project: Project) -> Iterator[psycopg.Connection[Any]]:
    """The connection the inspect commands read through: the project's database (started if
    embedded), opened once per command, read-only."""
    target = resolve(project, start=True, create=False)  # a reader creates nothing
    with read_only(target.conninfo, target.display) as conn:
        yield conn
