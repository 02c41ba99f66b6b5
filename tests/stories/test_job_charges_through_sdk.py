"""Story: a checkout hands its charge to a job; the job charges through ``requests`` — the
client most vendor SDKs are built on, not ctx.http — with the API key from ``ctx.secrets``,
then breaks on the provider's answer (the field it reads is not there). The record of the
job's attempt is complete (the call is a span at the job's line, on the tape), ``flux why``
says where it broke, ``flux replay`` sends nothing, and after the fix ``flux resume`` finishes
the job's work — the order marked paid — with the one charge the provider already holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from flux.inspect._trace import flatten
from flux.jobs._worker import Worker
from tests.fixtures.shop import serve_app
from tests.stories._world import Provider, dump, flux, init_project

PAY_KEY = "sk_live_JobSdk4Vn8Qx2Lm"

SCHEMA = """CREATE TABLE IF NOT EXISTS orders (
    id     bigserial PRIMARY KEY,
    sku    text NOT NULL,
    amount integer NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    charge text
);
"""

CHECKOUT = '''"""Take the order; the charge runs as a job."""

from flux import function


@function
async def checkout(ctx, input):
    order = await ctx.db.fetchone(
        "INSERT INTO orders (sku, amount) VALUES (%s, %s) RETURNING id",
        [input["sku"], input["amount"]])
    job = await ctx.queue.push("charge_order", {"order": order["id"], "amount": input["amount"]})
    return {"order": order["id"], "job": job}
'''

CHARGE = '''"""Charge an order at the payments provider, as its SDK would: through requests."""

import requests
from flux import function


@function(retries=0)
def charge_order(ctx, input):
    response = requests.post(  # the charge
        ctx.config["payments"] + "/v1/charges", json={"amount": input["amount"]},
        headers={"Authorization": "Bearer " + ctx.secrets.get("PAY_KEY")}, timeout=5)
    charge = response.json()
    reference = charge["id"] if ctx.config.get("fixed") else charge["reference"]  # the bug
    ctx.db.execute("UPDATE orders SET status = 'paid', charge = %s WHERE id = %s",
                   [reference, input["order"]])
    return {"order": input["order"], "charge": reference}
'''


def _line(source: str, marker: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if marker in line)


async def test_a_job_charging_through_an_sdk_client_is_recorded_replayed_and_resumed_once(
        db: str, provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_PAY_KEY", PAY_KEY)
    project = init_project(tmp_path, "jobshop")
    (project / "schema" / "002_orders.sql").write_text(SCHEMA)
    (project / "functions" / "checkout.py").write_text(CHECKOUT)
    (project / "functions" / "charge_order.py").write_text(CHARGE)
    toml = project / "flux.toml"
    toml.write_text(toml.read_text().replace(
        "[secrets]\n", '[secrets]\nPAY_KEY = "SHOP_PAY_KEY"\n').replace(
        "[app]\n", f'[app]\npayments = "{provider.url}"\n'))

    async with serve_app(project, db, provider) as app:  # type: ignore[arg-type]
        status, body, checkout_id = await app.post("checkout", {"sku": "lamp", "amount": 4200})
        assert status == 200, body
        assert await Worker(app.runtime).drain() == 1
    assert provider.charges == 1 and len(provider.requests) == 1
    assert provider.requests[0]["headers"]["Authorization"] == f"Bearer {PAY_KEY}"

    with psycopg.connect(db) as conn:
        [(attempt, parent)] = conn.execute(
            "SELECT request_id::text, parent_id::text FROM flux.trace_requests "
            "WHERE kind = 'job' AND status = 'error'").fetchall()
        assert conn.execute("SELECT status FROM orders").fetchall() == [("pending",)]
    assert parent == checkout_id

    # The attempt's record is complete: the SDK's call is a span at the job's own line.
    code, why, out = flux(project, db, "why", attempt)
    assert code == 0, out
    assert why["root_cause"]["class"] == "exception", why["root_cause"]
    assert "KeyError 'reference'" in why["root_cause"]["message"]
    assert (why["location"]["file"], why["location"]["line"]) == (
        "functions/charge_order.py", _line(CHARGE, "# the bug"))
    code, trace, out = flux(project, db, "trace", attempt)
    assert code == 0, out
    spans = flatten(trace["spans"])
    [call] = [s for s in spans if s["kind"] == "http"]
    assert (call["file"], call["line"]) == (
        "functions/charge_order.py", _line(CHARGE, "# the charge"))
    assert not [s for s in spans if s["kind"] == "unrecorded"]

    # Replay serves the charge from the tape: the provider hears nothing more.
    code, replay, out = flux(project, db, "replay", attempt, env={"SHOP_PAY_KEY": PAY_KEY})
    assert code == 1 and replay["divergence"] is None and replay["beyond_tape"] == [], out
    assert len(provider.requests) == 1

    # The fix is deployed; resume finishes the job from the recorded charge.
    toml.write_text(toml.read_text().replace("[app]\n", "[app]\nfixed = true\n"))
    code, resumed, out = await asyncio.to_thread(
        flux, project, db, "resume", attempt, env={"SHOP_PAY_KEY": PAY_KEY})
    assert code == 0, out
    assert resumed["output"] == {"order": body["order"], "charge": "ch_1"}
    assert resumed["sent"] == []
    assert provider.charges == 1 and len(provider.requests) == 1
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT status, charge FROM orders").fetchall() == [("paid", "ch_1")]
    assert PAY_KEY not in dump(db)
