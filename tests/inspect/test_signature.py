"""Failure signatures: the same bug gives the same vector whatever the request, the time
or the data; different bugs land apart; vectors are unit length, deterministic and stable
across processes (they are stored and compared later)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from flux.inspect._classify import classify
from flux.inspect._signature import DIM, features, signature_text, vector
from tests.inspect.test_classify import (
    CHARGE,
    CHARGES,
    RESHAPED,
    error,
    function_error,
    http,
    record,
    unique,
)


def signed(rec: dict[str, Any], earlier: dict[str, list[Any]] | None = None) -> list[str]:
    return features(rec, classify(rec, earlier or {}))


def distance(a: list[float], b: list[float]) -> float:
    return 1.0 - sum(x * y for x, y in zip(a, b, strict=True))


def rate_limited(request_id: str, order: int, function: str = "checkout") -> dict[str, Any]:
    return record(http("s3", status=429, headers={"retry-after": str(order)},
                       start=order * 3.0, duration=order * 0.7),
                  error=function_error(502, "payment_failed",
                                       f"payment provider answered 429 for order {order}"),
                  function=function, request_id=request_id, duration_ms=20.0 + order)


def test_the_same_bug_at_another_time_on_other_data_gives_the_same_vector() -> None:
    first = signed(rate_limited("01a1fc90-0000-7000-8000-000000000001", 2))
    again = signed(rate_limited("01a1fd00-1111-7000-8000-000000000002", 977))
    assert first == again and vector(first) == vector(again)
    assert signature_text(first) == signature_text(again)
    assert {"class:rate_limit", f"dep:{CHARGES}", "status:429", "code:payment_failed",
            "fn:checkout", "type:FunctionError",
            "span:http.post 127.0.0.1:4010/v1/charges"} <= set(first)
    assert "at:functions/checkout.py:52" in first  # the failing call, not the raise


def test_the_same_constraint_on_another_value_gives_the_same_vector() -> None:
    ada = signed(unique("Key (email)=(ada@example.com) already exists."))
    bob = signed(unique("Key (email)=(bob.smith+x@mail.example.org) already exists."))
    assert ada == bob and vector(ada) == vector(bob)
    assert {"class:constraint", "constraint:users_email_key", "sqlstate:23505",
            "table:users", "type:UniqueViolation"} <= set(ada)
    assert not any("ada" in f or "example.com" in f for f in ada)


def test_features_carry_no_request_ids_or_values() -> None:
    rid = "01a1fc90-4269-7d58-8017-faf3ae3bb5ff"
    rec = record(error=error("ValueError", "invalid literal for int() with base 10: 'x9'"),
                 request_id=rid)
    found = signed(rec)
    assert "msg:ValueError" not in found and "msg:invalid literal for int() with base #: ?" \
        in found
    assert not any(rid[:8] in f for f in found)


def test_payload_shape_features_name_what_changed() -> None:
    rec = record(http("s3", status=200, body=RESHAPED),
                 error=error("KeyError", "'id'", source='charge_id = charge["id"]'))
    found = signed(rec, {CHARGES: [CHARGE]})
    assert {"class:payload_shape", "missing:id", "retyped:amount:int>str", "field:id",
            f"dep:{CHARGES}"} <= set(found)


def test_nearness_follows_what_makes_bugs_alike() -> None:
    checkout = vector(signed(rate_limited("a", 1)))
    refund = vector(signed(rate_limited("b", 1, function="refund")))
    unavailable = vector(signed(record(http("s3", status=503),
                                       error=function_error(502, "payment_failed", "503"))))
    email = vector(signed(unique("Key (email)=(a@b.c) already exists.")))
    name = vector(signed(unique("Key (name)=(x) already exists.", "users_name_key")))
    # One provider rate-limiting two functions: one incident.
    assert distance(checkout, refund) < 0.15
    # The same provider failing another way, another constraint: related, not the same.
    assert 0.15 < distance(checkout, unavailable) < distance(checkout, email)
    assert distance(email, name) > 0.35  # flux why's "similar" cut-off
    assert distance(checkout, email) > 0.8


def test_a_line_number_moves_the_vector_a_little_and_the_grouping_text_not_at_all() -> None:
    at_73 = signed(record(error=error("KeyError", "'id'", line=73)))
    at_80 = signed(record(error=error("KeyError", "'id'", line=80)))
    assert at_73 != at_80 and signature_text(at_73) == signature_text(at_80)
    assert 0 < distance(vector(at_73), vector(at_80)) < 0.1


def test_vectors_are_stable_across_processes_and_versions() -> None:
    # Stored vectors are compared with new ones: these pin the hash and the slot layout.
    assert vector(["class:timeout"]) == [1.0] + [0.0] * (DIM - 1)
    dep = vector([f"dep:{CHARGES}"])
    assert dep[61] == -1.0 and sum(abs(x) for x in dep) == 1.0
    mixed = vector(["class:timeout", "constraint:users_email_key"])
    assert math.isclose(mixed[0], 0.6) and math.isclose(mixed[62], 0.8)


def test_signature_text_is_sorted_and_distinct() -> None:
    text = signature_text(["fn:b", "class:timeout", "fn:b", "at:x.py:3", "dep:a"])
    assert text == "class:timeout | dep:a | fn:b"


_features = st.lists(
    st.tuples(st.sampled_from(["class", "fn", "dep", "constraint", "at", "msg", "other", ""]),
              st.text(max_size=20)).map(lambda p: f"{p[0]}:{p[1]}"), max_size=12)


@settings(max_examples=300, deadline=None)
@given(feats=_features, order=st.randoms(use_true_random=False))
def test_vector_is_deterministic_unit_length_and_set_like(feats: list[str], order: Any) -> None:
    vec = vector(feats)
    assert len(vec) == DIM and all(math.isfinite(x) for x in vec)
    assert math.isclose(math.sqrt(sum(x * x for x in vec)), 1.0, rel_tol=1e-9)
    shuffled = feats + feats[: len(feats) // 2]
    order.shuffle(shuffled)
    assert vector(shuffled) == vec == vector(feats)
    assert signature_text(shuffled) == signature_text(feats)


@settings(max_examples=100, deadline=None)
@given(feats=_features)
def test_signature_text_leaves_out_only_line_numbers(feats: list[str]) -> None:
    assume(not any("|" in f for f in feats))
    kept = signature_text(feats)
    for feature in set(feats):
        assert (feature in kept.split(" | ")) == (not feature.startswith("at:"))
