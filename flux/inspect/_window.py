"""Time windows as people type them: ``14:00..14:05``, ``14:20-14:25``,
``2026-03-10 14:00..14:05``, ``2026-03-10T14:00Z..2026-03-10T15:00Z``, ``1h..now``,
``yesterday 23:50-00:10``, ``14:00..14:05 UTC`` — and the interpretation chosen, said back.

A window's times are read in the zone of the person typing (``TZ``, or the machine's), unless
they carry an offset or the window ends with a zone name. Times of day without a date are
today's; a window of them that has not begun yet is yesterday's (an incident is in the past),
and one whose end is before its start crosses midnight. Whatever was chosen is said in the
window's ``notes``, and :func:`describe` puts it in words, in the reader's zone and — where it
differs — the server's, so a person never guesses which 14:00 was meant.

Pure: no IO but the clock and the zone database.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flux._errors import ConfigError

_AGO = re.compile(r"^(\d+)\s*(s|m|min|h|d|w)(?:\s+ago)?$")
_UNIT = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_CLOCK = re.compile(r"^(\d{1,2})(?::(\d{2}))?(?::(\d{2})(?:\.\d+)?)?\s*(am|pm)?$")
_DAY_WORD = re.compile(r"^(today|yesterday)(?:\s+(.+))?$")
# Between the ends: "..", an arrow, a dash (hyphen, en or em dash) or the word "to".
_DASHES = ("–", "—", "→", " to ", "-")
EXAMPLES = "14:00..14:05, 14:20-14:25, 2026-03-10 14:00..15:00 or 1h..now"


@dataclass(frozen=True)
class Window:
    """A window of time, both ends aware, as it was read."""

    start: dt.datetime
    end: dt.datetime
    text: str  # as typed
    zone: str  # the zone its times were read in
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _End:
    at: dt.datetime
    clock_only: bool  # a time of day with no date: its day is chosen with the other end's


def local_zone() -> tuple[dt.tzinfo, str]:
    """The reader's zone and its name: ``TZ`` if it names one, else the machine's."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name), name
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        link = os.readlink("/etc/localtime")
    except OSError:
        link = ""
    if "zoneinfo/" in link:
        name = link.split("zoneinfo/", 1)[1]
        try:
            return ZoneInfo(name), name
        except (ZoneInfoNotFoundError, ValueError):
            pass
    if Path("/etc/timezone").is_file():
        name = Path("/etc/timezone").read_text(encoding="utf-8").strip()
        try:
            return ZoneInfo(name), name
        except (ZoneInfoNotFoundError, ValueError):
            pass
    here = dt.datetime.now().astimezone().tzinfo
    assert here is not None
    return here, str(here.tzname(None) or "local time")


def zone_named(name: str) -> dt.tzinfo | None:
    """The zone ``name`` names (``UTC``, ``Europe/Paris``), or None."""
    if name.upper() in ("UTC", "Z", "GMT"):
        return dt.UTC
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*", name):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def parse_time(
    text: str, *, now: dt.datetime | None = None, zone: dt.tzinfo | None = None
) -> dt.datetime:
    """One point in time: ``now``, ``15m``/``2h``/``3d`` ago, ``14:05`` today, ``2pm``,
    ``yesterday 14:05``, ``2026-03-10``, ``2026-03-10 14:05`` or any ISO date-time."""
    zone = zone or local_zone()[0]
    now = (now or dt.datetime.now(dt.UTC)).astimezone(zone)
    return _read_end(text, now, zone).at


def parse_window(
    text: str,
    *,
    now: dt.datetime | None = None,
    zone: dt.tzinfo | None = None,
    zone_name: str | None = None,
) -> Window:
    """The window ``text`` names (see the module's docstring for the forms)."""
    original = text
    value = " ".join(text.strip().split())
    if zone is None:
        zone, zone_name = local_zone()
    # A zone name at the end applies to the whole window: "14:00..14:05 UTC".
    head, _, last = value.rpartition(" ")
    if head and (named := zone_named(last)) is not None:
        value, zone, zone_name = head, named, "UTC" if named is dt.UTC else last
    zone_name = zone_name or str(zone)
    now = (now or dt.datetime.now(dt.UTC)).astimezone(zone)
    if not value:
        raise ConfigError(f"a window is START..END (e.g. {EXAMPLES}), not {original!r}")
    for start_text, end_text in _splits(value):
        try:
            start = _read_end(start_text, now, zone)
            end = (
                _End(now, False)
                if end_text.strip().lower() in ("", "now")
                else _read_end(end_text, now, zone)
            )
        except ConfigError:
            continue
        window = _settle(start, end, now, original, zone_name)
        # Ends typed with their own offset are shown in the reader's zone like the others.
        return Window(
            window.start.astimezone(zone),
            window.end.astimezone(zone),
            window.text,
            window.zone,
            window.notes,
        )
    # No separator that leaves two times: one day ("2026-03-10", "yesterday") or one span
    # back from now ("1h").
    try:
        single = _read_day(value, now, zone)
    except ConfigError:
        single = None
    if single is not None:
        return Window(
            single, single + dt.timedelta(days=1), original, zone_name, ("the whole day",)
        )
    if _AGO.match(value.lower()):
        return Window(_read_end(value, now, zone).at, now, original, zone_name, ("until now",))
    raise ConfigError(f"a window is START..END or START-END (e.g. {EXAMPLES}), not {original!r}")


