"""``flux install`` on a PostgreSQL that is not Flux's: a server started with initdb and
pg_ctl, an application table holding rows. --check changes nothing; install leaves it ready
for ``flux serve`` (as a login role granted flux_runtime: a request writes a row and its
record and change exist); a second run changes nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests.fixtures.standalone import Standalone

REPO = Path(__file__).resolve().parents[2]
FUNCTION = '''\
from flux import function


@function
async def add_customer(ctx, input):
    return await ctx.db.fetchone(
        "INSERT INTO customers (email, plan) VALUES (%s, 'free') RETURNING id, email",
        [input["email"]])
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _existing_app(server: Standalone) -> str:
    """The application's database as it was before Flux: one table, three customers, and a
    log table without a primary key."""
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE shop")
    with psycopg.connect(server.url("shop"), autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id bigserial PRIMARY KEY, "
                     "email text UNIQUE NOT NULL, plan text NOT NULL)")
        conn.execute("INSERT INTO customers (email, plan) VALUES ('a@example.com', 'pro'), "
                     "('b@example.com', 'free'), ('c@example.com', 'free')")
        conn.execute("CREATE TABLE audit_log (at timestamptz DEFAULT now(), line text)")
    return server.url("shop")


def _snapshot(url: str) -> dict[str, Any]:
    """Everything flux install may change, as data."""
    with psycopg.connect(url) as conn:
        def rows(query: str) -> list[tuple[Any, ...]]:
            return conn.execute(query).fetchall()

        return {
            "flux_schema": rows("SELECT to_regnamespace('flux') IS NOT NULL"),
            "migrations": rows("SELECT version, checksum FROM flux.migrations ORDER BY 1")
            if rows("SELECT to_regclass('flux.migrations') IS NOT NULL")[0][0] else [],
            "triggers": rows("SELECT tgrelid::regclass::text, tgname, tgfoid::regproc::text "
                             "FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2"),
            "roles": rows("SELECT rolname, rolcanlogin FROM pg_roles "
                          "WHERE rolname LIKE 'flux%' ORDER BY 1"),
            "acl": rows("SELECT c.oid::regclass::text, c.relacl::text FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname IN ('public', 'flux') ORDER BY 1"),
            "event_triggers": rows("SELECT evtname FROM pg_event_trigger ORDER BY 1"),
            "objects": rows("SELECT count(*) FROM pg_class c JOIN pg_namespace n "
                            "ON n.oid = c.relnamespace WHERE n.nspname = 'flux'"),
            "customers": rows("SELECT id, email, plan FROM customers ORDER BY id"),
        }


def test_install_on_an_existing_server_is_ready_for_serve_and_idempotent(
        standalone_pg: Standalone, make_project: Callable[..., Path],
        flux_cli: Callable[..., subprocess.CompletedProcess[str]],
        flux_process: Any) -> None:
    url = _existing_app(standalone_pg)
    project = make_project('name = "shopapp"\ncapture = "trigger"\n')
    (project / "functions").mkdir()
    (project / "functions" / "add_customer.py").write_text(FUNCTION)
    env = {"DATABASE_URL": url}
    untouched = _snapshot(url)

    check = flux_cli(["install", "--check", "--json"], project, env=env)
    assert check.returncode == 1, check.stderr
    report = json.loads(check.stdout)
    assert report["ready"] is False
    assert {s["key"] for s in report["steps"] if not s["done"]} >= {
        "schema", "roles", "grants:public", "capture"}
    assert {t["name"]: t["has_pk"] for t in report["tables"]} == {
        "customers": True, "audit_log": False}
    assert any("audit_log a primary key" in change for change in report["changes"])
    human = flux_cli(["install", "--check"], project, env=env)
    assert human.returncode == 1 and "create the flux schema" in human.stdout
    asked = flux_cli(["install"], project, env=env)  # no terminal to ask in, no --yes
    assert asked.returncode != 0 and "--yes" in asked.stderr
    assert "Traceback" not in asked.stderr
    assert _snapshot(url) == untouched  # neither --check nor a refusal changed anything

    first = flux_cli(["install", "--yes", "--json"], project, env=env)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["ready"] is True and "schema" in result["applied"]
    assert all(s["done"] for s in result["steps"])
    installed = _snapshot(url)
    assert installed["customers"] == untouched["customers"]  # the app's rows as they were
    assert len(installed["migrations"]) == len(list((REPO / "sql").glob("*.sql")))
    captured = {table for table, name, _ in installed["triggers"]
                if name == "flux_capture_ins_del"}
    assert captured == {"customers", "audit_log"}
    assert {r[0] for r in installed["roles"]} == {"flux_reader", "flux_runtime"}

    again = flux_cli(["install", "--yes", "--json"], project, env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["applied"] == []
    assert _snapshot(url) == installed
    said = flux_cli(["install", "--check"], project, env=env)
    assert said.returncode == 0 and "nothing to do" in said.stdout

    # flux serve, connected as what install told the application to use: a login role
    # granted flux_runtime.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE ROLE shop_flux LOGIN PASSWORD 'shop-flux-pw' IN ROLE flux_runtime")
    port = _free_port()
    serve_url = standalone_pg.url("shop", user="shop_flux", password="shop-flux-pw")
    server = flux_process(["serve", "--port", str(port), "--host", "127.0.0.1"], project,
                          env={"DATABASE_URL": serve_url})
    server.wait_for("ready")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/add_customer",
                                     data=json.dumps({"email": "d@example.com"}).encode(),
                                     method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        request_id = response.headers["x-flux-request-id"]
        body = json.loads(response.read())
    assert body["email"] == "d@example.com"
    server.signal(2)
    server.wait()
    with psycopg.connect(url) as conn:
        record = conn.execute("SELECT function, status, http_status FROM flux.trace_requests "
                              "WHERE request_id = %s", [request_id]).fetchone()
        change = conn.execute("SELECT table_name, op, new->>'email' FROM "
                              "flux.state_mutations WHERE request_id = %s",
                              [request_id]).fetchall()
        count = conn.execute("SELECT count(*) FROM customers").fetchone()
    assert record == ("add_customer", "ok", 200)
    assert change == [("customers", "INSERT", "d@example.com")]
    assert count == (4,)
    # Serving as the runtime role installed nothing more.
    assert json.loads(flux_cli(["install", "--check", "--json"], project, env=env).stdout)[
        "ready"] is True


def test_install_as_the_apps_owner_says_what_it_may_not_do_and_does_the_rest(
        standalone_pg: Standalone, make_project: Callable[..., Path],
        flux_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """The application's own role owns its database and tables but may not create roles:
    --check and install name that one missing right; once a DBA has made the two roles, the
    owner installs the rest."""
    with psycopg.connect(standalone_pg.url(), autocommit=True) as conn:
        conn.execute("CREATE ROLE shop_owner LOGIN PASSWORD 'owner-pw'")
        conn.execute("CREATE DATABASE shop OWNER shop_owner")
    url = standalone_pg.url("shop", user="shop_owner", password="owner-pw")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id bigserial PRIMARY KEY, email text)")
        conn.execute("INSERT INTO customers (email) VALUES ('a@example.com')")
    project = make_project('name = "shopapp"\n')
    env = {"DATABASE_URL": url}

    check = flux_cli(["install", "--check", "--json"], project, env=env)
    assert check.returncode == 1, check.stderr
    steps = {s["key"]: s for s in json.loads(check.stdout)["steps"]}
    assert "CREATEROLE" in steps["roles"]["blocked"]
    assert steps["schema"]["blocked"] is None and steps["capture"]["blocked"] is None
    refused = flux_cli(["install", "--yes"], project, env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "cannot install Flux as shop_owner" in refused.stderr
    assert "CREATEROLE" in refused.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regnamespace('flux')").fetchone() == (None,)

    with psycopg.connect(standalone_pg.url(), autocommit=True) as conn:  # the DBA
        conn.execute("CREATE ROLE flux_runtime NOLOGIN")
        conn.execute("CREATE ROLE flux_reader NOLOGIN")
    done = flux_cli(["install", "--yes", "--json"], project, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["ready"] is True and "schema" in result["applied"]
    new_tables = next(s for s in result["steps"] if s["key"] == "new_tables")
    assert not new_tables["done"] and "superuser" in new_tables["blocked"]  # a note only
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT has_table_privilege('flux_runtime', 'customers', "
                            "'INSERT')").fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = "
                            "'customers'::regclass AND tgname = 'flux_capture_ins_del'"
                            ).fetchone() == (1,)
    again = flux_cli(["install", "--yes", "--json"], project, env=env)
    assert json.loads(again.stdout)["applied"] == []
    # A project that captures from the WAL needs the server set for it: said, not tried.
    wal = make_project('name = "shopapp"\ncapture = "wal"\n')
    wal_check = flux_cli(["install", "--check", "--json"], wal, env=env)
    capture = next(s for s in json.loads(wal_check.stdout)["steps"] if s["key"] == "capture")
    assert wal_check.returncode == 1 and "wal_level = logical" in capture["blocked"]
