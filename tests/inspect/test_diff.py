"""Trace diff and departure: spans aligned by what they are, not where they fall."""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from flux.inspect._diff import align, departure, diff, json_diff, span_key, to_json

PROVIDER = "http://127.0.0.1:4010"
SELECT_USER = "SELECT id FROM users WHERE id = %s"
INSERT_ORDER = ("INSERT INTO orders (user_id, amount_cents, status) VALUES (%s, %s, 'pending')"
                " RETURNING id")
UPDATE_ORDER = "UPDATE orders SET status = %s, charge_id = %s, updated_at = %s WHERE id = %s"
UPDATE_USER = "UPDATE users SET plan = 'pro' WHERE id = %s"


class Trace:
    """Builds spans the way the recorder does: ids s1, s2, … in start order."""

    def __init__(self, function: str = "checkout") -> None:
        self.spans: list[dict[str, Any]] = []
        self.clock = 0.0
        self.add("gateway", f"POST /{function}", attrs={"kind": "http"})
        self.add("function", function, parent="s1", file=f"functions/{function}.py", line=20)

    def add(self, kind: str, name: str, *, parent: str | None = None, attrs: Any = None,
            status: str = "ok", error: Any = None, duration: float = 2.0,
            file: str | None = "functions/checkout.py", line: int | None = 40
            ) -> dict[str, Any]:
        self.clock += 1
        span = {"id": f"s{len(self.spans) + 1}", "parent_id": parent, "name": name,
                "kind": kind, "start_ms": self.clock, "duration_ms": duration,
                "status": status, "file": file, "line": line, "attrs": attrs or {},
                "error": error}
        self.spans.append(span)
        return span

    def db(self, sql: str, params: Any, *, rowcount: int = 1, name: str = "db.select(users)",
           **kwargs: Any) -> dict[str, Any]:
        return self.add("db", name, parent="s2", attrs={
            "sql": sql, "params": params, "tables": [name[name.index("(") + 1:-1]],
            "verb": name[3:name.index("(")], "rowcount": rowcount}, **kwargs)

    def http(self, status: int | None, *, body: Any = None, request: Any = None,
             parent: str = "s2", path: str = "/v1/charges", **kwargs: Any) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "method": "POST", "url": f"{PROVIDER}{path}", "call_seq": 1, "timeout_s": 5,
            "request": {"headers": {"Idempotency-Key": "x-1"}, "params": None,
                        "body": request or {"amount": 900, "currency": "usd"}}}
        if status is not None:
            attrs["status"] = status
            attrs["response"] = {"status": status, "headers": {}, "body": body}
        if status is not None and status >= 400:
            kwargs.setdefault("status", "error")
            kwargs.setdefault("error", {"type": "http_status", "status": status,
                                        "message": f"answered {status}"})
        return self.add("http", f"http.post 127.0.0.1:4010{path}", parent=parent, attrs=attrs,
                        **kwargs)


def checkout(*, charge_status: int = 200, order_id: int = 7, amount: int = 900,
             finish: bool = True) -> Trace:
    """The example shop's checkout: user lookup, order insert, charge, two updates."""
    t = Trace()
    t.db(SELECT_USER, [1])
    t.db(INSERT_ORDER, [1, amount], name="db.insert(orders)")
    charge = t.add("custom", "payments.charge", parent="s2")
    answer = {"id": "ch_1", "status": "succeeded"} if charge_status < 400 else {
        "error": {"type": "rate_limit"}}
    t.http(charge_status, parent=charge["id"], body=answer,
           request={"amount": amount, "currency": "usd", "order_id": order_id})
    if charge_status >= 400:
        charge.update(status="error", error={"type": "FunctionError", "message": "no charge"})
    elif finish:
        t.db(UPDATE_ORDER, ["paid", "ch_1", "2024-05-01T00:00:00", order_id],
             name="db.update(orders)")
        t.db(UPDATE_USER, [1], name="db.update(users)")
    return t


