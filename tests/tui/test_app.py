"""The debugger driven with Textual's pilot on a real execution: a checkout of the example
shop whose payment provider answered 429, read back from the store like
``flux trace debug ID`` reads it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from textual.widgets import Input

from cli.tui.app import DebugApp
from flux.inspect._compare import mutations
from flux.replay._debug import DebugData, load_debug
from flux.store._lookup import fetch_record
from tests.fixtures.shop import Shop

HERE = Path(__file__).resolve().parent


async def failed_checkout(shop: Shop) -> DebugData:
    _, body, _ = await shop.post("signup", {"email": "ada@example.com"})
    shop.provider.mode = "rate_limit"
    status, _, rid = await shop.post("checkout", {"user_id": body["id"], "amount_cents": 900})
    assert status == 502
    with psycopg.connect(shop.db, autocommit=True) as conn:
        record = fetch_record(conn, rid[:13])
        changes = mutations(conn, record["request_id"])
    return DebugData(record, changes, rid, from_file=False)


def selected(app: DebugApp) -> dict[str, Any]:
    return app.data.rows[app.current][1]


async def test_keys_step_through_the_spans_in_order(shop: Shop) -> None:
    data = await failed_checkout(shop)
    app = DebugApp(data)
    async with app.run_test(size=(100, 30)) as pilot:
        seen = [selected(app)["name"]]
        for _ in range(len(data.rows)):
            await pilot.press("n")
            seen.append(selected(app)["name"])
        assert seen[:6] == ["POST /checkout", "checkout", "db.select(users)",
                            "db.insert(orders)", "payments.charge", seen[5]]
        assert seen[5].startswith("http.post 127.0.0.1:")
        assert seen[6] == seen[5]  # n on the last span stays there
        await pilot.press("p", "p")
        assert selected(app)["name"] == "db.insert(orders)"
        tree = app.query_one("#spans")
        assert tree.cursor_node is not None and tree.cursor_node.data == app.current


async def test_e_lands_on_the_failing_http_call_and_shows_the_exchange(shop: Shop) -> None:
    app = DebugApp(await failed_checkout(shop))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("e")
        span = selected(app)
        assert span["kind"] == "http" and span["status"] == "error"
        text = app.detail_text()
        assert "HTTP request" in text and "POST http://127.0.0.1:" in text
        assert "HTTP response" in text and "429" in text
        assert "rate_limit_error" in text and "retry-after: 1" in text
        assert "functions/checkout.py:" in text


async def test_db_span_shows_its_sql_rows_and_rolled_back_insert(shop: Shop) -> None:
    app = DebugApp(await failed_checkout(shop))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("slash", *"insert", "enter")
        assert selected(app)["name"] == "db.insert(orders)"
        text = app.detail_text()
        assert "INSERT INTO orders" in text and "RETURNING id" in text
        assert "params [1, 900]" in text
        assert "Mutations" in text and "INSERT public.orders id=" in text
        assert "(rolled back)" in text and "→ pending" in text
        await pilot.press("escape", "n")  # the prompt closed: keys step again
        assert selected(app)["name"] == "payments.charge"


async def test_search_enter_again_goes_to_the_next_match() -> None:
    app = DebugApp(load_debug(None, str(HERE / "checkout_failed.json")))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("slash", "d", "b", "enter")
        assert selected(app)["name"] == "db.select(users)"
        await pilot.press("enter")
        assert selected(app)["name"] == "db.insert(orders)"
        await pilot.press("backspace", "backspace", *"nope", "enter")
        assert selected(app)["name"] == "db.insert(orders)"
        assert "no span matches" in str(app.query_one("#status").content)


async def test_diff_asks_for_an_id_and_shows_the_summary() -> None:
    asked: list[str] = []

    def on_diff(other: str) -> dict[str, Any]:
        asked.append(other)
        from flux.replay._debug import diff_records

        return diff_records(load_debug(None, other), app.data)

    app = DebugApp(load_debug(None, str(HERE / "checkout_failed.json")), on_diff=on_diff)
    async with app.run_test(size=(80, 24)) as pilot:
        other = str(HERE / "checkout_ok.json")
        await pilot.press("d", *"x", "backspace")  # the prompt takes the keys
        app.query_one("#prompt", Input).value = other
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert asked == [other]
        assert type(app.screen).__name__ == "DiffScreen"
        await pilot.press("escape")
        assert type(app.screen).__name__ != "DiffScreen"


async def test_replay_runs_in_a_worker_and_says_whether_it_matches() -> None:
    gate = __import__("threading").Event()

    def on_replay() -> dict[str, Any]:
        gate.wait(5)
        return {"passed": False, "replayed": {"status": "error", "error": {"message": "boom"}},
                "divergence": None, "http_status": {"replayed": 502}}

    app = DebugApp(load_debug(None, str(HERE / "checkout_failed.json")), on_replay=on_replay)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("r")
        assert "replaying" in str(app.query_one("#status").content)
        await pilot.press("n")  # the UI answers while the replay runs
        assert app.current == 1
        gate.set()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "replay differs" in str(app.query_one("#status").content)


def big_record(n: int = 2000) -> dict[str, Any]:
    spans = [{"id": "s0", "parent_id": None, "name": "POST /big", "kind": "gateway",
              "start_ms": 0, "duration_ms": n, "status": "error", "attrs": {}}]
    for i in range(1, n):
        parent = "s0" if i % 50 == 1 else f"s{i - 1 - (i - 1) % 50 + 1}" if i % 50 else "s0"
        spans.append({"id": f"s{i}", "parent_id": parent, "name": f"db.select(t{i})",
                      "kind": "db", "start_ms": i, "duration_ms": 0.5,
                      "status": "error" if i == n - 7 else "ok", "file": "f.py", "line": i,
                      "attrs": {"sql": f"SELECT {i} FROM t WHERE a = %s", "params": [i]},
                      "error": {"type": "boom"} if i == n - 7 else None})
    return {"request_id": "0190a1b2-0000-7000-8000-000000000bbb", "function": "big",
            "kind": "http", "method": "POST", "route": "big", "status": "error",
            "http_status": 500, "duration_ms": n, "spans": spans, "tape": [], "logs": [],
            "request": {"body": {}}, "response": {"body": {}}}


async def test_two_thousand_spans_stay_responsive() -> None:
    """The tree is built once; a step re-renders one span's detail, not the tree. The
    pilot's own waits dominate a key press, so the handler is also timed directly."""
    data = DebugData(big_record(), [], "big", from_file=True)
    assert len(data.rows) == 2000
    app = DebugApp(data)
    started = time.perf_counter()
    async with app.run_test(size=(80, 24)) as pilot:
        mounted = time.perf_counter() - started
        tree = app.query_one("#spans")
        keys = time.perf_counter()
        for _ in range(20):
            await pilot.press("n")
        await pilot.press("e")
        pressed = (time.perf_counter() - keys) / 21
        assert selected(app)["id"] == "s1993"
        await pilot.press("p")
        assert app.current == (data.first_error() or 0) - 1
        assert tree.cursor_node is not None and tree.cursor_node.data == app.current
        handler = time.perf_counter()
        for index in range(0, 2000, 20):  # jumps all over the tree
            app.current = index
        handled = (time.perf_counter() - handler) / 100
        await pilot.pause()
        assert tree.cursor_node is not None and tree.cursor_node.data == 1980
        assert len(app._span_nodes) == 2000  # built once, at mount
    assert mounted < 15, mounted
    assert pressed < 1.0, pressed  # a key, with the pilot's waits and a full repaint
    assert handled < 0.05, handled  # our part of a step: well under 50 ms


