"""Real HTTP through the gateway against embedded PostgreSQL: the whole record."""

from __future__ import annotations

import subprocess

import psycopg

from flux.store._embedded import install_dir
from tests.fixtures.shop import SECRET, Shop


async def signup(shop: Shop, email: str = "ada@example.com") -> int:
    status, body, _ = await shop.post("signup", {"email": email})
    assert status == 200, body
    return body["id"]


async def test_successful_checkout_records_spans_tape_and_mutations(shop: Shop) -> None:
    user_id = await signup(shop)
    status, body, rid = await shop.post("checkout", {"user_id": user_id, "amount_cents": 900})
    assert status == 200 and body["status"] == "paid", body
    record = shop.record(rid)
    assert record["status"] == "ok" and record["http_status"] == 200
    assert record["function"] == "checkout" and record["kind"] == "http"
    assert record["response"]["body"]["charge_id"] == body["charge_id"]
    spans = {s["id"]: s for s in record["spans"]}
    kinds = [s["kind"] for s in record["spans"]]
    assert kinds[:2] == ["gateway", "function"]
    assert kinds.count("db") == 4 and kinds.count("http") == 1
    http = next(s for s in record["spans"] if s["kind"] == "http")
    assert http["file"] == "functions/checkout.py" and http["line"] > 0
    assert spans[http["parent_id"]]["name"] == "payments.charge"  # the custom span
    insert = next(s for s in record["spans"] if s["name"] == "db.insert(orders)")
    source = (shop.root / insert["file"]).read_text().splitlines()
    assert "ctx.db.fetchone(" in source[insert["line"] - 1]  # the call site, exactly
    tape = record["tape"]
    assert [t["kind"] for t in tape] == ["secret", "config", "db", "db", "http", "clock",
                                         "db", "db"]
    assert tape[1]["key"] == "payments_url" and tape[1]["value"] == shop.provider.url
    # The API key travels in a header: its fingerprint (never its value) is in the key.
    assert tape[4]["key"] == f"POST {shop.provider.url}/v1/charges +secrets({tape[0]['value']})"
    assert tape[4]["value"]["status"] == 200
    assert tape[4]["value"]["body"]["id"] == body["charge_id"]
    assert tape[0]["value"].startswith("hmac-sha256:")
    mutations = shop.mutations(rid)
    assert {(m["table_name"], m["op"]) for m in mutations} == {
        ("orders", "INSERT"), ("orders", "UPDATE"), ("users", "UPDATE")}
    by_span = {m["span_id"] for m in mutations}
    assert by_span <= set(spans) and all(spans[s]["kind"] == "db" for s in by_span)
    assert not any(m["rolled_back"] for m in mutations)
    assert record["code_sha"] is None or len(record["code_sha"]) == 40


async def test_outbound_post_carries_idempotency_key(shop: Shop) -> None:
    user_id = await signup(shop)
    _, _, rid = await shop.post("checkout", {"user_id": user_id, "amount_cents": 500})
    sent = [r for r in shop.provider.requests if r["path"] == "/v1/charges"]
    assert sent[-1]["headers"]["Idempotency-Key"] == f"{rid}-1"


async def test_failed_checkout_records_rolled_back_mutations(shop: Shop) -> None:
    user_id = await signup(shop)
    shop.provider.mode = "rate_limit"
    status, body, rid = await shop.post("checkout", {"user_id": user_id, "amount_cents": 900})
    assert status == 502 and body["error"]["code"] == "payment_failed"
    assert body["request_id"] == rid
    record = shop.record(rid)
    assert record["status"] == "error"
    assert record["error"]["file"] == "functions/checkout.py"
    assert record["error"]["code"] == "payment_failed"
    http = next(s for s in record["spans"] if s["kind"] == "http")
    assert http["status"] == "error" and http["attrs"]["status"] == 429
    mutations = shop.mutations(rid)
    assert [(m["table_name"], m["op"], m["rolled_back"], m["source"]) for m in mutations] == [
        ("orders", "INSERT", True, "executor")]
    with psycopg.connect(shop.db) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
        history = conn.execute("SELECT rolled_back FROM flux.state_history "
                               "WHERE request_id = %s", [rid]).fetchall()
    assert history == [(True,)]


async def test_constraint_violation_keeps_earlier_mutations_of_the_attempt(shop: Shop) -> None:
    await signup(shop, "dup@example.com")
    status, body, rid = await shop.post("signup", {"email": "dup@example.com"})
    assert status == 500 and body["request_id"] == rid
    record = shop.record(rid)
    assert record["error"]["sqlstate"] == "23505"
    assert record["error"]["constraint"] == "users_email_key"
    assert record["error"]["file"] == "functions/signup.py"
    failing = {s["id"]: s for s in record["spans"]}[record["error"]["span_id"]]
    assert failing["kind"] == "db" and failing["error"]["sqlstate"] == "23505"