def record(trace: Trace, *, request_id: str = "a", status: str = "ok",
           http_status: int = 200, body: Any = None, error: Any = None,
           amount: int = 900, duration: float = 20.0) -> dict[str, Any]:
    return {"request_id": request_id, "function": "checkout", "status": status,
            "http_status": http_status, "duration_ms": duration,
            "request": {"method": "POST", "route": "/checkout",
                        "headers": {"content-type": "application/json",
                                    "content-length": str(30 + amount)},
                        "query": {}, "body": {"user_id": 1, "amount_cents": amount}},
            "response": {"status": http_status, "body": body or {"status": "paid"}},
            "error": error, "spans": trace.spans}


def statuses(changes: list[Any]) -> list[str]:
    return [c.status for c in changes]


# -- span keys and alignment ---------------------------------------------------------------


def test_span_key_names_the_call_not_its_values() -> None:
    t = Trace()
    one = t.db("SELECT id FROM users WHERE id = 1", None)
    other = t.db("select id\n  from users where id = 42", None)
    http = t.http(200)
    custom = t.add("custom", "payments.charge")
    assert span_key(one) == span_key(other)
    assert span_key(one)[:2] == ("db", "db.select(users)")
    assert span_key(http) == ("http", "http.post 127.0.0.1:4010/v1/charges",
                              "POST 127.0.0.1:4010/v1/charges")
    assert span_key(custom) == ("custom", "payments.charge", "payments.charge")
    assert span_key(t.db("SELECT email FROM users WHERE id = 1", None)) != span_key(one)


def test_identical_executions_are_all_same() -> None:
    a, b = record(checkout(), request_id="a"), record(checkout(), request_id="b")
    result = diff(a, b)
    assert statuses(result.spans) == ["same"] * len(a["spans"])
    assert all(c.latency_delta_ms == 0 for c in result.spans)
    assert result.summary["identical"] is True
    assert (result.a_id, result.b_id) == ("a", "b")
    assert result.input == result.output == result.error == {}


def test_an_inserted_http_call_is_one_added_span_not_a_shifted_tail() -> None:
    a = checkout()
    b = checkout()
    audit = b.http(200, path="/v1/audit", body={"ok": True})
    b.spans.remove(audit)
    b.spans.insert(3, audit)  # between the order insert and the charge
    result = diff(record(a), record(b))
    assert statuses(result.spans).count("added") == 1
    assert {c.status for c in result.spans} == {"same", "added"}
    added = next(c for c in result.spans if c.status == "added")
    assert added.b is audit and added.a is None and result.spans.index(added) == 3
    assert result.summary == {**result.summary, "added": 1, "removed": 0, "changed": 0}


def test_a_changed_http_status_is_changed_with_the_status() -> None:
    result = diff(record(checkout()), record(checkout(charge_status=429)))
    http = next(c for c in result.spans if c.a and c.a["kind"] == "http")
    assert http.status == "changed"
    assert http.changes["http_status"] == [200, 429]
    assert http.changes["status"] == ["ok", "error"]
    assert http.changes["error"][0] is None and http.changes["error"][1]["status"] == 429
    assert {k: v for k, v in http.changes.items() if k.startswith("response.")} == {
        "response.body.error": ["<missing>", {"type": "rate_limit"}],
        "response.body.id": ["ch_1", "<missing>"],
        "response.body.status": ["succeeded", "<missing>"]}
    # The two updates the failed run never made are removed, not "changed".
    assert statuses(result.spans)[-2:] == ["removed", "removed"]


