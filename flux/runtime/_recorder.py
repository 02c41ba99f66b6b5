"""The recorder: one per execution, collecting the span tree, the tape and the logs.

It is pure bookkeeping — no IO — so the ctx doors, the executor and replay can share it.
Spans form a tree through ``parent_id``; the current span travels in a ContextVar so that
concurrent calls (``asyncio.gather``) and sync handlers in threads get the right parent.
The tape is the ordered list of every value that came from outside the function.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import sys
import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

_FLUX_DIR = str(Path(__file__).resolve().parent.parent)  # all of flux/, not only runtime/
_PACKAGES = "-packages/"  # site-packages, dist-packages: libraries, even in the project's .venv
_current_span: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "flux_current_span", default=None)
_site_override: contextvars.ContextVar[CallSite | None] = contextvars.ContextVar(
    "flux_site_override", default=None)


class Span:
    """One operation of the execution. It is its own context (``Recorder.span``): entered,
    it is the parent of what runs inside; left, it is closed, and an exception marks it
    failed. A plain class with slots rather than a dataclass and a separate scope object:
    every ctx call makes one (docs/decisions.md, "leanrec")."""

    __slots__ = ("_recorder", "_token", "attrs", "duration_ms", "error", "file", "id", "kind",
                 "line", "name", "parent_id", "start_ms", "status")

    def __init__(self, id: str, parent_id: str | None, name: str, kind: str,
                 start_ms: float, file: str | None = None, line: int | None = None,
                 duration_ms: float | None = None, status: str = "ok",
                 attrs: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None) -> None:
        self.id = id
        self.parent_id = parent_id
        self.name = name
        self.kind = kind  # gateway | function | db | http | queue | invoke | custom | clock | …
        self.start_ms = start_ms
        self.file = file
        self.line = line
        self.duration_ms = duration_ms
        self.status = status
        self.attrs: dict[str, Any] = attrs or {}
        self.error = error
        self._recorder: Recorder | None = None
        self._token: contextvars.Token[str | None] | None = None

    def __repr__(self) -> str:
        return (f"Span(id={self.id!r}, parent_id={self.parent_id!r}, name={self.name!r}, "
                f"kind={self.kind!r}, status={self.status!r})")

    def __enter__(self) -> Span:
        self._token = _current_span.set(self.id)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        if exc is not None:
            self.status = "error"
            if self.error is None:
                self.error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
        if self._token is not None:
            _current_span.reset(self._token)
            self._token = None
        if self._recorder is not None:
            self.duration_ms = (time.perf_counter() - self._recorder._t0) * 1000 - \
                self.start_ms

    def to_json(self) -> dict[str, Any]:
        duration = self.duration_ms
        return {
            "id": self.id, "parent_id": self.parent_id, "name": self.name, "kind": self.kind,
            "start_ms": round(self.start_ms, 3),
            "duration_ms": None if duration is None else round(duration, 3),
            "status": self.status, "file": self.file, "line": self.line,
            "attrs": self.attrs, "error": self.error,
        }


@dataclass(frozen=True)
class CallSite:
    file: str | None
    line: int | None
    function: str | None = None


class Recorder:
    """Everything one execution did, in memory until the executor stores it."""

    def __init__(self, request_id: str, *, project_root: Path, functions_dir: Path) -> None:
        self.request_id = request_id
        self.started_at = dt.datetime.now(dt.UTC)
        self._t0 = time.perf_counter()
        self.project_root = project_root
        self._root = str(project_root)
        self._functions_dir = str(functions_dir)  # as the loader imported the modules
        self.spans: list[Span] = []
        self.tape: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        # Each secret value the execution read, to the marker that stands for it: what
        # redaction writes and what call keys are made over (flux.runtime._callkey).
        self.secret_marks: dict[str, str] = {}
        # The values of the project's [secrets] set in the environment: scrubbed from the
        # record whether or not the execution read them (a client may send one back).
        self.configured_secrets: frozenset[str] = frozenset()
        self.http_calls = 0

    @property
    def secret_values(self) -> AbstractSet[str]:
        """The secret values the execution read, and the configured ones: each is
        scrubbed from the record. Not a copy when the execution read none (the common
        case: redaction asks for them on every recorded body and header)."""
        if not self.secret_marks:
            return self.configured_secrets
        return self.configured_secrets.union(self.secret_marks)

    # -- time ----------------------------------------------------------------------------

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._t0) * 1000

    # -- spans ---------------------------------------------------------------------------

    @property
    def current_span_id(self) -> str | None:
        return _current_span.get()

    def open_span(self, name: str, kind: str, site: CallSite | None = None,
                  attrs: dict[str, Any] | None = None) -> Span:
        spans = self.spans
        start = (time.perf_counter() - self._t0) * 1000
        if site is None:
            span = Span(f"s{len(spans) + 1}", _current_span.get(), name, kind, start,
                        attrs=attrs)
        else:
            span = Span(f"s{len(spans) + 1}", _current_span.get(), name, kind, start,
                        site.file, site.line, attrs=attrs)
        spans.append(span)
        return span

    def span(self, name: str, kind: str, site: CallSite | None = None,
             attrs: dict[str, Any] | None = None) -> Span:
        """Open a span, to be used as a context: it is the parent of what runs inside and
        is closed on exit; an exception marks it failed and propagates."""
        span = self.open_span(name, kind, site, attrs)
        span._recorder = self
        return span

    def close_span(self, span: Span) -> None:
        if span.duration_ms is None:
            span.duration_ms = self.elapsed_ms() - span.start_ms

    # -- tape ----------------------------------------------------------------------------

    def tape_append(self, kind: str, key: str, value: Any, *, site: CallSite | None = None,
                    span_id: str | None = None, **extra: Any) -> dict[str, Any]:
        entry = {
            "seq": len(self.tape) + 1, "kind": kind, "key": key, "value": value,
            "span_id": span_id or _current_span.get(),
            "file": site.file if site else None, "line": site.line if site else None,
            **extra,
        }
        self.tape.append(entry)
        return entry

    # -- logs ----------------------------------------------------------------------------

    def log(self, level: str, message: str, fields: dict[str, Any], site: CallSite) -> None:
        self.logs.append({
            "t_ms": round(self.elapsed_ms(), 3), "level": level, "message": message,
            "fields": fields, "span_id": _current_span.get(), "file": site.file,
            "line": site.line,
        })

    # -- call sites ----------------------------------------------------------------------

    @contextlib.contextmanager
    def calls_from(self, site: CallSite) -> Iterator[None]:
        """Attribute the ctx calls made inside to ``site``. A Wasm guest calling its host
        imports has no Python frame in ``functions/`` for ``call_site`` to find."""
        token = _site_override.set(site)
        try:
            yield
        finally:
            _site_override.reset(token)

    def call_site(self, depth: int = 1) -> CallSite:
        """The user's line that made the current ctx call: the innermost frame in
        ``functions/``, else the innermost frame outside Flux itself."""
        override = _site_override.get()
        if override is not None:
            return override
        frame: FrameType | None = sys._getframe(depth)
        fallback: FrameType | None = None
        project: FrameType | None = None  # a helper module of the project
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename.startswith(self._functions_dir):
                return self._site(frame)
            if fallback is None and not filename.startswith(_FLUX_DIR) and \
                    "/asyncio/" not in filename and "/contextlib" not in filename \
                    and not filename.startswith("<"):
                fallback = frame
            if project is None and filename.startswith(self._root) and \
                    not filename.startswith(_FLUX_DIR) and _PACKAGES not in filename:
                project = frame
            frame = frame.f_back
        # A captured client's call is the user's line, not the library's.
        site = project or fallback
        return self._site(site) if site else CallSite(None, None)

    def site_of_traceback(self, tb: Any) -> CallSite:
        """The deepest frame of a traceback that is user code: in ``functions/``, else
        elsewhere in the project outside libraries and Flux (the route handler of an ASGI
        app Flux serves, in its own package)."""
        found: CallSite | None = None
        project: CallSite | None = None
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename.startswith(self._functions_dir):
                found = self._site(tb.tb_frame, tb.tb_lineno)
            elif filename.startswith(self._root) and not filename.startswith(_FLUX_DIR) \
                    and _PACKAGES not in filename:
                project = self._site(tb.tb_frame, tb.tb_lineno)
            tb = tb.tb_next
        return found or project or CallSite(None, None)

    def _site(self, frame: FrameType, line: int | None = None) -> CallSite:
        code = frame.f_code
        return _call_site(code.co_filename, line or frame.f_lineno, code.co_name, self._root)

    def relative(self, filename: str) -> str:
        return _relative(filename, self._root)


@functools.lru_cache(maxsize=4096)
def _call_site(filename: str, line: int, function: str, root: str) -> CallSite:
    """The same line of code gives the same (frozen) CallSite: each ctx call finds one."""
    return CallSite(_relative(filename, root), line, function)


@functools.lru_cache(maxsize=4096)
def _relative(filename: str, root: str) -> str:
    """A source file as the project names it (functions/checkout.py). Cached: resolving a
    path costs a few lstat calls, and a call site is met on every ctx call."""
    try:
        return str(Path(filename).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return filename
