"""The canonical form of a call: the same secret value gives the same key wherever it sits,
a stand-in mapped to the recorded marker gives the recorded key, and no key holds a value."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux._jsoncodec import encode
from flux.runtime._callkey import (
    canonical_url,
    db_key,
    describe_difference,
    endpoint_of,
    http_key,
    marker_of,
    redact,
)
from flux.runtime._redact import RedactionPolicy

POLICY = RedactionPolicy(key=b"k" * 32)
BASE, TOKEN = "https://pay.example.com/acct_Q7x9", "tok_5Rk8Wn2"
REAL = {BASE: POLICY.marker(BASE), TOKEN: POLICY.marker(TOKEN)}
# What a replay hands the code instead, mapped to the fingerprints the tape recorded.
STAND_IN = {"flux-replay-secret:BASE": REAL[BASE], "flux-replay-secret:TOKEN": REAL[TOKEN]}


def test_a_stand_in_gets_the_recorded_key_wherever_the_secret_sits() -> None:
    def calls(base: str, token: str) -> list[str]:
        return [
            http_key("POST", base + "/v1/charges", {**REAL, **STAND_IN}),
            http_key("GET", f"https://x.test/accounts/{token}/charges", {**REAL, **STAND_IN}),
            http_key("GET", "https://x.test/v1", {**REAL, **STAND_IN}, params={"t": token}),
            http_key("POST", "https://x.test/v1", {**REAL, **STAND_IN},
                     headers={"Authorization": f"Bearer {token}"}),
            http_key("POST", "https://x.test/v1", {**REAL, **STAND_IN},
                     body={"auth": {"api_token": token}}),
            db_key("SELECT 1 FROM keys WHERE k = %s", [token], {**REAL, **STAND_IN}),
        ]

    recorded = calls(BASE, TOKEN)
    assert calls("flux-replay-secret:BASE", "flux-replay-secret:TOKEN") == recorded
    assert all(BASE not in k and TOKEN not in k for k in recorded)
    assert recorded[0] == f"POST {REAL[BASE]}/v1/charges"
    assert recorded[3] == f"POST https://x.test/v1 +secrets({POLICY.fingerprint(TOKEN)})"
    assert endpoint_of(recorded[3]) == "POST https://x.test/v1"


def test_volatile_headers_never_change_the_key() -> None:
    a = http_key("POST", "https://x.test/v1", REAL,
                 headers={"Idempotency-Key": "0190-1", "traceparent": "00-aa-bb-01"})
    b = http_key("POST", "https://x.test/v1", REAL,
                 headers={"Idempotency-Key": "0191-1", "traceparent": "00-cc-dd-01"})
    assert a == b == "POST https://x.test/v1"


def test_a_url_encoded_secret_is_replaced_too() -> None:
    url = canonical_url("https://x.test/cb", REAL, params={"next": BASE})
    assert "acct_Q7x9" not in url and REAL[BASE] in url


def test_a_different_secret_value_is_a_difference_that_names_fingerprints_only() -> None:
    rotated = "tok_rotated_77Hw"
    before = http_key("POST", "https://x.test/v1", REAL,
                      headers={"Authorization": f"Bearer {TOKEN}"})
    after = http_key("POST", "https://x.test/v1", {rotated: POLICY.marker(rotated)},
                     headers={"Authorization": f"Bearer {rotated}"})
    assert before != after
    said = describe_difference(before, after)
    assert said is not None and "different secret value" in said
    assert TOKEN not in said and rotated not in said
    assert POLICY.fingerprint(rotated) in said
    assert describe_difference("GET https://a.test/x", "GET https://a.test/y") is None


def test_parameters_without_secrets_hash_as_before() -> None:
    from flux.store._statement import tape_key

    query, params = "SELECT * FROM t WHERE a = %s AND b = %s", [1, "plain text"]
    assert db_key(query, params, REAL) == tape_key(query, params)
    assert db_key(query, (1, "x"), {}) == tape_key(query, (1, "x"))


def test_marker_of_is_the_policy_marker() -> None:
    assert marker_of(POLICY.fingerprint(TOKEN)) == POLICY.marker(TOKEN)


@given(st.text(min_size=4, max_size=30).filter(lambda s: s.strip() == s and s.isprintable()),
       st.text(max_size=40))
def test_redact_never_leaves_the_secret(secret: str, around: str) -> None:
    marks = {secret: POLICY.marker(secret)}
    text = f"{around}{secret}{around}"
    shown = redact(text, marks)
    assert secret not in shown.replace(POLICY.marker(secret), "") or secret in POLICY.marker(
        secret)


# Tape keys of statements as records written before the parameters were encoded once
# (leanrec, issue 21) hold them: a replay of such a record matches its calls only if the
# same statement with the same parameters still gets the very same key.
_SECRET = "sk_live_abcdef"
_MARKS = {_SECRET: "[redacted hmac-sha256:0123456789abcdef]"}
_STORED_KEYS = [
    ("SELECT count(*) FROM items WHERE id < %s", [1000],
     "3e2dc7d980d0e798:7cd0293cbae2e0b1", None),
    ("INSERT INTO items (name) VALUES (%s) RETURNING id", ["bench"],
     "61ec5f7d6cd47c5d:700a65d1ab6ec7c0", None),
    ("SELECT 1", None, "50fde20626009aba:74234e98afe7498f", None),
    ("SELECT %s, %s, %s, %s", (1, "x", None, True), "50fde20626009aba:e0c116c9cd5adbef", None),
    ("SELECT %s, %s, %s", [1.5, float("nan"), float("-inf")],
     "50fde20626009aba:6e2ccc6900aa435f", None),
    ("SELECT %(a)s, %(b)s", {"b": 2, "a": "é\x00"}, "50fde20626009aba:96125104605c2d89", None),
    ("SELECT %s, %s, %s, %s, %s",
     [dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), dt.date(2026, 1, 2), dt.time(3, 4),
      dt.timedelta(seconds=90), decimal.Decimal("1.10")],
     "50fde20626009aba:37c3e9899ccbb278", None),
    ("SELECT %s, %s, %s", [uuid.UUID(int=7), b"\x00\xffab", bytearray(b"xy")],
     "50fde20626009aba:da90cf2c04773c0c", None),
    ("SELECT %s, %s", [{"k": [1, {"n": None}], 3: "int key"}, (1, (2, 3))],
     "50fde20626009aba:2d67b284a553a50a", None),
    ("SELECT %s", [{3, 1, 2}], "50fde20626009aba:918c7b1214a69dae", None),
    ("SELECT %s", [[]], "50fde20626009aba:cf1cbb66a638b486", None),
    ("SELECT %s WHERE x = %s", [_SECRET, "plain"],
     "b5a232361c313566:f0cb4b959d526ecd", "b5a232361c313566:b2cf41ce2a26d0d8"),
]


@pytest.mark.parametrize(("query", "params", "key", "key_with_secret"), _STORED_KEYS)
def test_a_statement_keeps_the_key_stored_records_hold(
        query: str, params: Any, key: str, key_with_secret: str | None) -> None:
    assert db_key(query, params, {}) == key
    assert db_key(query, params, _MARKS) == (key_with_secret or key)
    # ctx.db hands the parameters it already encoded for the span: the same key
    encoded = encode(params)
    assert db_key(query, params, {}, encoded=encoded) == key
    assert db_key(query, params, _MARKS, encoded=encoded) == (key_with_secret or key)


def test_a_parameter_orjson_refuses_still_gets_a_key() -> None:
    # an integer beyond 64 bits (PostgreSQL takes it as numeric) made the key raise
    first = db_key("SELECT %s::numeric", [2**70], {})
    assert first == db_key("SELECT %s::numeric", [2**70], {}, encoded=encode([2**70]))
    assert first != db_key("SELECT %s::numeric", [2**70 + 1], {})
    assert db_key("SELECT %s", ["\ud800"], {}) != db_key("SELECT %s", ["\ud801"], {})