def test_an_answer_kept_only_on_the_tape_is_compared_too() -> None:
    def taped(charge_id: str) -> dict[str, Any]:
        rec = record(checkout())
        http = next(s for s in rec["spans"] if s["kind"] == "http")
        answer = http["attrs"].pop("response")
        rec["tape"] = [{"seq": 1, "kind": "http", "key": "POST …", "span_id": http["id"],
                        "value": {**answer, "body": {"id": charge_id}}}]
        return rec

    a, b = taped("ch_1"), taped("ch_2")
    http = next(c for c in diff(a, b).spans if c.a and c.a["kind"] == "http")
    assert http.changes == {"response.body.id": ["ch_1", "ch_2"]}
    assert "response" not in next(s for s in a["spans"] if s["kind"] == "http")["attrs"]


def test_request_body_differences_are_json_paths() -> None:
    result = diff(record(checkout(order_id=7)), record(checkout(order_id=8)))
    http = next(c for c in result.spans if c.a and c.a["kind"] == "http")
    assert http.changes == {"request.body.order_id": [7, 8]}


def test_same_fingerprint_other_literal_is_changed_only_when_text_or_params_differ() -> None:
    def one(sql: str, params: Any) -> dict[str, Any]:
        t = Trace()
        t.db(sql, params)
        return record(t)

    same = diff(one(SELECT_USER, [1]), one(SELECT_USER, [1]))
    assert statuses(same.spans) == ["same"] * 3
    params = diff(one(SELECT_USER, [1]), one(SELECT_USER, [2]))
    assert statuses(params.spans) == ["same", "same", "changed"]
    assert params.spans[2].changes == {"params": [[1], [2]]}
    inline = diff(one("SELECT id FROM users WHERE id = 1", None),
                  one("SELECT id FROM users WHERE id = 2", None))
    assert statuses(inline.spans) == ["same", "same", "changed"]
    assert inline.spans[2].changes == {"sql": ["SELECT id FROM users WHERE id = 1",
                                               "SELECT id FROM users WHERE id = 2"]}
    spaced = diff(one(SELECT_USER, [1]), one(SELECT_USER.replace(" ", "\n  ", 2), [1]))
    assert statuses(spaced.spans) == ["same"] * 3  # layout is not a difference


def test_a_loop_of_three_against_four_is_one_added() -> None:
    def loop(n: int) -> dict[str, Any]:
        t = Trace()
        t.db(SELECT_USER, [1])
        for i in range(n):
            t.db("INSERT INTO notes (body) VALUES (%s)", ["same"], name="db.insert(notes)")
            t.add("queue", "queue.push(send_email)", attrs={"job_id": str(i)})
        t.db(UPDATE_USER, [1], name="db.update(users)")
        return record(t)

    result = diff(loop(3), loop(4))
    assert statuses(result.spans).count("added") == 2  # one more insert, one more push
    assert [c.b["name"] for c in result.spans if c.status == "added"] == [
        "db.insert(notes)", "queue.push(send_email)"]
    assert set(statuses(result.spans)) == {"same", "added"}  # job ids are no difference
    assert statuses(result.spans)[-1] == "same"


def test_gateway_and_function_spans_pair_whatever_their_names() -> None:
    pairs = align(Trace("checkout").spans, Trace("checkout_v2").spans)
    assert [(a["kind"], b["kind"]) for a, b in pairs] == [("gateway", "gateway"),
                                                          ("function", "function")]
    result = diff(record(Trace("checkout")), record(Trace("checkout_v2")))
    assert result.spans[1].changes == {"name": ["checkout", "checkout_v2"]}


def test_a_reshaped_query_is_removed_and_added() -> None:
    a, b = Trace(), Trace()
    a.db(SELECT_USER, [1])
    b.db("SELECT id, email FROM users WHERE id = %s", [1])
    assert statuses(diff(record(a), record(b)).spans) == ["same", "same", "removed", "added"]


# -- the whole diff ------------------------------------------------------------------------


