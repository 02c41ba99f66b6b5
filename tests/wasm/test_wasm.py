"""Wasm functions through the real gateway against embedded PostgreSQL: the same record as
a Python function's, the same replay and resume, and limits that hold under load."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import psycopg

from tests.fixtures.projects import run_flux
from tests.fixtures.shop import Shop
from tests.replay.test_replay import edit, replay
from tests.resume.test_resume import order_states, resume

DEPOSIT = "functions/deposit.wat"


async def signup(shop: Shop, email: str = "w@example.com", plan: str | None = None) -> int:
    status, body, _ = await shop.post("signup", {"email": email})
    assert status == 200, body
    if plan is not None:
        with psycopg.connect(shop.db, autocommit=True) as conn:
            conn.execute("UPDATE users SET plan = %s WHERE id = %s", [plan, body["id"]])
    return int(body["id"])


def why(shop: Shop, rid: str) -> dict[str, Any]:
    result = run_flux(["why", rid[:18], "--json"], shop.root, env={"DATABASE_URL": shop.db})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def line_of(shop: Shop, file: str, text: str) -> int:
    lines = (shop.root / file).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


async def test_deposit_records_what_a_python_function_records(wasm_shop: Shop) -> None:
    shop = wasm_shop
    user_id = await signup(shop)
    status, body, rid = await shop.post("deposit", {"user_id": user_id})
    assert status == 200, body
    assert body == {"order_id": body["order_id"], "charge_id": "ch_1", "status": "paid",
                    "amount_cents": 1000}
    record = shop.record(rid)
    assert record["status"] == "ok" and record["runtime"] == "wasm"
    assert record["function"] == "deposit" and record["response"]["body"] == body
    spans = record["spans"]
    by_id = {s["id"]: s for s in spans}
    assert [s["kind"] for s in spans] == ["gateway", "function", "db", "http", "db"]
    assert [s["name"] for s in spans[2:]] == [
        "db.insert(orders)", f"http.post 127.0.0.1:{shop.provider.port}/v1/charges",
        "db.update(orders)"]
    function = spans[1]
    assert function["parent_id"] == spans[0]["id"] and function["file"] == DEPOSIT
    assert all(s["parent_id"] == function["id"] and s["file"] == DEPOSIT for s in spans[2:])
    tape = record["tape"]
    # ctx.config: the provider's URL read from [app], on the tape
    assert [t["kind"] for t in tape] == ["db", "config", "http", "clock", "db"]
    assert tape[2]["key"] == f"POST {shop.provider.url}/v1/charges"
    assert tape[2]["value"]["body"]["id"] == "ch_1"
    assert {t["file"] for t in tape} == {DEPOSIT}
    assert record["logs"][0]["message"] == "deposit taken"
    sent = [r for r in shop.provider.requests if r["path"] == "/v1/charges"]
    assert sent[-1]["headers"]["Idempotency-Key"] == f"{rid}-1"  # ctx.http's, unchanged
    mutations = shop.mutations(rid)
    assert [(m["table_name"], m["op"], m["rolled_back"]) for m in mutations] == [
        ("orders", "INSERT", False), ("orders", "UPDATE", False)]
    assert {str(m["request_id"]) for m in mutations} == {rid}
    assert all(by_id[m["span_id"]]["kind"] == "db" for m in mutations)


async def test_quote_written_in_c_reads_its_plan_clock_and_number_from_ctx(wasm_shop: Shop
                                                                           ) -> None:
    shop = wasm_shop
    user_id = await signup(shop, plan="pro")
    before = int(time.time() * 1000)
    status, body, rid = await shop.post("quote", {"user_id": user_id, "amount_cents": 2000})
    assert status == 200, body
    assert body["plan"] == "pro" and body["quote_cents"] == 1600
    assert before + 15 * 60_000 <= body["valid_until_ms"] <= before + 16 * 60_000
    assert body["quote_id"].startswith("q-")
    record = shop.record(rid)
    assert [t["kind"] for t in record["tape"]] == ["db", "clock", "random"]
    assert record["logs"][0]["fields"] == {"quote_cents": 1600}
    status, body, rid = await shop.post("quote", {"user_id": 999, "amount_cents": 2000})
    assert status == 404 and body["error"]["code"] == "user_not_found"
    status, body, _ = await shop.post("quote", {"user_id": "x"})
    assert status == 400 and body["error"]["code"] == "invalid_user_id"


async def test_failed_charge_rolls_back_the_order_and_names_the_wasm_function(
        wasm_shop: Shop) -> None:
    shop = wasm_shop
    user_id = await signup(shop)
    shop.provider.mode = "rate_limit"
    status, body, rid = await shop.post("deposit", {"user_id": user_id})
    assert status == 502 and body["error"]["code"] == "payment_failed"
    record = shop.record(rid)
    assert record["status"] == "error" and record["error"]["type"] == "FunctionError"
    error = record["error"]
    # ctx.error through the error import, called by $fail, called by handle
    assert error["file"] == DEPOSIT and error["function"] == "fail"
    assert error["line"] == line_of(shop, DEPOSIT, "(func $fail")
    assert [f["function"] for f in error["wasm"]["frames"]] == ["fail", "handle"]
    assert [(m["table_name"], m["op"], m["rolled_back"]) for m in shop.mutations(rid)] == [
        ("orders", "INSERT", True)]
    assert order_states(shop) == []
    explained = why(shop, rid)
    assert explained["root_cause"]["class"] == "rate_limit"
    assert explained["location"]["file"] == DEPOSIT


async def test_deposit_replays_with_the_same_io_and_touches_nothing(wasm_shop: Shop) -> None:
    shop = wasm_shop
    user_id = await signup(shop)
    _, original, rid = await shop.post("deposit", {"user_id": user_id})
    _, quote, quote_rid = await shop.post("quote", {"user_id": user_id, "amount_cents": 700})
    charges = shop.provider.charges
    code, same = replay(shop, rid[:18], "--expect", "same")
    assert code == 0 and same["passed"] and same["divergence"] is None, same
    assert same["replayed"]["output"] == original
    assert same["suppressed"][0]["from"] == "tape"
    code, again = replay(shop, quote_rid[:18], "--expect", "same")
    assert code == 0 and again["replayed"]["output"] == quote  # same clock, same number
    assert shop.provider.charges == charges  # nothing was sent
    assert order_states(shop) == [("paid", "ch_1")]  # nothing was written

    edit(shop, DEPOSIT, "SET status = 'paid',", "SET status = 'paid', amount_cents = 1,")
    _, changed = replay(shop, rid[:18])
    divergence = changed["divergence"]
    assert divergence["file"] == DEPOSIT and "UPDATE orders" in divergence["actual"]["call"]


async def test_resume_after_fixing_the_wat_charges_once(wasm_shop: Shop) -> None:
    shop = wasm_shop
    user_id = await signup(shop)
    wat = shop.root / DEPOSIT
    fixed = wat.read_text()
    edit(shop, DEPOSIT, "SET status = 'paid'", "SET status = 'done'")  # the bug
    shop.runtime.reload(wat)
    status, _, rid = await shop.post("deposit", {"user_id": user_id})
    assert status == 500 and shop.provider.charges == 1
    record = shop.record(rid)
    assert record["error"]["sqlstate"] == "23514"  # orders_status_check, after the charge
    assert record["error"]["file"] == DEPOSIT and record["error"]["function"] == "handle"
    explained = why(shop, rid)
    assert explained["root_cause"]["class"] == "constraint"
    assert explained["location"]["file"] == DEPOSIT
    assert explained["location"]["line"] == line_of(shop, DEPOSIT, '(export "handle")')
    assert {m["rolled_back"] for m in explained["mutations"]} == {True}

    wat.write_text(fixed)  # the fix
    code, result, stderr = resume(shop, rid)
    assert code == 0, stderr
    assert result["status"] == "ok" and result["resumed_from"] == rid
    assert result["sent"] == []  # the charge came from the tape
    assert shop.provider.charges == 1
    assert order_states(shop) == [("paid", "ch_1")]
    new = shop.record(result["request_id"])
    assert new["runtime"] == "wasm" and new["kind"] == "resume"


async def test_runaway_loop_times_out_while_other_requests_are_served(wasm_shop: Shop
                                                                      ) -> None:
    shop = wasm_shop
    user_id = await signup(shop)
    started = time.monotonic()
    spins = [asyncio.create_task(shop.post("spin", {"n": i})) for i in range(3)]
    await asyncio.sleep(0.2)  # the loops hold their threads now
    others = await asyncio.gather(*(
        [shop.post("quote", {"user_id": user_id, "amount_cents": 100 + i}) for i in range(12)]
        + [shop.post("echo", {"i": i}) for i in range(6)]
        + [shop.post("signup", {"email": f"u{i}@example.com"}) for i in range(6)]))
    # All answered while the loops still spin (each burns a core until its 3 s timeout).
    assert not any(spin.done() for spin in spins)
    assert [status for status, _, _ in others] == [200] * len(others)
    for status, body, rid in await asyncio.gather(*spins):
        assert status == 504 and body["error"]["code"] == "timeout"
        record = shop.record(rid)
        assert record["status"] == "error" and record["http_status"] == 504
        assert record["error"]["type"] == "FunctionTimeout"
        assert "spin" in record["error"]["message"]
    assert time.monotonic() - started < 8
    status, body, _ = await shop.post("echo", {"after": True})  # the threads came back
    assert status == 200 and body == {"echo": {"after": True}}


async def test_trap_is_a_recorded_error_naming_function_and_offset(wasm_shop: Shop) -> None:
    shop = wasm_shop
    status, body, rid = await shop.post("divide", {})
    assert status == 500 and body["error"]["code"] == "internal_error"
    record = shop.record(rid)
    error = record["error"]
    assert record["status"] == "error" and error["type"] == "WasmTrap"
    assert error["code"] == "wasm_trap"
    assert error["function"] == "divide" and error["file"] == "functions/divide.wat"
    assert error["line"] == line_of(shop, "functions/divide.wat", "(func $divide")
    assert "integer divide by zero" in error["message"]
    assert f"in divide at offset {error['wasm']['offset']:#x}" in error["message"]
    assert [f["function"] for f in error["wasm"]["frames"]] == ["divide", "handle"]
    assert error["stack"][0]["function"] == "divide"
    explained = why(shop, rid)
    assert explained["root_cause"]["class"] == "exception"
    assert explained["location"]["function"] == "divide"


async def test_memory_cap_is_a_recorded_error(wasm_shop: Shop) -> None:
    shop = wasm_shop
    status, _, rid = await shop.post("hog", {})
    assert status == 500
    record = shop.record(rid)
    error = record["error"]
    assert record["status"] == "error" and error["type"] == "WasmMemoryLimit"
    assert "memory cap of 2 MiB" in error["message"] and error["function"] == "hoard"
    assert error["wasm"]["memory_cap"] == 2 * 1024 * 1024
    status, _, _ = await shop.post("echo", {"still": "serving"})
    assert status == 200


async def test_no_state_survives_from_one_call_to_the_next(wasm_shop: Shop) -> None:
    """Each call instantiates afresh: a global and a byte of memory the first call
    counted in are back at their start for the second, one after the other or at once."""
    shop = wasm_shop
    first = await shop.post("counter", {})
    second = await shop.post("counter", {})
    together = await asyncio.gather(*(shop.post("counter", {}) for _ in range(4)))
    for status, body, _ in [first, second, *together]:
        assert status == 200 and body == {"global": 1, "memory": 1}


async def test_a_guest_waiting_on_a_query_past_its_timeout_is_dropped(wasm_shop: Shop
                                                                      ) -> None:
    """The guest is paused at db_query when the timeout comes: the query is cancelled,
    the guest dropped where it stands, the answer a recorded timeout; the server goes on."""
    shop = wasm_shop
    started = time.monotonic()
    status, body, rid = await shop.post("sleepy", {})
    assert status == 504 and body["error"]["code"] == "timeout"
    assert time.monotonic() - started < 4  # not the query's 5 s
    record = shop.record(rid)
    assert record["error"]["type"] == "FunctionTimeout" and record["runtime"] == "wasm"
    assert [s["kind"] for s in record["spans"]][-1] == "db"
    status, body, _ = await shop.post("counter", {})
    assert status == 200 and body == {"global": 1, "memory": 1}
