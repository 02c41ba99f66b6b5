"""`flux replay` on the example app: same IO, same outcome; a fix replays as passing; code
that changes the call sequence diverges at the right line; nothing outside is touched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.fixtures.projects import run_flux
from tests.fixtures.shop import Shop

CHECKOUT = "functions/checkout.py"


def replay(shop: Shop, target: str, *args: str, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> tuple[int, dict[str, Any]]:
    result = run_flux(["replay", target, "--json", *args], cwd or shop.root,
                      env={"DATABASE_URL": shop.db, **(env or {})})
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def edit(shop: Shop, file: str, old: str, new: str) -> int:
    """Change the shop's code as a developer would; returns the line of the new text."""
    path = shop.root / file
    text = path.read_text()
    assert old in text, old
    text = text.replace(old, new, 1)
    path.write_text(text)
    return next(i for i, line in enumerate(text.splitlines(), 1)
                if new.strip().splitlines()[0].strip() in line)


async def reshaped_checkout(shop: Shop) -> str:
    _, user, _ = await shop.post("signup", {"email": "r@example.com"})
    shop.provider.mode = "shape_change"
    status, _, rid = await shop.post("checkout", {"user_id": user["id"], "amount_cents": 900})
    assert status == 500
    shop.provider.mode = "ok"
    return rid


async def test_failure_replays_to_the_same_failure_then_passes_after_the_fix(shop: Shop
                                                                              ) -> None:
    rid = await reshaped_checkout(shop)
    charges = shop.provider.charges
    code, same = replay(shop, rid[:18], "--expect", "same")
    assert code == 0 and same["passed"] and same["divergence"] is None
    assert same["replayed"]["error"]["type"] == "KeyError"
    code, plain = replay(shop, rid[:18])
    assert code == 1 and not plain["passed"]  # it still fails: no fix yet

    edit(shop, CHECKOUT, 'charge_id = charge["id"]',
         'charge_id = charge.get("id") or charge["charge_id"]')
    code, fixed = replay(shop, rid[:18])
    assert code == 0 and fixed["passed"] and fixed["divergence"] is None
    assert fixed["replayed"]["output"]["status"] == "paid"
    assert fixed["replayed"]["output"]["charge_id"] == "ch_1"  # from the tape
    assert shop.provider.charges == charges  # nothing was sent
    with psycopg.connect(shop.db) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM flux.trace_requests WHERE kind = 'replay'"
                            ).fetchone() == (0,)


async def test_added_removed_and_reordered_calls_diverge_at_their_line(shop: Shop) -> None:
    rid = await reshaped_checkout(shop)
    original = (shop.root / CHECKOUT).read_text()

    line = edit(shop, CHECKOUT, '    order = await ctx.db.fetchone(',
                '    await ctx.db.fetchval("SELECT count(*) FROM orders")\n'
                '    order = await ctx.db.fetchone(')
    _, added = replay(shop, rid[:18])
    assert added["divergence"]["file"] == CHECKOUT and added["divergence"]["line"] == line
    assert "INSERT INTO orders" not in added["divergence"]["actual"]["call"]
    (shop.root / CHECKOUT).write_text(original)

    edit(shop, CHECKOUT, '    user = await ctx.db.fetchone("SELECT id FROM users WHERE id = %s",'
                         ' [user_id])\n    if user is None:',
         '    user = {"id": user_id}\n    if user is None:')
    _, removed = replay(shop, rid[:18])
    insert_line = next(i for i, text in enumerate(original.splitlines(), 1)
                       if "order = await ctx.db.fetchone(" in text) - 1
    assert removed["divergence"]["expected"]["key"] is not None
    assert removed["divergence"]["file"] == CHECKOUT
    assert abs(removed["divergence"]["line"] - insert_line) <= 2
    (shop.root / CHECKOUT).write_text(original)

    lookup = ('    user = await ctx.db.fetchone("SELECT id FROM users WHERE id = %s", '
              '[user_id])\n    if user is None:\n'
              '        raise ctx.error(404, "user_not_found", f"no user with id {user_id}")\n')
    assert lookup in original
    moved = original.replace(lookup, "").replace('    order_id = order["id"]\n',
                                                 '    order_id = order["id"]\n' + lookup, 1)
    (shop.root / CHECKOUT).write_text(moved)
    insert_at = next(i for i, text in enumerate(moved.splitlines(), 1)
                     if "order = await ctx.db.fetchone(" in text)
    _, reordered = replay(shop, rid[:18])
    divergence = reordered["divergence"]
    assert divergence["file"] == CHECKOUT and divergence["line"] == insert_at
    assert "earlier" in divergence["reason"]  # the INSERT now comes before the SELECT
    assert divergence["expected"]["key"] != divergence["actual"]["key"]