async def test_dependency_timeout_is_recorded(shop: Shop) -> None:
    user_id = await signup(shop)
    shop.provider.mode = "timeout"
    shop.provider.delay = 30
    # The fake answers after 30 s; the shop's checkout gives up after its timeout of 5 s.
    status, _, rid = await shop.post("checkout", {"user_id": user_id, "amount_cents": 900})
    assert status == 500
    record = shop.record(rid)
    assert record["error"]["type"] == "HttpTimeout"
    http = next(s for s in record["spans"] if s["kind"] == "http")
    assert http["error"]["type"] == "timeout"
    assert record["tape"][-1]["value"]["error"]["type"] == "timeout"
    assert [m["rolled_back"] for m in shop.mutations(rid)] == [True]


async def test_bad_input_is_answered_and_recorded(shop: Shop) -> None:
    cases = [
        (await shop.post("signup", raw=b"{not json"), 400, "invalid_json", "signup"),
        (await shop.post("nope", {}), 404, "not_found", None),
        (await shop.post("signup", raw=b"x" * (1024 * 1024 + 10)), 413, "payload_too_large",
         "signup"),
    ]
    for (status, body, rid), expected, code, function in cases:
        assert status == expected and body["error"]["code"] == code and body["request_id"] == rid
        record = shop.record(rid)
        assert record["http_status"] == expected and record["function"] == function
        assert record["error"]["code"] == code
    async with shop.client.get(f"{shop.url}/signup") as response:
        assert response.status == 405 and response.headers["Allow"] == "POST"
        assert shop.record(response.headers["x-flux-request-id"])["http_status"] == 405
    async with shop.client.get(f"{shop.url}/health") as response:
        assert response.status == 200 and "x-flux-request-id" in response.headers


async def test_function_exception_is_500_with_request_id(shop: Shop) -> None:
    user_id = await signup(shop)
    shop.provider.mode = "shape_change"
    status, body, rid = await shop.post("checkout", {"user_id": user_id, "amount_cents": 100})
    assert status == 500 and body["request_id"] == rid and "flux why" in body["hint"]
    record = shop.record(rid)
    assert record["error"]["type"] == "KeyError"
    assert record["error"]["file"] == "functions/checkout.py"
    assert any(f["code"].startswith("charge_id = charge[") for f in record["error"]["stack"])


async def test_headers_and_fields_are_redacted_with_stable_fingerprints(shop: Shop) -> None:
    ids = []
    for _ in range(2):
        _, _, rid = await shop.post("signup", {"email": f"r{len(ids)}@example.com",
                                               "password": "hunter2hunter2"},
                                    headers={"Authorization": "Bearer tok_abcdef123456",
                                             "Cookie": "session=s3cr3t"})
        ids.append(rid)
    first, second = (shop.record(rid)["request"] for rid in ids)
    assert first["body"]["password"].startswith("[redacted hmac-sha256:")
    assert first["body"]["password"] == second["body"]["password"]
    assert first["headers"]["authorization"] == second["headers"]["authorization"]
    assert "tok_abcdef123456" not in str(first) and "s3cr3t" not in str(first)


async def test_secret_value_appears_nowhere_in_the_database(shop: Shop, pg_server) -> None:
    user_id = await signup(shop)
    await shop.post("checkout", {"user_id": user_id, "amount_cents": 900})
    shop.provider.mode = "error"
    await shop.post("checkout", {"user_id": user_id, "amount_cents": 900})
    dump = subprocess.run([str(install_dir() / "bin" / "pg_dump"), "-d", shop.db],
                          capture_output=True, text=True, check=True).stdout
    assert "charges" in dump or "trace_requests" in dump
    assert "hmac-sha256:" in dump  # the fingerprint is there …
    assert SECRET not in dump  # … the value is not


async def test_queue_push_is_transactional(shop: Shop) -> None:
    _, body, rid = await shop.post("signup", {"email": "job@example.com"})
    status, _, failed = await shop.post("signup", {"email": "job@example.com"})
    assert status == 500
    with psycopg.connect(shop.db) as conn:
        jobs = conn.execute("SELECT function, parent_id, payload FROM flux.jobs").fetchall()
    assert [(j[0], str(j[1])) for j in jobs] == [("send_welcome_email", rid)]
    assert jobs[0][2] == {"user_id": body["id"]}
    record = shop.record(failed)
    # The failed signup pushed no job (its INSERT failed first) and left none behind.
    assert all(s["kind"] != "queue" for s in record["spans"])


async def test_a_configured_secret_is_scrubbed_from_a_record_that_never_read_it(
        shop: Shop) -> None:
    # signup reads no secret; a client sends the payments key anyway ([secrets] in flux.toml)
    status, body, rid = await shop.post("signup", {"email": f"{SECRET}@example.com"})
    assert status == 200, body
    with psycopg.connect(shop.db) as conn:
        row = conn.execute("SELECT t::text FROM flux.trace_requests t WHERE request_id = %s",
                           [rid]).fetchone()
    assert row is not None and "@example.com" in row[0]
    assert SECRET not in row[0]  # not in the body, the SQL parameters, the tape or the answer
    assert "hmac-sha256:" in row[0]
