"""Story: a new user's first week, through the real CLI. ``flux init``; a plain sync handler
(``def``) bills a customer through ``requests`` — the API key from ``ctx.secrets["…"]`` in the
URL's query string and in an Authorization header — keeps the invoice with ``ctx.db`` and
sends the receipt; ``flux dev`` serves it. One customer's card is declined (402); a commit
that "shows the total in dollars" breaks every bill after the charge. The user asks ``flux
ls`` and ``flux why`` (and the web view), fixes the file, replays (nothing sent), rehearses
and resumes (the provider sees exactly what the plan said: the charge served from the tape,
the receipt sent once, the invoice written once), resumes again (refused), finds the commit
with ``flux bug bisect``, and from a second shell without the key is told which secret is
missing. The key is never printed, served or stored."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.access.conftest import free_port
from tests.fixtures.processes import FluxProcess
from tests.stories._world import Provider, commit, dump, flux, git, init_project

BILLING_KEY = "sk_live_NewUser8Kq3Zt5Wm"

HANDLER = '''"""Bill a customer: charge the card, keep the invoice, send the receipt."""

import requests
from flux import function


@function
def bill(ctx, input):
    key = ctx.secrets["BILLING_KEY"]
    base = ctx.config["billing_url"]
    response = requests.post(
        f"{base}/v1/charges?api_key={key}",
        json={"customer": input["customer"], "amount": input["amount"]},
        headers={"Authorization": f"Bearer {key}"}, timeout=5)
    response.raise_for_status()
    charge = response.json()
    ctx.db.execute("INSERT INTO invoices (customer, charge_id, amount) VALUES (%s, %s, %s)",
                   [input["customer"], charge["id"], charge["amount"]])
    receipt = {"charge": charge["id"], "total": charge["amount"] / 100}
    requests.post(f"{base}/v1/receipts?api_key={key}", json=receipt,
                  headers={"Authorization": f"Bearer {key}"}, timeout=5)
    return {"charge": charge["id"], "total": receipt["total"]}
'''
GOOD = '    receipt = {"charge": charge["id"], "total": charge["amount"] / 100}'
BAD = '    receipt = {"charge": charge["id"], "total": charge["amount_cents"] / 100}'

SCHEMA = """CREATE TABLE IF NOT EXISTS invoices (
    id        bigserial PRIMARY KEY,
    customer  text NOT NULL,
    charge_id text NOT NULL,
    amount    integer NOT NULL
);
"""


def line_of(text: str) -> int:
    return HANDLER.replace(GOOD, BAD).splitlines().index(text) + 1


def invoices(db: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(db) as conn:
        return conn.execute("SELECT customer, charge_id, amount FROM invoices").fetchall()


async def post(client: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, str]:
    async with client.post(url, data=json.dumps(body)) as response:
        return (
            response.status,
            await response.json(content_type=None),
            response.headers["x-flux-request-id"],
        )


async def test_a_new_user_bills_fails_fixes_replays_resumes_and_bisects(
    db: str,
    provider: Provider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flux_process: type[FluxProcess],
) -> None:
    monkeypatch.setenv("BILLING_KEY", BILLING_KEY)
    provider.declined.add("cus_declined")
    project = init_project(tmp_path, "billing")
    (project / "schema" / "002_invoices.sql").write_text(SCHEMA)
    toml = project / "flux.toml"
    toml.write_text(toml.read_text() + f'billing_url = "{provider.url}"\n')
    handler = project / "functions" / "bill.py"
    handler.write_text(HANDLER)
    git(project, "init", "-q", "-b", "main")
    good = commit(project, "billing: charge, invoice, receipt")
    handler.write_text(HANDLER.replace(GOOD, BAD))
    bad = commit(project, "receipts: show the total in dollars")

    async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
        # In a thread: the provider answers on this test's event loop.
        code, document, out = await asyncio.to_thread(flux, project, db, *args, env=env)
        printed.append(out)
        return code, document, out

    printed: list[str] = []
    port = free_port()
    dev = flux_process(
        ["dev", "--port", str(port)], project, env={"DATABASE_URL": db, "BILLING_KEY": BILLING_KEY}
    )
    await asyncio.to_thread(dev.wait_for, "ready")
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as client:
        status, answer, rid = await post(
            client, f"{base}/bill", {"customer": "cus_ada", "amount": 4200}
        )
        assert status == 500 and rid in json.dumps(answer), answer
        status, _, declined = await post(
            client, f"{base}/bill", {"customer": "cus_declined", "amount": 900}
        )
        assert status == 500
        # The world: Ada's card charged once, the receipt never sent; the decline answered.
        assert provider.charges == 1
        sent = [(r["method"], r["path"]) for r in provider.requests]
        assert sent == [("POST", "/v1/charges")] * 2
        assert provider.requests[0]["query"] == {"api_key": BILLING_KEY}
        assert provider.requests[0]["headers"]["Authorization"] == f"Bearer {BILLING_KEY}"
        assert invoices(db) == []

        code, ls, _ = await cli("ls", "--function", "bill")
        assert code == 0
        rows = {r["request_id"]: r for r in ls["executions"]}
        assert set(rows) == {rid, declined}
        assert rows[rid]["status"] == "error" and rows[rid]["error_type"] == "KeyError"
        assert rows[rid]["resumed_by"] is None
        short = rid[:18]  # the short form ls and the dev log print

        code, why, _ = await cli("why", short)
        assert code == 0 and why["request_id"] == rid and why["function"] == "bill"
        assert why["root_cause"]["class"] == "exception", why["root_cause"]
        assert why["location"] == {
            "file": "functions/bill.py",
            "line": line_of(BAD),
            "function": "bill",
            "code_sha": bad,
            "code_dirty": False,
        }
        [insert] = why["mutations"]
        assert insert["table"] == "invoices" and insert["op"] == "INSERT"
        assert insert["rolled_back"] is True
        assert why["resumed_by"] is None and f"flux replay {short}" in why["suggestion"]

        # The declined card: the provider's 402 at the call's line, its URL redacted.
        code, why_declined, _ = await cli("why", declined[:18])
        cause = why_declined["root_cause"]
        assert code == 0 and cause["class"] == "dependency_error", cause
        call_line = line_of("    response = requests.post(")
        assert (cause["span"]["file"], cause["span"]["line"]) == ("functions/bill.py", call_line)
        assert why_declined["location"]["line"] == call_line
        assert cause["span"]["attrs"]["url"].startswith(
            f"{provider.url}/v1/charges?api_key=[redacted hmac-sha256:"
        )
        assert "402" in cause["message"] and "card_declined" in cause["message"]

        # What the web view reads, for both failures.
        for path in (
            f"executions/{rid}",
            f"executions/{rid}/why",
            f"executions/{rid}/trace",
            f"executions/{declined}",
            f"executions/{declined}/why",
        ):
            async with client.get(f"{base}/_flux/{path}") as response:
                assert response.status == 200, path
                printed.append(await response.text())
        record = json.loads(printed[-2])["record"]  # the declined one's
        [charge] = [e for e in record["tape"] if e["kind"] == "http"]
        assert charge["line"] == call_line and "api_key=[redacted hmac-sha256:" in charge["key"]

        # The fix, in the file (not committed yet): today's code finishes the bill.
        handler.write_text(HANDLER)
        code, replay, _ = await cli("replay", short)
        assert code == 0 and replay["passed"] and replay["divergence"] is None, replay
        assert replay["original"]["status"] == "error" and replay["replayed"]["status"] == "ok"
        assert [c["kind"] for c in replay["beyond_tape"]] == ["http"]  # the receipt: not sent
        assert len(provider.requests) == 2 and invoices(db) == []

        code, plan, _ = await cli("resume", short, "--dry-run")
        assert code == 0 and plan["refusal"] is None and plan["status"] == "ok", plan
        modes = [
            (step["kind"], step["mode"]) for step in plan["plan"] if step["kind"] in ("http", "db")
        ]
        assert modes == [("http", "tape"), ("db", "db"), ("http", "live")], plan["plan"]
        calls = [step["call"] for step in plan["plan"] if step["kind"] in ("http", "db")]
        assert calls[1].startswith("db INSERT INTO invoices (customer, charge_id, amount)")
        assert calls[2].startswith(f"http POST {provider.url}/v1/receipts?api_key=[redacted")
        assert len(provider.requests) == 2 and invoices(db) == []

        code, resumed, _ = await cli("resume", short)
        assert code == 0 and resumed["status"] == "ok", resumed
        assert resumed["resumed_from"] == rid and resumed["request_id"] not in (None, rid)
        assert resumed["plan"] == plan["plan"]
        # Exactly what the plan said: the charge from the tape, the receipt sent live once.
        assert provider.charges == 1
        assert [(r["method"], r["path"]) for r in provider.requests[2:]] == [
            ("POST", "/v1/receipts")
        ]
        assert provider.requests[2]["body"] == {"charge": "ch_1", "total": 42.0}
        assert invoices(db) == [("cus_ada", "ch_1", 4200)]

        code, again, out = await cli("resume", short)
        assert code != 0 and again["refused"] is True and "already resumed" in out
        assert len(provider.requests) == 3 and invoices(db) == [("cus_ada", "ch_1", 4200)]

        code, ls, _ = await cli("ls", "--function", "bill")
        rows = {r["request_id"]: r for r in ls["executions"]}
        assert rows[rid]["resumed_by"] == resumed["request_id"]
        assert rows[resumed["request_id"]]["resumed_from"] == rid
        assert rows[resumed["request_id"]]["status"] == "ok"

    # Which commit broke it: the one after the good one, found by replaying, sending nothing.
    code, bisect, _ = await cli("bug", "bisect", "--request", short, "--good", good)
    assert code == 0 and bisect["first_bad"]["sha"] == bad, bisect
    assert bisect["first_bad"]["subject"] == "receipts: show the total in dollars"
    assert bisect["first_bad"]["files"] == ["functions/bill.py"]
    assert [(t["sha"], t["verdict"]) for t in bisect["tested"]] == [(bad, "bad")]
    assert len(provider.requests) == 3

    # A second shell, without BILLING_KEY: the resume is refused and says which secret.
    monkeypatch.delenv("BILLING_KEY")
    code, refused, out = await cli("resume", declined[:18])
    assert code != 0 and refused["refused"] is True
    assert "SecretNotSet" in refused["error"] and "BILLING_KEY" in refused["error"], out
    assert len(provider.requests) == 3

    dev.signal(signal.SIGINT)
    assert await asyncio.to_thread(dev.wait, 30) == 0
    everything = "\n".join([*printed, dev.output(), dump(db)])
    assert BILLING_KEY not in everything and BILLING_KEY[8:] not in everything
