"""`flux incident replay` on a recorded incident of the example app."""

from __future__ import annotations

import json

import psycopg

from tests.fixtures.projects import run_flux
from tests.fixtures.shop import Shop
from tests.replay.test_replay import CHECKOUT, edit


async def record_incident(shop: Shop, total: int = 32, broken: int = 5) -> list[str]:
    _, user, _ = await shop.post("signup", {"email": "i@example.com"})
    ids = []
    for i in range(total):
        shop.provider.mode = "shape_change" if i % (total // broken) == 3 else "ok"
        _, _, rid = await shop.post("checkout", {"user_id": user["id"], "amount_cents": 100 + i})
        ids.append(rid)
    shop.provider.mode = "ok"
    return ids


async def test_incident_replays_failing_until_the_fix(shop: Shop) -> None:
    ids = await record_incident(shop)
    env = {"DATABASE_URL": shop.db}
    with psycopg.connect(shop.db) as conn:
        failed = conn.execute("SELECT count(*) FROM flux.trace_requests WHERE status = 'error'"
                              ).fetchone()[0]
        orders = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    assert 0 < failed < len(ids)
    charges = shop.provider.charges
    window = "2000-01-01T00:00..now"

    before = run_flux(["incident", "replay", "--window", window, "--function", "checkout"],
                      shop.root, env=env)
    assert before.returncode == 1, before.stderr
    total = len(ids)
    assert f"{total} replayed · {total - failed} passing · {failed} still failing" in \
        before.stdout

    edit(shop, CHECKOUT, 'charge_id = charge["id"]',
         'charge_id = charge.get("id") or charge["charge_id"]')
    after = run_flux(["incident", "replay", "--window", window, "--function", "checkout",
                      "--json"], shop.root, env=env)
    assert after.returncode == 0, after.stdout + after.stderr
    summary = json.loads(after.stdout)
    assert summary == {**summary, "replayed": total, "passing": total, "failing": 0}
    assert {r["request_id"] for r in summary["results"]} == set(ids)
    assert all(r["original_http_status"] in (200, 500) and r["http_status"] == 200
               and r["status"] == "ok"
               for r in summary["results"])

    assert shop.provider.charges == charges  # nothing was sent
    with psycopg.connect(shop.db) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == orders
        replays = conn.execute("SELECT count(*), count(DISTINCT replay_of) FROM "
                               "flux.trace_requests WHERE kind = 'replay'").fetchone()
        would = conn.execute(
            "SELECT count(*) FROM flux.state_mutations m JOIN flux.trace_requests t "
            "USING (request_id) WHERE t.kind = 'replay' AND m.rolled_back").fetchone()[0]
    assert replays == (2 * total, total)  # every replay recorded, linked to its original
    assert would >= 2 * total  # the orders each replay would have written, kept aside


async def test_incident_by_ids_with_the_tape_as_database(shop: Shop) -> None:
    ids = await record_incident(shop, total=10, broken=2)
    result = run_flux(["incident", "replay", "--ids", ",".join(i[:18] for i in ids[:4]),
                       "--db", "tape", "--json"], shop.root, env={"DATABASE_URL": shop.db})
    summary = json.loads(result.stdout)
    assert summary["replayed"] == 4 and summary["db"] == "tape"
    assert result.returncode == (1 if summary["failing"] else 0)


async def test_incident_needs_a_selection(shop: Shop) -> None:
    result = run_flux(["incident", "replay"], shop.root, env={"DATABASE_URL": shop.db})
    assert result.returncode != 0 and "--window" in result.stderr
    assert "Traceback" not in result.stderr
