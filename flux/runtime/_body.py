"""Request bodies as the gateway takes them: JSON (or a form) that the record can hold as
it came.

What a body decodes to — the function's ``input`` — follows its ``Content-Type``: JSON for a
JSON type, ``text/plain``, ``application/octet-stream`` or none (as before routes and forms:
a client that says nothing — aiohttp's client calls any bytes ``octet-stream`` — is taken to
send JSON, and a body that is not JSON is a 400); for ``application/x-www-form-urlencoded`` a
form, as a dict whose repeated fields are lists — unless the body starts with ``{`` or ``[``
(``curl -d '{…}'`` sends JSON with the form type); for any other type (XML, CSV, a PDF,
multipart) JSON if the body is JSON, else ``None``, and the handler reads the bytes from
``ctx.request.body``.

``json.loads`` accepts more than a record can keep, so these are refused too, each with one
sentence and a 400 that is recorded like any other answer:

- nesting deeper than MAX_DEPTH levels (the parser itself raises RecursionError near 1000,
  and the record's encoder stops at 255; a real payload is rarely 20 deep);
- numbers outside a double's range (``1e400`` would become infinity) and the non-JSON
  constants ``NaN`` / ``Infinity`` (neither exists in JSON or in jsonb);
- integers of more than MAX_DIGITS digits (Python's own limit on turning text into an
  integer, which would otherwise surface as an odd message);
- strings holding U+0000 (jsonb refuses it) or an unpaired surrogate (not UTF-8).

The checks cost nothing on ordinary bodies: depth is only walked when the body has more
brackets than MAX_DEPTH, and strings only when the body has a ``\\u`` escape.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import parse_qsl

MAX_DEPTH = 128
MAX_DIGITS = 4300
_BAD_CHAR = re.compile(r"[\x00\ud800-\udfff]")


FORM = "application/x-www-form-urlencoded"
UNLABELLED = ("", "text/plain", "application/octet-stream")  # taken to be JSON, as ever


class BodyError(ValueError):
    """A body the gateway refuses; ``str()`` is the sentence for the client."""

    code = "invalid_json"


class FormError(BodyError):
    code = "invalid_form"


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` → ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_type(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def decode_input(raw: bytes, media: str) -> Any:
    """The function's ``input`` for a body of media type ``media`` (see above)."""
    if media == FORM and raw.lstrip()[:1] not in (b"{", b"["):
        return parse_form(raw)
    if media in UNLABELLED or media == FORM or is_json_type(media):
        return parse_body(raw)
    try:
        return parse_body(raw)
    except BodyError:
        return None  # not JSON, and it never said it was: the handler reads the bytes


def form_pairs(raw: bytes) -> list[tuple[str, str]]:
    """The fields of a form body, in order, repeated ones repeated."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("the form body is not valid UTF-8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise FormError("the form body has a %-escape that is not UTF-8") from None
    if any(_BAD_CHAR.search(k) or _BAD_CHAR.search(v) for k, v in pairs):
        raise FormError("the form body has a field with U+0000, which cannot be recorded")
    return pairs


def parse_form(raw: bytes) -> dict[str, Any]:
    """A form body as a dict: a field given once is a string, a repeated one a list."""
    out: dict[str, Any] = {}
    for key, value in form_pairs(raw):
        if key not in out:
            out[key] = value
        elif isinstance(out[key], list):
            out[key].append(value)
        else:
            out[key] = [out[key], value]
    return out


def parse_body(raw: bytes) -> Any:
    """The JSON value of a request body ({} for an empty one)."""
    if not raw.strip():
        return {}
    try:
        # What json.loads does with bytes, through one decoder made once (json.loads with
        # hooks builds a decoder per call: half the cost of parsing a small body).
        value = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError:
        raise BodyError(f"the request body is nested deeper than {MAX_DEPTH} levels") from None
    except BodyError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(f"the request body is not valid JSON: {exc}") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise BodyError(f"the request body is nested deeper than {MAX_DEPTH} levels")
    if b"\\u" in raw and _has_bad_text(value):
        raise BodyError("the request body has a string with U+0000 or an unpaired "
                        "surrogate, which cannot be recorded")
    return value


def preview(raw: bytes, limit: int = 1024) -> str:
    """The start of a refused body as text for its record (bad bytes and NULs replaced)."""
    return raw[:limit].decode("utf-8", "replace").replace("\x00", "\ufffd")


def _float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise BodyError(f"the request body has a number out of range: {_short(text)}")
    return number


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise BodyError(f"the request body has an integer of more than {MAX_DIGITS} digits: "
                        f"{_short(text)}")
    return int(text)


def _constant(text: str) -> Any:
    raise BodyError(f"the request body is not valid JSON: {text} is not a JSON value")


_DECODER = json.JSONDecoder(parse_float=_float, parse_int=_int, parse_constant=_constant)


def _short(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}… ({len(text)} characters)"


def _depth(value: Any) -> int:
    """How deeply containers nest in ``value`` (iterative: no recursion limit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _has_bad_text(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _BAD_CHAR.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
