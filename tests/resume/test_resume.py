"""`flux resume` on the example app: the order completes, the customer is charged once."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import psycopg

from tests.fixtures.projects import FLUX, run_flux
from tests.fixtures.shop import Shop
from tests.replay.test_replay import CHECKOUT, edit


def resume(shop: Shop, rid: str, *args: str) -> tuple[int, Any, str]:
    result = run_flux(["resume", rid[:18], "--json", *args], shop.root,
                      env={"DATABASE_URL": shop.db})
    return result.returncode, json.loads(result.stdout) if result.stdout else None, \
        result.stderr


def order_states(shop: Shop) -> list[tuple[str, str | None]]:
    with psycopg.connect(shop.db) as conn:
        return conn.execute("SELECT status, charge_id FROM orders ORDER BY id").fetchall()


async def failed_after_the_charge(shop: Shop) -> tuple[str, int]:
    _, user, _ = await shop.post("signup", {"email": "res@example.com"})
    original = (shop.root / CHECKOUT).read_text()
    edit(shop, CHECKOUT, 'charge_status = charge["status"]',
         'charge_status = charge["state"]')  # the bug: a KeyError after the charge
    shop.runtime.reload(shop.root / CHECKOUT)
    status, _, rid = await shop.post("checkout", {"user_id": user["id"], "amount_cents": 900})
    assert status == 500 and shop.provider.charges == 1
    (shop.root / CHECKOUT).write_text(original)  # the fix
    return rid, user["id"]


async def test_resume_completes_the_order_without_charging_again(shop: Shop) -> None:
    rid, _ = await failed_after_the_charge(shop)
    assert order_states(shop) == []  # the failed attempt's order was rolled back
    code, plan, _ = resume(shop, rid, "--dry-run")
    assert code == 0 and plan["dry_run"] is True and plan["status"] == "ok"
    modes = {step["call"].split()[0] + " " + step["mode"] for step in plan["plan"]}
    assert {"http tape", "db db", "secret live"} <= modes
    # --json carries each statement whole (the text output shortens it at a word).
    assert "db INSERT INTO orders (user_id, amount_cents, status) VALUES (%s, %s, 'pending') " \
        "RETURNING id" in {step["call"] for step in plan["plan"]}
    code, result, stderr = resume(shop, rid)
    assert code == 0, stderr
    assert result["status"] == "ok" and result["resumed_from"] == rid
    assert result["sent"] == []  # the charge came from the tape
    assert shop.provider.charges == 1
    assert order_states(shop) == [("paid", "ch_1")]
    with psycopg.connect(shop.db) as conn:
        row = conn.execute("SELECT kind, resumed_from::text FROM flux.trace_requests "
                           "WHERE request_id = %s", [result["request_id"]]).fetchone()
        marked = conn.execute("SELECT resumed_by::text FROM flux.trace_requests "
                              "WHERE request_id = %s", [rid]).fetchone()
    assert row == ("resume", rid) and marked == (result["request_id"],)
    code, _, stderr = resume(shop, rid)
    assert code != 0 and "already resumed" in stderr
    # Where a user looks next, the failure says it is finished, and by which execution.
    env = {"DATABASE_URL": shop.db}
    why = json.loads(run_flux(["why", rid[:18], "--json"], shop.root, env=env).stdout)
    assert why["resumed_by"] == result["request_id"]
    assert f"finished by {result['request_id'][:18]}" in run_flux(
        ["why", rid[:18]], shop.root, env=env).stdout
    listed = json.loads(run_flux(["ls", "--json"], shop.root, env=env).stdout)["executions"]
    by_id = {r["request_id"]: r for r in listed}
    assert by_id[rid]["resumed_by"] == result["request_id"]
    assert by_id[result["request_id"]]["resumed_from"] == rid
    table = run_flux(["ls"], shop.root, env={**env, "COLUMNS": "160"}).stdout
    assert "checkout (resume)" in table and "resumed · " in table


async def test_resume_after_a_timeout_resends_with_the_original_key(shop: Shop) -> None:
    _, user, _ = await shop.post("signup", {"email": "to@example.com"})
    shop.provider.mode = "timeout"
    shop.provider.delay = 7  # the provider charges late, after checkout gave up (5 s)
    status, _, rid = await shop.post("checkout", {"user_id": user["id"], "amount_cents": 900})
    assert status == 500
    await asyncio.sleep(2.5)
    assert shop.provider.charges == 1  # the charge did happen
    shop.provider.mode = "ok"
    code, result, stderr = await asyncio.to_thread(resume, shop, rid)
    assert code == 0, stderr
    [sent] = result["sent"]
    assert sent["idempotency_key"] == f"{rid}-1"  # the original call's key
    assert shop.provider.charges == 1  # the provider deduplicated the re-sent charge
    assert order_states(shop) == [("paid", "ch_1")]


async def test_ten_concurrent_resumes_one_succeeds(shop: Shop) -> None:
    rid, _ = await failed_after_the_charge(shop)
    env = {"DATABASE_URL": shop.db}
    import os

    procs = [subprocess.Popen([*FLUX, "resume", rid[:18], "--json"], cwd=shop.root,
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(10)]
    results = await asyncio.to_thread(lambda: [p.communicate(timeout=120) for p in procs])
    codes = [p.returncode for p in procs]
    assert codes.count(0) == 1, results
    refused = [err for (out, err), code in zip(results, codes, strict=True) if code != 0]
    assert all("resumed" in err for err in refused), refused
    assert shop.provider.charges == 1
    assert order_states(shop) == [("paid", "ch_1")]


async def test_resume_refuses_code_that_diverges_before_the_failure(shop: Shop) -> None:
    rid, _ = await failed_after_the_charge(shop)
    original = (shop.root / CHECKOUT).read_text()
    edit(shop, CHECKOUT, '    user = await ctx.db.fetchone("SELECT id FROM users WHERE id = %s",'
                         ' [user_id])',
         '    user = {"id": user_id}')  # a removed statement: it runs again anyway
    code, plan, _ = resume(shop, rid, "--dry-run")
    assert code == 0 and plan["refusal"] is None and plan["status"] == "ok"
    assert plan["refused"] is False and plan["error"] is None
    (shop.root / CHECKOUT).write_text(original)
    edit(shop, CHECKOUT, 'f"{payments_url}/v1/charges"',
         'f"{payments_url}/v2/charges"')  # a changed outside call, before the failure
    code, result, stderr = resume(shop, rid)
    assert code != 0 and "departs from the recorded execution" in stderr
    assert result["divergence"]["file"] == CHECKOUT
    assert result["divergence"]["actual"]["call"].startswith("POST http://127.0.0.1:")
    assert order_states(shop) == [] and shop.provider.charges == 1
    with psycopg.connect(shop.db) as conn:
        assert conn.execute("SELECT count(*) FROM flux.trace_requests WHERE kind = 'resume'"
                            ).fetchone() == (0,)


async def test_a_rehearsal_that_fails_early_says_with_what_and_where(shop: Shop) -> None:
    rid, _ = await failed_after_the_charge(shop)
    unset = {"DATABASE_URL": shop.db, "SHOP_PAYMENTS_API_KEY": ""}  # not set where it runs
    dry = run_flux(["resume", rid[:18], "--dry-run"], shop.root, env=unset)
    refused = run_flux(["resume", rid[:18]], shop.root, env=unset)
    # The dry run predicts the refusal: it says so in one sentence and exits as it would.
    assert dry.returncode == refused.returncode == 1, dry.stderr
    assert "rehearsal with today's code: error 500" in dry.stdout
    said = [line for line in dry.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("error: a resume would be refused: "), said
    assert "Traceback" not in dry.stderr
    assert "which today's code never made" in refused.stdout and "got None" not in refused.stdout
    assert "it failed first with FunctionError: secret PAYMENTS_API_KEY is not set" in \
        refused.stderr and "at functions/checkout.py:" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert shop.provider.charges == 1 and order_states(shop) == []


async def test_resume_refuses_a_success_and_drift_under_strict(shop: Shop) -> None:
    _, _, ok = await shop.post("signup", {"email": "ok@example.com"})
    code, _, stderr = resume(shop, ok)
    assert code != 0 and "succeeded; there is nothing to resume" in stderr
    rid, user_id = await failed_after_the_charge(shop)
    with psycopg.connect(shop.db, autocommit=True) as conn:  # the world moved on
        conn.execute("DELETE FROM users WHERE id = %s", [user_id])
    code, plan, _ = resume(shop, rid, "--dry-run")
    assert code == 1 and plan["drift"][0]["file"] == CHECKOUT  # a refusal, predicted
    assert plan["drift"][0]["now"] == [] and plan["drift"][0]["recorded"]
    assert "return something else now" in plan["refusal"]  # the user is gone: another path
    assert plan["refused"] is True and plan["dry_run"] is True
    assert plan["error"] == "a resume would be refused: " + plan["refusal"]
    code, refused, stderr = resume(shop, rid, "--strict")
    assert code == 1 and "return something else" in stderr and refused["status"] == "error"
    assert refused["refused"] is True
    assert shop.provider.charges == 1 and order_states(shop) == []


async def test_admin_api_resumes_and_guards_access(shop: Shop) -> None:
    from flux.runtime._access import AdminAccess

    rid, _ = await failed_after_the_charge(shop)
    shop.runtime.reload(shop.root / CHECKOUT)  # the server runs the fixed code
    url = f"{shop.url}/_flux/executions/{rid[:18]}/resume"
    shop.runtime.admin = AdminAccess.with_token("s3cret-token")
    admin = {"Authorization": "Bearer s3cret-token", "X-Flux-Client": "test"}
    async with shop.client.post(url) as response:
        assert response.status == 401
    async with shop.client.post(url, headers=admin) as r:
        body = await r.json()
        assert r.status == 200, body
    assert body["status"] == "ok" and body["resumed_from"] == rid
    assert shop.provider.charges == 1 and order_states(shop) == [("paid", "ch_1")]
    async with shop.client.post(url, headers=admin) as r:
        assert r.status == 409 and "already resumed" in (await r.json())["error"]["message"]


async def test_resume_works_for_a_job_execution(shop: Shop) -> None:
    from flux.jobs._worker import Worker

    _, _, signup = await shop.post("signup", {"email": "job@example.com"})
    shop.provider.mode = "error"  # the mail provider fails: the job's first attempt fails
    assert await Worker(shop.runtime).drain() == 1
    with psycopg.connect(shop.db) as conn:
        job_run, parent = conn.execute(
            "SELECT request_id::text, parent_id::text FROM flux.trace_requests "
            "WHERE kind = 'job' AND status = 'error'").fetchone()
    assert parent == signup and shop.provider.emails == 0
    shop.provider.mode = "ok"
    code, result, stderr = await asyncio.to_thread(resume, shop, job_run)
    assert code == 0, stderr
    [sent] = result["sent"]
    assert sent["url"].endswith("/v1/emails") and sent["idempotency_key"] == f"{job_run}-1"
    assert result["output"] == {"sent_to": "job@example.com"}
    assert shop.provider.emails == 1
    with psycopg.connect(shop.db) as conn:
        assert conn.execute("SELECT parent_id::text FROM flux.trace_requests "
                            "WHERE request_id = %s", [result["request_id"]]).fetchone() == (
            signup,)


def test_the_plan_reads_as_sql_and_lists_what_the_rehearsal_did_past_the_tape() -> None:
    from flux.replay._resume import past_tape, plan

    record = {
        "spans": [{"id": "s3", "kind": "db", "attrs": {"sql": "INSERT INTO invoices\n  (id)"}}],
        "tape": [
            {"seq": 1, "kind": "http", "key": "POST http://p/v1/charges +secrets(hmac-sha256:x)",
             "value": {"status": 200}, "file": "f.py", "line": 3},
            {"seq": 2, "kind": "db", "key": "63fe2838:06d033ec", "span_id": "s3",
             "value": {"rows": []}, "file": "f.py", "line": 5},
        ],
    }
    steps = plan(record)
    assert [(s["call"], s["mode"]) for s in steps] == [
        ("http POST http://p/v1/charges", "tape"), ("db INSERT INTO invoices (id)", "db")]
    later = past_tape([
        {"kind": "http", "call": "POST http://p/v1/receipts", "file": "f.py", "line": 7},
        {"kind": "db", "call": "UPDATE invoices SET sent = true", "file": "f.py", "line": 8},
        {"kind": "queue", "call": "queue.push(mail)", "file": "f.py", "line": 9},
    ])
    assert [(s["call"], s["mode"], s["seq"]) for s in later] == [
        ("http POST http://p/v1/receipts", "live", None),
        ("db UPDATE invoices SET sent = true", "db", None), ("queue.push(mail)", "db", None)]
