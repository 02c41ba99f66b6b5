"""``flux state history`` and ``flux state blame``: the views, for one row or one table.

Table names from the command line go through ``to_regclass`` as parameters and key values
through ``flux.pk_of`` (which types them like the key columns), so nothing typed on the
command line is ever spliced into SQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from flux._errors import ConfigError, NotFound
from flux._jsoncodec import plain
from flux.store._queries import load


@dataclass(frozen=True)
class Table:
    name: str
    oid: int
    pk: list[str]


def find_table(conn: psycopg.Connection[Any], name: str) -> Table:
    try:
        row = conn.execute(load("inspect").table_info, {"table": name}).fetchone()
    except (psycopg.errors.InvalidName, psycopg.errors.SyntaxError,
            psycopg.errors.FeatureNotSupported, psycopg.DataError) as exc:
        # to_regclass answers NULL for most malformed names; a few (a.b.c.d, a NUL, a
        # name in another database) it refuses outright
        raise NotFound(f"{name!r} is not a valid table name") from exc
    if row is None:
        raise NotFound(f"no table named {name!r}", hint="tables are named like users or "
                       "schema.users")
    return Table(name=row[0], oid=int(row[1]), pk=list(row[2]))


def parse_key(table: Table, raw: str) -> list[str]:
    """Key values in key order from ``42``, ``a=1,b=2`` or ``{"a": 1, "b": 2}``."""
    raw = raw.strip()
    if not table.pk:
        raise ConfigError(f"table {table.name} has no primary key, so rows cannot be named "
                          "by --id")
    if raw.startswith("{"):
        try:
            given = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"--id is not valid JSON: {exc}") from exc
        if not isinstance(given, dict):
            raise ConfigError("--id as JSON must be an object of key columns")
        pairs = {str(k): "" if v is None else str(v) for k, v in given.items()}
    elif "=" in raw:
        pairs = {}
        for part in raw.split(","):
            column, _, value = part.partition("=")
            pairs[column.strip()] = value.strip()
    elif len(table.pk) == 1:
        return [raw]
    else:
        raise ConfigError(f"{table.name} has a composite key ({', '.join(table.pk)}): give "
                          f"--id {','.join(f'{c}=…' for c in table.pk)}")
    missing = [c for c in table.pk if c not in pairs]
    extra = [c for c in pairs if c not in table.pk]
    if missing or extra:
        raise ConfigError(f"the key of {table.name} is ({', '.join(table.pk)}); --id "
                          + (f"lacks {', '.join(missing)}" if missing else
                             f"names {', '.join(extra)}, which is not part of it"))
    return [pairs[c] for c in table.pk]


def _record_id(conn: psycopg.Connection[Any], table: Table, key: list[str]) -> str:
    try:
        row = conn.execute(load("inspect").record_id_of,
                           {"oid": table.oid, "vals": key}).fetchone()
    except psycopg.errors.DataError as exc:
        raise ConfigError(f"--id does not fit the key of {table.name}: "
                          f"{exc.diag.message_primary}") from exc
    assert row is not None
    return str(row[0])


def history(conn: psycopg.Connection[Any], table_name: str, key_text: str) -> dict[str, Any]:
    """Every change of one row, oldest first, rolled-back attempts included and marked."""
    table = find_table(conn, table_name)
    key = parse_key(table, key_text)
    record_id = _record_id(conn, table, key)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(load("inspect").history, {"record_id": record_id}).fetchall()
    return {
        "table": table.name, "pk": dict(zip(table.pk, key, strict=True)),
        "record_id": record_id,
        "rows": [plain({
            "at": r["at"], "request_id": r["request_id"], "op": r["op"],
            "changes": r["changes"], "rolled_back": r["rolled_back"], "actor": r["actor"],
            "function": r["function"], "code_sha": r["code_sha"], "file": r["file"],
            "line": r["line"], "source": r["source"],
        }) for r in rows],
    }


def _column(r: dict[str, Any]) -> dict[str, Any]:
    return plain({"value": r["value"], "request_id": r["request_id"], "function": r["function"],
                  "code_sha": r["code_sha"], "file": r["file"], "line": r["line"],
                  "at": r["at"], "op": r["op"], "actor": r["actor"]})


def blame(conn: psycopg.Connection[Any], table_name: str, key_text: str | None, *,
          limit: int = 50) -> dict[str, Any]:
    """Who wrote each column's current value: of one row, or of up to ``limit`` rows."""
    table = find_table(conn, table_name)
    q = load("inspect")
    with conn.cursor(row_factory=dict_row) as cur:
        if key_text is not None:
            key = parse_key(table, key_text)
            record_id = _record_id(conn, table, key)
            rows = cur.execute(q.blame_row, {"record_id": record_id}).fetchall()
            return {"table": table.name, "pk": dict(zip(table.pk, key, strict=True)),
                    "record_id": record_id,
                    "columns": {r["column_name"]: _column(r) for r in rows}}
        rows = cur.execute(q.blame_table, {"oid": table.oid, "limit": limit}).fetchall()
    grouped: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = grouped.setdefault(r["record_id"], {"pk": r["pk"], "columns": {}})
        entry["columns"][r["column_name"]] = _column(r)
    return {"table": table.name, "rows": list(grouped.values())}
