"""Each ctx door, through the gateway: sync handlers, values, concurrency, invoke, timeouts,
secrets scrubbed from messages and logs, capture of tables created later."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg

from tests.fixtures.shop import KITCHEN_TOKEN, Shop


async def test_sync_handler_runs_in_a_thread_with_a_recorded_transaction(kitchen: Shop
                                                                         ) -> None:
    status, body, rid = await kitchen.post("sync_note", {"body": "a"})
    assert status == 200 and body["body"] == "hello a"
    record = kitchen.record(rid)
    spans = {s["id"]: s for s in record["spans"]}
    insert = next(s for s in record["spans"] if s["kind"] == "db")
    assert insert["file"] == "functions/sync_note.py" and insert["line"] == 10
    assert spans[insert["parent_id"]]["kind"] == "function"
    custom = next(s for s in record["spans"] if s["name"] == "prepare")
    assert custom["kind"] == "custom" and custom["file"] == "functions/sync_note.py"
    assert [t["kind"] for t in record["tape"]] == ["config", "clock", "db"]
    assert record["tape"][0]["key"] == "greeting"  # the configuration it ran with
    assert record["logs"][0]["message"] == "saved"
    assert record["logs"][0]["fields"] == {"note_id": body["id"]}
    [mutation] = kitchen.mutations(rid)
    assert mutation["span_id"] == insert["id"] and mutation["new"]["body"] == "hello a"


async def test_clock_uuid_random_and_secret_go_on_the_tape(kitchen: Shop) -> None:
    status, body, rid = await kitchen.post("values", {})
    assert status == 200 and body["has_token"] is True and body["replay"] is False
    tape = {t["kind"]: t for t in kitchen.record(rid)["tape"]}
    assert set(tape) == {"secret", "clock", "uuid", "random"}
    assert dt.datetime.fromisoformat(tape["clock"]["value"]["v"]).isoformat() == body["now"]
    assert uuid.UUID(tape["uuid"]["value"]["v"]) == uuid.UUID(body["uuid"])
    assert tape["random"]["value"] == body["random"]
    assert tape["secret"]["key"] == "TOKEN"
    assert tape["secret"]["value"].startswith("hmac-sha256:")


async def test_a_secret_read_by_subscript_that_is_not_set_names_its_variable(kitchen: Shop
                                                                             ) -> None:
    status, body, rid = await kitchen.post("values", {"secret": "TOKEN"})
    assert status == 200 and body["length"] == len(KITCHEN_TOKEN)
    status, body, rid = await kitchen.post("values", {"secret": "KITCHEN_NEVER_SET"})
    assert status == 500
    error = kitchen.record(rid)["error"]
    assert error["type"] == "SecretNotSet"
    assert error["message"] == ("secret KITCHEN_NEVER_SET is not set: set the environment "
                                "variable KITCHEN_NEVER_SET")
    assert error["file"] == "functions/values.py"


async def test_gather_and_invoke_nest_spans_and_share_the_transaction(kitchen: Shop) -> None:
    status, body, rid = await kitchen.post("fan_out", {"n": 41})
    assert status == 200 and body["counts"] == [0, 42]
    record = kitchen.record(rid)
    spans = {s["id"]: s for s in record["spans"]}
    reads = next(s for s in record["spans"] if s["name"] == "reads")
    selects = [s for s in record["spans"] if s["kind"] == "db" and s["parent_id"] == reads["id"]]
    assert len(selects) == 2
    invoke = next(s for s in record["spans"] if s["kind"] == "invoke")
    inner = [s for s in record["spans"] if s["parent_id"] == invoke["id"]]
    assert inner and all(s["file"] == "functions/sync_note.py" for s in inner)
    [mutation] = kitchen.mutations(rid)
    assert spans[mutation["span_id"]]["parent_id"] == invoke["id"]
    assert record["tape"][-1]["kind"] == "invoke"


async def test_function_timeout_cancels_the_query_and_rolls_back(kitchen: Shop) -> None:
    status, body, rid = await kitchen.post("slow", {})
    assert status == 504 and body["error"]["code"] == "timeout"
    record = kitchen.record(rid)
    assert record["error"]["type"] == "FunctionTimeout"
    assert record["duration_ms"] < 4000
    with psycopg.connect(kitchen.db) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    status, _, _ = await kitchen.post("sync_note", {"body": "after"})
    assert status == 200  # the pool's connection came back clean


async def test_secret_is_scrubbed_from_error_messages_logs_and_stack(kitchen: Shop) -> None:
    status, body, rid = await kitchen.post("leaky", {})
    assert status == 500
    with psycopg.connect(kitchen.db) as conn:
        stored = conn.execute("SELECT t::text FROM flux.trace_requests t "
                              "WHERE request_id = %s", [rid]).fetchone()[0]
    assert KITCHEN_TOKEN not in stored and KITCHEN_TOKEN not in str(body)
    assert "upstream refused token [redacted hmac-sha256:" in stored


async def test_tables_created_later_are_captured_and_outside_writes_attributed(kitchen: Shop
                                                                               ) -> None:
    with psycopg.connect(kitchen.db, autocommit=True) as conn:
        conn.execute("SET application_name = 'migration-tool'")
        conn.execute("CREATE TABLE later (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO later VALUES (1, 'x')")
        row = conn.execute("SELECT request_id, actor, application_name FROM "
                           "flux.state_mutations WHERE table_name = 'later'").fetchone()
    assert row == (None, "postgres", "migration-tool")