async def test_load_and_diff_by_id_prefix_through_the_store(
        shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``flux trace debug ID`` loads: the record and its mutations via the project's
    read-only reader; d with an id compares in the store."""
    from flux._project import parse
    from flux.replay._debug import diff_against

    monkeypatch.setenv("DATABASE_URL", shop.db)
    _, body, _ = await shop.post("signup", {"email": "bo@example.com"})
    _, _, good = await shop.post("checkout", {"user_id": body["id"], "amount_cents": 900})
    shop.provider.mode = "rate_limit"
    _, _, bad = await shop.post("checkout", {"user_id": body["id"], "amount_cents": 900})
    project = parse(shop.root)
    data = load_debug(project, bad[:23])
    assert data.record["request_id"] == bad and not data.from_file
    index = data.first_error()
    assert index is not None and data.spans[index]["kind"] == "http"
    [insert] = [m for ms in data.by_span_mutations.values() for m in ms]
    assert insert["table_name"] == "orders" and insert["rolled_back"]
    result = diff_against(project, data, good[:23])
    assert result["a_id"] == bad and result["b_id"] == good
    from flux.replay._debug import replay_debug

    # r: the replay runs off the event loop (a worker thread in the app) and reproduces
    # the 429 from the tape, so it matches the original
    replayed = await asyncio.to_thread(replay_debug, project, data)
    assert replayed["passed"], replayed
    assert replayed["replayed"]["status"] == "error"
