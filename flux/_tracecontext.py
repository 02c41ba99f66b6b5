"""W3C Trace Context: which distributed trace an execution belongs to.

A request that arrives with a valid ``traceparent`` joins the caller's trace: its spans carry
the caller's trace id and its gateway span names the caller's span as parent. Without one
(or with a malformed one, which is ignored as the W3C recommendation says, never refused)
the execution starts a trace whose id *is* its request id: a UUIDv7 is 128 bits, time-ordered
and random in its tail, so ``flux trace`` and a tracing backend name the same thing.

Span ids are derived from the request id and the recorder's positional span id (``s4``), so
the id a ``ctx.http`` call sends in its ``traceparent`` is the one the exported span has,
with no id table to keep. Pure logic, no IO.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_PARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_STATE_MEMBER = re.compile(r"[a-z0-9][_0-9a-z\-*/@]{0,255}=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}"
                           r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_MAX_STATE_MEMBERS = 32
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class TraceContext:
    """The trace an execution is part of: ``parent_span_id`` is the caller's span (None when
    the trace starts here); ``tracestate`` is passed on unchanged to outgoing calls."""

    trace_id: str  # 32 lowercase hex digits
    parent_span_id: str | None = None  # 16 lowercase hex digits
    sampled: bool = True
    tracestate: str | None = None

    @classmethod
    def start(cls, request_id: str) -> TraceContext:
        """A new trace, its id the request id's 128 bits (a hash of it, were it ever not a
        UUID)."""
        if isinstance(request_id, str) and _CANONICAL_UUID.fullmatch(request_id):  # ours
            return cls(trace_id=request_id.replace("-", ""))
        try:
            return cls(trace_id=uuid.UUID(str(request_id)).hex)
        except ValueError:
            return cls(trace_id=hashlib.blake2b(str(request_id).encode(),
                                                digest_size=16).hexdigest())

    def traceparent(self, span_id: str) -> str:
        """The header naming ``span_id`` (one of this trace's spans) as the parent."""
        return f"00-{self.trace_id}-{span_id}-{'01' if self.sampled else '00'}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trace_id": self.trace_id, "sampled": self.sampled}
        if self.parent_span_id:
            out["parent_span_id"] = self.parent_span_id
        if self.tracestate:
            out["tracestate"] = self.tracestate
        return out

    @classmethod
    def from_json(cls, value: Any) -> TraceContext | None:
        """The context a record stored (``request.trace``); None if it holds none."""
        if not isinstance(value, Mapping):
            return None
        trace_id, parent = value.get("trace_id"), value.get("parent_span_id")
        if not _valid_trace_id(trace_id):
            return None
        return cls(trace_id=str(trace_id),
                    parent_span_id=str(parent) if _valid_span_id(parent) else None,
                    sampled=value.get("sampled") is not False,
                    tracestate=value.get("tracestate") or None)


def parse(traceparent: Iterable[str], tracestate: Iterable[str] = ()) -> TraceContext | None:
    """The caller's context from the values of its ``traceparent`` and ``tracestate``
    headers (every occurrence); None when there is none or it is malformed.

    Follows the W3C rules: exactly one ``traceparent``; version ``ff`` is invalid; a
    version-00 value is exactly 55 characters; a later version may carry more after a
    ``-``; trace and parent ids are lowercase hex and not all zeros. A ``tracestate`` that
    does not parse is dropped on its own (the trace is still joined)."""
    values = list(traceparent)
    if len(values) != 1:
        return None
    value = values[0].strip(" \t")
    match = _PARENT.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if len(value) != 55 and (version == "00" or value[55:56] != "-"):
        return None
    return TraceContext(trace_id=trace_id, parent_span_id=span_id,
                        sampled=bool(int(flags, 16) & 0x01),
                        tracestate=_tracestate(tracestate))


def from_headers(headers: Any) -> TraceContext | None:
    """``parse`` over a multi-valued header mapping (aiohttp's ``CIMultiDictProxy``) or a
    plain mapping (names in any case)."""
    if hasattr(headers, "getall"):
        return parse(headers.getall(TRACEPARENT, []), headers.getall(TRACESTATE, []))
    parents = [v for k, v in headers.items() if k.lower() == TRACEPARENT]
    states = [v for k, v in headers.items() if k.lower() == TRACESTATE]
    return parse(parents, states)


def of_record(record: Mapping[str, Any]) -> TraceContext:
    """The trace a stored record belongs to (``request.trace``; a record from before traces
    were stored: its own)."""
    request = record.get("request") or {}
    return TraceContext.from_json(request.get("trace")) or \
        TraceContext.start(str(record["request_id"]))


def span_id(request_id: str, local_id: str) -> str:
    """The 64-bit id of the recorder's span ``local_id`` (``s3``) of execution
    ``request_id``, as 16 hex digits: the same every time it is asked."""
    digest = hashlib.blake2b(f"{request_id}/{local_id}".encode(), digest_size=8).hexdigest()
    return digest if digest != _ZERO_SPAN else "0" * 15 + "1"


def _tracestate(values: Iterable[str]) -> str | None:
    """The joined ``tracestate``, or None if empty, too long or malformed."""
    members = [m.strip(" \t") for v in values for m in v.split(",")]
    members = [m for m in members if m]
    if not members or len(members) > _MAX_STATE_MEMBERS:
        return None
    if not all(_STATE_MEMBER.fullmatch(m) for m in members):
        return None
    keys = [m.split("=", 1)[0] for m in members]
    if len(set(keys)) != len(keys):
        return None
    return ",".join(members)


def _valid_trace_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 32 and value != _ZERO_TRACE \
        and all(c in "0123456789abcdef" for c in value)


def _valid_span_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 16 and value != _ZERO_SPAN \
        and all(c in "0123456789abcdef" for c in value)
