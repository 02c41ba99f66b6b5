"""``ctx.request``: the HTTP request as it came, how its record keeps it, and how replay
gives it back.

A handler sees the method, the path, its typed path parameters, the query (repeated keys
kept), the headers, the media type and the body's bytes exactly as received, with
``.json()`` and ``.form()`` for the common bodies. ``input`` stays the decoded body.

The record keeps what replay needs to hand the handler the same bytes (``raw`` in the
record's ``request``), so a webhook's HMAC over the raw body checks again in replay:

- ``{"text": …}`` (UTF-8) or ``{"base64": …}`` (anything else) — the bytes themselves;
- ``{"json": "compact"}`` — the bytes are the compact JSON of the recorded ``body`` (what
  httpx sends): kept once, not twice;
- ``{"json": "spaced"}`` — the bytes are ``json.dumps`` of the recorded ``body`` (Python's
  default spelling, ``", "`` and ``": "``, non-ASCII escaped: what requests and aiohttp
  send): kept once too;
- ``{"redacted": why, "size", "sha256"}`` — the body carried a redacted field or a secret
  value, so its bytes are not kept; replay hands over the recorded (redacted) body instead
  and says so;
- ``{"_flux_truncated": true, "size", "sha256"}`` — over ``[record] max_body_bytes``.

An empty body has no ``raw``. A record without one whose ``body`` is not empty predates
this (replay rebuilds the bytes from ``body`` and says they may differ); an execution that
was not an HTTP request (a job, a cron tick) gets a request made from its input.
"""

from __future__ import annotations

import base64
import hashlib
import json as jsonlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy, MultiMapping

from flux._jsoncodec import decode, encode
from flux.runtime._body import (
    FORM,
    UNLABELLED,
    form_pairs,
    is_json_type,
    media_type,
    parse_body,
)

if TYPE_CHECKING:
    from flux.runtime._redact import RedactionPolicy

NOT_KEPT = "the original bytes were not recorded"


class Request:
    """What a handler reads as ``ctx.request``."""

    __slots__ = (
        "_body",
        "body_read",
        "content_type",
        "exact",
        "headers",
        "method",
        "path",
        "path_params",
        "query",
        "why_inexact",
    )

    def __init__(self, *, method: str | None, path: str, path_params: Mapping[str, Any],
                 query: Iterable[tuple[str, str]] | MultiMapping[str],
                 headers: Iterable[tuple[str, str]] | CIMultiDictProxy[str],
                 body: bytes, content_type: str | None = None, exact: bool = True,
                 why_inexact: str | None = None) -> None:
        self.method = method
        self.path = path  # "/orders/42", as received (percent-decoded)
        self.path_params: dict[str, Any] = dict(path_params)
        # The gateway hands aiohttp's own read-only views, kept as they are (no copy per
        # request); anything else is pairs, made into views here.
        self.query: MultiDictProxy[str] = query if type(query) is MultiDictProxy else \
            MultiDictProxy(MultiDict(query))
        self.headers: CIMultiDictProxy[str] = headers \
            if isinstance(headers, CIMultiDictProxy) else CIMultiDictProxy(CIMultiDict(headers))
        self.content_type = content_type if content_type is not None else \
            media_type(self.headers.get("Content-Type"))
        self._body = body
        # Replay: whether ``body`` is the original bytes, and why not; whether the handler
        # read them (then a difference in its outcome may come from there).
        self.exact = exact
        self.why_inexact = why_inexact
        self.body_read = False

    @property
    def body(self) -> bytes:
        """The body's bytes, exactly as received."""
        self.body_read = True
        return self._body

    def text(self) -> str:
        """The body as text (UTF-8, bad bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON (ValueError if it is not)."""
        return parse_body(self.body)

    def form(self) -> MultiDictProxy[str]:
        """The body as form fields: ``.get(name)``, ``.getall(name)`` (ValueError if it is
        not a form)."""
        return MultiDictProxy(MultiDict(form_pairs(self.body)))

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path} ({len(self._body)} bytes)>"


def synthetic(method: str | None, route: str, input: Any,
              headers: Mapping[str, str]) -> Request:
    """The request of an execution that did not come over HTTP (a job, a cron tick, a
    direct call): its input as the JSON body."""
    try:
        body = orjson.dumps(input) if input is not None else b""
    except (TypeError, orjson.JSONEncodeError):
        body = orjson.dumps(encode(input), default=str)
    return Request(method=method, path="/" + route, path_params={}, query=(),
                   headers=headers.items(), body=body, content_type="application/json")


