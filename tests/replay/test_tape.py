"""The tape matcher, without a server: order per kind, concurrency by overlap, divergence."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from flux.replay._tape import Call, Tape


def entry(seq: int, kind: str, key: str, span: str | None = None) -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "key": key, "value": seq, "span_id": span,
            "file": "functions/f.py", "line": 10 + seq}


def span(sid: str, start: float, duration: float) -> dict[str, Any]:
    return {"id": sid, "start_ms": start, "duration_ms": duration}


def test_calls_in_the_original_order_match_one_by_one() -> None:
    tape = Tape([entry(1, "db", "a"), entry(2, "http", "GET x"), entry(3, "db", "b")])
    assert tape.take(Call("db", "a")).entry["seq"] == 1
    assert tape.take(Call("http", "GET x")).entry["seq"] == 2
    assert tape.take(Call("db", "b")).entry["seq"] == 3
    assert tape.finish() is None


def test_order_is_per_kind() -> None:
    tape = Tape([entry(1, "db", "a"), entry(2, "clock", "now"), entry(3, "db", "b")])
    assert tape.take(Call("clock", "now")).entry["seq"] == 2  # before the db call: fine
    assert tape.take(Call("db", "a")).in_order
    assert tape.take(Call("db", "b")).in_order
    assert tape.finish() is None


def test_concurrent_calls_may_come_back_in_any_order() -> None:
    spans = {"s1": span("s1", 0, 10), "s2": span("s2", 1, 10), "s3": span("s3", 20, 5)}
    tape = Tape([entry(1, "db", "a", "s1"), entry(2, "db", "b", "s2"),
                 entry(3, "db", "c", "s3")], spans)
    assert tape.take(Call("db", "b")).entry["seq"] == 2  # overlapped with a: no divergence
    assert tape.take(Call("db", "a")).entry["seq"] == 1
    assert tape.take(Call("db", "c")).in_order
    assert tape.divergence is None and tape.finish() is None


def test_a_reordered_call_is_the_divergence() -> None:
    spans = {"s1": span("s1", 0, 2), "s2": span("s2", 5, 2)}  # one after the other
    tape = Tape([entry(1, "db", "a", "s1"), entry(2, "db", "b", "s2")], spans)
    match = tape.take(Call("db", "b", "functions/f.py", 30))
    assert tape.divergence is not None
    assert tape.divergence.expected["seq"] == 1 and tape.divergence.line == 30
    assert "earlier" in tape.divergence.reason
    assert match.entry["seq"] == 2  # after the divergence, values still come by key


def test_an_added_call_diverges_then_the_rest_still_match() -> None:
    tape = Tape([entry(1, "db", "a"), entry(2, "db", "b")])
    tape.take(Call("db", "a"))
    assert tape.take(Call("db", "new", "functions/f.py", 40)).entry is None
    assert tape.divergence.actual.key == "new" and tape.divergence.expected["key"] == "b"
    assert tape.take(Call("db", "b")).entry["seq"] == 2


def test_a_removed_last_call_is_found_at_the_end() -> None:
    tape = Tape([entry(1, "db", "a"), entry(2, "http", "POST y")])
    tape.take(Call("db", "a"))
    divergence = tape.finish()
    assert divergence is not None and divergence.actual is None
    assert divergence.expected["key"] == "POST y" and divergence.line == 12


def test_past_the_end_of_the_tape_is_not_a_divergence() -> None:
    tape = Tape([entry(1, "db", "a")])
    tape.take(Call("db", "a"))
    assert tape.take(Call("db", "more")).entry is None
    assert tape.divergence is None and tape.finish() is None


@given(st.lists(st.tuples(st.sampled_from(["db", "http", "clock"]),
                          st.sampled_from(["a", "b", "c"])), max_size=30))
def test_replaying_the_same_calls_never_diverges(calls: list[tuple[str, str]]) -> None:
    entries = [entry(i, kind, key) for i, (kind, key) in enumerate(calls, 1)]
    tape = Tape(entries)
    for i, (kind, key) in enumerate(calls, 1):
        assert tape.take(Call(kind, key)).entry["seq"] == i
    assert tape.finish() is None


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=20),
       st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=20))
def test_any_call_sequence_is_answered_or_diverges_never_raises(
        recorded: list[str], made: list[str]) -> None:
    tape = Tape([entry(i, "db", key) for i, key in enumerate(recorded, 1)])
    taken = [tape.take(Call("db", key)).entry for key in made]
    seqs = [e["seq"] for e in taken if e is not None]
    assert len(seqs) == len(set(seqs))  # no entry is served twice
    if made == recorded:
        assert tape.finish() is None