def test_inputs_outputs_errors_and_latency_are_compared() -> None:
    a = record(checkout(amount=900), amount=900, duration=20.0)
    b = record(checkout(charge_status=429, amount=500), amount=500, duration=35.5,
               status="error", http_status=502, body={"error": {"code": "payment_failed"}},
               error={"type": "FunctionError", "code": "payment_failed", "line": 60})
    result = diff(a, b)
    assert result.input == {"$.body.amount_cents": [900, 500]}  # content-length is noise
    assert result.output == {
        "$.body.error": ["<missing>", {"code": "payment_failed"}],
        "$.body.status": ["paid", "<missing>"], "$.http_status": [200, 502],
        "$.status": ["ok", "error"]}
    assert result.error == {"$": [None, b["error"]]}
    assert result.summary["latency_delta_ms"] == 15.5
    assert result.summary["identical"] is False
    slower = copy.deepcopy(a)
    slower["spans"][2]["duration_ms"] = 5.25
    assert diff(a, slower).spans[2].latency_delta_ms == 3.25


def test_mutations_pair_by_row_and_by_the_step_that_wrote_them() -> None:
    a_trace, b_trace = checkout(order_id=7), checkout(order_id=8)

    def mutation(trace: Trace, name: str, table: str, pk: int, op: str, new: Any,
                 **extra: Any) -> dict[str, Any]:
        span = next(s for s in trace.spans if s["name"] == name)
        return {"table_name": table, "pk": {"id": pk}, "op": op, "old": None, "new": new,
                "changed_cols": [], "rolled_back": False, "span_id": span["id"], **extra}

    a_muts = [mutation(a_trace, "db.insert(orders)", "orders", 7, "INSERT",
                       {"id": 7, "amount_cents": 900}),
              mutation(a_trace, "db.update(users)", "users", 1, "UPDATE", {"plan": "pro"})]
    b_muts = [mutation(b_trace, "db.insert(orders)", "orders", 8, "INSERT",
                       {"id": 8, "amount_cents": 900}),
              mutation(b_trace, "db.update(users)", "users", 1, "UPDATE", {"plan": "team"}),
              mutation(b_trace, "db.update(orders)", "orders", 8, "UPDATE", {"status": "paid"})]
    result = diff(record(a_trace), record(b_trace), a_muts, b_muts)
    assert result.mutations["changed"] == {
        "orders id=7 INSERT": {"pk": [{"id": 7}, {"id": 8}], "new.id": [7, 8]},
        "users id=1 UPDATE": {"new.plan": ["pro", "team"]}}
    assert list(result.mutations["added"]) == ["orders id=8 UPDATE"]
    assert result.mutations["removed"] == {}
    assert result.summary["mutations"] == {"added": 1, "removed": 0, "changed": 2}


def test_to_json_is_plain_json() -> None:
    a, b = record(checkout()), record(checkout(charge_status=500))
    a["request_id"], b["request_id"] = uuid.uuid4(), uuid.uuid4()
    at = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    muts = [{"table_name": "orders", "pk": {"id": 1}, "op": "INSERT", "old": None,
             "new": {"id": 1}, "changed_cols": [], "rolled_back": True, "span_id": "s4",
             "request_id": b["request_id"], "at": at}]
    out = to_json(diff(a, b, (), muts))
    assert json.loads(json.dumps(out)) == out
    assert out["b_id"] == str(b["request_id"])
    assert out["mutations"]["added"]["orders id=1 INSERT"]["at"] == at.isoformat()
    assert out["spans"][0]["key"] == ["gateway", "POST /checkout", "POST /checkout"]


# -- departure -----------------------------------------------------------------------------


def test_departure_names_the_call_that_answered_429_where_the_success_got_200() -> None:
    good = record(checkout())
    failed = record(checkout(charge_status=429), status="error", http_status=502)
    found = departure(failed, good)
    assert found is not None
    # The custom span around the call failed too; the departure is the call inside it.
    assert found["status"] == "changed" and found["index"] == 5
    assert found["description"] == (
        "POST 127.0.0.1:4010/v1/charges answered 429 where the last success got 200")
    assert found["expected"]["http_status"] == 200 and found["actual"]["http_status"] == 429
    assert found["actual"]["file"] == "functions/checkout.py"


