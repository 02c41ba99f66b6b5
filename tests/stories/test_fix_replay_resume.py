"""Story: a shop charges through a provider it reaches with a secret base URL and a secret
API key; a bug after the charge fails the order. The developer asks why, fixes it, bisects
to the commit that broke it, checks the fix against the incident, and resumes the order —
the customer is charged exactly once, and no secret is ever printed or stored."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.fixtures.shop import serve_app
from tests.stories._world import Provider, commit, dump, flux, git, init_project

PAYMENTS_KEY = "pk_live_7Qm2Xv9RtB4w"

HANDLER = '''"""Place an order: record it, charge it, write the receipt."""

from flux import function


@function
async def place_order(ctx, input):
    base = ctx.secrets.get("PAYMENTS_URL")
    key = ctx.secrets.get("PAYMENTS_KEY")
    order = await ctx.db.fetchone(
        "INSERT INTO orders (item, amount_cents, status) VALUES (%s, %s, 'pending') "
        "RETURNING id", [input["item"], input["amount_cents"]])
    response = await ctx.http.post(
        base + "/v1/charges",
        json={"amount": input["amount_cents"], "order_id": order["id"]},
        headers={"Authorization": f"Bearer {key}"})
    charge = response.json()
    await ctx.db.execute("UPDATE orders SET status = 'paid', charge_id = %s WHERE id = %s",
                         [charge["id"], order["id"]])
    return {"order_id": order["id"], "charge": charge["id"], "receipt": receipt(charge)}


def receipt(charge):
    return f"charge {charge['id']}: {charge['amount']} cents"
'''
WORKS = "return f\"charge {charge['id']}: {charge['amount']} cents\""
BROKEN = "return f\"charge {charge['id']}: {charge['amount_cents']} cents\""

SCHEMA = """CREATE TABLE IF NOT EXISTS orders (
    id           bigserial PRIMARY KEY,
    item         text NOT NULL,
    amount_cents integer NOT NULL,
    status       text NOT NULL,
    charge_id    text
);
"""


def orders(db: str) -> list[tuple[str, str | None]]:
    with psycopg.connect(db) as conn:
        return conn.execute("SELECT status, charge_id FROM orders ORDER BY id").fetchall()


async def test_fix_bisect_replay_and_resume_a_charge_behind_secrets(
        db: str, provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"PAYMENTS_URL": provider.url, "PAYMENTS_KEY": PAYMENTS_KEY}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    project = init_project(tmp_path, "paystore")
    (project / "schema" / "002_orders.sql").write_text(SCHEMA)
    (project / "functions" / "place_order.py").write_text(HANDLER)
    git(project, "init", "-q", "-b", "main")
    good = commit(project, "orders: charge through the provider")
    shas = [good]
    for i in range(1, 7):
        if i == 3:
            source = (project / "functions" / "place_order.py").read_text()
            (project / "functions" / "place_order.py").write_text(source.replace(WORKS, BROKEN))
            shas.append(commit(project, "receipts: show the amount in cents"))
        else:
            with (project / "README.md").open("a") as readme:
                readme.write(f"\nNote {i}.\n")
            shas.append(commit(project, f"docs: note {i}"))
    bad = shas[-1]

    # Production runs the broken code: the customer is charged, then the receipt fails.
    async with serve_app(project, db, provider) as app:  # type: ignore[arg-type]
        status, _, rid = await app.post("place_order", {"item": "lamp",
                                                        "amount_cents": 4200})
    assert status == 500 and provider.charges == 1
    sent = len(provider.requests)
    assert provider.requests[0]["headers"]["Authorization"] == f"Bearer {PAYMENTS_KEY}"
    printed: list[str] = []

    code, ls, out = flux(project, db, "ls", "--function", "place_order")
    printed.append(out)
    assert code == 0 and [r["request_id"] for r in ls["executions"]] == [rid]
    short = rid[:18]  # the short form `flux ls` prints, pasted as a user would

    code, why, out = flux(project, db, "why", short)
    printed.append(out)
    assert code == 0 and why["root_cause"]["class"] == "exception", why["root_cause"]
    assert why["location"]["file"] == "functions/place_order.py"
    assert f"flux replay {short}" in why["suggestion"], why["suggestion"]

    # Replay of today's (still broken) code: the tape answers every call, same failure.
    code, replay, out = flux(project, db, "replay", short, "--expect", "same")
    printed.append(out)
    assert code == 0 and replay["passed"] and replay["divergence"] is None, replay
    assert replay["beyond_tape"] == [] and replay["secrets_stood_in"] == []

    # The fix, committed on top.
    code_text = (project / "functions" / "place_order.py").read_text()
    (project / "functions" / "place_order.py").write_text(code_text.replace(BROKEN, WORKS))
    fix = commit(project, "receipts: the provider calls it amount")

    code, bisect, out = flux(project, db, "bug", "bisect", "--request", short,
                             "--good", good, "--bad", bad)
    printed.append(out)
    assert code == 0, out
    assert bisect["first_bad"]["sha"] == shas[3], bisect
    assert bisect["first_bad"]["subject"] == "receipts: show the amount in cents"
    assert bisect["undecided"] == []
    assert all(step["verdict"] == ("bad" if shas.index(step["sha"]) >= 3 else "good")
               for step in bisect["tested"]), bisect["tested"]

    code, replay, out = flux(project, db, "replay", short)
    printed.append(out)
    assert code == 0 and replay["passed"] and replay["divergence"] is None, replay
    assert replay["beyond_tape"] == [] and replay["replayed"]["status"] == "ok"

    code, incident, out = flux(project, db, "incident", "replay", "--ids", short)
    printed.append(out)
    assert code == 0 and incident["passing"] == 1 and incident["failing"] == 0, incident
    assert incident["results"][0]["status"] == "ok"
    assert incident["results"][0]["http_status"] == 200
    assert incident["results"][0]["original_status"] == "error"
    assert len(provider.requests) == sent  # nothing was sent by any replay or the bisect

    # A rotated key is a different call: resume says so, without printing either value.
    rotated = "pk_live_rotated_Hc3Nw8"
    code, refused, out = flux(project, db, "resume", short, env={"PAYMENTS_KEY": rotated})
    printed.append(out)
    assert code != 0 and refused["status"] == "error" and refused["refused"] is True
    assert "different secret value" in out and rotated not in out
    assert len(provider.requests) == sent and orders(db) == []

    code, plan, out = flux(project, db, "resume", short, "--dry-run")
    printed.append(out)
    assert code == 0 and plan["refusal"] is None and plan["status"] == "ok", plan
    code, resumed, out = flux(project, db, "resume", short)
    printed.append(out)
    assert code == 0 and resumed["status"] == "ok" and resumed["http_status"] == 200, resumed
    assert resumed["resumed_from"] == rid
    assert provider.charges == 1 and len(provider.requests) == sent  # charged exactly once
    assert orders(db) == [("paid", "ch_1")]

    code, again, out = flux(project, db, "resume", short)
    printed.append(out)
    assert code != 0 and "already resumed" in out and again["status"] == "error"
    assert provider.charges == 1 and orders(db) == [("paid", "ch_1")]

    everything = "\n".join(printed) + dump(db)
    for name, value in secrets.items():
        assert value not in everything, f"the secret {name} leaked"
    assert fix != bad
