"""The root-cause classifier of ``flux why``, on records built the way the recorder writes
them (tests/runtime/test_recording.py stores real ones: these helpers copy their shape),
then on fuzzed records it must never raise on."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux.inspect._classify import CLASSES, RootCause, classify, dependency_key
from flux.inspect._shape import shape_change, shape_of

RID = "01a1fc90-4269-7d58-8017-faf3ae3bb5ff"
PROVIDER = "http://127.0.0.1:4010"
CHARGES = "POST 127.0.0.1:4010/v1/charges"
CHARGE = {"id": "ch_1", "object": "charge", "amount": 900, "currency": "usd",
          "status": "succeeded", "customer": 1, "created": 1795238675}
RESHAPED = {"charge_id": "ch_2", "object": "charge", "amount": "9.00", "currency": "usd",
            "status": "succeeded", "customer": 1, "created": 1795238675}


# -- records, as the recorder writes them ---------------------------------------------------


def record(*spans: dict[str, Any], error: dict[str, Any], function: str = "checkout",
           request_id: str = RID, duration_ms: float = 25.0,
           answers_on_spans: bool = False) -> dict[str, Any]:
    """A failed execution: gateway and function spans, then ``spans`` under the function.
    HTTP answers go on the tape, linked by span id, as the recorder stores them; records
    written before that also had them in the span's attrs (``answers_on_spans``)."""
    failed = {"type": error["type"], "message": error.get("message", "")}
    top = [
        {"id": "s1", "parent_id": None, "name": f"POST /{function}", "kind": "gateway",
         "start_ms": 0.1, "duration_ms": duration_ms - 0.2, "status": "error", "file": None,
         "line": None, "attrs": {"kind": "http"}, "error": failed},
        {"id": "s2", "parent_id": "s1", "name": function, "kind": "function",
         "start_ms": 0.2, "duration_ms": duration_ms - 0.4, "status": "error",
         "file": f"functions/{function}.py", "line": 19, "attrs": {}, "error": failed},
    ]
    spans = tuple(copy.deepcopy(s) for s in spans)
    tape = [{"seq": i + 1, "kind": "http", "key": f"{s['attrs']['method']} {s['attrs']['url']}",
             "value": (s["attrs"].get("response") if answers_on_spans
                       else s["attrs"].pop("response", None)) or {"error": s["error"]},
             "span_id": s["id"], "file": s["file"], "line": s["line"]}
            for i, s in enumerate(spans) if s["kind"] == "http"]
    return {"request_id": request_id, "kind": "http", "function": function, "status": "error",
            "http_status": error.get("http_status", 500), "started_at": "2026-11-21T05:24:35Z",
            "duration_ms": duration_ms,
            "request": {"method": "POST", "route": function, "headers": {}, "query": {},
                        "body": {"user_id": 1, "amount_cents": 900}},
            "response": {"status": error.get("http_status", 500), "body": {}},
            "error": error, "spans": [*top, *spans], "tape": tape}


def error(type: str, message: str, *, file: str | None = "functions/checkout.py",
          line: int | None = 73, source: str = "", **extra: Any) -> dict[str, Any]:
    stack = [{"file": "/srv/flux/runtime/_executor.py", "line": 91, "function": "execute",
              "code": "result = await call_handler(spec, ctx, inv.input)"}]
    if file:
        stack.append({"file": file, "line": line, "function": "checkout", "code": source})
    return {"type": type, "message": message, "file": file, "line": line,
            "function": "checkout" if file else None, "stack": stack, **extra}


