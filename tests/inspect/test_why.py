"""`flux why --json` on failures the example app produces for real: each root-cause class,
the right file:line, data changes, the departure from the last success, similar failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fixtures.projects import run_flux
from tests.fixtures.shop import Shop


def why(shop: Shop, request_id: str, *args: str) -> dict[str, Any]:
    result = run_flux(["why", request_id[:18], "--json", *args], shop.root,
                      env={"DATABASE_URL": shop.db})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def line_of(shop: Shop, file: str, text: str) -> int:
    lines = (shop.root / file).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


async def customer(shop: Shop, email: str = "ada@example.com") -> int:
    status, body, _ = await shop.post("signup", {"email": email})
    assert status == 200, body
    return body["id"]


async def checkout(shop: Shop, user_id: int) -> tuple[int, Any, str]:
    return await shop.post("checkout", {"user_id": user_id, "amount_cents": 900})


async def test_rate_limit_names_the_dependency_and_the_rolled_back_order(shop: Shop) -> None:
    user = await customer(shop)
    good = (await checkout(shop, user))[2]
    shop.provider.mode = "rate_limit"
    status, _, rid = await checkout(shop, user)
    assert status == 502
    report = why(shop, rid)
    assert report["root_cause"]["class"] == "rate_limit"
    assert report["root_cause"]["span"]["kind"] == "http"
    assert "429" in report["root_cause"]["message"]
    assert report["location"]["file"] == "functions/checkout.py"
    assert report["location"]["line"] == line_of(shop, "functions/checkout.py",
                                                 "ctx.http.post(")  # the call that failed
    [order] = report["mutations"]
    assert order["table"] == "orders" and order["op"] == "INSERT" and order["rolled_back"]
    assert report["departure"]["from"] == good
    assert "429" in report["departure"]["description"]
    assert "Retry-After" in report["suggestion"] or "retry" in report["suggestion"].lower()
    assert set(report) >= {"request_id", "function", "status", "root_cause", "location",
                           "mutations", "similar", "suggestion"}


async def test_dependency_timeout(shop: Shop) -> None:
    user = await customer(shop)
    shop.provider.mode = "timeout"
    _, _, rid = await checkout(shop, user)
    report = why(shop, rid)
    assert report["root_cause"]["class"] == "timeout"
    assert "5s" in report["root_cause"]["message"] or "5 s" in report["root_cause"]["message"]
    span = report["root_cause"]["span"]
    assert span["file"] == "functions/checkout.py"
    assert span["line"] == line_of(shop, "functions/checkout.py", "ctx.http.post(")


async def test_payload_shape_change_names_the_missing_field(shop: Shop) -> None:
    user = await customer(shop)
    for _ in range(3):
        assert (await checkout(shop, user))[0] == 200
    shop.provider.mode = "shape_change"
    status, _, rid = await checkout(shop, user)
    assert status == 500
    report = why(shop, rid)
    cause = report["root_cause"]
    assert cause["class"] == "payload_shape"
    assert "id" in cause["details"]["missing"]
    assert cause["details"]["retyped"]["amount"][1] == "str"
    assert report["location"]["line"] == line_of(shop, "functions/checkout.py",
                                                 'charge_id = charge["id"]')


async def test_key_error_without_failing_io_is_an_exception_in_user_code(shop: Shop) -> None:
    user = await customer(shop)
    shop.provider.mode = "shape_change"  # no earlier success to compare the shape with
    _, _, rid = await checkout(shop, user)
    report = why(shop, rid)
    assert report["root_cause"]["class"] == "exception"
    assert "KeyError" in report["root_cause"]["message"]
    assert report["location"] == {
        "file": "functions/checkout.py",
        "line": line_of(shop, "functions/checkout.py", 'charge_id = charge["id"]'),
        "function": "checkout", "code_sha": None, "code_dirty": False}


async def test_unique_violation_names_constraint_and_value_and_similar_failures(shop: Shop
                                                                               ) -> None:
    await customer(shop, "dup@example.com")
    ids = []
    for _ in range(3):
        status, _, rid = await shop.post("signup", {"email": "dup@example.com"})
        assert status == 500
        ids.append(rid)
    report = why(shop, ids[-1])
    cause = report["root_cause"]
    assert cause["class"] == "constraint"
    assert cause["details"]["constraint"] == "users_email_key"
    assert cause["details"]["value"] == "dup@example.com"
    assert "users_email_key" in report["suggestion"]
    assert report["location"]["file"] == "functions/signup.py"
    assert [s["request_id"] for s in report["similar"]][:2] == ids[1::-1]
    assert report["similar_summary"]["count"] == 3
    text = run_flux(["why", ids[-1][:18]], shop.root, env={"DATABASE_URL": shop.db}).stdout
    assert "seen 3 time(s), this one included" in text
    assert f"the same failure: {ids[1][:18]}, {ids[0][:18]}" in text  # not "alike"
    assert "alike, not the same" not in text
    # A different constraint on another table is not "similar".
    await shop.post("checkout", {"user_id": 999, "amount_cents": 5})  # 404, not a constraint
    other = why(shop, ids[0])
    assert all(s["request_id"] != ids[0] for s in other["similar"])


async def test_human_output_reads_like_the_seed(shop: Shop) -> None:
    user = await customer(shop)
    shop.provider.mode = "error"
    _, _, rid = await checkout(shop, user)
    result = run_flux(["why", rid[:18]], shop.root, env={"DATABASE_URL": shop.db})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for label in ("Execution", "ROOT CAUSE", "LOCATION", "DATA CHANGES", "SUGGESTION",
                  "Spans", "(rolled back)", "functions/checkout.py:"):
        assert label in text, label


async def test_bad_ids_are_one_sentence(shop: Shop) -> None:
    user = await customer(shop)
    _, _, ok = await checkout(shop, user)
    env = {"DATABASE_URL": shop.db}
    cases = {
        ("why", "ffffffff"): "no execution has an id starting with",
        ("why", "not-hex!"): "is not a request id",
        ("why", ok[:18]): "succeeded",
        ("why", ok[:4]): "matches",  # every id of this test shares the first characters
    }
    for args, expected in cases.items():
        result = run_flux(list(args), Path(shop.root), env=env)
        assert result.returncode != 0 and expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
