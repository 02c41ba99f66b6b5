"""Who may call the admin API (``/_flux/…``).

A token is required except in ``flux dev`` bound to a loopback address, where only this
machine can reach the port at all. Everywhere else — ``flux serve``, its workers, ``flux
dev --host 0.0.0.0`` — a call needs ``Authorization: Bearer <FLUX_ADMIN_TOKEN>``, and
without FLUX_ADMIN_TOKEN the admin API refuses every call. What is decided here is how the
server was started, never where a request seems to come from (behind a proxy on the same
machine every request comes from loopback).

The token is kept only as its SHA-256 digest. A presented token is hashed too and the two
digests — always 32 bytes — are compared with ``hmac.compare_digest``, so neither how much
of a guess is right nor how long the token is shows in the time an answer takes. The token
is never logged, recorded or echoed in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

TOKEN_ENV = "FLUX_ADMIN_TOKEN"


@dataclass(frozen=True)
class Refusal:
    """Why a call was refused: 401 (a token is needed, or it is wrong) or 403 (the admin
    API is closed on this server)."""

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class AdminAccess:
    """The admin API's door, fixed when the server starts."""

    token_digest: bytes | None = None
    open_locally: bool = False  # flux dev on loopback: no token needed

    @classmethod
    def for_server(cls, *, dev: bool, host: str,
                   environ: Mapping[str, str] | None = None) -> AdminAccess:
        """The access of a server started by ``flux dev`` (``dev``) or ``flux serve``,
        bound to ``host``, with the token (if any) from the environment."""
        token = (environ if environ is not None else os.environ).get(TOKEN_ENV, "")
        return cls(token_digest=digest(token) if token else None,
                   open_locally=dev and is_loopback(host))

    @classmethod
    def with_token(cls, token: str) -> AdminAccess:
        return cls(token_digest=digest(token))

    def refusal(self, authorization: str | None) -> Refusal | None:
        """None if a call with this ``Authorization`` header may proceed."""
        if self.open_locally:
            return None
        if self.token_digest is None:
            return Refusal(403, "admin_closed",
                           f"the admin API is closed on this server: start it with "
                           f"{TOKEN_ENV} set to open it to callers with that token")
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return Refusal(401, "unauthorized",
                           "the admin API needs the header Authorization: Bearer <token>")
        if not self.matches(given.strip()):
            return Refusal(401, "unauthorized", "the admin token is wrong")
        return None

    def matches(self, given: str) -> bool:
        """Whether ``given`` is the token: digests of equal length, compared in constant
        time, so the time depends on neither the token nor how much of ``given`` is right."""
        return self.token_digest is not None and hmac.compare_digest(digest(given),
                                                                    self.token_digest)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the port on this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
