"""Tenants and row-level security: the gateway takes the tenant from a header, every record,
mutation, job and failure signature carries it (trigger and WAL capture alike), and a
tenant's reader sees only its own rows — in the tables and through the views — whatever it
SETs; the runtime role writes everything and reads no schema it was not given; the owner is
held to the same policies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from flux._project import parse
from flux.capture._schema import apply_schema
from flux.jobs._worker import Worker
from flux.runtime._access import AdminAccess
from flux.runtime._runtime import Runtime
from flux.store._queries import load
from tests.access.conftest import serve_project, with_tenants
from tests.fixtures.processes import FluxProcess
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import SECRET, Shop, copy_project, serve_app

TENANT_TABLES = ("trace_requests", "state_mutations", "failure_signatures", "jobs")


@pytest.fixture(params=["trigger", "wal"])
def capture_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def tenant_shop(db: str, provider: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capture_mode: str) -> AsyncIterator[Shop]:
    monkeypatch.setenv("SHOP_PAYMENTS_API_KEY", SECRET)
    root = with_tenants(copy_project(tmp_path / "shop", provider.url))
    toml = root / "flux.toml"
    toml.write_text(toml.read_text().replace('capture = "trigger"',
                                             f'capture = "{capture_mode}"'))
    async with serve_app(root, db, provider) as app:
        yield app


async def traffic(shop: Shop) -> dict[str | None, list[str]]:
    """Signups of two tenants and of no tenant (each writes a user and queues a job), a
    duplicate that fails, and the queued jobs run; request ids by tenant."""
    ids: dict[str | None, list[str]] = {"acme": [], "globex": [], None: []}
    for tenant, email in [("acme", "a1@acme.test"), ("acme", "a2@acme.test"),
                          ("globex", "g1@globex.test"), (None, "n1@none.test"),
                          ("acme", "a1@acme.test")]:
        headers = {"x-tenant-id": tenant} if tenant else None
        status, _, rid = await shop.post("signup", {"email": email}, headers=headers)
        assert status == (500 if email == "a1@acme.test" and ids["acme"] else 200)
        ids[tenant].append(rid)
    assert await Worker(shop.runtime).drain() == 4
    return ids


def rows(conninfo: str, query: str, *, setup: str | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if setup:
            conn.execute(setup)
        return conn.execute(query).fetchall()


def tenants_seen(conninfo: str, *, setup: str | None = None) -> dict[str, set[str | None]]:
    seen = {table: {r[0] for r in rows(conninfo, f"SELECT tenant FROM flux.{table}",
                                       setup=setup)}
            for table in TENANT_TABLES}
    seen["state_history"] = {r[0] for r in rows(
        conninfo, "SELECT t.tenant FROM flux.state_history h "
                  "JOIN flux.trace_requests t USING (request_id)", setup=setup)}
    seen["history_rows"] = {str(len(rows(conninfo, "SELECT 1 FROM flux.state_history",
                                         setup=setup)))}
    seen["blame_rows"] = {str(len(rows(conninfo, "SELECT DISTINCT record_id FROM "
                                       "flux.state_blame", setup=setup)))}
    return seen


async def test_every_row_carries_its_tenant_in_both_capture_modes(tenant_shop: Shop) -> None:
    ids = await traffic(tenant_shop)
    with psycopg.connect(tenant_shop.db) as conn:
        records = dict(conn.execute(
            "SELECT request_id::text, tenant FROM flux.trace_requests").fetchall())
        jobs = conn.execute("SELECT tenant, count(*) FROM flux.jobs GROUP BY 1 "
                            "ORDER BY 1").fetchall()
        job_runs = conn.execute("SELECT tenant, count(*) FROM flux.trace_requests "
                                "WHERE kind = 'job' GROUP BY 1 ORDER BY 1").fetchall()
        mutations = conn.execute(
            "SELECT m.tenant, t.tenant FROM flux.state_mutations m "
            "JOIN flux.trace_requests t USING (request_id) WHERE m.table_name = 'users'"
        ).fetchall()
        signatures = conn.execute("SELECT tenant FROM flux.failure_signatures").fetchall()
    for tenant, request_ids in ids.items():
        assert all(records[rid] == tenant for rid in request_ids)
    # the job runs as the tenant whose execution queued it
    assert jobs == job_runs == [("acme", 2), ("globex", 1), (None, 1)]
    assert len(mutations) == 4 and all(m == t for m, t in mutations)
    assert signatures == [("acme",)]  # the duplicate signup


@pytest.mark.parametrize("capture_mode", ["trigger"])
async def test_a_bad_tenant_header_is_a_recorded_400(tenant_shop: Shop) -> None:
    for value in ["x" * 201]:
        status, body, rid = await tenant_shop.post("signup", {"email": "b@x.test"},
                                                   headers={"x-tenant-id": value})
        assert status == 400 and body["error"]["code"] == "invalid_tenant"
        assert tenant_shop.record(rid)["tenant"] is None


@pytest.mark.parametrize("capture_mode", ["trigger"])
async def test_a_tenant_reader_sees_only_its_tenant(tenant_shop: Shop,
                                                   login_role: Callable[..., tuple[str, str]]
                                                   ) -> None:
    await traffic(tenant_shop)
    db = tenant_shop.db
    acme, acme_db = login_role("acme_bi")
    globex, globex_db = login_role("globex_bi")
    _, ops_db = login_role("ops", "flux_reader")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT flux.grant_tenant(%s, 'acme')", [acme])
        conn.execute("SELECT flux.grant_tenant(%s, 'globex')", [globex])
        # one pinned execution of each tenant: a pin shows only with its execution
        conn.execute("INSERT INTO flux.pins (request_id, note) SELECT DISTINCT ON (tenant) "
                     "request_id, 'kept for ' || tenant FROM flux.trace_requests "
                     "WHERE tenant IS NOT NULL ORDER BY tenant, request_id")

    everything = tenants_seen(ops_db)  # a reader bound to no tenant: every row
    assert everything["trace_requests"] == {"acme", "globex", None}
    assert everything["history_rows"] == {"4"}

    for reader, tenant, users in ((acme_db, "acme", 2), (globex_db, "globex", 1)):
        seen = tenants_seen(reader)
        expected = {table: {tenant} for table in (*TENANT_TABLES, "state_history")}
        expected["failure_signatures"] = {tenant} if tenant == "acme" else set()
        assert {table: seen[table] for table in expected} == expected
        assert seen["history_rows"] == seen["blame_rows"] == {str(users)}
        # neither SET ROLE to the shared reader role nor SET flux.tenant widens it
        assert tenants_seen(reader, setup="SET ROLE flux_reader") == seen
        other = "globex" if tenant == "acme" else "acme"
        narrowed = tenants_seen(reader, setup=f"SET flux.tenant = '{other}'")
        assert all(v in ({"0"}, set()) for v in narrowed.values())
        # only its own binding and its own pins are visible
        assert rows(reader, "SELECT tenant FROM flux.tenant_roles") == [(tenant,)]
        assert rows(reader, "SELECT note FROM flux.pins") == [(f"kept for {tenant}",)]

    # the CLI reads through the same policies
    from tests.fixtures.projects import run_flux

    result = run_flux(["ls", "--json", "--limit", "100"], tenant_shop.root,
                      env={"DATABASE_URL": acme_db})
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)["executions"]
    assert len(listed) == 5  # 3 signups (one failed) and 2 jobs of acme


@pytest.mark.parametrize("capture_mode", ["trigger"])
async def test_flux_reader_reads_the_flux_schema_and_nothing_else(
        tenant_shop: Shop, login_role: Callable[..., tuple[str, str]]) -> None:
    await traffic(tenant_shop)
    _, ops_db = login_role("ops", "flux_reader")
    with psycopg.connect(tenant_shop.db) as conn:
        relations = [r[0] for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = "
            "'flux'::regnamespace AND c.relkind IN ('r', 'p', 'v') AND NOT c.relispartition"
        ).fetchall()]
        partitions = [r[0] for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = "
            "'flux'::regnamespace AND c.relkind = 'r' AND c.relispartition").fetchall()]
    assert "flux.state_blame" in relations and "flux.trace_requests" in relations
    assert "flux.trace_requests_default" in partitions
    with psycopg.connect(ops_db, autocommit=True) as conn:
        for relation in relations:
            conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(
                sql.Identifier(*relation.split("."))))
        # A partition read directly would skip its parent's row-level security.
        for relation in partitions:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(
                    sql.Identifier(*relation.split("."))))
        for statement in ("SELECT * FROM public.users",
                          "DELETE FROM flux.trace_requests",
                          "UPDATE flux.jobs SET status = 'dead'",
                          "INSERT INTO flux.settings VALUES ('x', 'y')",
                          "CREATE TABLE flux.mine (a int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


@pytest.mark.parametrize("capture_mode", ["trigger"])
async def test_the_runtime_role_writes_everything_and_reads_no_other_schema(
        tenant_shop: Shop, login_role: Callable[..., tuple[str, str]]) -> None:
    app, app_db = login_role("app", "flux_runtime")
    with psycopg.connect(tenant_shop.db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA vault")
        conn.execute("CREATE TABLE vault.keys (k text)")
        conn.execute("INSERT INTO vault.keys VALUES ('top secret')")
        facts = conn.execute(
            "SELECT r.rolsuper, r.rolbypassrls, (SELECT count(*) FROM pg_class c WHERE "
            "c.relowner = r.oid) FROM pg_roles r WHERE r.rolname = %s", [app]).fetchone()
    assert facts == (False, False, 0)  # no way around the policies, owns nothing

    # A runtime connected as that role serves the shop: records, mutations, jobs.
    project = parse(tenant_shop.root)
    apply_schema(tenant_shop.db, project.schema_dir, capture=project.capture)  # as owner
    runtime = Runtime(project, app_db, admin=AdminAccess())
    assert not await runtime.start()
    try:
        from flux.runtime._executor import Invocation, execute

        spec = runtime.registry.by_name["signup"]
        outcome = await execute(runtime, Invocation(
            request_id="01900000-0000-7000-8000-00000000abcd", spec=spec,
            input={"email": "rt@acme.test"}, tenant="acme"))
        assert outcome.status == "ok", outcome.error
        duplicate = await execute(runtime, Invocation(
            request_id="01900000-0000-7000-8000-00000000abce", spec=spec,
            input={"email": "rt@acme.test"}, tenant="acme"))
        assert duplicate.http_status == 500  # recorded with its signature, as the runtime
        assert await Worker(runtime).drain() == 1
    finally:
        await runtime.close()
    with psycopg.connect(tenant_shop.db) as conn:
        stored = conn.execute(
            "SELECT (SELECT count(*) FROM flux.trace_requests WHERE tenant = 'acme'), "
            "(SELECT count(*) FROM flux.state_mutations WHERE tenant = 'acme' AND actor = %s), "
            "(SELECT count(*) FROM flux.failure_signatures WHERE tenant = 'acme'), "
            "(SELECT count(*) FROM flux.jobs WHERE tenant = 'acme' AND status = 'done')",
            [app]).fetchone()
    assert stored == (3, 1, 1, 1)
    with psycopg.connect(app_db, autocommit=True) as conn:
        for statement in ("SELECT * FROM vault.keys", "DELETE FROM flux.trace_requests",
                          "DROP TABLE public.users", "SELECT * FROM pg_authid"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        # inside an execution of one tenant, the runtime sees only that tenant's records
        with conn.transaction():
            conn.execute("SELECT set_config('flux.tenant', 'globex', true)")
            assert conn.execute("SELECT count(*) FROM flux.trace_requests").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):  # nor writes another's
                conn.execute("INSERT INTO flux.trace_requests (request_id, status, started_at,"
                             " tenant) VALUES (gen_random_uuid(), 'ok', now(), 'acme')")


@pytest.mark.parametrize("capture_mode", ["trigger"])
async def test_the_owner_is_held_to_the_policies_and_views_run_as_the_reader(
        tenant_shop: Shop, login_role: Callable[..., tuple[str, str]]) -> None:
    await traffic(tenant_shop)
    owner, owner_db = login_role("owner")
    with psycopg.connect(tenant_shop.db, autocommit=True) as conn:
        # The flux schema's tables owned by a role that is not a superuser (as on a managed
        # server, where the role `flux serve` runs as created them).
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA flux TO {}").format(sql.Identifier(owner)))
        for (table,) in conn.execute("SELECT c.oid::regclass::text FROM pg_class c WHERE "
                                     "c.relnamespace = 'flux'::regnamespace AND c.relkind IN "
                                     "('r', 'p') AND NOT c.relispartition").fetchall():
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                sql.Identifier(*table.split(".")), sql.Identifier(owner)))
        forced = conn.execute(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant' "
            "WHERE c.relnamespace = 'flux'::regnamespace AND c.relkind IN ('r', 'p') "
            "AND NOT c.relispartition AND c.relname <> 'tenant_roles' "  # the bindings
            "ORDER BY 1").fetchall()
        invoker = conn.execute(
            "SELECT c.relname, coalesce('security_invoker=true' = ANY (c.reloptions), false) "
            "FROM pg_class c WHERE c.relnamespace = 'flux'::regnamespace AND c.relkind = 'v' "
            "ORDER BY 1").fetchall()
    assert forced == [(t, True, True) for t in sorted(TENANT_TABLES)]
    assert invoker and all(on for _, on in invoker), invoker
    # The owner (not a superuser) gets exactly what the policies say: all rows when it
    # narrows itself to no tenant, one tenant's when it does (as `flux serve` does in
    # every execution when it runs as the owner).
    assert rows(owner_db, "SELECT count(*) FROM flux.trace_requests") == [(9,)]
    assert rows(owner_db, "SELECT DISTINCT tenant FROM flux.trace_requests",
                setup="SET flux.tenant = 'globex'") == [("globex",)]


def test_flux_serve_runs_as_a_runtime_member_once_the_owner_has_migrated(
        db: str, provider: Any, tmp_path: Path, flux_process: type[FluxProcess],
        login_role: Callable[..., tuple[str, str]]) -> None:
    root = with_tenants(copy_project(tmp_path / "shop", provider.url))
    apply_schema(db, parse(root).schema_dir, capture="trigger")  # the owner's part
    _, app_db = login_role("app", "flux_runtime")
    server = serve_project(root, app_db, flux_process, token="t0ken")
    status, body, headers = server.call("/signup", method="POST",
                                        body={"email": "rt@acme.test"},
                                        headers={"x-tenant-id": "acme"})
    assert status == 200, body
    status, listed, _ = server.call("/_flux/executions", token="t0ken")
    assert status == 200 and [e["request_id"] for e in listed["executions"]] == \
        [headers["x-flux-request-id"]]
    assert "only the owner of the flux schema may make them" in server.process.output()
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT tenant, actor FROM flux.state_mutations").fetchall() == \
            [("acme", conninfo_to_dict(app_db)["user"])]


@pytest.mark.parametrize("capture_mode", ["trigger"])
async def test_revoking_or_renaming_never_widens_a_tenant_reader(
        tenant_shop: Shop, login_role: Callable[..., tuple[str, str]]) -> None:
    """Unbound means sees nothing: a revoked role does not become an every-tenant reader,
    and a binding follows the role through a rename (issue 20, item 1)."""
    await traffic(tenant_shop)
    db = tenant_shop.db
    acme, acme_db = login_role("acme_bi")
    globex, globex_db = login_role("globex_bi")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT flux.grant_tenant(%s, 'acme')", [acme])
        conn.execute("SELECT flux.grant_tenant(%s, 'globex')", [globex])
    assert tenants_seen(acme_db)["trace_requests"] == {"acme"}

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT flux.revoke_tenant(%s, 'acme')", [acme])
    revoked = tenants_seen(acme_db)
    assert all(v in (set(), {"0"}) for v in revoked.values()), revoked
    assert tenants_seen(acme_db, setup="SET ROLE flux_reader") == revoked

    renamed = f"{globex}_renamed"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(
            sql.Identifier(globex), sql.Identifier(renamed)))
    try:
        renamed_db = make_conninfo(globex_db, user=renamed)
        assert tenants_seen(renamed_db)["trace_requests"] == {"globex"}
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(
                sql.Identifier(renamed), sql.Identifier(globex)))
    with psycopg.connect(db, autocommit=True) as conn, \
            pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SELECT flux.grant_tenant('no_such_role_here', 'acme')")


@pytest.mark.parametrize("capture_mode", ["trigger"])
async def test_job_attempts_and_cron_ticks_follow_their_jobs_tenant(
        tenant_shop: Shop, login_role: Callable[..., tuple[str, str]]) -> None:
    """A tenant's reader sees its jobs' attempts and no other tenant's, nor the ticks of
    cron (which run for no tenant); its explain shows plans, never row counts (issue 20,
    item 13)."""
    await traffic(tenant_shop)
    with psycopg.connect(tenant_shop.db, autocommit=True) as conn:
        tick = conn.execute(load("jobs").insert_tick, {
            "function": "nightly", "tick_at": "2026-01-01T00:00:00+00:00",
            "job_id": "01900000-0000-7000-8000-0000000000aa", "payload": Jsonb({}),
            "max_attempts": 1}).fetchone()
    assert tick is not None
    acme, acme_db = login_role("acme_bi")
    _, ops_db = login_role("ops", "flux_reader")
    with psycopg.connect(tenant_shop.db, autocommit=True) as conn:
        conn.execute("SELECT flux.grant_tenant(%s, 'acme')", [acme])
    attempts = ("SELECT j.tenant FROM flux.job_attempts a "
                "LEFT JOIN flux.jobs j ON j.id = a.job_id ORDER BY 1")
    assert rows(ops_db, attempts) == [("acme",), ("acme",), ("globex",), (None,)]
    assert rows(ops_db, "SELECT count(*) FROM flux.cron_ticks") == [(1,)]
    assert rows(acme_db, attempts) == [("acme",), ("acme",)]
    assert rows(acme_db, "SELECT count(*) FROM flux.cron_ticks") == [(0,)]
    with psycopg.connect(tenant_shop.db) as conn:
        forced = conn.execute("SELECT relname FROM pg_class WHERE relname IN ('job_attempts', "
                              "'cron_ticks') AND relrowsecurity AND relforcerowsecurity "
                              "ORDER BY 1").fetchall()
    assert forced == [("cron_ticks",), ("job_attempts",)]

    for sql_text in ("SELECT * FROM flux.trace_requests",
                     "SELECT * FROM flux.job_attempts"):
        result = run_flux(["explain", "--sql", sql_text, "--json"], tenant_shop.root,
                          env={"DATABASE_URL": acme_db})
        assert result.returncode == 0, result.stderr
        plan = "\n".join(json.loads(result.stdout)["statements"][0]["plan"])
        assert "Scan" in plan and "actual" not in plan and "Rows Removed" not in plan
    analyze = run_flux(["explain", "--sql", "EXPLAIN ANALYZE SELECT * FROM "
                        "flux.trace_requests"], tenant_shop.root,
                       env={"DATABASE_URL": acme_db})
    assert analyze.returncode != 0 and "Traceback" not in analyze.stderr
