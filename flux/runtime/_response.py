"""``flux.Response``: the answer a handler means — a status, headers, a body of its type.

A plain return value stays a ``200`` with JSON. ``Response(body, status=201,
headers={"Location": …})`` answers as told: a ``str`` body is ``text/plain; charset=utf-8``,
``bytes`` ``application/octet-stream``, anything else JSON, unless ``content_type`` says
otherwise; ``None`` is an empty body (a ``204``, a redirect). Returning a response — even a
``404`` — is a success: the execution commits. ``raise ctx.error(…)`` is the failure that
rolls back.

The record's ``response`` keeps the status, the headers (redacted like a request's) and the
body, so ``flux replay --expect same`` compares all three.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

import orjson

from flux._jsoncodec import encode
from flux.runtime._sealed import sealed

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
BYTES = "application/octet-stream"


class Response:
    """What a handler returns to choose its status, headers and body type."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, body: Any = None, status: int = 200,
                 headers: Mapping[str, str] | None = None,
                 content_type: str | None = None) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or \
                not 100 <= status <= 599:
            raise ValueError(f"flux.Response: status must be a whole number from 100 to "
                             f"599, not {status!r}")
        self.body = body
        self.status = status
        self.headers: dict[str, str] = {}
        for name, value in (headers or {}).items():
            if not isinstance(name, str) or not isinstance(value, str | int):
                raise TypeError(f"flux.Response: header {name!r} must be a name and a text "
                                f"value, not {value!r}")
            if "\n" in f"{name}{value}" or "\r" in f"{name}{value}":
                raise ValueError(f"flux.Response: header {name!r} holds a line break")
            self.headers[name] = str(value)
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"Response({self.body!r}, status={self.status})"


@sealed  # frozen to mypy; made at run time without a setattr per field
class Answer:
    """How a handler's return value goes out: ``body`` as recorded (JSON-able), and
    ``raw`` — the bytes to send: JSON's own encoding of ``body`` (made once, by the check
    that it encodes) when ``content_type`` is None, else the body in its type."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None  # None: JSON of ``body``
    raw: bytes | None = None


def answer_of(result: Any, json_value: Callable[[Any], tuple[Any, bytes]]) -> Answer:
    """The answer for what a handler returned; ``json_value`` gives a value JSON can encode
    and its encoding (raising TypeError with a sentence when it cannot)."""
    if isinstance(result, Answer):  # made by Flux itself (an ASGI app's reply)
        return result
    if not isinstance(result, Response):
        value, data = json_value(result)
        return Answer(200, value, {}, None, data)
    headers = result.headers
    given = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    kind = result.content_type or given
    headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    body = result.body
    if body is None:
        return Answer(result.status, None, headers, kind or "", b"")
    if isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
        return Answer(result.status, encode(data), headers, kind or BYTES, data)
    if isinstance(body, str):
        return Answer(result.status, body, headers, kind or TEXT, body.encode("utf-8"))
    value, data = json_value(body)
    return Answer(result.status, value, headers, None if kind == JSON else kind, data)


def json_bytes(value: Any) -> bytes:
    """``value`` as the JSON Flux answers with: orjson's compact UTF-8 (``json`` for what
    orjson refuses: an integer past 64 bits)."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value).encode()