def test_departure_of_a_run_that_stopped_before_a_call_the_success_made() -> None:
    good = record(checkout())
    short = Trace()
    short.db(SELECT_USER, [1], status="error",
             error={"type": "QueryCanceled", "sqlstate": "57014", "message": "timeout"})
    failed = record(short, status="error", http_status=500)
    found = departure(failed, good)
    assert found is not None and found["index"] == 2
    assert found["description"] == ("SELECT id FROM users … failed with QueryCanceled (57014) "
                                    "where the last success ran it without error")
    healthy = Trace()
    healthy.db(SELECT_USER, [1])
    found = departure(record(healthy, status="error"), good)
    assert found is not None and found["status"] == "removed" and found["actual"] is None
    assert found["expected"]["sql"] == INSERT_ORDER
    assert found["description"] == (
        "INSERT INTO orders … was not reached (the last success ran it next)")


def test_departure_of_a_timeout_and_of_an_extra_call() -> None:
    good = record(checkout())
    slow = checkout(charge_status=200)
    http = next(s for s in slow.spans if s["kind"] == "http")
    del http["attrs"]["status"], http["attrs"]["response"]
    http.update(status="error", error={"type": "timeout", "message": "no answer within 5s"})
    found = departure(record(slow, status="error"), good)
    assert found is not None and found["description"] == (
        "POST 127.0.0.1:4010/v1/charges timed out (no answer within 5s) "
        "where the last success got 200")
    extra = checkout()
    extra.http(200, path="/v1/refunds")
    found = departure(record(extra, status="error"), good)
    assert found is not None and found["status"] == "added" and found["expected"] is None
    assert found["description"] == ("POST 127.0.0.1:4010/v1/refunds was called where the "
                                    "last success made no such call")


def test_no_departure_when_the_failure_came_after_the_same_calls() -> None:
    good = record(checkout())
    assert departure(copy.deepcopy(good), good) is None
    failed = copy.deepcopy(good)
    failed["spans"][1].update(status="error", error={"type": "KeyError", "message": "'id'"})
    failed["spans"][0].update(status="error")
    for span in failed["spans"][2:]:  # other ids, other bodies: not a departure
        span["duration_ms"] = 9.0
        if span["kind"] == "db":
            span["attrs"]["params"] = [99]
    assert departure(failed, good) is None


# -- JSON diff -----------------------------------------------------------------------------


def test_json_diff_walks_nested_dicts_and_lists() -> None:
    a = {"id": 1, "card": {"brand": "visa", "last4": "4242"}, "items": [{"sku": "a"}, 2, 3],
         "tags": ["x", "y"], "amount": 1, "live": True, "a.b": 1}
    b = {"card": {"brand": "mc", "last4": "4242"}, "items": [{"sku": "b"}, 2, 3, 4],
         "tags": ["x", "new", "y"], "amount": 1.0, "live": 1, "a.b": 2, "extra": None}
    assert json_diff(a, b) == {
        "$.id": [1, "<missing>"],
        "$.card.brand": ["visa", "mc"],
        "$.items[0].sku": ["a", "b"],
        "$.items[3]": ["<missing>", 4],
        "$.tags[1]": ["<missing>", "new"],  # an inserted item, not two changed ones
        "$.live": [True, 1],  # JSON true is not 1 …
        '$["a.b"]': [1, 2],
        "$.extra": ["<missing>", None],
    }  # … but 1 and 1.0 are the same number
    assert json_diff(a, copy.deepcopy(a)) == {}
    assert json_diff([True, False], [True, 0]) == {"$[1]": [False, 0]}
    assert json_diff([{"id": 1}, {"id": 2}], [{"id": 1}, {"id": 9}, {"id": 2}]) == {
        "$[1]": ["<missing>", {"id": 9}]}
    assert json_diff([{"id": 1, "v": 1}], [{"id": 1, "v": 2}]) == {"$[0].v": [1, 2]}
    # An item only a has and one only b has, at the same index, share that path.
    assert json_diff(["a", "b", "x"], ["x", "c", "d"]) == {
        "$[0]": ["a", "<missing>"], "$[1]": ["b", "c"], "$[2]": ["<missing>", "d"]}
    assert json_diff(None, {"x": 1}) == {"$": [None, {"x": 1}]}
    assert json_diff([1, 2], {"0": 1}) == {"$": [[1, 2], {"0": 1}]}
    assert list(json_diff({"b": 1, "a": {"z": 1, "c": 1}}, {"b": 2, "a": {"z": 2, "c": 2}})
                ) == ["$.a.c", "$.a.z", "$.b"]


