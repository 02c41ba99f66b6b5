"""Redaction: no credential or secret value reaches the store, and bodies stay bounded."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux._errors import ConfigError
from flux._jsoncodec import encode
from flux.runtime._ctx_http import Response, _decode_body, _long_digit_run
from flux.runtime._redact import RedactionPolicy, _plain_json, load_policy
from flux.store._record import _dumps

POLICY = RedactionPolicy(key=b"test-key")


def dump(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def json_values(strings: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | strings
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(
                strings | st.sampled_from(sorted(POLICY.fields)), children, max_size=5
            )
        ),
        max_leaves=30,
    )


def test_fingerprint_is_keyed_and_stable() -> None:
    other = RedactionPolicy(key=b"another-key")
    assert POLICY.fingerprint("s3cret") == POLICY.fingerprint(b"s3cret")
    assert POLICY.fingerprint("s3cret").startswith("hmac-sha256:")
    assert len(POLICY.fingerprint("s3cret")) == len("hmac-sha256:") + 16
    assert POLICY.fingerprint("s3cret") != other.fingerprint("s3cret")


def test_key_never_shows_in_repr() -> None:
    assert "test-key" not in repr(POLICY)


def test_headers_are_lowercased_and_redacted_whatever_their_case() -> None:
    headers = {"AUTHORIZATION": "Bearer abc", "Content-Type": "application/json", "X-Api-Key": "k"}
    out = POLICY.redact_headers(headers)
    assert out == {
        "authorization": POLICY.marker("Bearer abc"),
        "content-type": "application/json",
        "x-api-key": POLICY.marker("k"),
    }
    assert "Bearer abc" not in dump(out)


def test_repeated_headers_are_joined_and_each_value_redacted() -> None:
    pairs = [
        ("Set-Cookie", "a=1"),
        ("Accept", "text/html"),
        ("set-cookie", "b=2"),
        ("Accept", "*/*"),
    ]
    out = POLICY.redact_headers(pairs)
    assert out["accept"] == "text/html, */*"
    assert out["set-cookie"] == f"{POLICY.marker('a=1')}, {POLICY.marker('b=2')}"


def test_secrets_in_other_headers_are_scrubbed() -> None:
    out = POLICY.redact_headers({"X-Service-Token": "svc_abcdef", "Accept": "*/*"}, ["svc_abcdef"])
    assert out == {"x-service-token": POLICY.marker("svc_abcdef"), "accept": "*/*"}


def test_sensitive_fields_are_redacted_at_any_depth_without_touching_the_original() -> None:
    body = {
        "user": {"name": "ada", "Password": "hunter2"},
        "cards": [{"card_number": 4242424242424242, "CVC": "123", "brand": "visa"}],
        "token": {"nested": "whole value hidden"},
    }
    out = POLICY.redact_body(body)
    assert out["user"] == {"name": "ada", "Password": POLICY.marker("hunter2")}
    assert out["cards"][0]["brand"] == "visa"
    assert out["cards"][0]["CVC"] == POLICY.marker("123")
    assert out["cards"][0]["card_number"].startswith("[redacted hmac-sha256:")
    assert out["token"].startswith("[redacted hmac-sha256:")
    assert body["user"]["Password"] == "hunter2"
    for leaked in ("hunter2", "4242424242424242", "whole value hidden"):
        assert leaked not in dump(out)


def test_redacting_twice_keeps_the_first_fingerprint() -> None:
    once = POLICY.redact_body({"password": "hunter2"})
    assert POLICY.redact_body(once) == once


def test_scalars_pass_through_redact_body() -> None:
    for value in ("text", 3, None, b"raw"):
        assert POLICY.redact_body(value) == value


def test_cap_replaces_a_large_body_by_its_size_hash_and_preview() -> None:
    policy = RedactionPolicy(key=b"k", max_body_bytes=100)
    body = {"text": "é" * 200}
    full = dump(body).encode("utf-8")
    capped = policy.cap(body)
    assert capped == {
        "_flux_truncated": True,
        "size": len(full),
        "sha256": hashlib.sha256(full).hexdigest(),
        "preview": dump(body)[:1024],
    }


def test_cap_keeps_a_body_of_exactly_the_limit() -> None:
    body = ["x" * 10]
    policy = RedactionPolicy(key=b"k", max_body_bytes=len(dump(body)))
    assert policy.cap(body) is body
    assert RedactionPolicy(key=b"k", max_body_bytes=len(dump(body)) - 1).cap(body) != body


def test_scrub_text_hides_secrets_but_ignores_too_short_ones() -> None:
    text = "connect failed: password=pa55word host=db on"
    out = POLICY.scrub_text(text, ["pa55word", "on", ""])
    assert out == f"connect failed: password={POLICY.marker('pa55word')} host=db on"


def test_scrub_text_hides_the_longest_of_overlapping_secrets_whole() -> None:
    out = POLICY.scrub_text("k=abcdefgh", ["abcd", "abcdefgh"])
    assert out == f"k={POLICY.marker('abcdefgh')}"


def test_a_secret_dressed_as_a_marker_is_still_scrubbed() -> None:
    secret = "0123456789abcdef"
    out = POLICY.scrub_text(f"[redacted hmac-sha256:{secret}]", [secret])
    assert secret not in out


def test_prepare_scrubs_keys_numbers_and_non_json_values() -> None:
    class Leaky:
        def __str__(self) -> str:
            return "obj with sk_live_1234"

    body = {"sk_live_1234": [12345678, "Bearer sk_live_1234", Leaky(), b"sk_live_1234"], 5: True}
    out = POLICY.prepare(body, ["sk_live_1234", "12345678"])
    text = dump(out)
    assert "sk_live_1234" not in text and "12345678" not in text
    assert out["5"] is True


@given(json_values(st.text()), st.lists(st.text(), max_size=3))
def test_prepare_never_raises_and_is_idempotent(body: object, secrets: list[str]) -> None:
    once = POLICY.prepare(body, secrets)
    dump(once).encode("utf-8")
    if not secrets:
        assert dump(POLICY.prepare(once)) == dump(once)


def odd_values() -> st.SearchStrategy[object]:
    """JSON and what handlers also hand over: tuples, non-text keys, dates, bytes, sets."""
    scalars = (st.none() | st.booleans() | st.integers() | st.text(max_size=5)
               | st.floats(allow_nan=False) | st.binary(max_size=4) | st.dates())
    keys = st.text(max_size=5) | st.sampled_from(sorted(POLICY.fields)) | st.integers()
    return st.recursive(scalars, lambda children: (
        st.lists(children, max_size=4) | st.tuples(children, children)
        | st.dictionaries(keys, children, max_size=4)), max_leaves=20)


def nested(depth: int) -> object:
    value: object = {"password": "x", "k": [1, (2, 3)]}
    for _ in range(depth):
        value = {"a": [value]}
    return value


@given(odd_values())
def test_prepare_without_secrets_is_redact_then_scrub_in_one_walk(body: object) -> None:
    # prepare's one-walk path against its definition: redact, then scrub unless plain
    redacted = POLICY.redact_body(body)
    expected = redacted if _plain_json(redacted) else POLICY._scrub(redacted, None)
    assert POLICY.prepare(body) == POLICY.cap(expected)
    assert POLICY.prepare(body, set()) == POLICY.cap(expected)


def tricky_keys() -> st.SearchStrategy[str]:
    """Keys near the field names: another case, escapes, non-ASCII that lowers to ASCII (the
    Kelvin sign), a name inside a longer one or inside a string value."""
    near = st.sampled_from(["PassWord", "TOKEN", "to\u212aen", "my_password", "password_x",
                            'pass"word', "pass\\word", "p\u00e4ssword", 'x":"password',
                            "\"password\":"])
    return near | st.sampled_from(sorted(POLICY.fields)) | st.text(max_size=6)


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | tricky_keys(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(tricky_keys(), children, max_size=4), max_leaves=25))
def test_a_fresh_body_is_prepared_as_any_other_without_a_copy(body: object) -> None:
    # ``fresh`` (a body made for the record alone: encode's output, a decoded answer) skips
    # the walk and the copy; what it gives is what prepare gives for any body.
    body = encode(body)
    expected = POLICY.prepare(body)
    fresh = POLICY.prepare(body, fresh=True)
    assert dump(fresh) == dump(expected)
    assert _dumps(fresh) == _dumps(expected)  # what the record stores
    if fresh is body:  # kept, not copied: only when there was nothing to hide
        assert dump(POLICY.redact_body(body)) == dump(body)


@given(st.binary(max_size=60) | st.text("0123456789 ,.-e", max_size=60).map(str.encode))
def test_a_run_of_nineteen_digits_is_found_as_the_pattern_finds_it(content: bytes) -> None:
    assert _long_digit_run(content) == (re.search(rb"[0-9]{19}", content) is not None)


@pytest.mark.parametrize("depth", [30, 31, 32, 33, 34, 70])
def test_prepare_one_walk_agrees_at_the_depth_limit(depth: int) -> None:
    body = nested(depth)
    redacted = POLICY.redact_body(body)
    expected = redacted if _plain_json(redacted) else POLICY._scrub(redacted, None)
    assert POLICY.prepare(body) == POLICY.cap(expected)


@given(st.text(string.ascii_letters + string.digits, min_size=8, max_size=20), st.data())
def test_no_secret_survives_prepare(secret: str, data: st.DataObject) -> None:
    embedded = st.builds(lambda a, b: a + secret + b, st.text(max_size=5), st.text(max_size=5))
    body = data.draw(json_values(embedded | st.text(max_size=5)))
    assert secret not in dump(POLICY.prepare(body, [secret]))


@given(st.text(), st.text())
def test_fingerprints_match_exactly_when_values_do(a: str, b: str) -> None:
    assert (POLICY.fingerprint(a) == POLICY.fingerprint(b)) == (a == b)


def test_key_is_created_private_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUX_REDACTION_KEY", raising=False)
    state = tmp_path / "missing" / ".flux"
    first = load_policy(state, {})
    key_file = state / "redaction.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text())) == 32
    assert load_policy(state, {}).key == first.key
    assert sorted(p.name for p in state.iterdir()) == ["redaction.key"]


def test_env_key_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUX_REDACTION_KEY", raising=False)
    from_file = load_policy(tmp_path, {})
    monkeypatch.setenv("FLUX_REDACTION_KEY", "shared-ci-key")
    assert load_policy(tmp_path, {}).key == b"shared-ci-key"
    monkeypatch.setenv("FLUX_REDACTION_KEY", (tmp_path / "redaction.key").read_text().strip())
    assert load_policy(tmp_path, {}).fingerprint("x") == from_file.fingerprint("x")


def test_env_key_needs_no_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX_REDACTION_KEY", "k")
    load_policy(tmp_path / "nowhere", {})
    assert not (tmp_path / "nowhere").exists()


def test_record_options_add_to_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUX_REDACTION_KEY", "k")
    config = {
        "record": {"redact_headers": ["X-Tenant"], "redact_fields": ["SSN"], "max_body_bytes": 10}
    }
    policy = load_policy(tmp_path, config)
    assert {"x-tenant", "authorization"} <= policy.headers
    assert {"ssn", "password"} <= policy.fields
    assert policy.max_body_bytes == 10


@pytest.mark.parametrize("bad", [0, -1, "64k", 1.5, True, None])
def test_bad_max_body_bytes_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: object
) -> None:
    monkeypatch.setenv("FLUX_REDACTION_KEY", "k")
    with pytest.raises(ConfigError, match=r"record\.max_body_bytes"):
        load_policy(tmp_path, {"record": {"max_body_bytes": bad}})


@pytest.mark.parametrize("bad", ["authorization", [1], [""]])
def test_bad_redact_list_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: object
) -> None:
    monkeypatch.setenv("FLUX_REDACTION_KEY", "k")
    with pytest.raises(ConfigError, match=r"record\.redact_headers"):
        load_policy(tmp_path, {"record": {"redact_headers": bad}})


SECRET = "sk_live_9/Yt+Ue7 Wq5"


@given(st.text(alphabet=string.printable, max_size=12))
def test_a_secret_is_scrubbed_url_encoded_and_in_base64_at_any_offset(prefix: str) -> None:
    """Item 7 of issue 20: the encodings a secret travels in, Basic auth among them."""
    import base64
    from urllib.parse import quote, quote_plus

    basic = base64.b64encode(f"{prefix}:{SECRET}".encode()).decode()
    texts = [f"?k={quote(SECRET, safe='')}", f"?k={quote_plus(SECRET)}",
             "?k=" + quote(SECRET, safe="").replace("%2F", "%2f").replace("%2B", "%2b"),
             f"Basic {basic}",
             base64.urlsafe_b64encode(f"x{SECRET}".encode()).decode()]
    for text in texts:
        scrubbed = POLICY.scrub_text(text, [SECRET])
        assert "[redacted hmac-sha256:" in scrubbed, text
        assert SECRET not in scrubbed and quote(SECRET, safe="") not in scrubbed
    # what is left of the base64 around the marker cannot spell the secret
    left = POLICY.scrub_text(f"Basic {basic}", [SECRET])
    assert len(left.replace("Basic ", "").split("]")[-1]) <= 4


def test_default_names_cover_oauth_fields_and_x_auth_token() -> None:
    body = POLICY.redact_body({"access_token": "a" * 8, "refresh_token": "r" * 8,
                               "client_secret": "c" * 8, "scope": "read"})
    assert body["scope"] == "read"
    assert all(body[k].startswith("[redacted") for k in ("access_token", "refresh_token",
                                                          "client_secret"))
    assert POLICY.redact_headers({"X-Auth-Token": "t" * 8})["x-auth-token"].startswith(
        "[redacted")


def test_prepare_copies_plain_bodies_and_keeps_what_orjson_would_change() -> None:
    # The plain-JSON path copies through orjson: the record never shares a body the
    # handler may change later, and what orjson would store differently (NaN, a big
    # integer) takes the walk.
    body = {"items": [1, 2.5, None, True, "x"], "nested": {"k": ("a", "b")}}
    stored = POLICY.prepare(body)
    assert stored == {"items": [1, 2.5, None, True, "x"], "nested": {"k": ["a", "b"]}}
    body["items"].append(3)
    assert stored["items"] == [1, 2.5, None, True, "x"]
    nan = POLICY.prepare({"v": float("nan"), "big": 2**70})
    assert nan["big"] == 2**70 and nan["v"] != nan["v"]
    assert POLICY.prepare({"Password": "p", "ok": 1}) == {"Password": POLICY.marker("p"), "ok": 1}


def test_a_recorded_answer_keeps_what_json_reads() -> None:
    # The answer is decoded with orjson where it reads as json does; a huge integer, NaN
    # or a lone surrogate take json's reading, so the tape holds what json.loads gives.
    for content in [b'{"id": 123456789012345678901234567890}', b'[NaN, 1e400]',
                    b'"\\ud800"', b'{"a": [1, 2.5, null, true, "\xc3\xbc"]}', b"not json",
                    b'{"n": 18446744073709551615}']:
        answer = Response(status=200, content=content)
        try:
            expected = json.loads(content)
        except ValueError:
            expected = content.decode()
        decoded = _decode_body(answer)
        assert json.dumps(decoded) == json.dumps(expected), content
        assert type(decoded) is type(expected), content
