"""Applying the numbered migrations in ``sql/`` to a database.

Each file ``NNNN_name.sql`` is applied in its own transaction and recorded in
``flux.migrations`` with a checksum. A session-level advisory lock serialises concurrent
``flux db migrate`` runs, so two processes starting at once leave one correct schema.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from flux._errors import MigrationError
from flux.store import _native as native
from flux.store._database import connect, first_line
from flux.store._queries import load, sql_dir

# pg_advisory_lock key: the first 8 bytes of sha256("flux.migrate"), as a signed bigint.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"flux.migrate").digest()[:8], "big", signed=True)
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations(directory: Path | None = None) -> list[Migration]:
    """All migrations in order. A file whose name breaks the pattern is an error, not a skip."""
    found = []
    for path in sorted((directory or sql_dir()).glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(f"{path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


def migrate(conninfo: str, directory: Path | None = None) -> list[Migration]:
    """Bring the ``flux`` schema up to date. Returns the migrations applied by this call."""
    wanted = migrations(directory)
    applied: list[Migration] = []
    with connect(conninfo, autocommit=True) as conn:
        q = load("migrate")
        if _up_to_date(conn, wanted):
            # Nothing to do, and nothing written: a role that may not create anything (a
            # flux_runtime member, sql/0010) starts against a schema its owner migrated.
            return applied
        conn.execute(q.lock, {"key": LOCK_KEY})
        try:
            with conn.transaction():
                conn.execute(q.bootstrap.encode())
            done = {row[0]: row[1] for row in conn.execute(q.applied)}
            newest = max((m.version for m in wanted), default=0)
            ahead = [v for v in done if v > newest]
            if ahead:
                raise MigrationError(
                    f"the database schema is at version {max(ahead)}, newer than this Flux "
                    f"knows ({newest})", hint="upgrade Flux")
            for migration in wanted:
                if migration.version in done:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.text.encode())
                        conn.execute(q.record, {"version": migration.version,
                                                "name": migration.name,
                                                "checksum": migration.checksum})
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {migration.path.name} failed: {first_line(exc)}") from exc
                applied.append(migration)
            if applied:
                # The capture trigger in C where this server can load it (sql/0022).
                native.install(conn)
                # WAL capture's writer-side functions likewise (sql/0025).
                native.install_wal(conn)
        finally:
            conn.execute(q.unlock, {"key": LOCK_KEY})
    return applied


def _up_to_date(conn: psycopg.Connection, wanted: list[Migration]) -> bool:
    q = load("migrate")
    row = conn.execute(q.schema_exists).fetchone()
    if not row or not row[0]:
        return False
    done = {version for version, _ in conn.execute(q.applied)}
    return done == {m.version for m in wanted}


def applied_versions(conninfo: str) -> list[int]:
    """Versions recorded in flux.migrations, or [] when the schema does not exist yet."""
    with connect(conninfo, autocommit=True) as conn:
        q = load("migrate")
        row = conn.execute(q.schema_exists).fetchone()
        if not row or not row[0]:
            return []
        return [version for version, _ in conn.execute(q.applied)]
