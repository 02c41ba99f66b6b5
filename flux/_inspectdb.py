"""The connection the inspect commands read through: the project's database (started if
embedded), opened once per command, read-only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

from flux._database import connect, resolve
from flux._errors import DatabaseError
from flux._project import Project
from flux._queries import load


@contextlib.contextmanager
def reader(project: Project) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection in a read-only session: an inspect command can never write."""
    target = resolve(project, start=True, create=False)  # a reader creates nothing
    with connect(target.conninfo, autocommit=True) as conn:
        conn.execute(load("database").read_only)
        try:
            yield conn
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as exc:
            raise DatabaseError(f"the flux schema is missing or old in {target.display}",
                                hint="run `flux db migrate`") from exc