def recorded(request: Request, input: Any, policy: RedactionPolicy,
             secrets: Iterable[str], scrub: Callable[[Any, Iterable[str]], Any]
             ) -> dict[str, Any]:
    """The fields the record's ``request`` gets for ``request`` beyond method, route,
    headers, query and body: path, path parameters, repeated query keys, media type and
    the raw body as described above."""
    out: dict[str, Any] = {"path": scrub(request.path, secrets)}
    if request.path_params:
        out["path_params"] = scrub(encode(request.path_params), secrets)
    pairs = list(request.query.items())
    if len(pairs) != len(set(request.query.keys())):  # a key repeats: keep them all
        out["query_pairs"] = scrub([list(p) for p in pairs], secrets)
    if request.content_type:
        out["content_type"] = request.content_type
    raw = request._body
    if raw:
        out["raw"] = _raw(raw, request.content_type, input, policy, secrets)
    return out


def _raw(raw: bytes, media: str, input: Any, policy: RedactionPolicy,
         secrets: Iterable[str]) -> dict[str, Any]:
    size = len(raw)
    if size > policy.max_body_bytes:
        return {"_flux_truncated": True, "size": size,
                "sha256": hashlib.sha256(raw).hexdigest()}
    fields = sorted(_sensitive_fields(input, policy))
    text = raw.decode("latin-1")  # every byte a character: a secret is found in any body
    if fields or policy.scrub_text(text, secrets) != text:
        why = (f"it carried the redacted field(s) {', '.join(fields)}" if fields
               else "it carried a secret value")
        return {"redacted": why, "size": size, "sha256": hashlib.sha256(raw).hexdigest()}
    if (is_json_type(media) or media in UNLABELLED) and input is not None:
        try:
            if orjson.dumps(input) == raw:
                return {"json": "compact"}
        except (TypeError, orjson.JSONEncodeError):
            pass
        if (raw.find(b": ") >= 0 or raw.find(b", ") >= 0) and _spaced_json(input) == raw:
            return {"json": "spaced"}
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    if decoded is None or "\x00" in decoded:  # jsonb holds no U+0000
        return {"base64": base64.b64encode(raw).decode()}
    return {"text": decoded}


def _sensitive_fields(value: Any, policy: RedactionPolicy) -> set[str]:
    """The names of redacted fields anywhere in a decoded body."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and key.lower() in policy.fields:
                    found.add(key)
                else:
                    stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def from_record(request: Mapping[str, Any], *, kind: str, input: Any, route: str,
                headers: Mapping[str, str]) -> Request | None:
    """The request a replay (or resume) gives the handler; None for an execution that did
    not come over HTTP (its request is made from its input, as it was)."""
    if "path" not in request and kind != "http":
        return None
    body, exact, why = _body_of(request, input)
    query = request.get("query_pairs")
    pairs = [(str(k), str(v)) for k, v in query] if isinstance(query, list) else \
        [(str(k), str(v)) for k, v in (request.get("query") or {}).items()]
    return Request(method=request.get("method"),
                   path=str(request.get("path") or "/" + route),
                   path_params=decode(request.get("path_params") or {}), query=pairs,
                   headers=headers.items(), body=body,
                   content_type=request.get("content_type"), exact=exact, why_inexact=why)


def _body_of(request: Mapping[str, Any], input: Any) -> tuple[bytes, bool, str | None]:
    raw = request.get("raw")
    body = request.get("body")
    if isinstance(raw, dict):
        if "text" in raw:
            return str(raw["text"]).encode("utf-8"), True, None
        if "base64" in raw:
            return base64.b64decode(raw["base64"]), True, None
        if raw.get("json") == "compact":
            return _json_bytes(input), True, None
        if raw.get("json") == "spaced":
            spaced = _spaced_json(input)
            if spaced is not None:
                return spaced, True, None
        if raw.get("redacted"):
            why = f"{NOT_KEPT}: {raw['redacted']}"
        elif raw.get("_flux_truncated"):
            why = f"{NOT_KEPT}: {raw.get('size')} bytes is over [record] max_body_bytes"
        else:
            why = NOT_KEPT
        return _rebuilt(request, input), False, why
    if body in ({}, None, "") and not raw:
        return b"", True, None
    return _rebuilt(request, input), False, f"{NOT_KEPT} (the record predates them)"


def _rebuilt(request: Mapping[str, Any], input: Any) -> bytes:
    """The best stand-in for bytes that were not kept: the recorded body, re-encoded."""
    if media_type(request.get("content_type")) == FORM and isinstance(input, dict):
        return urlencode(list(_form_items(input))).encode()
    if isinstance(input, str) and not is_json_type(str(request.get("content_type") or "")):
        return input.encode("utf-8")
    return _json_bytes(input) if input is not None else b""


def _form_items(form: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for key, value in form.items():
        for one in value if isinstance(value, list) else [value]:
            yield str(key), str(one)


def _spaced_json(value: Any) -> bytes | None:
    """``value`` as ``json.dumps`` spells it by default; None if it cannot."""
    try:
        return jsonlib.dumps(value).encode("ascii")
    except (TypeError, ValueError):
        return None


def _json_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps(encode(value), default=str)