def _splits(value: str) -> list[tuple[str, str]]:
    """The ways ``value`` can be cut into two ends, most likely first."""
    if ".." in value:
        start, _, end = value.partition("..")
        return [(start, end)]
    cuts: list[tuple[str, str]] = []
    for dash in _DASHES:
        at = value.find(dash)
        while at > 0:
            cuts.append((value[:at], value[at + len(dash) :]))
            at = value.find(dash, at + 1)
    return cuts


def _settle(start: _End, end: _End, now: dt.datetime, text: str, zone_name: str) -> Window:
    """The days of the ends, when one or both were times of day."""
    notes: list[str] = []
    a, b = start.at, end.at
    if end.clock_only and not start.clock_only:
        b = _on_day(b, a)  # "2026-03-10 14:00..14:05": the end is on the start's day
    elif start.clock_only and not end.clock_only:
        a = _on_day(a, b)
        if a >= b:
            a -= dt.timedelta(days=1)
            notes.append(f"{a:%H:%M} is after the end on its day: the day before")
    if end.clock_only and b <= a:
        b += dt.timedelta(days=1)
        notes.append("crosses midnight")
    if start.clock_only and end.clock_only and a > now:
        a -= dt.timedelta(days=1)
        b -= dt.timedelta(days=1)
        notes.append(f"{a:%H:%M} has not come yet today: yesterday's")
    if b <= a:
        raise ConfigError(f"the window {text!r} ends before it starts")
    return Window(a, b, text, zone_name, tuple(notes))


def _on_day(clock: dt.datetime, day: dt.datetime) -> dt.datetime:
    moved = day.astimezone(clock.tzinfo)
    return clock.replace(year=moved.year, month=moved.month, day=moved.day)


def _read_end(text: str, now: dt.datetime, zone: dt.tzinfo) -> _End:
    value = text.strip().lower()
    if not value:
        raise ConfigError("an empty time")
    if value == "now":
        return _End(now, False)
    if match := _AGO.match(value):
        return _End(now - dt.timedelta(seconds=int(match[1]) * _UNIT[match[2]]), False)
    if match := _DAY_WORD.match(value):
        day = now - dt.timedelta(days=1 if match[1] == "yesterday" else 0)
        if not match[2]:
            return _End(_midnight(day, zone), False)
        clock = _read_clock(match[2], day, zone)
        if clock is None:
            raise ConfigError(f"{text!r} is not a time")
        return _End(clock, False)
    clock = _read_clock(value, now, zone)
    if clock is not None:
        return _End(clock, True)
    iso = value.upper().replace(" ", "T", 1)
    try:
        parsed = dt.datetime.fromisoformat(iso)
    except ValueError as exc:
        raise ConfigError(
            f"{text!r} is not a time: use 15m, 2h, 14:05, 2pm or 2026-03-10T14:00"
        ) from exc
    return _End(parsed if parsed.tzinfo else parsed.replace(tzinfo=zone), False)


def _read_day(value: str, now: dt.datetime, zone: dt.tzinfo) -> dt.datetime | None:
    lowered = value.strip().lower()
    if lowered in ("today", "yesterday"):
        return _read_end(lowered, now, zone).at
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", lowered):
        try:
            day = dt.date.fromisoformat(lowered)
        except ValueError as exc:
            raise ConfigError(f"{value!r} is not a date") from exc
        return dt.datetime(day.year, day.month, day.day, tzinfo=zone)
    return None


def _read_clock(value: str, day: dt.datetime, zone: dt.tzinfo) -> dt.datetime | None:
    """``14:05``, ``14:05:30``, ``2pm``, ``2:30 pm`` on ``day``'s date; None if not one."""
    match = _CLOCK.match(value.strip().lower())
    if not match or (match[2] is None and match[4] is None):
        return None  # a bare number is not a time of day
    hour, minute, second = int(match[1]), int(match[2] or 0), int(match[3] or 0)
    if match[4]:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if match[4] == "pm" else 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    local = day.astimezone(zone)
    return dt.datetime(local.year, local.month, local.day, hour, minute, second, tzinfo=zone)


def _midnight(day: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    local = day.astimezone(zone)
    return dt.datetime(local.year, local.month, local.day, tzinfo=zone)


def describe(window: Window, *, server_zone: str | None = None) -> dict[str, Any]:
    """The interpretation chosen, for people (``text``, and ``server_text`` where the server's
    zone differs from the reader's) and for machines (ISO ``start`` and ``end``)."""
    facts: dict[str, Any] = {
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "zone": window.zone,
        "text": f"{span(window.start, window.end)} ({window.zone})",
        "notes": list(window.notes),
        "server_zone": server_zone,
        "server_text": None,
    }
    server = zone_named(server_zone) if server_zone else None
    if server is not None and _differs(window, server):
        a, b = window.start.astimezone(server), window.end.astimezone(server)
        facts["server_text"] = f"{span(a, b)} ({server_zone})"
    return facts


def _differs(window: Window, server: dt.tzinfo) -> bool:
    return any(
        at.utcoffset() != at.astimezone(server).utcoffset() for at in (window.start, window.end)
    )


def span(a: dt.datetime, b: dt.datetime) -> str:
    """``2026-03-10 14:20 → 14:25``, or both dates when the window spans days."""
    fmt = "%H:%M:%S" if a.second or b.second else "%H:%M"
    end = b.strftime(fmt) if b.date() == a.date() else b.strftime(f"%Y-%m-%d {fmt}")
    return f"{a.strftime(f'%Y-%m-%d {fmt}')} → {end}"
