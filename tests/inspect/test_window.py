"""Windows as people type them (flux/_window.py): both separators, times of today, dates,
ISO forms, zones — and the interpretation said back."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from flux._errors import ConfigError
from flux.inspect._window import describe, parse_time, parse_window

PARIS = ZoneInfo("Europe/Paris")
# 16:00 in Paris on 2026-03-10
NOW = dt.datetime(2026, 3, 10, 15, 0, tzinfo=dt.UTC)


def read(text: str) -> tuple[str, str]:
    window = parse_window(text, now=NOW, zone=PARIS, zone_name="Europe/Paris")
    return window.start.isoformat(), window.end.isoformat()


@pytest.mark.parametrize(
    "text",
    [
        "14:20..14:25",
        "14:20-14:25",
        "14:20 - 14:25",
        "14:20–14:25",
        "14:20 to 14:25",
        "2:20pm-2:25pm",
        "2026-03-10 14:20..14:25",
        "2026-03-10T14:20-14:25",
        "2026-03-10 14:20 - 2026-03-10 14:25",
        "2026-03-10T13:20Z..2026-03-10T13:25Z",
        "2026-03-10T13:20:00+00:00-2026-03-10T13:25:00+00:00",
        "13:20..13:25 UTC",
        "  14:20..14:25  ",
    ],
)
def test_every_spelling_of_one_window_reads_the_same(text: str) -> None:
    window = parse_window(text, now=NOW, zone=PARIS, zone_name="Europe/Paris")
    assert (window.start, window.end) == (
        dt.datetime(2026, 3, 10, 13, 20, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 10, 13, 25, tzinfo=dt.UTC),
    )


def test_a_window_of_today_that_has_not_begun_is_yesterdays_and_says_so() -> None:
    window = parse_window("17:00-17:05", now=NOW, zone=PARIS, zone_name="Europe/Paris")
    assert window.start.isoformat() == "2026-03-09T17:00:00+01:00"
    assert "yesterday" in " ".join(window.notes)


def test_a_window_across_midnight_ends_the_next_day() -> None:
    assert read("yesterday 23:50-00:10") == (
        "2026-03-09T23:50:00+01:00",
        "2026-03-10T00:10:00+01:00",
    )


def test_dates_alone_relative_times_and_now() -> None:
    assert read("2026-03-09") == ("2026-03-09T00:00:00+01:00", "2026-03-10T00:00:00+01:00")
    assert read("2026-03-08-2026-03-10") == (
        "2026-03-08T00:00:00+01:00",
        "2026-03-10T00:00:00+01:00",
    )
    assert read("1h..now") == ("2026-03-10T15:00:00+01:00", "2026-03-10T16:00:00+01:00")
    assert read("90m") == ("2026-03-10T14:30:00+01:00", "2026-03-10T16:00:00+01:00")
    assert read("15:00..") == ("2026-03-10T15:00:00+01:00", "2026-03-10T16:00:00+01:00")


@pytest.mark.parametrize(
    "text",
    ["14:20", "abc", "14:25..14:20x", "", "25:00-26:00", "2026-03-10T15:00..2026-03-10T14:00"],
)
def test_what_is_no_window_is_one_clear_sentence(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_window(text, now=NOW, zone=PARIS, zone_name="Europe/Paris")
    assert "window" in caught.value.message


def test_the_interpretation_names_both_zones_only_where_they_differ() -> None:
    window = parse_window("14:20-14:25", now=NOW, zone=PARIS, zone_name="Europe/Paris")
    facts = describe(window, server_zone="Etc/UTC")
    assert facts["text"] == "2026-03-10 14:20 → 14:25 (Europe/Paris)"
    assert facts["server_text"] == "2026-03-10 13:20 → 13:25 (Etc/UTC)"
    assert describe(window, server_zone="Europe/Berlin")["server_text"] is None  # same offset
    utc = parse_window("13:20..13:25 UTC", now=NOW, zone=PARIS, zone_name="Europe/Paris")
    assert describe(utc, server_zone="UTC")["server_text"] is None
    assert describe(utc, server_zone="UTC")["text"] == "2026-03-10 13:20 → 13:25 (UTC)"


def test_one_time_reads_as_before() -> None:
    assert parse_time("14:05", now=NOW, zone=PARIS).isoformat() == "2026-03-10T14:05:00+01:00"
    assert parse_time("2h", now=NOW, zone=PARIS) == NOW - dt.timedelta(hours=2)
