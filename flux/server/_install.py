"""``flux install``: Flux on an existing PostgreSQL (the one ``DATABASE_URL`` names), beside
the application's own tables and rows.

:func:`survey` only reads: what the server is, which of Flux's pieces are there — the
``flux`` schema (sql/ migrations), the roles ``flux_runtime`` and ``flux_reader``, the
runtime's rights on each application schema, capture on every existing table, the event
trigger that gives new tables capture — and what the role connected may not do. The result
is the plan ``flux install`` shows before it asks, and what ``flux install --check``
reports. :func:`install` carries out the steps not done yet, each one idempotent, so a
second run finds nothing to do and changes nothing.

The application's data is never touched: capture adds triggers (or, for WAL capture,
``REPLICA IDENTITY FULL`` and a publication) and records nothing until rows change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from flux._errors import ConfigError, DatabaseError, FluxError
from flux.capture._consumer import SLOT, mode
from flux.capture._mode import ensure_mode
from flux.store._database import connect, first_line, redact_url
from flux.store._migrate import applied_versions, migrate, migrations
from flux.store._queries import load
from flux.store._retention import maintain

MIN_VERSION = 140000  # SQL-standard function bodies (sql/0004) came in PostgreSQL 14


@dataclass(frozen=True)
class Step:
    """One piece of Flux on the database: in place, to do, or impossible for this role."""

    key: str  # schema, roles, grants:<schema>, capture, new_tables
    what: str  # what doing it means, in one line
    done: bool
    blocked: str | None = None  # why the role connected cannot do it
    required: bool = True  # new_tables is a convenience: serve installs capture at start

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "what": self.what, "done": self.done,
                "blocked": self.blocked, "required": self.required}


@dataclass(frozen=True)
class Survey:
    """What an existing database has of Flux, and what the application must change."""

    url: str
    version: str
    database: str
    role: str
    superuser: bool
    capture: str
    tables: list[dict[str, Any]]
    steps: list[Step]
    changes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """Everything ``flux serve`` needs is in place."""
        return all(s.done for s in self.steps if s.required)

    @property
    def todo(self) -> list[Step]:
        return [s for s in self.steps if not s.done and s.blocked is None]

    @property
    def blocked(self) -> list[Step]:
        return [s for s in self.steps if not s.done and s.blocked is not None]

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "version": self.version, "database": self.database,
                "role": self.role, "superuser": self.superuser, "capture": self.capture,
                "ready": self.ready, "tables": self.tables,
                "steps": [s.to_json() for s in self.steps], "changes": self.changes}


def survey(conninfo: str, *, capture: str = "trigger", has_project: bool = True) -> Survey:
    """What is there and what is missing; reads only."""
    with connect(conninfo, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        q = load("install")
        server = cur.execute(q.server).fetchone()
        assert server is not None
        if server["version_num"] < MIN_VERSION:
            raise DatabaseError(f"Flux needs PostgreSQL 14 or newer; this server is "
                                f"{server['version']}")
        tables = [dict(t) for t in cur.execute(q.tables).fetchall()]
        roles = {r["rolname"] for r in cur.execute(q.roles).fetchall()}
        schemas = sorted({t["schema"] for t in tables} | {"public"})
        grants = {g["schema"]: g["granted"] for g in cur.execute(
            q.schema_grants, {"schemas": schemas}).fetchall()} if len(roles) == 2 else {}
        row = cur.execute(q.event_trigger).fetchone()
        event_trigger = bool(row and next(iter(row.values())))
        mode, slot = _capture_state(conn) if server["has_migrations"] else ("trigger", False)
    wanted = migrations()
    applied = set(applied_versions(conninfo)) if server["has_migrations"] else set()
    pending = [m for m in wanted if m.version not in applied]
    role, superuser = server["role"], bool(server["superuser"])
    steps: list[Step] = []

    if pending:
        first, last = pending[0].path.name, pending[-1].path.name
        span = first if first == last else f"{first} … {last}"
        may = superuser or server["may_create_schema"] or server["has_flux_schema"]
        steps.append(Step("schema", (f"create the flux schema: {len(pending)} migrations ({span})"
                                     if not applied else
                                     f"apply {len(pending)} pending migration(s) ({span})"),
                          False, None if may else
                          f"{role} may not create a schema in {server['database']} (GRANT "
                          f"CREATE ON DATABASE {server['database']} TO {role}, or run as "
                          "its owner)"))
    else:
        steps.append(Step("schema", f"the flux schema, {len(wanted)} migrations", True))

    missing = sorted({"flux_runtime", "flux_reader"} - roles)
    may_roles = superuser or bool(server["createrole"])
    steps.append(Step("roles", "the roles flux_runtime (what flux serve connects as) and "
                      "flux_reader (reads the record)" if not missing else
                      f"create the role(s) {', '.join(missing)}", not missing,
                      None if not missing or may_roles else
                      f"{role} may not create roles (it needs CREATEROLE)"))

    for schema in schemas:
        in_schema = [t for t in tables if t["schema"] == schema]
        if schema == "public" and not in_schema and grants.get(schema, False):
            continue
        done = bool(grants.get(schema, False))
        what = (f"flux_runtime reads and writes schema {schema} ({len(in_schema)} table(s))"
                if done else f"open schema {schema} to flux_runtime: its {len(in_schema)} "
                "table(s) and sequences, now and later")
        steps.append(Step(f"grants:{schema}", what, done))

    names = [f"{t['schema']}.{t['name']}" for t in tables]
    if capture == "wal":
        done = mode == "wal" and slot
        steps.append(Step("capture", f"WAL capture of {len(tables)} table(s): REPLICA IDENTITY "
                          "FULL, a publication and a logical slot", bool(done),
                          None if done or server["wal_level"] == "logical" else
                          f"wal_level is {server['wal_level']}: set wal_level = logical in "
                          "postgresql.conf and restart the server"))
    else:
        uncaptured = [f"{t['schema']}.{t['name']}" for t in tables if not t["captured"]]
        refused = [f"{t['schema']}.{t['name']}" for t in tables
                   if not t["captured"] and not t["may_capture"]]
        what = (f"install capture on {len(uncaptured)} table(s): {_names(uncaptured)}"
                if uncaptured else f"capture on every table ({_names(names) or 'none yet'})")
        steps.append(Step("capture", what, not uncaptured and mode == "trigger",
                          f"{role} may not add triggers to {_names(refused)} (run as their "
                          "owner)" if refused else None))
        steps.append(Step("new_tables", "tables created later get capture at once (an event "
                          "trigger)" if event_trigger else "give tables created later capture "
                          "at once (an event trigger)", event_trigger,
                          None if event_trigger or superuser else
                          "event triggers need a superuser: new tables get capture when flux "
                          "serve next starts", required=False))

    return Survey(url=redact_url(conninfo), version=server["version"],
                  database=server["database"], role=role, superuser=superuser,
                  capture=capture, tables=tables, steps=steps,
                  changes=_changes(tables, role, superuser, capture, has_project))


def install(conninfo: str, *, capture: str = "trigger", has_project: bool = True,
            on_step: Callable[[Step], None] = lambda step: None) -> tuple[Survey, list[str]]:
    """Do every step not done yet; returns the survey after, and the keys of the steps done
    now (none on a second run)."""
    before = survey(conninfo, capture=capture, has_project=has_project)
    if before.blocked and any(s.required for s in before.blocked):
        first = next(s for s in before.blocked if s.required)
        raise FluxError(f"cannot install Flux as {before.role}: {first.blocked}",
                        hint="`flux install --check` lists everything missing")
    done: list[str] = []
    q = load("install")
    for key in [s.key for s in before.todo]:
        # Read again before each step: an earlier one may have done it (the migrations make
        # the roles, their grants and the event trigger when they may).
        current = before if not done else survey(conninfo, capture=capture,
                                                 has_project=has_project)
        step = next((s for s in current.todo if s.key == key), None)
        if step is None:
            continue
        try:
            if step.key == "schema":
                migrate(conninfo)
                maintain(conninfo)
            elif step.key == "roles":
                with connect(conninfo, autocommit=True) as conn:
                    conn.execute(q.create_roles)
            elif step.key.startswith("grants:"):
                with connect(conninfo, autocommit=True) as conn:
                    conn.execute(q.grant_app_schema, {"schema": step.key.split(":", 1)[1]})
            elif step.key == "capture":
                ensure_mode(conninfo, capture)
                if capture == "trigger":
                    with connect(conninfo, autocommit=True) as conn:
                        conn.execute(load("schema").install_capture_all)
            elif step.key == "new_tables":
                with connect(conninfo, autocommit=True) as conn:
                    if not _has_event_trigger(conn):  # the migrations may have made it
                        conn.execute(q.create_event_trigger)
        except psycopg.Error as exc:
            raise DatabaseError(f"flux install could not {step.what}: {first_line(exc)}",
                                hint="what was done before it stays; run flux install "
                                     "again once this is fixed") from exc
        done.append(step.key)
        on_step(step)
    return survey(conninfo, capture=capture, has_project=has_project), done


def _has_event_trigger(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(load("install").event_trigger).fetchone()
    return bool(row and row[0])


def _capture_state(conn: psycopg.Connection[Any]) -> tuple[str, bool]:
    slot = conn.execute(load("capture").slot, {"slot": SLOT}).fetchone()
    return mode(conn), slot is not None


def _names(names: list[str], most: int = 6) -> str:
    shown = ", ".join(n.removeprefix("public.") for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _changes(tables: list[dict[str, Any]], role: str, superuser: bool, capture: str,
             has_project: bool) -> list[str]:
    """What the application must change to run under Flux, for this database."""
    changes = []
    if not has_project:
        changes.append("Make it a Flux project: `flux init NAME` (or a flux.toml at its "
                       "root), then move each endpoint into functions/ as an @function "
                       "handler: the request body becomes `input`, the response is what it "
                       "returns, and its queries go through ctx.db (same SQL, same tables).")
    changes.append("Reach the outside through ctx: ctx.http (or httpx/requests, captured as "
                   "is), ctx.now(), ctx.uuid(), ctx.random(), ctx.secrets.get(): `flux check` "
                   "lists the lines that read the clock, randomness or the environment "
                   "behind its back.")
    who = f"{role} is a superuser: fine to try, too broad to serve with" if superuser else \
        f"or keep {role}"
    changes.append("Run `flux serve` with DATABASE_URL naming a login role granted "
                   "flux_runtime: CREATE ROLE app_flux LOGIN PASSWORD '…' IN ROLE "
                   f"flux_runtime ({who}).")
    keyless = [f"{t['schema']}.{t['name']}" for t in tables if not t["has_pk"]]
    if keyless:
        changes.append(f"Give {_names(keyless)} a primary key: without one a row has no "
                       "identity, so `flux state history`/`blame` cannot follow it (its "
                       "changes are still recorded).")
    changes.append("Writers that stay outside Flux (the current app, scripts, psql) keep "
                   "working; their changes are recorded too, attributed to their role and "
                   "application_name — set application_name in their connection strings "
                   "to tell them apart.")
    if capture == "wal":
        changes.append("WAL capture streams a logical slot: the role in DATABASE_URL needs "
                       "REPLICATION (or superuser) and the server a free walsender.")
    return changes


def require_url(url: str | None) -> str:
    """The database to install on: DATABASE_URL, which flux dev's embedded server lacks."""
    if not url:
        raise ConfigError("flux install puts Flux on an existing PostgreSQL: set "
                          "DATABASE_URL to it (or pass --database-url)",
                          hint="flux dev's embedded PostgreSQL needs no install")
    return url
