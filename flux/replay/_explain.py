"""``flux explain``: what a function (or one statement) would do to the database, without
doing it.

A function runs for real — same code, same ctx — in a transaction that is always rolled
back, with outbound HTTP answered by a stub and never sent, and no record stored. Each
statement it issues is then shown prettified (pglast), with its fingerprint, the tables it
reads and writes, PostgreSQL's plan (``EXPLAIN``, never ``ANALYZE``), the row-level
security policies on those tables, and the ``[policy]`` rules of flux.toml. A statement that
breaks a rule is reported and not executed.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pglast import prettify
from pglast.parser import ParseError

from flux._errors import ConfigError, FluxError, NotFound
from flux._ids import new_request_id
from flux._project import Project
from flux.runtime._ctx_http import suppressed_response
from flux.runtime._execution import Served
from flux.runtime._executor import Invocation, execute
from flux.runtime._recorder import CallSite, Span
from flux.runtime._runtime import Runtime
from flux.store._queries import load
from flux.store._statement import sql_info, tables_read_written, to_dollar_params


class PolicyViolation(FluxError):
    code = "policy"


@dataclass(frozen=True)
class Policy:
    """``[policy.<function>]`` (and ``[policy."*"]`` for every function) in flux.toml:
    ``writes`` — the tables the function may write; ``deny_writes`` — tables no one may."""

    writes: frozenset[str] | None = None
    deny_writes: frozenset[str] = frozenset()

    def violation(self, written: list[str]) -> str | None:
        for table in written:
            bare = table.split(".")[-1]
            if table in self.deny_writes or bare in self.deny_writes:
                return f"writes {table}, which [policy] denies to every function"
            if self.writes is not None and table not in self.writes and \
                    bare not in self.writes:
                allowed = ", ".join(sorted(self.writes)) or "nothing"
                return f"writes {table}, but [policy] lets it write only {allowed}"
        return None


def policy_for(project: Project, function: str | None) -> Policy:
    table = project.raw.get("policy", {})
    if not isinstance(table, dict):
        raise ConfigError("[policy] in flux.toml must be a table")
    every = table.get("*", {})
    own = table.get(function, {}) if function else {}

    def names(value: Any, option: str) -> frozenset[str]:
        if value is None:
            return frozenset()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[policy] {option} must be a list of table names")
        return frozenset(value)

    writes = own.get("writes", every.get("writes"))
    return Policy(writes=None if writes is None else names(writes, "writes"),
                  deny_writes=names(every.get("deny_writes"), "deny_writes")
                  | names(own.get("deny_writes"), "deny_writes"))


@dataclass
class _Capture:
    """The replay source of a dry run: lets statements run (inside the always-rolled-back
    transaction) after checking them against the policy, and stubs every HTTP call."""

    policy: Policy
    stubs: dict[str, Any]
    statements: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # HTTP calls, stubbed

    async def db(self, mode: str, query: str, params: Any, span: Span, site: CallSite
                 ) -> Served | None:
        reads, writes = tables_read_written(query)
        entry = {"sql": query, "params": params, "file": site.file, "line": site.line,
                 "reads": reads, "writes": writes}
        self.statements.append(entry)
        problem = self.policy.violation(writes)
        if problem:
            entry["violation"] = problem
            raise PolicyViolation(f"{query.split()[0].upper()} at {site.file}:{site.line} "
                                  f"{problem}")
        return None

    async def http(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                   span: Span, site: CallSite) -> Served | None:
        response, stubbed = suppressed_response(self.stubs, url)
        self.calls.append({"method": method, "url": url, "file": site.file, "line": site.line,
                          "answered": response.status, "stub": stubbed})
        return Served(response)

    def value(self, kind: str, key: str, site: CallSite) -> Served | None:
        return None


def analyze(conn: psycopg.Connection[Any], query: str, params: Any = None,
            policy: Policy | None = None) -> dict[str, Any]:
    """The facts of one statement: prettified SQL, fingerprint, tables, plan, policies."""
    info = sql_info(query)
    reads, writes = tables_read_written(query)
    try:
        pretty = prettify(to_dollar_params(query), comma_at_eoln=True)
    except ParseError:
        pretty = query
    plan, plan_error = _plan(conn, query, params)
    return {
        "sql": pretty, "fingerprint": info.fingerprint, "verb": info.verb,
        "reads": reads, "writes": writes, "plan": plan, "plan_error": plan_error,
        "rls": _rls(conn, [*reads, *writes]),
        "violation": (policy or Policy()).violation(writes),
    }


def _plan(conn: psycopg.Connection[Any], query: str, params: Any) -> tuple[list[str], str | None]:
    """EXPLAIN (never ANALYZE: nothing runs) in a transaction that is rolled back; without
    parameter values, a generic plan."""
    generic = params is None and to_dollar_params(query) != query
    text = to_dollar_params(query) if generic else query
    prefix = "EXPLAIN (GENERIC_PLAN) " if generic else "EXPLAIN "
    try:
        with conn.transaction(force_rollback=True):
            rows = conn.execute((prefix + text).encode(), None if generic else params)
            return [r[0] for r in rows.fetchall()], None
    except psycopg.Error as exc:
        return [], (exc.diag.message_primary or str(exc)).strip()


def _rls(conn: psycopg.Connection[Any], tables: list[str]) -> list[dict[str, Any]]:
    found = []
    for table in dict.fromkeys(tables):
        rows = conn.execute(load("explain").policies, {"table": table}).fetchall()
        for enabled, name, command, roles, using, check in rows:
            found.append({"table": table, "rls_enabled": enabled, "policy": name,
                          "command": command, "roles": roles, "using": using,
                          "with_check": check})
    return found


def explain_sql(conn: psycopg.Connection[Any], project: Project, query: str) -> dict[str, Any]:
    """``flux explain --sql``."""
    if not query.strip():
        raise ConfigError("--sql is empty")
    return {"function": None, "statements": [analyze(conn, query, None,
                                                     policy_for(project, None))],
            "http": []}


def explain_function(project: Project, conninfo: str, function: str, input_json: str
                     ) -> dict[str, Any]:
    """``flux explain FUNCTION --input JSON``: the dry run and the facts of each statement."""
    try:
        payload = json.loads(input_json)
    except ValueError as exc:
        raise ConfigError(f"--input is not valid JSON: {exc}") from exc
    return asyncio.run(_dry_run(project, conninfo, function, payload))


async def _dry_run(project: Project, conninfo: str, function: str, payload: Any
                   ) -> dict[str, Any]:
    runtime = Runtime(project, conninfo, pool_size=2, exports_spans=False)  # stores nothing
    await runtime.start()
    try:
        spec = runtime.registry.by_name.get(function)
        if spec is None:
            known = ", ".join(sorted(runtime.registry.by_name)) or "none"
            raise NotFound(f"no function named {function!r} (functions: {known})")
        policy = policy_for(project, function)
        capture = _Capture(policy=policy, stubs=project.replay_stubs)
        outcome = await execute(runtime, Invocation(
            request_id=str(new_request_id()), spec=spec, input=payload, kind="replay",
            route=spec.route, headers={"x-flux-dry-run": "true"}), replay=capture,
            persist=False)
    finally:
        await runtime.close()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        statements = []
        for entry in capture.statements:
            facts = analyze(conn, entry["sql"], entry["params"], policy)
            facts.update(file=entry["file"], line=entry["line"])
            if "violation" in entry:
                facts["violation"] = entry["violation"]
                facts["executed"] = False
            else:
                facts["executed"] = True
            statements.append(facts)
    return {"function": function, "input": payload,
            "outcome": {"status": outcome.status, "http_status": outcome.http_status,
                        "output": outcome.body, "error": outcome.error and {
                            k: outcome.error.get(k) for k in ("type", "message", "file",
                                                              "line")}},
            "statements": statements, "http": capture.calls, "rolled_back": True}
