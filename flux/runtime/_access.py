"""Who may call the admin API (``/_flux/…``).

A token is required except in ``flux dev`` bound to a loopback address, where only this
machine can reach the port at all. Everywhere else — ``flux serve``, its workers, ``flux
dev --host 0.0.0.0`` — a call needs ``Authorization: Bearer <FLUX_ADMIN_TOKEN>``, and
without FLUX_ADMIN_TOKEN the admin API refuses every call. What is decided here is how the
server was started, never where a request seems to come from (behind a proxy on the same
machine every request comes from loopback).

A page in a browser can reach a loopback port too, so two more checks hold whatever the
token. ``flux dev`` on loopback answers only requests whose ``Host`` names this machine
(``localhost``, a loopback address) — a DNS-rebinding page sends its own name — and, for the
admin API, no request whose ``Origin`` is another site. A call that changes state (anything
but GET and HEAD) must be one a page cannot send without asking first: a JSON content type
or the ``X-Flux-Client`` header (the CLI sends it). Function calls from another site's page
with a content type a form could send (``text/plain``, a form, none) are refused on every
server: a cross-site page could otherwise run a function with a JSON body it calls text.

The web view (``/_flux/ui/``) signs a browser in with a form POST of the token, answered with
an HttpOnly, SameSite=Strict cookie holding ``session()`` — a keyed digest of the token,
never the token itself, the same in every worker of a server — so the token stays out of
URLs and history, and no other site's page can make the browser send the cookie. The cookie
stands for the ``Authorization`` header; a state change still needs the custom header.

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
from urllib.parse import urlsplit

TOKEN_ENV = "FLUX_ADMIN_TOKEN"
SESSION_COOKIE = "flux_session"
CLIENT_HEADER = "X-Flux-Client"  # a custom header: a page cannot send it without a preflight


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

    def refusal(self, authorization: str | None, session: str | None = None
                ) -> Refusal | None:
        """None if a call with this ``Authorization`` header (or the web view's
        ``session`` cookie) may proceed."""
        if self.open_locally:
            return None
        if self.token_digest is None:
            return Refusal(403, "admin_closed",
                           f"the admin API is closed on this server: start it with "
                           f"{TOKEN_ENV} set to open it to callers with that token")
        if not authorization and session:
            expected = self.session()
            if expected is not None and hmac.compare_digest(session.encode(
                    "utf-8", "surrogateescape"), expected.encode()):
                return None
            return Refusal(401, "unauthorized", "the web view's sign-in has expired: "
                           "sign in again with the admin token")
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return Refusal(401, "unauthorized",
                           "the admin API needs the header Authorization: Bearer <token>")
        if not self.matches(given.strip()):
            return Refusal(401, "unauthorized", "the admin token is wrong")
        return None

    def foreign(self, headers: Mapping[str, str], *, admin: bool, method: str
                ) -> Refusal | None:
        """Why a request that may come from a web page is refused (None if it is not):
        a foreign ``Host`` on ``flux dev`` (DNS rebinding); for the admin API, another
        site's ``Origin``; for a function, another site's ``Origin`` with a content type a
        form could send. (An admin call that changes state is checked by ``unasked``.)"""
        if self.open_locally and not loopback_authority(headers.get("Host", "")):
            return Refusal(403, "host_not_allowed",
                           "flux dev answers only requests addressed to localhost or a "
                           "loopback address")
        origin = headers.get("Origin")
        cross = origin is not None and not same_origin(origin, headers.get("Host", ""))
        if admin:
            if cross:
                return Refusal(403, "cross_origin",
                               "the admin API does not answer requests from web pages of "
                               "another site")
            return None
        if cross and method not in ("GET", "HEAD", "OPTIONS") and not non_simple(headers):
            return Refusal(403, "cross_origin",
                           "a call from another site's web page needs a JSON Content-Type")
        return None

    @staticmethod
    def unasked(headers: Mapping[str, str], method: str) -> Refusal | None:
        """An admin call that changes state but that a page could have sent without a
        preflight: refused, token or not (a token in a page's cookie jar is not a thing,
        but ``flux dev`` needs none)."""
        if method in ("GET", "HEAD", "OPTIONS") or non_simple(headers):
            return None
        return Refusal(403, "simple_request", f"a call that changes state needs a JSON "
                       f"Content-Type or the {CLIENT_HEADER} header")

    def session(self) -> str | None:
        """The web view's cookie value: derived from the token (so a new token signs every
        browser out), useless as a token itself, equal in every worker."""
        if self.token_digest is None:
            return None
        return hmac.new(self.token_digest, b"flux web session", hashlib.sha256).hexdigest()

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


def media_type(headers: Mapping[str, str]) -> str:
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def non_simple(headers: Mapping[str, str]) -> bool:
    """Whether a browser would have had to ask (a CORS preflight) before sending this."""
    kind = media_type(headers)
    return CLIENT_HEADER in headers or kind == "application/json" or kind.endswith("+json")


def loopback_authority(authority: str) -> bool:
    """Whether a ``Host`` header (``name[:port]``) names this machine."""
    try:
        host = urlsplit(f"//{authority.strip()}").hostname or ""
    except ValueError:
        return False
    return host == "localhost" or host.endswith(".localhost") or is_loopback(host)


def same_origin(origin: str, authority: str) -> bool:
    """Whether an ``Origin`` header names the site the request was addressed to (its
    ``Host``); ``null`` (a sandboxed page, a file) never does."""
    try:
        parts = urlsplit(origin.strip())
        default = {"http": 80, "https": 443}.get(parts.scheme)
        mine = urlsplit(f"//{authority.strip()}")
        if parts.hostname is None or default is None or mine.hostname is None:
            return False
        return (parts.hostname, parts.port or default) == (mine.hostname, mine.port or default)
    except ValueError:
        return False
