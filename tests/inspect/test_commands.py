"""`flux ls`, `flux trace`, `flux trace diff` and `flux explain` on the example app."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from tests.fixtures.projects import run_flux
from tests.fixtures.shop import Shop


def flux(shop: Shop, *args: str) -> Any:
    result = run_flux(list(args), shop.root, env={"DATABASE_URL": shop.db})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if "--json" in args else result.stdout


async def test_ls_filters_by_function_status_and_time(shop: Shop) -> None:
    _, user, signup_id = await shop.post("signup", {"email": "a@example.com"})
    await shop.post("signup", {"email": "a@example.com"})  # 500
    await shop.post("checkout", {"user_id": user["id"], "amount_cents": 100})
    await shop.post("nope", {})  # 404
    everything = flux(shop, "ls", "--json")["executions"]
    assert len(everything) == 4
    assert [e["started_at"] for e in everything] == sorted(
        (e["started_at"] for e in everything), reverse=True)
    assert {e["function"] for e in flux(shop, "ls", "--function", "signup", "--json")[
        "executions"]} == {"signup"}
    assert [e["http_status"] for e in flux(shop, "ls", "--status", "5xx", "--json")[
        "executions"]] == [500]
    assert len(flux(shop, "ls", "--status", "error", "--json")["executions"]) == 2
    assert len(flux(shop, "ls", "--since", "10m", "--limit", "2", "--json")["executions"]) == 2
    old = flux(shop, "ls", "--window", "2000-01-01T00:00..2000-01-02T00:00", "--json")
    assert old["executions"] == [] and old["window"]["start"].startswith("2000-01-01T00:00")
    # the window as an argument, with a hyphen, as the product pages write it
    assert len(flux(shop, "ls", "1h-now", "--json")["executions"]) == 4
    assert "Window" in flux(shop, "ls", "1h-now") and signup_id[:18] in flux(shop, "ls", "1h-now")
    human = flux(shop, "ls")
    assert signup_id[:18] in human and "signup" in human
    bad = run_flux(["ls", "--status", "weird"], shop.root, env={"DATABASE_URL": shop.db})
    assert bad.returncode != 0 and "--status takes" in bad.stderr


async def test_durations_are_milliseconds_to_three_decimals(shop: Shop) -> None:
    _, _, rid = await shop.post("signup", {"email": "ms@example.com"})
    recorded = shop.record(rid)["duration_ms"]
    assert recorded > 0 and round(recorded, 3) == recorded  # as the spans' are
    with psycopg.connect(shop.db, autocommit=True) as conn:  # a record stored before that
        conn.execute("UPDATE flux.trace_requests SET duration_ms = 6.028272997355089 "
                     "WHERE request_id = %s", [rid])
    [listed] = flux(shop, "ls", "--json")["executions"]
    assert listed["duration_ms"] == 6.028
    assert flux(shop, "trace", rid[:18], "--json")["duration_ms"] == 6.028


async def test_trace_shows_the_span_tree_with_errors_and_writes(shop: Shop) -> None:
    _, user, _ = await shop.post("signup", {"email": "t@example.com"})
    shop.provider.mode = "rate_limit"
    _, _, rid = await shop.post("checkout", {"user_id": user["id"], "amount_cents": 100})
    facts = flux(shop, "trace", rid[:18], "--json")
    assert facts["request_id"] == rid and facts["http_status"] == 502
    assert facts["stats"]["db_writes"] == 1 and facts["stats"]["http_calls"] == 1
    [gateway] = facts["spans"]
    [function] = gateway["children"]
    names = [c["name"] for c in function["children"]]
    assert names[:3] == ["db.select(users)", "db.insert(orders)", "payments.charge"]
    text = flux(shop, "trace", rid[:18])
    assert "Trace Graph" in text and "✗ 429" in text and "DB writes: 1" in text


async def test_trace_diff_aligns_two_checkouts(shop: Shop) -> None:
    _, user, _ = await shop.post("signup", {"email": "d@example.com"})
    _, _, good = await shop.post("checkout", {"user_id": user["id"], "amount_cents": 100})
    shop.provider.mode = "rate_limit"
    _, _, bad = await shop.post("checkout", {"user_id": user["id"], "amount_cents": 100})
    result = flux(shop, "trace", "diff", good[:18], bad[:18], "--json")
    http = next(s for s in result["spans"] if s["key"][0] == "http")
    assert http["status"] == "changed" and http["changes"]["http_status"] == [200, 429]
    removed = [s for s in result["spans"] if s["status"] == "removed"]
    assert {s["a"]["name"] for s in removed} >= {"db.update(orders)", "db.update(users)"}
    assert result["output"]["$.http_status"] == [200, 502]
    text = flux(shop, "trace", "diff", good[:18], bad[:18])
    assert "Trace diff" in text and "removed" in text


async def test_explain_dry_runs_without_writing_or_sending(shop: Shop) -> None:
    _, user, _ = await shop.post("signup", {"email": "e@example.com"})
    charges = shop.provider.charges
    facts = flux(shop, "explain", "checkout", "--input",
                 json.dumps({"user_id": user["id"], "amount_cents": 300}), "--json")
    assert facts["outcome"]["status"] == "error"  # the stub's empty answer has no "id"
    verbs = [(s["verb"], s["writes"]) for s in facts["statements"]]
    assert verbs[:2] == [("select", []), ("insert", ["orders"])]
    insert = facts["statements"][1]
    assert insert["fingerprint"] and insert["plan"] and insert["plan"][0].startswith("Insert")
    assert "INSERT INTO orders" in insert["sql"]
    assert facts["http"][0]["url"].endswith("/v1/charges") and facts["rolled_back"]
    assert shop.provider.charges == charges  # nothing was sent
    with psycopg.connect(shop.db) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)


async def test_explain_reports_policy_violations_and_rls(shop: Shop) -> None:
    _, user, _ = await shop.post("signup", {"email": "p@example.com"})
    toml = shop.root / "flux.toml"
    toml.write_text(toml.read_text() + '\n[policy.checkout]\nwrites = ["users"]\n')
    with psycopg.connect(shop.db, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY own_orders ON orders USING (user_id = 1)")
    facts = flux(shop, "explain", "checkout", "--input",
                 json.dumps({"user_id": user["id"], "amount_cents": 300}), "--json")
    insert = facts["statements"][1]
    assert insert["executed"] is False
    assert "lets it write only users" in insert["violation"]
    assert facts["outcome"]["error"]["type"] == "PolicyViolation"
    assert any(p["policy"] == "own_orders" for p in insert["rls"])
    sql = flux(shop, "explain", "--sql", "SELECT * FROM orders WHERE user_id = %s", "--json")
    [statement] = sql["statements"]
    assert statement["reads"] == ["orders"] and statement["plan"]
    assert any(p["policy"] == "own_orders" for p in statement["rls"])


async def test_explain_bad_input_is_one_sentence(shop: Shop) -> None:
    env = {"DATABASE_URL": shop.db}
    for args, expected in ((["explain", "checkout", "--input", "{nope"], "not valid JSON"),
                           (["explain", "nosuch", "--input", "{}"], "no function named"),
                           (["explain"], "give a function")):
        result = run_flux(args, shop.root, env=env)
        assert result.returncode != 0 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


async def test_explain_sql_runs_one_plannable_statement_and_nothing_else(shop: Shop) -> None:
    """``--sql`` is planned, never run: a second statement after a semicolon, COPY TO
    PROGRAM, CREATE EXTENSION and a write hidden in a function are refused or rolled back
    (issue 20, item 4)."""
    env = {"DATABASE_URL": shop.db}
    with psycopg.connect(shop.db, autocommit=True) as conn:
        conn.execute("CREATE TABLE explain_canary (n int)")
        conn.execute("CREATE FUNCTION explain_write() RETURNS int LANGUAGE plpgsql IMMUTABLE "
                     "AS $$ BEGIN INSERT INTO explain_canary VALUES (1); RETURN 1; END $$")
    marker = shop.root / "copied-by-postgres"
    attacks = [
        ("SELECT 1; COMMIT; INSERT INTO explain_canary VALUES (2)", "not 3"),
        ("COPY (SELECT 1) TO PROGRAM 'touch " + str(marker) + "'", "not Copy"),
        ("CREATE EXTENSION IF NOT EXISTS pg_trgm", "not CreateExtension"),
        ("SELECT 1 /* ; */ ; DROP TABLE explain_canary", "not 2"),
    ]
    for statement, expected in attacks:
        result = run_flux(["explain", "--sql", statement, "--json"], shop.root, env=env)
        assert result.returncode != 0 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    # one statement whose planning would write (an IMMUTABLE function is folded): refused
    result = run_flux(["explain", "--sql", "SELECT * FROM explain_canary WHERE n = "
                       "explain_write()", "--json"], shop.root, env=env)
    assert result.returncode == 0, result.stderr
    [statement] = json.loads(result.stdout)["statements"]
    assert statement["plan"] == [] and statement["plan_error"]
    with psycopg.connect(shop.db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM explain_canary").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'"
                            ).fetchone() == (0,)
    assert not marker.exists()
