"""The application's own schema: ``schema/*.sql`` applied in name order, each file once
(again when its content changes), and capture installed on the tables it creates."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import psycopg

from flux._errors import MigrationError
from flux.capture._mode import ensure_mode
from flux.store._database import connect, first_line
from flux.store._migrate import LOCK_KEY
from flux.store._queries import load


@dataclass(frozen=True)
class SchemaResult:
    applied: list[str]  # files applied (or re-applied) now
    captured: int  # tables that got capture now


def apply_schema(conninfo: str, schema_dir: Path, *, capture: str = "trigger") -> SchemaResult:
    """Apply new or changed files of ``schema_dir`` and install capture on user tables."""
    q = load("schema")
    applied: list[str] = []
    with connect(conninfo) as conn:
        with conn.transaction():
            conn.execute(q.lock, {"key": LOCK_KEY})
            done: dict[str, str] = dict(conn.execute(q.applied).fetchall())
        for path in sorted(schema_dir.glob("*.sql")) if schema_dir.is_dir() else []:
            text = path.read_text(encoding="utf-8")
            checksum = hashlib.sha256(text.encode()).hexdigest()
            if done.get(path.name) == checksum:
                continue
            try:
                with conn.transaction():
                    conn.execute(q.lock, {"key": LOCK_KEY})
                    # Read again under the lock: another process starting at the same
                    # time may have applied it since (flux serve processes sharing a
                    # database).
                    now: dict[str, str] = dict(conn.execute(q.applied).fetchall())
                    if now.get(path.name) == checksum:
                        continue
                    conn.execute(text.encode())
                    conn.execute(q.record, {"file": path.name, "checksum": checksum})
            except psycopg.Error as exc:
                raise MigrationError(
                    f"schema/{path.name}{_line(text, exc)} failed: {first_line(exc)}",
                    hint="fix the file and save it again; nothing of it was applied",
                ) from exc
            applied.append(path.name)
    # The mode of flux.toml, switched to cleanly if the database is in the other one
    # (flux/_capture.py), then capture on every table that lacks it.
    ensure_mode(conninfo, capture)
    with connect(conninfo) as conn, conn.transaction():
        conn.execute(q.lock, {"key": LOCK_KEY})
        row = conn.execute(q.install_capture_all).fetchone()
        captured = int(row[0]) if row else 0
    return SchemaResult(applied=applied, captured=captured)


def _line(text: str, exc: psycopg.Error) -> str:
    position = exc.diag.statement_position
    if not position:
        return ""
    return f" line {text[: int(position)].count(chr(10)) + 1}"
