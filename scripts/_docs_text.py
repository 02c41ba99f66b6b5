"""Text helpers of scripts/docs.py: making captured output stable, and filling the pages.

Pure functions and one small class, no IO, so that tests/test_docs.py can check them
without a server.

Captured output varies from run to run in a few known ways — request ids, commit SHAs,
times, durations, ports, paths, sizes, pids — and :class:`Normaliser` replaces each with a
stable placeholder: the n-th execution id seen becomes ``01a2b3c4-000n-7000…`` (every form
of it: full, the 18-character short form, ``_`` instead of ``-`` in file names), the n-th
commit a fixed fake SHA, every time ``14:22:31`` on ``2026-03-10``, every duration ``12 ms``
(keeping the column it was printed in). Anything else that changes between two runs is a
bug of the docs generator: the docs test fails on it.

Pages hold generated blocks between markers that are kept when the block is rewritten::

    <!-- output: why-rate-limit -->      a captured command and its output
    <!-- options: state history -->     the options of a command, from the CLI itself
    <!-- schema: flux.jobs -->          the columns of a table or view, from the catalog
    <!-- keys: trace debug -->          the keys of the terminal UI, from its bindings
    … generated …
    <!-- /output -->                    (/options, /schema, /keys)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# --- stable placeholders -------------------------------------------------------------------

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_SHORT = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}"
_ID = re.compile(rf"(?<![0-9a-f-])(?:(?P<full>{_UUID})|(?P<short>{_SHORT}))(?![0-9a-f])")
_HEX = re.compile(r"(?<![0-9a-f])[0-9a-f]{7,40}(?![0-9a-f])")
# OpenTelemetry: a trace id is 32 hex digits (a request id's, when Flux started the trace),
# a span id 16, as in a traceparent: 00-<trace id>-<span id>-01.
_TRACE_ID = re.compile(r"(?:(?<![0-9a-f-])|(?<=\b00-))[0-9a-f]{32}(?![0-9a-f])")
_TRACEPARENT_SPAN = re.compile(r"(?<=\b00-[0-9a-f]{32}-)[0-9a-f]{16}(?=-0[01]\b)")

# 2026-11-21T08:30:50.269272+00:00 (JSON, records) or 2026-11-21 08:30:50 (git, psql), and
# a table cell cut short with an ellipsis.
_CUT_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT[0-9:.+-]*…")
_TIMESTAMP = re.compile(r"\b\d{4}-\d\d-\d\d([T ])\d\d:\d\d(?::\d\d)?(\.\d+)?")
_DAY_TIME = re.compile(r"\b\d\d-\d\d \d\d:\d\d:\d\d\b")  # flux ls: 11-21 08:30:52
_TIME = re.compile(r"(?<![\d:])\d\d:\d\d:\d\d(?![\d:])")
_DATE = re.compile(r"\b\d{4}-\d\d-\d\d\b")
_EPOCH = re.compile(r"\b1[6-9]\d{8}\b")  # seconds since 1970, e.g. a charge's "created"
_DURATION = re.compile(r"( *)([+-]?\d+(?:\.\d+)?)( ?ms)\b")
_JSON_MS = re.compile(r'("[a-z_]*_ms"): -?\d+(?:\.\d+)?(?:e-?\d+)?')
_SECONDS = re.compile(r"\((\d+\.\d)s\)")  # incident replay: (1.4s)
_SIZE = re.compile(r"\b\d+(?:\.\d)? (?:B|KiB|MiB|GiB)\b")
_PID = re.compile(r"\bpid \d+")
_HTTP_DATE = re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z]{2} \d{4}\b")
_SERVER = re.compile(r"\bPython/\d+\.\d+ aiohttp/[\w.]+")  # the Server header of aiohttp

FAKE_DAY = "2026-03-10"
FAKE_TIME = "14:22:31"
FAKE_ISO = f"{FAKE_DAY}T{FAKE_TIME}.123456+00:00"


def fake_id(n: int) -> str:
    """The n-th execution id of the docs (1-based), as a UUID."""
    return f"01a2b3c4-{n:04d}-7000-8000-{n:012d}"


def fake_sha(n: int) -> str:
    """The n-th commit of the docs' example repository."""
    return hashlib.sha1(f"flux docs commit {n}".encode()).hexdigest()


