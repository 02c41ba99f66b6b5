"""Ids as people paste them (flux/_ids.py): what comes along with an id is dropped."""

from __future__ import annotations

import pytest

from flux._ids import clean_id, split_ids
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