async def test_replay_serves_clock_uuid_random_from_the_tape(kitchen: Shop) -> None:
    status, body, rid = await kitchen.post("values", {})
    assert status == 200 and body["replay"] is False
    outputs = set()
    for _ in range(3):  # separate processes (the 50-fold check runs in-process below)
        code, result = replay(kitchen, rid[:18])
        assert code == 0 and result["divergence"] is None
        outputs.add(json.dumps(result["replayed"]["output"], sort_keys=True))
    # Same time, uuid and random number as the original; only ctx.is_replay differs.
    assert outputs == {json.dumps({**body, "replay": True}, sort_keys=True)}


async def test_replay_in_process_fifty_times_gives_the_same_ids_and_times(kitchen: Shop
                                                                         ) -> None:
    from flux.replay._replay import replay as replay_record
    from flux.store._lookup import fetch_record

    _, body, rid = await kitchen.post("fan_out", {"n": 2})
    with psycopg.connect(kitchen.db) as conn:
        record = fetch_record(conn, rid)
    seen = set()
    for _ in range(50):
        result = await replay_record(kitchen.runtime, record, expect_same=True)
        assert result["passed"] and result["divergence"] is None
        seen.add(json.dumps(result["replayed"]["output"], sort_keys=True))
    assert seen == {json.dumps(body, sort_keys=True)}


async def test_replay_needs_no_network_and_no_write_access(shop: Shop, pg_server) -> None:
    """Served from its tape, a replay writes nothing and sends nothing: it passes in a
    network namespace with no interface up, as a role that may only read. (Calls past the
    end of the tape run in a rolled-back transaction, which a read-only role refuses; the
    fix test above shows they leave nothing behind.)"""
    _, user, _ = await shop.post("signup", {"email": "n@example.com"})
    status, _, rid = await shop.post("checkout", {"user_id": user["id"], "amount_cents": 900})
    assert status == 200
    dbname = psycopg.conninfo.conninfo_to_dict(shop.db)["dbname"]
    with psycopg.connect(shop.db, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS flux_replayer")
        conn.execute("CREATE ROLE flux_replayer LOGIN")
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO flux_replayer").format(
            sql.Identifier(dbname)))
        conn.execute("GRANT USAGE ON SCHEMA flux, public TO flux_replayer")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA flux, public TO flux_replayer")
    reader = f"host={pg_server.socket_dir} port={pg_server.port} user=flux_replayer " \
             f"dbname={dbname}"
    unshare = shutil.which("unshare")
    assert unshare is not None
    result = run_flux(["replay", rid[:18], "--json", "--expect", "same"], shop.root,
                      env={"DATABASE_URL": reader}, prefix=[unshare, "--net"])
    assert result.returncode == 0, result.stdout + result.stderr
    facts = json.loads(result.stdout)
    assert facts["passed"] and facts["replayed"]["output"]["status"] == "paid"
    assert facts["beyond_tape"] == [] and facts["suppressed"][0]["from"] == "tape"
    with psycopg.connect(shop.db, autocommit=True) as conn:
        conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA flux, public FROM flux_replayer")
        conn.execute("REVOKE ALL ON SCHEMA flux, public FROM flux_replayer")
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM flux_replayer").format(
            sql.Identifier(dbname)))
        conn.execute("DROP ROLE flux_replayer")


async def test_exported_record_replays_elsewhere(shop: Shop, tmp_path: Path, empty_db: str
                                                 ) -> None:
    rid = await reshaped_checkout(shop)
    exported = run_flux(["record", "export", rid[:18], "-o", str(tmp_path / "rec.json")],
                        shop.root, env={"DATABASE_URL": shop.db})
    assert exported.returncode == 0, exported.stderr
    document = json.loads((tmp_path / "rec.json").read_text())
    assert document["format"] == "flux-record" and document["version"] == 1
    assert [m["op"] for m in document["mutations"]] == ["INSERT"]
    assert "sk_test" not in (tmp_path / "rec.json").read_text()  # redaction preserved
    # On a laptop: a fresh database, the file, and the code.
    laptop = {"DATABASE_URL": empty_db}
    code, result = replay(shop, str(tmp_path / "rec.json"), "--expect", "same", env=laptop)
    assert code == 0 and result["passed"]
    imported = run_flux(["record", "import", str(tmp_path / "rec.json")], shop.root, env=laptop)
    assert imported.returncode == 0, imported.stderr
    why = run_flux(["why", rid[:18], "--json"], shop.root, env=laptop)
    assert why.returncode == 0 and json.loads(why.stdout)["root_cause"]["class"] == "exception"
    again = run_flux(["record", "import", str(tmp_path / "rec.json")], shop.root, env=laptop)
    assert "already here" in again.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something"}')
    result = run_flux(["replay", str(bad)], shop.root, env=laptop)
    assert result.returncode != 0 and "is not a Flux record file" in result.stderr
