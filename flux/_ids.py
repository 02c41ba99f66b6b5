"""Execution ids: UUIDv7, so that their order is their order in time and an index on them
stays append-only."""

from __future__ import annotations

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
