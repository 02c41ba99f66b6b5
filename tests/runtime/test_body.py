"""The gateway's JSON body parsing (flux/runtime/_body.py) through its one cached decoder:
what ``json.loads`` with the same hooks gives, refusals included."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux.runtime._body import BodyError, _constant, _float, _int, parse_body


def loads_with_hooks(raw: bytes) -> Any:
    """The definition parse_body kept until it cached its decoder."""
    return json.loads(raw, parse_float=_float, parse_int=_int, parse_constant=_constant)


def outcome(parse: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "value", parse(raw)
    except (BodyError, ValueError, UnicodeDecodeError) as exc:
        return "refused", type(exc) is BodyError


@pytest.mark.parametrize("raw", [
    b'{"name": "bench"}', b"[1, 2.5, -3e2, true, null]", '{"é": "ü"}'.encode("utf-16"),
    '{"a": 1}'.encode("utf-32-le"), b'\xef\xbb\xbf{"bom": 1}', b'"\\ud83d\\ude00"',
    b"1e400", b"NaN", b"[Infinity]", b"9" * 5000, b"{", b"\xff\xfe\xfd", b"",
])
def test_parse_body_reads_and_refuses_what_json_loads_with_its_hooks_does(raw: bytes) -> None:
    if not raw.strip():
        assert parse_body(raw) == {}
        return
    want = outcome(loads_with_hooks, raw)
    got = outcome(parse_body, raw)
    assert got[0] == want[0]
    if want[0] == "value":
        assert got[1] == want[1]
    else:  # every refusal is the one-sentence BodyError
        assert got[1] is True


# Text a record can hold (U+0000 and lone surrogates are parse_body's own later refusal).
texts = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from(["utf-8", "utf-16", "utf-32"]))
def test_parse_body_matches_json_loads_on_any_json(value: Any, encoding: str) -> None:
    raw = json.dumps(value, ensure_ascii=False).encode(encoding, "surrogatepass")
    assert outcome(parse_body, raw) == outcome(loads_with_hooks, raw)
