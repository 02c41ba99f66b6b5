"""Ids as people paste them (flux/_ids.py): what comes along with an id is dropped."""

from __future__ import annotations

import time
import uuid

import pytest

from flux._ids import clean_id, new_request_id, new_request_id_text, split_ids
from flux.store._lookup import id_range


@pytest.mark.parametrize(
    "pasted",
    [
        "req:550e8400",
        "550e8400",
        '"550e8400",',
        "'550e8400'",
        "[req:550e8400]",
        "(550e8400)",
        "550e8400:",
        "`550e8400`",
        "REQ:550e8400",
        "req: 550e8400",
        "<550e8400>.",
        "x-flux-request-id: 550e8400",
        "550e8400…",
        "request_id=550e8400;",
    ],
)
def test_an_id_copied_with_its_surroundings_is_the_id(pasted: str) -> None:
    assert clean_id(pasted) == "550e8400"
    assert id_range(pasted)[0] == "550e8400-0000-0000-0000-000000000000"


def test_lists_of_ids_take_commas_spaces_and_a_trailing_comma() -> None:
    assert split_ids("req:01a1, 01b2 ,'01c3',") == ["01a1", "01b2", "01c3"]


def test_what_is_not_an_id_still_says_so() -> None:
    from flux._errors import ConfigError

    with pytest.raises(ConfigError):
        id_range("req:")
    with pytest.raises(ConfigError):
        id_range("req:xyz")


def test_request_ids_are_uuid7_made_in_order_and_now() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_request_id_text() if n % 2 else str(new_request_id()) for n in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # text order is time order
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    first = int(uuid.UUID(ids[0]).hex[:12], 16)  # its 48-bit millisecond
    assert before <= first <= time.time_ns() // 1_000_000
    # 74 random bits: two ids of the same millisecond differ below the timestamp too
    assert len({uuid.UUID(t).int & ((1 << 62) - 1) for t in ids}) == len(ids)