def function_error(status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return error("FunctionError", message, line=64, source="raise ctx.error(", code=code,
                 http_status=status, **extra)


def db(id: str, sql: str, name: str, *, error: dict[str, Any] | None = None,
       start: float = 1.0, duration: float = 3.0, line: int = 40) -> dict[str, Any]:
    return {"id": id, "parent_id": "s2", "name": name, "kind": "db", "start_ms": start,
            "duration_ms": duration, "status": "error" if error else "ok",
            "file": "functions/checkout.py", "line": line,
            "attrs": {"sql": sql, "params": [1], "tables": [], "verb": name[3:9]},
            "error": error}


def http(id: str, *, status: int | None = 200, body: Any = None, path: str = "/v1/charges",
         method: str = "POST", headers: dict[str, str] | None = None,
         error: dict[str, Any] | None = None, start: float = 10.0, duration: float = 1.2,
         line: int = 52) -> dict[str, Any]:
    attrs: dict[str, Any] = {"method": method, "url": f"{PROVIDER}{path}", "call_seq": 1,
                             "timeout_s": 5, "request": {"headers": {}, "params": None,
                                                         "body": {"amount": 900}}}
    if status is not None:
        attrs["status"] = status
        attrs["response"] = {"status": status, "headers": headers or {}, "body": body}
        if status >= 400 and error is None:
            error = {"type": "http_status", "status": status, "message": f"answered {status}"}
    return {"id": id, "parent_id": "s2", "name": f"http.{method.lower()} 127.0.0.1:4010{path}",
            "kind": "http", "start_ms": start, "duration_ms": duration,
            "status": "error" if error else "ok", "file": "functions/checkout.py",
            "line": line, "attrs": attrs, "error": error}


def db_error(type: str, sqlstate: str, message: str, *, detail: str | None = None,
             constraint: str | None = None, table: str | None = "users",
             column: str | None = None) -> dict[str, Any]:
    return {"type": type, "sqlstate": sqlstate, "message": message, "detail": detail,
            "constraint": constraint, "table": table, "column": column, "schema": "public"}


def propagated(facts: dict[str, Any], span_id: str, *, line: int = 26) -> dict[str, Any]:
    """The execution's error for a database error that left the handler."""
    full = facts["message"] + (f"\nDETAIL:  {facts['detail']}" if facts.get("detail") else "")
    extra = {k: v for k, v in facts.items() if k not in ("type", "message")}
    return error(facts["type"], full, line=line, span_id=span_id, **extra)


def unique(detail: str, constraint: str = "users_email_key") -> dict[str, Any]:
    facts = db_error("UniqueViolation", "23505",
                     f'duplicate key value violates unique constraint "{constraint}"',
                     detail=detail, constraint=constraint)
    return record(db("s3", "INSERT INTO users (email) VALUES (%s)", "db.insert(users)",
                     error=facts), error=propagated(facts, "s3"), function="signup")


# -- dependencies ---------------------------------------------------------------------------


def test_429_then_the_functions_own_502_is_a_rate_limit_not_the_function_error() -> None:
    rec = record(db("s3", "SELECT id FROM users WHERE id = %s", "db.select(users)"),
                 http("s4", status=429, body={"error": {"type": "rate_limit_error",
                                                        "message": "Too many requests"}},
                      headers={"retry-after": "1", "content-type": "application/json"}),
                 error=function_error(502, "payment_failed",
                                      "payment provider answered 429 for order 2",
                                      span_id="s4"))
    cause = classify(rec)
    assert cause.cls == "rate_limit"
    assert cause.span is not None and cause.span["id"] == "s4"
    assert cause.details["retry_after"] == "1" and cause.details["status"] == 429
    assert cause.details["dependency"] == CHARGES
    assert cause.details["then"]["code"] == "payment_failed"
    assert cause.message.startswith(f"{CHARGES} answered 429")
    assert "Retry-After: 1" in cause.message and "502 payment_failed" in cause.message
    assert "Retry-After (1s)" in cause.suggestion and "Idempotency-Key" in cause.suggestion
    assert "functions/checkout.py:52" in cause.suggestion


def test_answers_copied_into_span_attrs_by_older_recorders_are_read_too() -> None:
    rec = record(http("s3", status=429, headers={"Retry-After": "30"}),
                 error=function_error(502, "payment_failed", "429"), answers_on_spans=True)
    rec["tape"] = []
    cause = classify(rec)
    assert cause.cls == "rate_limit" and cause.details["retry_after"] == "30"


def test_429_without_retry_after_says_so_and_suggests_backoff() -> None:
    rec = record(http("s3", status=429, body=None),
                 error=error("KeyError", "'id'", source='charge_id = charge["id"]'))
    cause = classify(rec)
    assert cause.cls == "rate_limit" and cause.details["retry_after"] is None
    assert "no Retry-After" in cause.message and "back off" in cause.suggestion
    assert "then KeyError 'id' at functions/checkout.py:73" in cause.message


def test_503_is_a_dependency_error_with_transient_advice() -> None:
    rec = record(http("s3", status=503, body={"error": {"message": "upstream busy"}}),
                 error=function_error(502, "payment_failed", "provider answered 503"))
    cause = classify(rec)
    assert cause.cls == "dependency_error" and cause.details["status"] == 503
    assert cause.message == (f"{CHARGES} answered 503: upstream busy; the function then "
                             "answered 502 payment_failed")
    assert "unavailable" in cause.suggestion and "backoff" in cause.suggestion


def test_401_points_at_the_credentials() -> None:
    rec = record(http("s3", status=401, body={"message": "bad key"}),
                 error=error("HttpStatusError", f"{PROVIDER}/v1/charges answered 401",
                             http_code=401))
    cause = classify(rec)
    assert cause.cls == "dependency_error"
    assert "credentials" in cause.suggestion and "bad key" in cause.suggestion


def test_402_is_a_declined_payment_quoting_the_code_the_provider_gave_alone() -> None:
    rec = record(http("s3", status=402, body={"error": {"type": "card_error",
                                                        "code": "card_declined"}}),
                 error=error("HTTPError", "402 Client Error: Payment Required"))
    cause = classify(rec)
    assert cause.cls == "dependency_error" and cause.details["status"] == 402
    assert cause.details["provider_message"] == "card_declined"
    assert cause.message.startswith(f"{CHARGES} answered 402: card_declined")
    assert "declined the payment" in cause.suggestion and "ctx.error(402" in cause.suggestion
    assert "compare the request body" not in cause.suggestion


def test_connection_refused_is_a_dependency_error_safe_to_retry() -> None:
    reason = ("Cannot connect to host 127.0.0.1:4010 ssl:default "
              "[Connect call failed ('127.0.0.1', 4010)]")
    rec = record(http("s3", status=None, error={"type": "connection", "message": reason}),
                 error=error("HttpConnectionError", f"POST {PROVIDER}/v1/charges failed: "
                             f"{reason}", line=52, code="http_connection",
                             url=f"{PROVIDER}/v1/charges", method="POST", span_id="s3"))
    cause = classify(rec)
    assert cause.cls == "dependency_error" and cause.span is not None
    assert cause.message == f"{CHARGES} could not be reached: {reason}"
    assert "127.0.0.1:4010" in cause.suggestion and "never left" in cause.suggestion


def test_outbound_timeout_names_the_dependency_and_the_timeout() -> None:
    rec = record(http("s3", status=None, duration=5001.0,
                      error={"type": "timeout", "message": "no answer within 5s",
                             "timeout_s": 5}),
                 error=error("HttpTimeout", f"POST {PROVIDER}/v1/charges timed out after 5s",
                             line=52, code="http_timeout"))
    cause = classify(rec)
    assert cause.cls == "timeout"
    assert cause.message == f"{CHARGES} timed out after 5s"
    assert cause.details["timeout_s"] == 5
    assert "5s" in cause.suggestion and "Idempotency-Key" in cause.suggestion
    assert "job" in cause.suggestion


def test_a_failure_retried_with_success_is_not_the_cause() -> None:
    rec = record(http("s3", status=503, start=1.0), http("s4", status=200, body=CHARGE,
                                                         start=3.0),
                 error=error("ValueError", "invalid literal for int() with base 10: 'x'"))
    cause = classify(rec)
    assert cause.cls == "exception" and cause.span is None
    assert cause.message == ("ValueError: invalid literal for int() with base 10: 'x' at "
                             "functions/checkout.py:73")


def test_a_handled_404_followed_by_more_work_is_not_the_cause() -> None:
    rec = record(http("s3", status=404, method="GET", path="/v1/customers/cus_9"),
                 db("s4", "INSERT INTO customers (id) VALUES (%s)", "db.insert(customers)",
                    start=20.0),
                 error=error("TypeError", "'NoneType' object is not subscriptable"))
    assert classify(rec).cls == "exception"


# -- the database ---------------------------------------------------------------------------


def test_unique_violation_names_constraint_column_and_value() -> None:
    cause = classify(unique("Key (email)=(ada@example.com) already exists."))
    assert cause.cls == "constraint" and cause.span is not None
    assert cause.details.items() >= {
        "constraint": "users_email_key", "column": "email", "value": "ada@example.com",
        "sqlstate": "23505", "kind": "unique", "table": "users"}.items()
    assert cause.message == ("db.insert(users) hit unique constraint users_email_key: "
                             "email = ada@example.com already exists")
    assert "ON CONFLICT (email)" in cause.suggestion and "409" in cause.suggestion


def test_unique_violation_on_an_expression_index() -> None:
    cause = classify(unique("Key (lower(email::text))=(a@b.c) already exists.",
                            "users_email_lower_idx"))
    assert cause.details["column"] == "email" and cause.details["value"] == "a@b.c"
    assert cause.details["expression"] == "lower(email::text)"
    assert "ON CONFLICT ((lower(email::text)))" in cause.suggestion


def test_unique_violation_on_a_composite_key() -> None:
    cause = classify(unique("Key (a, b)=(1, 2) already exists.", "pairs_a_b_key"))
    assert cause.details["columns"] == ["a", "b"] and cause.details["values"] == ["1", "2"]
    assert "a, b = 1, 2" in cause.message and "ON CONFLICT (a, b)" in cause.suggestion


def test_composite_values_with_commas_stay_whole_rather_than_misaligned() -> None:
    cause = classify(unique("Key (name, city)=(Smith, John, Paris) already exists."))
    assert cause.details["columns"] == ["name", "city"]
    assert cause.details["values"] == ["Smith, John, Paris"]


def test_foreign_key_not_present_names_the_missing_row() -> None:
    facts = db_error("ForeignKeyViolation", "23503",
                     'insert or update on table "orders" violates foreign key constraint '
                     '"orders_user_id_fkey"',
                     detail='Key (user_id)=(9) is not present in table "users".',
                     constraint="orders_user_id_fkey", table="orders")
    rec = record(db("s3", "INSERT INTO orders (user_id) VALUES (%s)", "db.insert(orders)",
                    error=facts), error=propagated(facts, "s3"))
    cause = classify(rec)
    assert cause.cls == "constraint"
    assert cause.details["referenced_table"] == "users" and cause.details["value"] == "9"
    assert cause.message.endswith("user_id = 9 is not present in users")
    assert "SELECT 1 FROM users" in cause.suggestion


def test_foreign_key_still_referenced() -> None:
    facts = db_error("ForeignKeyViolation", "23503",
                     'update or delete on table "users" violates foreign key constraint '
                     '"orders_user_id_fkey" on table "orders"',
                     detail='Key (id)=(1) is still referenced from table "orders".',
                     constraint="orders_user_id_fkey")
    rec = record(db("s3", "DELETE FROM users WHERE id = %s", "db.delete(users)", error=facts),
                 error=propagated(facts, "s3"))
    cause = classify(rec)
    assert cause.details["referencing_table"] == "orders"
    assert "ON DELETE CASCADE" in cause.suggestion


def test_not_null_names_the_column() -> None:
    facts = db_error("NotNullViolation", "23502",
                     'null value in column "email" of relation "users" violates not-null '
                     "constraint", detail="Failing row contains (3, null, free).",
                     column="email")
    rec = record(db("s3", "INSERT INTO users (email) VALUES (%s)", "db.insert(users)",
                    error=facts), error=propagated(facts, "s3"))
    cause = classify(rec)
    assert cause.cls == "constraint" and cause.details["column"] == "email"
    assert cause.message.endswith("users.email was null")


def test_check_constraint_guesses_the_column_from_the_default_name() -> None:
    facts = db_error("CheckViolation", "23514",
                     'new row for relation "orders" violates check constraint '
                     '"orders_amount_cents_check"', detail="Failing row contains (1, -5).",
                     constraint="orders_amount_cents_check", table="orders")
    rec = record(db("s3", "INSERT INTO orders (amount_cents) VALUES (%s)",
                    "db.insert(orders)", error=facts), error=propagated(facts, "s3"))
    cause = classify(rec)
    assert cause.cls == "constraint" and cause.details["column"] == "amount_cents"
    assert "orders_amount_cents_check" in cause.suggestion


def test_a_caught_violation_turned_into_a_409_is_still_the_constraint() -> None:
    facts = db_error("UniqueViolation", "23505", 'duplicate key value violates unique '
                     'constraint "users_email_key"',
                     detail="Key (email)=(ada@example.com) already exists.",
                     constraint="users_email_key")
    rec = record(db("s3", "INSERT INTO users (email) VALUES (%s)", "db.insert(users)",
                    error=facts), error=function_error(409, "email_taken", "email is taken"))
    cause = classify(rec)
    assert cause.cls == "constraint"
    assert cause.message.endswith("; the function then answered 409 email_taken")


def test_a_statement_refused_after_a_caught_violation_points_back_at_the_violation() -> None:
    facts = db_error("UniqueViolation", "23505", 'duplicate key value violates unique '
                     'constraint "users_email_key"',
                     detail="Key (email)=(ada@example.com) already exists.",
                     constraint="users_email_key")
    aborted = db_error("InFailedSqlTransaction", "25P02", "current transaction is aborted: "
                       "an earlier ctx.db statement of this execution failed "
                       "(UniqueViolation)", table=None)
    rec = record(db("s3", "INSERT INTO users (email) VALUES (%s)", "db.insert(users)",
                    error=facts),
                 db("s4", "SELECT id FROM users WHERE email = %s", "db.select(users)",
                    error=aborted, start=5.0, line=30),
                 error=propagated(aborted, "s4", line=30))
    cause = classify(rec)
    assert cause.cls == "constraint" and cause.span is not None and cause.span["id"] == "s3"
    assert cause.details["constraint"] == "users_email_key"


def test_a_violation_at_commit_has_no_span() -> None:
    facts = db_error("ForeignKeyViolation", "23503", "insert or update on table \"orders\" "
                     'violates foreign key constraint "orders_user_id_fkey"',
                     detail='Key (user_id)=(9) is not present in table "users".',
                     constraint="orders_user_id_fkey", table="orders")
    rec = record(error={**propagated(facts, "s9"), "file": None, "line": None})
    cause = classify(rec)
    assert cause.cls == "constraint" and cause.span is None
    assert cause.message.startswith("the commit hit foreign key constraint")


def test_statement_timeout_is_a_timeout() -> None:
    facts = db_error("QueryCanceled", "57014", "canceling statement due to statement timeout",
                     table=None)
    rec = record(db("s3", "SELECT * FROM orders WHERE note LIKE %s", "db.select(orders)",
                    error=facts, duration=30000.0), error=propagated(facts, "s3"))
    cause = classify(rec)
    assert cause.cls == "timeout"
    assert cause.message.startswith("db.select(orders) was cancelled after 30.0s")
    assert "index" in cause.suggestion


def test_deadlock_is_the_database_as_a_dependency() -> None:
    facts = db_error("DeadlockDetected", "40P01", "deadlock detected")
    rec = record(db("s3", "UPDATE users SET plan = %s", "db.update(users)", error=facts),
                 error=propagated(facts, "s3"))
    cause = classify(rec)
    assert cause.cls == "dependency_error" and cause.details["dependency"] == "postgresql"
    assert "one order" in cause.suggestion


def test_missing_table_is_an_exception_pointing_at_migrations() -> None:
    facts = db_error("UndefinedTable", "42P01", 'relation "ordres" does not exist', table=None)
    rec = record(db("s3", "SELECT * FROM ordres", "db.select(ordres)", error=facts, line=44),
                 error=propagated(facts, "s3", line=44))
    cause = classify(rec)
    assert cause.cls == "exception" and "migration" in cause.suggestion
    assert "functions/checkout.py:44" in cause.message


# -- function timeouts ----------------------------------------------------------------------


def test_function_timeout_points_at_the_query_still_running() -> None:
    rec = record(db("s3", "INSERT INTO notes (body) VALUES ('before sleep')",
                    "db.insert(notes)", start=9.1, duration=15.8, line=8),
                 db("s4", "SELECT pg_sleep(5)", "db.select", start=25.7, duration=480.3,
                    line=9, error={"type": "CancelledError", "message": ""}),
                 error=error("FunctionTimeout", "slow did not finish within its timeout of "
                             "0.5s", file=None, line=None, span_id="s4", http_status=504),
                 function="slow", duration_ms=506.0)
    cause = classify(rec)
    assert cause.cls == "timeout" and cause.span is not None and cause.span["id"] == "s4"
    assert cause.details["timeout_s"] == 0.5 and cause.details["still_running"] is True
    assert cause.message == ("slow ran past its 0.5s timeout: db.select was still running "
                             "after 480ms — SELECT pg_sleep(5)")
    assert "functions/checkout.py:9" in cause.suggestion
    assert "statement_timeout below 0.5s" in cause.suggestion


def test_function_timeout_finds_an_unmarked_span_by_when_it_ended() -> None:
    # A sync handler's query may be closed by the executor rather than cancelled: it is
    # then "ok", but it ends with the function.
    rec = record(db("s3", "SELECT 1", "db.select", start=1.0, duration=2.0),
                 http("s4", status=200, body=CHARGE, start=5.0, duration=495.0),
                 error=error("FunctionTimeout", "checkout did not finish within its timeout "
                             "of 0.5s", file=None, line=None), duration_ms=500.6)
    cause = classify(rec)
    assert cause.cls == "timeout" and cause.span is not None and cause.span["id"] == "s4"
    assert cause.details["dependency"] == CHARGES


def test_function_timeout_with_no_io_blames_the_functions_own_code() -> None:
    rec = record(error=error("FunctionTimeout", "busy did not finish within its timeout of "
                             "2s", file=None, line=None), function="busy", duration_ms=2001)
    cause = classify(rec)
    assert cause.cls == "timeout" and cause.span is None
    assert "its own code" in cause.message


# -- payload shape --------------------------------------------------------------------------


def test_key_error_after_a_reshaped_2xx_is_a_payload_shape_change_naming_the_field() -> None:
    rec = record(http("s3", status=200, body=RESHAPED),
                 error=error("KeyError", "'id'", source='charge_id = charge["id"]'))
    cause = classify(rec, {CHARGES: [CHARGE, {**CHARGE, "id": "ch_7", "amount": 100}]})
    assert cause.cls == "payload_shape" and cause.span is not None
    assert cause.details["missing"] == ["id"]
    assert cause.details["retyped"] == {"amount": ["int", "str"]}
    assert cause.details["added"] == ["charge_id"] and cause.details["field"] == "id"
    assert cause.message == (f"{CHARGES} answered 200 with a changed body (missing id; "
                             "amount int → str) — KeyError 'id' at functions/checkout.py:73")
    assert "'id'" in cause.suggestion and 'charge["id"]' in cause.suggestion
    assert "pin the provider's API version" in cause.suggestion
    assert "2 earlier successful calls" in cause.suggestion


def test_key_error_after_a_2xx_without_earlier_answers_is_a_plain_exception() -> None:
    rec = record(http("s3", status=200, body=RESHAPED),
                 error=error("KeyError", "'id'", source='charge_id = charge["id"]'))
    cause = classify(rec)
    assert cause.cls == "exception"
    assert cause.message == "KeyError 'id' at functions/checkout.py:73"


def test_a_shape_change_that_does_not_touch_the_missing_key_does_not_explain_it() -> None:
    rec = record(http("s3", status=200, body={**CHARGE, "amount": "9.00"}),
                 error=error("KeyError", "'shipping'"))
    assert classify(rec, {CHARGES: [CHARGE]}).cls == "exception"


def test_type_error_after_a_retyped_field_is_a_payload_shape_change() -> None:
    rec = record(http("s3", status=200, body={**CHARGE, "amount": "9.00"}),
                 error=error("TypeError", "unsupported operand type(s) for /: 'str' and "
                             "'int'"))
    cause = classify(rec, {CHARGES: [CHARGE]})
    assert cause.cls == "payload_shape" and cause.details["retyped"] == {
        "amount": ["int", "str"]}


def test_key_error_with_no_http_span_is_an_exception_at_its_line() -> None:
    rec = record(db("s3", "SELECT id FROM users WHERE id = %s", "db.select(users)"),
                 error=error("KeyError", "'amount_cents'", file="functions/orders.py",
                             line=12, source='amount = input["amount_cents"]'),
                 function="orders")
    cause = classify(rec, {CHARGES: [CHARGE]})
    assert cause.cls == "exception" and cause.span is None
    assert cause.message == "KeyError 'amount_cents' at functions/orders.py:12"
    assert cause.suggestion.startswith(
        "functions/orders.py:12 (`amount = input[\"amount_cents\"]`) reads key "
        "'amount_cents'")
    assert f"flux replay {RID[:18]}" in cause.suggestion


# -- the function's own answers -------------------------------------------------------------


def test_function_error_without_failing_io_is_the_function_rejecting_the_request() -> None:
    rec = record(db("s3", "SELECT id FROM users WHERE id = %s", "db.select(users)"),
                 error=function_error(404, "user_not_found", "no user with id 9"))
    cause = classify(rec)
    assert cause.cls == "exception"
    assert cause.message.startswith("the function rejected the request: user_not_found (404)")
    assert "functions/checkout.py:64" in cause.message


def test_gateway_refusals_say_no_function_ran() -> None:
    rec = record(error={"type": "GatewayError", "code": "invalid_json",
                        "message": "the body is not JSON", "http_status": 400})
    rec["spans"] = rec["spans"][:1]
    cause = classify(rec)
    assert cause.cls == "exception" and "before any function ran" in cause.message


def test_a_successful_record_has_no_root_cause() -> None:
    rec = record(error=error("KeyError", "'id'"))
    rec.update(status="ok", error=None)
    with pytest.raises(ValueError, match="succeeded"):
        classify(rec)


def test_root_cause_to_json_uses_the_why_keys() -> None:
    cause = classify(unique("Key (email)=(ada@example.com) already exists."))
    assert set(cause.to_json()) == {"class", "message", "span", "details"}
    assert cause.to_json()["class"] == "constraint"


# -- dependency keys and shapes -------------------------------------------------------------


@pytest.mark.parametrize(("method", "url", "key"), [
    ("POST", "http://127.0.0.1:4010/v1/charges?expand=customer", CHARGES),
    ("get", "https://api.stripe.com:443/v1/customers/cus_9Xk2/", "GET api.stripe.com"
     "/v1/customers/:id"),
    ("GET", "http://Users.internal/users/42/orders/7f1d8e0c-9f5e-4c4e-8a37-1c2b3d4e5f60",
     "GET users.internal/users/:id/orders/:id"),
    ("DELETE", "http://api/v2/lists/ada@example.com", "DELETE api/v2/lists/:id"),
    ("GET", "http://api/oauth2/token", "GET api/oauth2/token"),
])
def test_dependency_key(method: str, url: str, key: str) -> None:
    assert dependency_key({"attrs": {"method": method, "url": url}}) == key


def test_dependency_key_from_a_span_without_attrs_reads_its_name() -> None:
    assert dependency_key({"name": "http.post 127.0.0.1:4010/v1/charges"}) == CHARGES


def test_shape_of_flattens_objects_and_arrays() -> None:
    body = {"id": "ch_1", "amount": 900, "card": {"brand": "visa", "exp": None},
            "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2.5}], "tags": [],
            "paid": True, "fee": "[redacted hmac-sha256:0123456789abcdef]"}
    assert shape_of(body) == {
        "id": "str", "amount": "int", "card": "object", "card.brand": "str",
        "card.exp": "null", "items": "array", "items[]": "object", "items[].sku": "str",
        "items[].qty": "float|int", "tags": "array", "paid": "bool", "fee": "redacted"}
    assert shape_of([1, "a"]) == {"[]": "int|str"}
    assert shape_of("ok") == {"": "str"}


def test_shape_change_reports_only_the_topmost_missing_field() -> None:
    earlier = [{"id": "a", "card": {"brand": "visa", "last4": "4242"}}]
    assert shape_change(earlier, {"id": "b"}) == {"missing": ["card"], "retyped": {},
                                                  "added": []}
    assert shape_change(earlier, {"id": "b", "card": None}) == {
        "missing": [], "retyped": {"card": ["object", "null"]}, "added": []}


def test_shape_change_ignores_additions_numbers_empty_lists_and_truncation() -> None:
    earlier = [{"id": "a", "price": 9, "items": [{"sku": "x"}]}]
    assert shape_change(earlier, {"id": "b", "price": 9.5, "items": [], "new": 1}) is None
    assert shape_change(earlier, {"_flux_truncated": True, "size": 10**7}) is None
    assert shape_change([], {"id": "a"}) is None


def test_one_odd_earlier_answer_does_not_hide_a_field_but_an_optional_one_is_not_expected(
) -> None:
    usual = {"id": "ch", "failure_code": None}
    odd = [usual] * 9 + [{"failure_code": None}]  # one earlier answer lacked the id
    assert shape_change(odd, {"failure_code": None})["missing"] == ["id"]  # type: ignore[index]
    optional = [usual] * 7 + [{"id": "ch"}] * 3  # failure_code absent in 3 of 10
    assert shape_change(optional, {"id": "ch"}) is None


# -- never raises ---------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=10)
_junk = _json | st.sampled_from([float("nan"), float("inf"), 10**400, b"\xff", (1, 2)])


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return strategy | _junk


_errors = st.fixed_dictionaries({}, optional={
    "type": _maybe(st.sampled_from(["timeout", "connection", "http_status", "CancelledError",
                                    "UniqueViolation", "KeyError"])),
    "message": _maybe(st.text(max_size=30)),
    "status": _maybe(st.sampled_from([200, 404, 429, 503])),
    "timeout_s": _junk,
    "sqlstate": _maybe(st.sampled_from(["23505", "23503", "23502", "23514", "23P01", "57014",
                                        "55P03", "40P01", "08006", "42P01", "P0001"])),
    "detail": _maybe(st.sampled_from(['Key (a, b)=(1, 2) already exists.',
                                      'Key (lower(e::text))=(x) already exists.',
                                      'Key (x)=(1) is not present in table "t".',
                                      'Key (id)=(1) is still referenced from table "o".',
                                      "Key ()=() already exists.", 'Key ((((=( is '])),
    "constraint": _junk, "table": _junk, "column": _junk,
})
_spans = st.fixed_dictionaries({}, optional={
    "id": _maybe(st.sampled_from(["s1", "s2", "s3", "s4"])),
    "kind": _maybe(st.sampled_from(["gateway", "function", "db", "http", "queue", "invoke",
                                    "custom"])),
    "name": _junk, "status": _maybe(st.sampled_from(["ok", "error"])),
    "start_ms": _junk, "duration_ms": _junk, "file": _junk, "line": _junk,
    "error": _maybe(_errors),
    "attrs": _maybe(st.fixed_dictionaries({}, optional={
        "method": _maybe(st.sampled_from(["GET", "POST"])),
        "url": _maybe(st.sampled_from([f"{PROVIDER}/v1/charges", "http://[::1", "x:99999",
                                       "", "http://h/a/1?q=2"])),
        "status": _maybe(st.sampled_from([200, 201, 404, 429, 500, 503])),
        "timeout_s": _junk, "sql": _junk,
        "response": _maybe(st.fixed_dictionaries({}, optional={
            "status": _junk, "body": _json,
            "headers": _maybe(st.dictionaries(st.sampled_from(["retry-after", "x"]),
                                              _json, max_size=2))})),
    })),
})
_answers = st.fixed_dictionaries({}, optional={
    "status": _junk, "body": _json, "error": _maybe(_errors),
    "headers": _maybe(st.dictionaries(st.sampled_from(["retry-after", "x"]), _json,
                                      max_size=2)) | st.lists(st.tuples(st.text(), _json))})
_tapes = st.lists(st.fixed_dictionaries({}, optional={
    "kind": _maybe(st.sampled_from(["http", "db"])),
    "span_id": _maybe(st.sampled_from(["s1", "s2", "s3", "s4"])), "value": _maybe(_answers)}),
    max_size=4)
_records = st.fixed_dictionaries({"status": st.sampled_from(["error", None, "weird"])},
                                 optional={
    "request_id": _junk, "function": _junk, "duration_ms": _junk, "tape": _maybe(_tapes),
    "spans": _maybe(st.lists(_spans, max_size=6)),
    "error": _maybe(st.fixed_dictionaries({}, optional={
        "type": _maybe(st.sampled_from(["FunctionTimeout", "FunctionError", "KeyError",
                                        "HttpTimeout", "UniqueViolation", "Overloaded",
                                        "GatewayError", "AttributeError"])),
        "message": _maybe(st.sampled_from(["'id'", "x has no attribute 'y'",
                                           "f did not finish within its timeout of 1.5s"])),
        "sqlstate": _maybe(st.sampled_from(["23505", "57014", "40001", "XX000"])),
        "http_status": _junk, "code": _junk, "file": _junk, "line": _junk,
        "span_id": _junk, "stack": _junk, "detail": _junk,
    })),
})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rec=_records, bodies=st.lists(_json, max_size=3))
def test_classify_never_raises_on_a_failing_record(rec: dict[str, Any],
                                                   bodies: list[Any]) -> None:
    spans = rec.get("spans") if isinstance(rec.get("spans"), list) else []
    earlier = {dependency_key(s): bodies for s in spans if isinstance(s, dict)}
    before = copy.deepcopy(rec)
    cause = classify(rec, earlier)
    assert isinstance(cause, RootCause) and cause.cls in CLASSES
    assert cause.message and "\n" not in cause.message
    assert isinstance(cause.suggestion, str) and cause.suggestion
    assert isinstance(cause.details, dict)
    assert cause.span is None or isinstance(cause.span, dict)
    assert rec == before or rec != rec  # untouched (NaN is never equal to itself)


@settings(max_examples=200, deadline=None)
@given(earlier=st.lists(_json, max_size=4), now=_json)
def test_shape_change_is_none_or_well_formed(earlier: list[Any], now: Any) -> None:
    change = shape_change(earlier, now)
    if change is not None:
        assert change["missing"] or change["retyped"]
        assert set(change["missing"]).isdisjoint(change["retyped"])
        assert not set(change["missing"]) & set(shape_of(now))
    assert shape_change([now], now) is None
