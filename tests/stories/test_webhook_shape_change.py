"""Story: a CRM webhook handler, reached with a secret URL and token, gathers two provider
calls at once and stamps each contact with ``ctx.now()`` and ``ctx.uuid()``; its grace
period is an A/B flag in ``[app]``. Every success replays as the same, run after run; the
day the provider renames a field, ``why`` says payload_shape; ``trace diff`` pairs calls
about different customers and shows the configuration that differed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flux._project import parse
from flux.replay._replay import replay_command
from tests.fixtures.shop import serve_app
from tests.stories._world import Provider, dump, flux, init_project

CRM_TOKEN = "crm_tok_V8p3Lq6Zx1"
REPLAYS = 20

HANDLER = '''"""The CRM tells us a customer changed: refresh our contact row."""

import asyncio
from datetime import timedelta

from flux import function


@function
async def customer_webhook(ctx, input):
    base = ctx.secrets.get("CRM_URL")
    headers = {"Authorization": "Bearer " + ctx.secrets.get("CRM_TOKEN")}
    customer, balance = await asyncio.gather(
        ctx.http.get(f"{base}/v1/customers/{input['customer']}", headers=headers),
        ctx.http.get(f"{base}/v1/balance", headers=headers),
    )
    email = customer.json()["email"]
    ref = "wh_" + ctx.uuid().hex[:12]
    expires = ctx.now() + timedelta(days=ctx.config.get("grace_days", 7))
    row = await ctx.db.fetchone(
        "INSERT INTO contacts (customer, email, ref, expires_at) VALUES (%s, %s, %s, %s) "
        "RETURNING id", [input["customer"], email, ref, expires])
    return {"contact": row["id"], "ref": ref, "email": email,
            "balance": balance.json()["available"], "expires": expires.isoformat()}
'''

SCHEMA = """CREATE TABLE IF NOT EXISTS contacts (
    id         bigserial PRIMARY KEY,
    customer   text NOT NULL,
    email      text NOT NULL,
    ref        text NOT NULL,
    expires_at timestamptz NOT NULL
);
"""


def set_grace(project: Path, days: int) -> None:
    toml = project / "flux.toml"
    text = toml.read_text()
    if "grace_days" in text:
        text = "\n".join(f"grace_days = {days}" if line.startswith("grace_days") else line
                         for line in text.splitlines()) + "\n"
    else:
        text = text.replace("[app]\n", f"[app]\ngrace_days = {days}\n")
    toml.write_text(text)


async def test_webhook_replays_the_same_and_why_names_a_payload_shape_change(
        db: str, provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"CRM_URL": provider.url + "/crm_Tq5Wz", "CRM_TOKEN": CRM_TOKEN}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", db)  # the replays run in-process too
    project = init_project(tmp_path, "crm")
    (project / "schema" / "002_contacts.sql").write_text(SCHEMA)
    (project / "functions" / "customer_webhook.py").write_text(HANDLER)
    set_grace(project, 7)

    async with serve_app(project, db, provider) as app:  # type: ignore[arg-type]
        good = []
        for customer in ("cus_1006", "cus_1007"):
            status, body, rid = await app.post("customer_webhook", {"customer": customer})
            assert status == 200 and body["email"] == f"{customer}@example.com"
            good.append(rid)
    set_grace(project, 14)  # Saturday's A/B flag
    async with serve_app(project, db, provider) as app:  # type: ignore[arg-type]
        status, saturday_body, saturday = await app.post("customer_webhook",
                                                         {"customer": "cus_1008"})
        assert status == 200
        provider.shape = "v2"  # the provider renames email → email_address
        status, _, failed = await app.post("customer_webhook", {"customer": "cus_1009"})
        assert status == 500
    sent = len(provider.requests)
    printed: list[str] = []

    code, why, out = flux(project, db, "why", failed[:18])
    printed.append(out)
    assert code == 0 and why["root_cause"]["class"] == "payload_shape", why["root_cause"]
    assert "email" in why["root_cause"]["message"]

    # Every success replays as the same — the gathered calls, the clock, the uuid and the
    # configuration production had all come from its tape — run after run.
    for rid in [*good, saturday]:
        code, replay, out = flux(project, db, "replay", rid[:18], "--expect", "same")
        printed.append(out)
        assert code == 0 and replay["passed"] and replay["divergence"] is None, replay
        for _ in range(REPLAYS - 1):
            again = await asyncio.to_thread(replay_command, parse(project), rid,
                                            expect_same=True)
            assert again["passed"] and again["divergence"] is None, again["divergence"]
            assert again["replayed"]["output"] == replay["original"]["output"]
    # The first two ran with grace_days = 7: replayed with today's flux.toml they differ.
    code, local, out = flux(project, db, "replay", good[0][:18], "--expect", "same",
                            "--config", "local")
    printed.append(out)
    assert code == 1 and not local["passed"]
    assert local["config"]["differs"] == [{"key": "grace_days", "recorded": 7, "today": 14}]
    assert len(provider.requests) == sent

    # trace diff: the calls about cus_1007 and cus_1008 pair as one changed span each,
    # and the A/B flag shows as a configuration difference.
    code, diff, out = flux(project, db, "trace", "diff", good[1][:18], saturday[:18])
    printed.append(out)
    assert code == 0 and diff["summary"]["added"] == 0 and diff["summary"]["removed"] == 0
    assert diff["config"] == {"grace_days": [7, 14]}
    changed = [s for s in diff["spans"] if s["status"] == "changed" and s["a"]["kind"] == "http"]
    assert len(changed) == 1, diff["spans"]
    assert changed[0]["changes"]["response.body.email"] == [
        "cus_1007@example.com", "cus_1008@example.com"]
    code, why_saturday, out = flux(project, db, "why", failed[:18])
    printed.append(out)
    assert why_saturday["departure"]["from"] == saturday

    everything = "\n".join(printed) + dump(db)
    for name, value in secrets.items():
        assert value not in everything, f"the secret {name} leaked"
    assert saturday_body["expires"]