@dataclass
class Normaliser:
    """Replaces what varies between runs with placeholders; ids and SHAs are numbered in
    the order they are registered or first seen, so one run's mapping is the next's."""

    ids: dict[str, int] = field(default_factory=dict)  # 18-character prefix -> n
    shas: dict[str, int] = field(default_factory=dict)  # full SHA -> n
    literals: dict[str, str] = field(default_factory=dict)  # exact text -> replacement
    ports: dict[int, int] = field(default_factory=dict)  # real port -> shown port
    spans: dict[str, int] = field(default_factory=dict)  # OpenTelemetry span id -> n

    def register_id(self, request_id: str) -> str:
        """Number ``request_id`` now (if it is new); returns its placeholder."""
        key = request_id[:18].replace("_", "-")
        n = self.ids.setdefault(key, len(self.ids) + 1)
        return fake_id(n)

    def register_sha(self, sha: str) -> None:
        self.shas.setdefault(sha, len(self.shas) + 1)

    def __call__(self, text: str) -> str:
        for real, shown in sorted(self.literals.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(real, shown)
        for real_port, shown_port in self.ports.items():
            text = re.sub(rf"(?<=[:= ]){real_port}\b", str(shown_port), text)
        text = _TRACEPARENT_SPAN.sub(self._span, text)
        text = _TRACE_ID.sub(self._trace, text)
        text = _ID.sub(self._id, text)
        text = _HEX.sub(self._sha, text)
        text = _CUT_TIMESTAMP.sub(lambda m: FAKE_ISO[:len(m[0]) - 1] + "…", text)
        text = _TIMESTAMP.sub(_timestamp, text)
        text = _DAY_TIME.sub(FAKE_DAY[5:] + " " + FAKE_TIME, text)
        text = _TIME.sub(FAKE_TIME, text)
        text = _DATE.sub(FAKE_DAY, text)
        text = _HTTP_DATE.sub("Tue, 10 Mar 2026", text)
        text = _SERVER.sub("Python/3.12 aiohttp/3.12.0", text)
        text = _EPOCH.sub("1773152551", text)
        text = _JSON_MS.sub(r"\1: 12.3", text)
        text = _DURATION.sub(_duration, text)
        text = _SECONDS.sub("(1.2s)", text)
        text = _SIZE.sub("8.5 MiB", text)
        text = _PID.sub("pid 4242", text)
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())

    def _id(self, match: re.Match[str]) -> str:
        found = match[0]
        fake = self.register_id(found)
        if match["short"]:
            fake = fake[:18]
            if "_" in found:
                fake = fake.replace("-", "_")
        return fake

    def _trace(self, match: re.Match[str]) -> str:
        """A trace id: the request id's digits when Flux started the trace."""
        h = match[0]
        dashed = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        return self.register_id(dashed).replace("-", "")

    def _span(self, match: re.Match[str]) -> str:
        n = self.spans.setdefault(match[0], len(self.spans) + 1)
        return f"{n:016x}"

    def _sha(self, match: re.Match[str]) -> str:
        found = match[0]
        for sha, n in self.shas.items():
            if sha.startswith(found):
                return fake_sha(n)[:len(found)]
        return found


def _timestamp(match: re.Match[str]) -> str:
    seconds = ":" + FAKE_TIME[6:] if match[0][16:17] == ":" else ""
    fraction = ".123456" if match[2] else ""
    return f"{FAKE_DAY}{match[1]}{FAKE_TIME[:5]}{seconds}{fraction}"


def _duration(match: re.Match[str]) -> str:
    """``12`` in place of the number. After one or two spaces (a separator) the spaces are
    kept; after more (a right-aligned column) the number keeps the width the original
    took, so the column stays put, with at least one space before it."""
    spaces, number, unit = match[1], match[2], match[3]
    shown = ("+12" if number[0] in "+-" else "12") + unit
    if len(spaces) <= 2:
        return spaces + shown
    return (" " + shown).rjust(len(spaces) + len(number) + len(unit))


# --- pages ---------------------------------------------------------------------------------

MARKER = re.compile(r"(<!-- (output|options|schema|keys): (.+?) -->\n)(.*?)(<!-- /\2 -->)",
                    re.DOTALL)


class MissingBlock(Exception):
    """A page asks for a block the generator does not make."""


def fill(page: str, makers: Mapping[str, Callable[[str], str | None]], *, name: str = "page"
         ) -> str:
    """``page`` with every marked block regenerated by ``makers[kind](argument)``."""

    def replace(match: re.Match[str]) -> str:
        kind, argument = match[2], match[3].strip()
        body = makers[kind](argument)
        if body is None:
            raise MissingBlock(f"{name} asks for {kind} {argument!r}, which scripts/docs.py "
                               "does not make")
        return f"{match[1]}{body.rstrip()}\n{match[5]}"

    return MARKER.sub(replace, page)


def markers(page: str) -> list[tuple[str, str]]:
    """The (kind, argument) of every marked block of a page."""
    return [(m[2], m[3].strip()) for m in MARKER.finditer(page)]


def code_block(text: str, language: str = "console") -> str:
    return f"```{language}\n{text}\n```"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; cells are escaped for ``|``."""
    def cells(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header), *map(cells, rows)])
