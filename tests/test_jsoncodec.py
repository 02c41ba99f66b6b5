"""Recorded values (flux/_jsoncodec.py): what the tape holds comes back as the same value."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections import OrderedDict

import orjson

from flux._jsoncodec import decode, encode, plain


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


def test_values_survive_the_tape_and_subclasses_keep_what_they_were() -> None:
    value = {
        "n": 1,
        "s": "x",
        "b": True,
        "none": None,
        "f": 1.5,
        "nan": float("nan"),
        "list": [1, (2, 3), {"k": [dt.date(2026, 1, 2)]}],
        "tuple": ("a", 1),
        "when": dt.datetime(2026, 12, 5, 23, 0, tzinfo=dt.UTC),
        "d": decimal.Decimal("1.50"),
        "u": uuid.UUID(int=7),
        "bytes": b"\x00\xff",
        3: "int key",
        "od": OrderedDict(a=1),
        "enum": Colour.RED,
        "name": Name("ada"),
    }
    encoded = encode(value)
    orjson.dumps(encoded)  # JSON all the way down
    back = decode(orjson.loads(orjson.dumps(encoded)))
    assert back["list"] == [1, [2, 3], {"k": [dt.date(2026, 1, 2)]}]
    assert back["tuple"] == ["a", 1] and back["3"] == "int key" and back["od"] == {"a": 1}
    assert back["when"] == value["when"] and back["d"] == decimal.Decimal("1.50")
    assert back["u"] == uuid.UUID(int=7) and back["bytes"] == b"\x00\xff"
    assert back["n"] == 1 and back["b"] is True and back["none"] is None and back["f"] == 1.5
    assert back["nan"] != back["nan"]  # NaN, tagged on the way in
    assert back["enum"] == 1 and back["name"] == "ada"
    assert encode(value)["enum"] is Colour.RED  # ints and strs are kept as they are


def test_plain_values_for_people_have_no_tags() -> None:
    value = {
        "n": 1,
        2: [1.5, (True, None)],
        "when": dt.date(2026, 1, 2),
        "b": b"\x00",
        "s": {3},
        "u": uuid.UUID(int=1),
        "name": Name("ada"),
        "od": OrderedDict(a=[1]),
    }
    assert plain(value) == {
        "n": 1,
        "2": [1.5, [True, None]],
        "when": "2026-01-02",
        "b": "AA==",
        "s": [3],
        "u": str(uuid.UUID(int=1)),
        "name": "ada",
        "od": {"a": [1]},
    }
