"""JSON for recorded values: what ``ctx`` handed to the function must come back from the
tape as the same Python value, so non-JSON types are tagged (``{"$t": "datetime", "v": …}``).

``encode`` is used on everything stored (tape, spans, outputs); ``decode`` by replay.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from collections.abc import Callable
from typing import Any

TAG = "$t"
_SAME = frozenset({str, int, bool, type(None)})  # what encode returns as it is
_PLAIN = _SAME | {float}  # what plain returns as it is


def encode(value: Any) -> Any:
    """A JSON-able version of ``value`` that ``decode`` turns back into it."""
    kind = type(value)
    if kind is str or kind is int or value is None or kind is bool:  # most values, at once
        return value
    # Leaves of these exact types are themselves (inlined: a call per leaf was most of a
    # large body's cost); str(k) of a str is k.
    if kind is list or kind is tuple:
        return [v if type(v) in _SAME else encode(v) for v in value]
    if kind is dict:
        return {k if type(k) is str else str(k): v if type(v) in _SAME else encode(v)
                for k, v in value.items()}
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else \
            {TAG: "float", "v": repr(value)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dt.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {TAG: "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {TAG: "timedelta", "v": value.total_seconds()}
    if isinstance(value, decimal.Decimal):
        return {TAG: "decimal", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {TAG: "bytes", "v": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, set | frozenset):
        return [encode(v) for v in sorted(value, key=repr)]
    return {TAG: "repr", "v": repr(value)}


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(seconds=v),
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
    "bytes": base64.b64decode,
    "float": float,
    "repr": str,
}


def decode(value: Any) -> Any:
    """The inverse of ``encode``."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        tag = value.get(TAG)
        if isinstance(tag, str) and tag in _DECODERS and set(value) == {TAG, "v"}:
            return _DECODERS[tag](value["v"])
        return {k: decode(v) for k, v in value.items()}
    return value


def plain(value: Any) -> Any:
    """A JSON-able version for people (API responses, rendering): no type tags."""
    kind = type(value)
    if kind is str or kind is int or value is None or kind is bool or kind is float:
        return value
    if kind is dict:  # leaves of these exact types inlined, as in encode
        return {k if type(k) is str else str(k): v if type(v) in _PLAIN else plain(v)
                for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _PLAIN else plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)