# -- properties ----------------------------------------------------------------------------

SQLS = ["SELECT id FROM users WHERE id = %s", "SELECT id FROM users WHERE id = 1",
        "SELECT id FROM users WHERE id = 2", "INSERT INTO notes (body) VALUES (%s)",
        "UPDATE users SET plan = 'pro'", "not sql at all"]
URLS = [f"{PROVIDER}/v1/charges", f"{PROVIDER}/v1/charges?page=2", "https://api.x.io/a"]


@st.composite
def span_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    drawn = draw(st.lists(st.one_of(
        st.tuples(st.just("db"), st.sampled_from(SQLS)),
        st.tuples(st.just("http"), st.sampled_from(URLS)),
        st.tuples(st.sampled_from(["gateway", "function", "custom", "queue", "invoke"]),
                  st.sampled_from(["a", "b"]))), max_size=25))
    spans = []
    for i, (kind, detail) in enumerate(drawn):
        attrs: dict[str, Any] = {}
        if kind == "db":
            attrs = {"sql": detail, "params": draw(st.sampled_from([None, [1], [2]]))}
        elif kind == "http":
            attrs = {"method": draw(st.sampled_from(["GET", "POST"])), "url": detail,
                     "status": draw(st.sampled_from([200, 429]))}
        spans.append({"id": f"s{i + 1}", "parent_id": f"s{i}" if i else None,
                      "name": detail if kind not in ("db", "http") else kind, "kind": kind,
                      "duration_ms": float(i), "status": draw(st.sampled_from(["ok", "error"])),
                      "attrs": attrs, "error": None})
    return spans


@given(span_lists(), span_lists())
def test_align_keeps_every_span_of_each_side_once_and_in_order(
        a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    pairs = align(a, b)
    assert [x for x, _ in pairs if x is not None] == a
    assert [y for _, y in pairs if y is not None] == b
    assert all(x is not None or y is not None for x, y in pairs)
    for x, y in pairs:
        if x is not None and y is not None:
            assert x["kind"] == y["kind"]
            assert x["kind"] in ("gateway", "function") or span_key(x) == span_key(y)
    assert all(x is y for x, y in align(a, a))


@given(span_lists(), span_lists())
def test_diff_and_departure_take_any_spans(a: list[dict[str, Any]],
                                           b: list[dict[str, Any]]) -> None:
    result = diff({"spans": a}, {"spans": b})
    assert len(result.spans) == len(align(a, b))
    assert json.loads(json.dumps(to_json(result))) == to_json(result)
    found = departure({"spans": b}, {"spans": a})
    assert found is None or found["description"]
    assert departure({"spans": a}, {"spans": a}) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=4),
    max_leaves=15)


@given(JSON, JSON)
def test_json_diff_is_empty_exactly_for_equal_values(a: Any, b: Any) -> None:
    assert json_diff(a, copy.deepcopy(a)) == {}
    found = json_diff(a, b)
    assert bool(found) == (json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True))
    assert all(path.startswith("$") for path in found)
    assert all(old != new or type(old) is not type(new) for old, new in found.values())
