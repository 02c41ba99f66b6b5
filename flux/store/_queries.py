"""Named SQL queries, kept in ``sql/queries/<group>.sql`` so that all SQL lives in ``sql/``.

A file holds several queries, each introduced by a ``-- name: <name>`` line::

    -- name: applied
    SELECT version, checksum FROM flux.migrations;

``load("migrate").applied`` is that text. Names are checked when the file is first read, so a
typo in a query name fails loudly at import, not in the middle of a request.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from flux._errors import FluxError

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class Queries:
    """The queries of one file, as attributes."""

    def __init__(self, group: str, queries: dict[str, str]) -> None:
        self._group = group
        self._queries = queries

    def __getattr__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"no query {name!r} in sql/queries/{self._group}.sql") from None

    def names(self) -> list[str]:
        return list(self._queries)


def parse(text: str) -> dict[str, str]:
    """Split a queries file into {name: sql}."""
    parts = _NAME.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise FluxError(f"query {name!r} is defined twice")
        found[name] = body.strip().rstrip(";").strip()
    return found


def sql_dir() -> Path:
    """``sql/`` of the source tree, or its copy inside an installed wheel."""
    here = Path(__file__).resolve().parent.parent  # flux/
    for candidate in (here / "_sql", here.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise FluxError("the flux SQL files are missing from this installation")


@functools.cache
def load(group: str) -> Queries:
    path: Path = sql_dir() / "queries" / f"{group}.sql"
    return Queries(group, parse(path.read_text(encoding="utf-8")))
