"""W3C traceparent/tracestate parsing and the ids Flux derives: pure logic."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux._tracecontext import TraceContext, from_headers, parse, span_id

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


def test_valid_traceparent_is_joined() -> None:
    ctx = parse([VALID])
    assert ctx == TraceContext(trace_id=TRACE, parent_span_id=PARENT, sampled=True)


def test_unsampled_flag_is_kept() -> None:
    ctx = parse([f"00-{TRACE}-{PARENT}-00"])
    assert ctx is not None and not ctx.sampled
    assert ctx.traceparent("1" * 16).endswith("-00")


@pytest.mark.parametrize("value", [
    "",
    "garbage",
    f"00-{TRACE.upper()}-{PARENT}-01",  # ids are lowercase hex
    f"00-{'0' * 32}-{PARENT}-01",  # an all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # an all-zero parent id
    f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
    f"00-{TRACE}-{PARENT}-01-extra",  # version 00 is exactly 55 characters
    f"01-{TRACE}-{PARENT}-01extra",  # a later version continues only after a "-"
    f"00-{TRACE[:-1]}-{PARENT}-01",
    f"00-{TRACE}-{PARENT}-1",
    f"00_{TRACE}_{PARENT}_01",
])
def test_malformed_traceparent_is_ignored(value: str) -> None:
    assert parse([value]) is None


def test_later_version_with_more_fields_is_accepted() -> None:
    ctx = parse([f"01-{TRACE}-{PARENT}-01-what-comes-next"])
    assert ctx is not None and ctx.trace_id == TRACE


def test_two_traceparent_headers_are_ignored() -> None:
    assert parse([VALID, VALID]) is None
    assert parse([]) is None


def test_tracestate_is_kept_joined_and_dropped_alone_when_malformed() -> None:
    assert parse([VALID], ["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"]).tracestate == \
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    broken = parse([VALID], ["Not A Member"])
    assert broken is not None and broken.tracestate is None  # the trace is still joined
    assert parse([VALID], ["a=1,a=2"]).tracestate is None  # a key twice


def test_headers_in_any_case() -> None:
    assert from_headers({"TraceParent": VALID, "TRACESTATE": "k=v"}) == \
        TraceContext(TRACE, PARENT, True, "k=v")
    assert from_headers({"content-type": "application/json"}) is None


def test_new_trace_is_the_request_id() -> None:
    rid = "01a1fc87-f1b0-7ca0-8d3e-2b6f4c1a9e55"
    assert TraceContext.start(rid).trace_id == uuid.UUID(rid).hex
    assert TraceContext.start(rid).parent_span_id is None
    # Not Flux's canonical text (capitals, braces, no dashes): parsed, the same 128 bits.
    for spelled in (rid.upper(), "{" + rid + "}", rid.replace("-", "")):
        assert TraceContext.start(spelled).trace_id == uuid.UUID(rid).hex


def test_span_ids_are_stable_and_distinct() -> None:
    rid = "01a1fc87-f1b0-7ca0-8d3e-2b6f4c1a9e55"
    ids = {span_id(rid, f"s{i}") for i in range(1, 200)}
    assert len(ids) == 199 and all(len(i) == 16 and i != "0" * 16 for i in ids)
    assert span_id(rid, "s3") == span_id(rid, "s3") != span_id(rid.replace("1", "2"), "s3")


def test_record_round_trip() -> None:
    ctx = TraceContext(TRACE, PARENT, False, "k=v")
    assert TraceContext.from_json(ctx.to_json()) == ctx
    assert TraceContext.from_json({"trace_id": "nope"}) is None
    assert TraceContext.from_json(None) is None


@given(st.text(max_size=80))
def test_parse_never_raises(value: str) -> None:
    ctx = parse([value], [value])
    assert ctx is None or (len(ctx.trace_id) == 32 and ctx.parent_span_id is not None)
