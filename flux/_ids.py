"""Execution ids: UUIDv7, so that their order is their order in time and an index on them
stays append-only."""

from __future__ import annotations

import re
import uuid


def new_request_id() -> uuid.UUID:
    import uuid6  # here, not at the top: the CLI imports this module for short() alone

    return uuid.UUID(int=uuid6.uuid7().int)


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
