"""Execution ids: UUIDv7, so that their order is their order in time and an index on them
stays append-only."""

from __future__ import annotations

import re
import secrets
import time
import uuid

_last_ms = 0  # the millisecond of the last id: ids made in one process never go backwards


def new_request_id() -> uuid.UUID:
    """A new UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits. Within
    one process each id's millisecond is past the previous id's (a burst borrows the next
    milliseconds, as the uuid6 package does), so ids sort in the order they were made."""
    return uuid.UUID(int=_uuid7_int())


def new_request_id_text() -> str:
    """``str(new_request_id())`` without building the UUID object: the gateway makes one
    per request."""
    h = f"{_uuid7_int():032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _uuid7_int() -> int:
    global _last_ms
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        ms = _last_ms + 1
    _last_ms = ms
    rand = secrets.randbits(74)
    # version 7 in bits 76-79, variant 0b10 in bits 62-63, random bits around them
    return ((ms & 0xFFFFFFFFFFFF) << 80) | (7 << 76) | ((rand >> 62) << 64) | (2 << 62) | \
        (rand & 0x3FFFFFFFFFFFFFFF)


SHORT_LENGTH = 18  # "01a1fc87-f1b0-7ca0": the millisecond plus 12 random bits


def short(request_id: object) -> str:
    """The id as people see it. A UUIDv7's first 13 characters are its timestamp, shared by
    every request of the same millisecond; four more make it unique in practice, and any
    unique prefix is accepted back."""
    return str(request_id)[:SHORT_LENGTH]


# What people copy around an id: quotes, brackets, a trailing comma or colon, an ellipsis,
# and the "req:" Flux itself prints in front of ids (history, blame, the record).
_WRAPPING = "\"'`()[]{}<>,;:.\u2026 \t\r\n"
_LABEL = re.compile(r"^(?:req|request|request_id|request-id|x-flux-request-id|id)\s*[:=]\s*",
                    re.IGNORECASE)


def clean_id(text: str) -> str:
    """An id as typed or pasted, without what came along with it: ``req:550e8400``,
    ``"550e8400",``, ``[req:550e8400]`` and ``550e8400:`` all give ``550e8400``."""
    value = text.strip(_WRAPPING)
    while (match := _LABEL.match(value)) is not None:
        value = value[match.end():].strip(_WRAPPING)
    return value


def split_ids(text: str) -> list[str]:
    """``ID,ID,…`` as people write lists of ids: commas or spaces between them, each one
    cleaned as :func:`clean_id` does, empty pieces (a trailing comma) dropped."""
    return [cleaned for piece in re.split(r"[,\s]+", text) if (cleaned := clean_id(piece))]
