"""The root cause of a failed execution: which span failed in earnest, and what kind of
failure it was.

``flux why`` answers one question of a record — why did it fail? — with one of six classes,
a one-line message for a person woken at 3 a.m., the facts a machine can group by, and a
suggestion made of those facts (the dependency, the timeout it waited, the constraint and
the value). The rules, the deepest failing span first:

    FunctionTimeout, or a query cancelled by a timeout (57014, 55P03, 25P03)  timeout
    an outbound call that got no answer in time                              timeout
    an outbound call answered 429                                            rate_limit
    an outbound call answered another 4xx/5xx, or could not connect          dependency_error
    the database gone, overloaded or in conflict (08, 40, 53, 57, 58, XX)    dependency_error
    a statement that broke an integrity constraint (SQLSTATE class 23)       constraint
    an exception after a 2xx answer whose JSON shape differs from before     payload_shape
    anything else: an exception, ctx.error, a bad statement                  exception

User code often turns a failing dependency into its own ``ctx.error(502, …)``: the cause is
then the dependency, and the function's own answer is what happened next (``then``).

Pure: the caller passes the record (a ``flux.trace_requests`` row as a dict) and, for shape
changes, the bodies earlier successful executions got from each dependency, keyed by
``dependency_key``. Records are data from disk, so every field is read defensively: a
malformed record yields a vaguer cause, never an exception.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from flux._ids import short
from flux.inspect._shape import leaf, shape_change

CLASSES = ("timeout", "dependency_error", "rate_limit", "constraint", "payload_shape",
           "exception")

_NONE: Mapping[str, Sequence[Any]] = MappingProxyType({})
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_HTTP_ERRORS = frozenset({"HttpTimeout", "HttpConnectionError", "HttpStatusError", "HttpError"})
_UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
_TIMEOUT_SQLSTATES = {"57014": "statement_timeout", "55P03": "lock_timeout",
                      "25P03": "idle_in_transaction_session_timeout"}
_DATABASE_DOWN = ("08", "40", "53", "57", "58", "XX")  # the server, not the statement
_CONSTRAINT_KINDS = {"23505": "unique", "23503": "foreign key", "23502": "not-null",
                     "23514": "check", "23P01": "exclusion", "23001": "restrict"}
_KEY_DETAIL = re.compile(
    r'Key \((?P<cols>.+?)\)=\((?P<vals>.*)\) (?:already exists|is not present in table '
    r'"(?P<ref>[^"]+)"|is still referenced from table "(?P<by>[^"]+)"|conflicts with existing)',
    re.S)
_ID_SEGMENT = re.compile(
    r"\d+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{16,}"
    r"|[a-z]{1,12}_(?!v\d+$)[a-z0-9]*\d[a-z0-9]*|[^@]+@[^@]+", re.I)
_IDENT = re.compile(r'(?<!::)(?<![\w$"])("?)([A-Za-z_][\w$]*)\1(?![\w$])(?!\s*\()')
_MARKER = re.compile(r"\[redacted hmac-sha256:[0-9a-f]{16}\]")


@dataclass(frozen=True)
class RootCause:
    """Why one execution failed, in one of ``CLASSES``."""

    cls: str
    message: str  # one line for a person: "POST api.stripe.com/v1/charges timed out after 5s"
    span: dict[str, Any] | None  # the span that failed (None: no failing IO explains it)
    details: dict[str, Any]  # facts to group and render by: dependency, status, constraint …
    suggestion: str  # what to change, in this failure's own terms

    def to_json(self) -> dict[str, Any]:
        """The ``root_cause`` object of ``flux why --json``."""
        return {"class": self.cls, "message": self.message, "span": self.span,
                "details": self.details}


def classify(record: Mapping[str, Any],
             earlier_responses: Mapping[str, Sequence[Any]] = _NONE) -> RootCause:
    """The root cause of a failed ``record``. ``earlier_responses`` maps a
    ``dependency_key`` to JSON bodies that dependency answered (2xx) in earlier successful
    executions; without them a payload shape change looks like a plain exception.

    Raises ValueError for a successful record: ``why`` is for failures."""
    if record.get("status") == "ok":
        raise ValueError(f"execution {_text(record.get('request_id'))} succeeded; "
                         "there is no root cause to find")
    cause = _classify(_Failure.of(record), earlier_responses)
    return replace(cause, message=" ".join(cause.message.split()))  # one line, always


def _classify(f: _Failure, earlier_responses: Mapping[str, Sequence[Any]]) -> RootCause:
    if f.type == "FunctionTimeout":
        return _function_timeout(f)
    span = _cause_span(f)
    if span is not None and span.get("kind") == "http":
        return _dependency(f, span)
    if (cause := _database(f, span)) is not None:
        return cause
    if f.type == "Overloaded":
        return RootCause(
            "dependency_error", f"the runtime shed the request: {f.message}", None,
            {"dependency": "postgresql", "code": _text(f.error.get("code")) or "overloaded"},
            "No database connection came free in time: raise [database] pool_size in "
            "flux.toml or lower the load, and look for executions holding a connection long.")
    if f.type == "DatabaseUnavailable" or (f.type == "OperationalError"
                                           and not _text(f.error.get("sqlstate"))):
        return RootCause(
            "dependency_error", f"the database connection was lost: {f.message}", None,
            {"dependency": "postgresql", "code": "unavailable"},
            "PostgreSQL restarted or the network to it failed while the execution ran; "
            "nothing it wrote was kept, so it can be retried (flux resume).")
    return _payload_shape(f, earlier_responses) or _exception(f, span)


def dependency_key(span: Mapping[str, Any]) -> str:
    """``"POST 127.0.0.1:4010/v1/charges"``: what an outbound call talks to — method, host,
    port (a scheme's default port dropped) and path, no query. Id-like path segments
    (numbers, UUIDs, ``cus_9x…``, e-mails) become ``:id``: calls about different objects
    are one dependency, for comparing shapes and for grouping failures. Works on a span or
    on ``{"attrs": {"method": …, "url": …}}`` built from a tape key."""
    attrs = _map(span.get("attrs"))
    method, url = _text(attrs.get("method")).upper(), _text(attrs.get("url"))
    if not url:  # span names read "http.post host:port/path"
        verb, _, url = _text(span.get("name")).partition(" ")
        method = method or verb.removeprefix("http.").upper()
    return f"{method or 'HTTP'} {_endpoint(url)}"


# -- the record, read defensively -----------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    """The parts of a failed record every rule reads."""

    record: Mapping[str, Any]
    error: Mapping[str, Any]
    spans: tuple[Mapping[str, Any], ...]
    function: str
    type: str
    message: str

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> _Failure:
        error, raw = _map(record.get("error")), record.get("spans")
        spans = tuple(s for s in raw if isinstance(s, Mapping)) if isinstance(raw, list) else ()
        return cls(record, error, spans, _text(record.get("function")) or "the function",
                   _text(error.get("type")) or "error", _line(error.get("message")))

    @property
    def sqlstate(self) -> str:
        return _text(self.error.get("sqlstate"))

    @property
    def status(self) -> int | None:
        return _int(self.error.get("http_status"))

    @property
    def short_id(self) -> str:
        # The unique short form `flux ls` prints: an 8-character UUIDv7 prefix is a
        # 65-second window, shared by every request made in it.
        return short(rid) if (rid := _text(self.record.get("request_id"))) else "<id>"

    def location(self, span: Mapping[str, Any] | None = None) -> str:
        """``file:line`` of the failure: the error's user frame, else the span's call site."""
        if not self.error.get("file"):
            return _site(span) if span is not None else "an unknown line"
        return _site(self.error)

    def code_line(self) -> str:
        """The source line the error was raised at, from the recorded stack."""
        file, line = self.error.get("file"), _int(self.error.get("line"))
        stack = self.error.get("stack")
        for frame in map(_map, reversed(stack if isinstance(stack, list) else [])):
            if frame.get("file") == file and _int(frame.get("line")) == line:
                return _line(frame.get("code"))
        return ""

    def then(self, span: Mapping[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
        """What the function did with the failure of ``span``: its own error, if it raised
        one (nothing when the error is the span's own, propagated)."""
        if self.sqlstate or span is None or _propagated(self, span):
            return "", None
        code = _text(self.error.get("code"))
        facts = {"type": self.type, "code": code or None, "http_status": self.status,
                 "at": self.location()}
        if self.type == "FunctionError":
            return f"; the function then answered {self.status} {code}".rstrip(), facts
        return f"; then {_raised(self)} at {self.location()}", facts


def _cause_span(f: _Failure) -> Mapping[str, Any] | None:
    """The failing db or http span that explains the failure: the last one that was neither
    retried with success nor handled (the function went on to other IO, then failed in a
    way that does not come from it)."""
    if f.sqlstate:  # a database error propagated: its own span, or none (failed at COMMIT)
        failing = [s for s in f.spans if _failed(s) and s.get("kind") not in
                   ("gateway", "function", "http")]  # a queue push runs SQL too
        if f.sqlstate == "25P02":  # refused after an earlier failure the handler caught
            first = next((s for s in failing if _text(_map(s.get("error")).get("sqlstate"))
                          not in ("", "25P02")), None)
            if first is not None:
                return first
        return (next((s for s in failing if s.get("id") == f.error.get("span_id")), None)
                or next((s for s in reversed(failing)
                         if _map(s.get("error")).get("sqlstate") == f.sqlstate), None))
    io = [s for s in f.spans if s.get("kind") in ("db", "http")]
    for i in range(len(io) - 1, -1, -1):
        span, later = io[i], io[i + 1:]
        if not _failed(span) or any(_target(t) == _target(span) and not _failed(t)
                                    for t in later):
            continue
        if _propagated(f, span) or not later:
            return span
        if f.type == "FunctionError" and (f.status or 500) >= 500:
            return span  # the function gave up because of it, whatever it did in between
    return None


def _propagated(f: _Failure, span: Mapping[str, Any]) -> bool:
    if span.get("kind") == "http":
        return f.type in _HTTP_ERRORS
    return f.type == _text(_map(span.get("error")).get("type"))


def _failed(span: Mapping[str, Any]) -> bool:
    return span.get("status") == "error" or bool(_map(span.get("error")))


def _target(span: Mapping[str, Any]) -> str:
    if span.get("kind") == "http":
        return dependency_key(span)
    return _text(_map(span.get("attrs")).get("sql")) or _text(span.get("name"))


# -- timeouts -------------------------------------------------------------------------------


def _function_timeout(f: _Failure) -> RootCause:
    match = re.search(r"timeout of ([\d.]+)s", f.message)
    limit = f"{match.group(1)}s" if match else "its timeout"
    details: dict[str, Any] = {"timeout_s": _number(match.group(1)) if match else None}
    span, running = _running_span(f)
    if span is None:
        return RootCause(
            "timeout", f"{f.function} ran past its {limit} timeout with no query or call "
            "running: the time went into its own code", None, details,
            f"{f.function} spent its {limit} outside ctx.db and ctx.http (a loop, a blocking "
            f"call, a sleep): profile it with flux replay {f.short_id}, or move the work to "
            "a job (ctx.queue.push) and answer at once.")
    took, site, name = _ms(span.get("duration_ms")), _site(span), _text(span.get("name"))
    state = f"was still running after {took}" if running else f"took longest ({took})"
    details.update(waiting_on=name, still_running=running, file=span.get("file"),
                   line=_int(span.get("line")), elapsed_ms=_number(span.get("duration_ms")))
    if span.get("kind") == "http":
        dep = details["dependency"] = dependency_key(span)
        own = _number(_map(span.get("attrs")).get("timeout_s"))
        return RootCause(
            "timeout", f"{f.function} ran past its {limit} timeout: {dep} {state}", dict(span),
            details, f"The call to {dep} at {site} had waited {took} when the function's "
            f"{limit} ran out{f' (its own timeout was {own:g}s)' if own else ''}: give it a "
            f"timeout= well below {limit} so it fails on its own terms, and retry it from a "
            "job (ctx.queue.push) with the same Idempotency-Key instead of in the request.")
    sql = details["sql"] = _line(_map(span.get("attrs")).get("sql"), 80) or None
    return RootCause(
        "timeout", f"{f.function} ran past its {limit} timeout: {name} {state}"
        f"{f' — {sql}' if sql else ''}", dict(span), details,
        f"The statement at {site} ({sql or name}) used {took} of the function's {limit}: "
        "look at its plan (flux explain --sql …) and add the index it lacks, or give it a "
        f"statement_timeout below {limit} so it fails fast; raise @function(timeout=…) only "
        "if the work is meant to take that long, and move long work to a job.")


def _running_span(f: _Failure) -> tuple[Mapping[str, Any] | None, bool]:
    """The span the function was waiting on when its time ran out (cancelled with it, never
    closed, or ending with the function) and True; else the longest query or call."""
    inner = [s for s in f.spans if s.get("kind") not in ("gateway", "function")]
    for span in reversed(inner):
        error = _map(span.get("error"))
        if error.get("type") == "CancelledError" or error.get("sqlstate") == "57014" \
                or span.get("duration_ms") is None:
            return span, True
    fn = next((s for s in f.spans if s.get("kind") == "function"), f.record)
    end = (_number(fn.get("start_ms")) or 0) + (_number(fn.get("duration_ms")) or 0)
    for span in reversed(inner):
        stop = (_number(span.get("start_ms")) or 0) + (_number(span.get("duration_ms")) or 0)
        if end and stop >= end - max(5.0, 0.02 * end):
            return span, True
    io = [s for s in inner if s.get("kind") in ("db", "http")]
    return (max(io, key=lambda s: _number(s.get("duration_ms")) or 0), False) if io \
        else (None, False)


# -- outbound calls -------------------------------------------------------------------------


def _dependency(f: _Failure, span: Mapping[str, Any]) -> RootCause:
    error, attrs = _map(span.get("error")), _map(span.get("attrs"))
    dep, kind, site = dependency_key(span), _text(error.get("type")), _site(span)
    method, host = dep.split(" ", 1)[0], _host(dep)
    status = _int(attrs.get("status")) or _int(error.get("status"))
    after, then = f.then(span)
    details: dict[str, Any] = {"dependency": dep, "method": method,
                               "url": _bare_url(attrs.get("url")), "status": status}
    if then:
        details["then"] = then
    retry = ("retry it from a job (ctx.queue.push) carrying the same Idempotency-Key, so the "
             "provider deduplicates a call it did process" if method in _UNSAFE else
             f"a {method} is safe to retry: retry it with backoff, from a job if it is slow")
    if kind == "timeout":
        waited = _number(error.get("timeout_s")) or _number(attrs.get("timeout_s"))
        limit = f"{waited:g}s" if waited else _ms(span.get("duration_ms"))
        details.update(timeout_s=waited, elapsed_ms=_number(span.get("duration_ms")))
        return RootCause(
            "timeout", f"{dep} timed out after {limit}{after}", dict(span), details,
            f"{dep} gave no answer within the {limit} set at {site}, and may still have done "
            f"the work: don't fail or retry inline — {retry}; keep that timeout below the "
            "function's own, and alert if the provider stays slow.")
    if kind == "connection":
        reason = details["reason"] = _line(error.get("message"), 160)
        unsent = re.search(r"connect|resolve|name or service|ssl|certificate", reason, re.I)
        return RootCause(
            "dependency_error", f"{dep} could not be reached: {reason}{after}", dict(span),
            details,
            f"Nothing answered at {host}: check that it is up and that the URL used at "
            f"{site} (config or secret) points at it. The request never left, so retrying "
            "is safe — from a job, with backoff." if unsent else
            f"The connection to {host} dropped mid-call at {site}: it may have processed "
            f"the call, so {retry}.")
    response = _response(f, span)
    said = details["provider_message"] = _provider_message(response.get("body")) or None
    if status == 429:
        wait = details["retry_after"] = _header(response.get("headers"), "retry-after")
        honour = (f"Honour Retry-After ({wait}s)" if wait and wait.isdigit() else
                  f"Honour Retry-After (until {wait})" if wait else
                  "It sent no Retry-After, so back off on your own (1s, 2s, 4s …)")
        same_key = " carrying the same Idempotency-Key" if method in _UNSAFE else ""
        return RootCause(
            "rate_limit", f"{dep} answered 429 Too Many Requests "
            f"({f'Retry-After: {wait}' if wait else 'no Retry-After'}){after}", dict(span),
            details,
            f"{host} is rate-limiting the call at {site}. {honour}: instead of failing the "
            f"request, push the call to a job delayed by it (ctx.queue.push(…, delay=…))"
            f"{same_key}, and back off exponentially with jitter on repeated 429s. If this "
            "happens at normal load, throttle or batch the calls, or ask for a higher limit.")
    if status is not None and status >= 400:
        return RootCause(
            "dependency_error", f"{dep} answered {status}{f': {said}' if said else ''}{after}",
            dict(span), details, _status_advice(status, host, site, retry, said))
    return RootCause(
        "dependency_error", f"{dep} failed: {_line(error.get('message')) or kind}{after}",
        dict(span), details, f"The call to {dep} at {site} failed ({kind or 'no detail'}); "
        f"flux trace {f.short_id} shows the exchange — {retry}.")


def _status_advice(status: int, host: str, site: str, retry: str, said: str | None) -> str:
    quoted = f" (it said: {said})" if said else ""
    if status in (401, 403):
        return (f"{host} refused our credentials with {status}{quoted}: check the secret "
                f"sent at {site} — rotated, expired, another environment's key, or missing a "
                "permission. Retrying will not help.")
    if status == 402:
        return (f"{host} declined the payment with 402{quoted}: the customer's card or "
                "account refused it, not a bug in what we sent. Answer the caller with "
                "ctx.error(402, …) asking for another payment method instead of a 500; "
                f"retrying the call at {site} will be declined again.")
    if status == 404:
        return (f"{host} found nothing at that path{quoted}: check the id or path built at "
                f"{site} — deleted on their side, from another environment, or moved in a "
                "new API version.")
    if status == 409:
        return (f"{host} reports a conflict{quoted}: the object's state forbids the call, "
                "or an Idempotency-Key was reused with another body; read its state before "
                f"the call at {site}.")
    if status < 500:
        return (f"{host} rejected what we sent with {status}{quoted}: compare the request "
                "body recorded on the span with their API reference, and validate those "
                f"fields before the call at {site}. The same body will fail again.")
    if status in (502, 503, 504):
        return (f"{host} is unavailable ({status}){quoted}, a transient outage on their "
                f"side: don't fail the request — {retry}, with exponential backoff.")
    return (f"{host} failed with {status}{quoted}, an error on their side: {retry}, with "
            "backoff; if it persists, send them the Idempotency-Key of this call.")


def _response(f: _Failure, span: Mapping[str, Any]) -> Mapping[str, Any]:
    """The recorded answer of an http span: on the tape, linked by span id (older records
    also copied it into the span's attrs)."""
    recorded = _map(_map(span.get("attrs")).get("response"))
    if recorded:
        return recorded
    tape = f.record.get("tape")
    for entry in map(_map, tape if isinstance(tape, list) else []):
        if entry.get("span_id") == span.get("id") and entry.get("kind") == "http":
            return _map(entry.get("value"))
    return _EMPTY


def _provider_message(body: Any) -> str:
    if not isinstance(body, Mapping):
        return _line(body, 120) if isinstance(body, str) else ""
    error = _map(body.get("error"))
    # A message first; else the machine code a provider gives alone (``card_declined``).
    for found in (error.get("message"), body.get("error"), body.get("message"),
                  body.get("detail"), body.get("error_description"), error.get("code"),
                  body.get("code"), error.get("type")):
        if isinstance(found, str) and found.strip():
            return _line(found, 120)
    return ""


def _header(headers: Any, name: str) -> str | None:
    pairs = headers.items() if isinstance(headers, Mapping) else [
        p for p in (headers if isinstance(headers, list) else [])
        if isinstance(p, list | tuple) and len(p) == 2]
    return next((_text(v) for k, v in pairs if _text(k).lower() == name), None)


# -- the database ---------------------------------------------------------------------------


def _database(f: _Failure, span: Mapping[str, Any] | None) -> RootCause | None:
    facts = _map(span.get("error")) if span is not None else _EMPTY
    facts = facts if _text(facts.get("sqlstate")) else f.error
    state = _text(facts.get("sqlstate"))
    if not state:
        return None
    where = _text(span.get("name")) if span is not None else "the commit"
    site = _site(span) if span is not None else f.location() if f.error.get("file") \
        else "COMMIT"
    text, (after, then) = _line(facts.get("message")), f.then(span)
    shown = dict(span) if span is not None else None
    details: dict[str, Any] = {"sqlstate": state, "table": facts.get("table") or None,
                               "sql": _line(_map(_map(shown).get("attrs")).get("sql"), 200)
                               or None}
    if then:
        details["then"] = then
    if state in _TIMEOUT_SQLSTATES:
        took = _ms(_map(shown).get("duration_ms"))
        details.update(reason=_TIMEOUT_SQLSTATES[state],
                       elapsed_ms=_number(_map(shown).get("duration_ms")))
        return RootCause(
            "timeout", f"{where} was cancelled after {took}: {text} (SQLSTATE {state}){after}",
            shown, details,
            f"The statement at {site} waited {took} for a lock another transaction held: "
            "keep transactions that lock these rows short, lock rows in one order (ORDER BY "
            "id FOR UPDATE), or retry the execution from a job." if state == "55P03" else
            f"The statement at {site} ran {took} until {_TIMEOUT_SQLSTATES[state]} stopped "
            "it: look at its plan (flux explain --sql …) and add the index it lacks, or page "
            "through the rows; raise the timeout only if the work is meant to take that long.")
    if state.startswith("23"):
        message, advice = _constraint(state, facts, where, site, details)
        return RootCause("constraint", f"{message}{after}", shown, details, advice)
    if state[:2] in _DATABASE_DOWN:
        details["dependency"] = "postgresql"
        return RootCause(
            "dependency_error", f"{where} failed: {text} (SQLSTATE {state}){after}", shown,
            details, _server_advice(state, site))
    details["message"] = text
    return RootCause(
        "exception", f"{where} failed at {site}: {text} (SQLSTATE {state}){after}", shown,
        details, f"The statement at {site} failed with SQLSTATE {state}: "
        f"{_STATEMENT_ADVICE.get(state, f'PostgreSQL refused it ({text})')}.")


def _constraint(state: str, facts: Mapping[str, Any], where: str, site: str,
                details: dict[str, Any]) -> tuple[str, str]:
    """The message and suggestion of an integrity violation, its facts added to
    ``details``: which constraint, and the column(s) and value(s) PostgreSQL's detail
    names — ``Key (lower(email::text))=(a@b.c) already exists.``"""
    text = _text(facts.get("message"))
    name = _text(facts.get("constraint")) or _quoted_after(text, "constraint") or None
    table = _text(facts.get("table")) or _quoted_after(text, "relation") or "the table"
    kind = _CONSTRAINT_KINDS.get(state, "integrity")
    key = _KEY_DETAIL.search(_text(facts.get("detail")))
    columns = _split_top(key.group("cols")) if key else []
    values = _split_values(key.group("vals"), len(columns)) if key else []
    if not columns and (column := _text(facts.get("column")) or _quoted_after(text, "column")):
        columns = [column]
    if not columns and name and kind == "check" and name.startswith(f"{table}_") \
            and name.endswith("_check"):
        columns = [name[len(table) + 1:-len("_check")]]  # PostgreSQL's default naming
    plain = [_column_of(c) for c in columns]
    col, val = ", ".join(plain), ", ".join(values)
    pair = f"{col} = {val}" if values else col or "the key"
    details.update(constraint=name, kind=kind, table=table, columns=plain, values=values,
                   column=col or None, value=val if values else None)
    if plain != columns:
        details["expression"] = ", ".join(columns)
    label = f"{kind} constraint {name}" if name else f"a {kind} constraint"
    if key and (ref := key.group("ref")):
        details["referenced_table"] = ref
        return (f"{where} hit {label}: {pair} is not present in {ref}",
                f"No {ref} row matches {pair}: check it exists before writing (SELECT 1 FROM "
                f"{ref} …) and answer ctx.error(404, …) or 422 when it does not, or create "
                "that row first in the same execution.")
    if key and (by := key.group("by")):
        details["referencing_table"] = by
        return (f"{where} hit {label}: {pair} is still referenced from {by}",
                f"Rows in {by} still point at {table} {pair}: delete or re-point them first, "
                f"or declare {name or 'the foreign key'} ON DELETE CASCADE / SET NULL if "
                "that is what removing it should do.")
    if state == "23505":
        target = ", ".join(c if re.fullmatch(r'"?[\w$]+"?', c) else f"({c})" for c in columns)
        return (f"{where} hit {label}: {pair} already exists",
                f"A row with {pair} already exists in {table}. If a duplicate is the "
                "client's mistake, answer it: catch the violation (a SELECT first is not "
                f"race-free, {name or 'the constraint'} is) and raise ctx.error(409, "
                f"'{plain[0] if plain else 'key'}_taken', …). If the write should be "
                f"idempotent, say so: INSERT … ON CONFLICT ({target or '…'}) DO NOTHING, or "
                "DO UPDATE SET … to upsert.")
    if state == "23502":
        return (f"{where} hit {label}: {table}.{col or '?'} was null",
                f"{table}.{col or 'a column'} got NULL at {site}: check that the input "
                f"carries {col or 'it'} and answer ctx.error(400, …) when it does not, or "
                "give the column a DEFAULT if absent is meaningful.")
    if state == "23P01":
        return (f"{where} hit {label}: {pair} overlaps an existing row",
                f"The row overlaps one already in {table}: check for an overlap before "
                "writing and answer ctx.error(409, …), or skip it with INSERT … ON CONFLICT "
                "DO NOTHING.")
    if state == "23514":
        on = f" on {col}" if col else ""
        return (f"{where} hit {label}{on} in {table}",
                f"The row written at {site} broke CHECK {name or ''}{on}: validate the same "
                "rule in the function and answer ctx.error(400, …) before writing; "
                f"\\d {table} in flux db psql shows the expression.")
    return (f"{where} hit {label}: {_line(text)}",
            f"The write at {site} broke {label} ({_line(text)}): check the data first.")


_STATEMENT_ADVICE = {
    "42P01": "a table it names does not exist — a migration has not run here",
    "42703": "a column it names does not exist — a migration has not run, or a typo",
    "42601": "its SQL does not parse — check the statement and its placeholders",
    "42883": "no function or operator takes those argument types — cast the parameters",
    "22P02": "a parameter is not valid for its column type — validate the input first",
    "22001": "a value is longer than its column allows — validate its length first",
    "22003": "a number is out of range for its column — validate it, or widen the column",
    "25P02": "an earlier statement failed and was caught; nothing runs in an aborted "
             "transaction, so do not go on after a database error",
    "P0001": "a trigger or function raised it on purpose — its message says why",
}


def _server_advice(state: str, site: str) -> str:
    if state == "40001":
        return (f"Another transaction changed the rows read at {site} first (serialization "
                "failure): retry the whole execution, from a job — it was rolled back.")
    if state == "40P01":
        return (f"Deadlock at {site}: two transactions locked the same rows in opposite "
                "orders. Lock in one order (ORDER BY id FOR UPDATE) or keep transactions "
                "short; the rolled-back execution can be retried.")
    if state.startswith(("08", "57")):
        return (f"The database connection went away at {site} (restart, failover, network): "
                "the execution was rolled back, so retrying it is safe; check flux db status.")
    return (f"PostgreSQL could not serve the statement at {site} (SQLSTATE {state}: out of "
            "resources, or an internal error): check its log, connections and disk.")


# -- payload shape --------------------------------------------------------------------------


def _payload_shape(f: _Failure, earlier: Mapping[str, Sequence[Any]]) -> RootCause | None:
    """An exception after a 2xx answer whose shape is not what the dependency used to send
    (a ctx.error 4xx is the function judging the request, not a payload it failed on)."""
    if not earlier or f.sqlstate or f.type in _HTTP_ERRORS | {"GatewayError"} \
            or (f.type == "FunctionError" and (f.status or 500) < 500):
        return None
    field = _field_named(f.type, f.message)
    found: list[tuple[Mapping[str, Any], dict[str, Any]]] = []
    for span in reversed([s for s in f.spans if s.get("kind") == "http"]):
        status = _int(_map(span.get("attrs")).get("status"))
        bodies = earlier.get(dependency_key(span)) if status and 200 <= status < 300 else None
        response = _response(f, span)
        if bodies and "body" in response and \
                (change := shape_change(list(bodies), response["body"])) is not None:
            found.append((span, {"dependency": dependency_key(span), "status": status,
                                 **change, "compared_with": len(bodies)}))
    if field is not None:  # the exception names a field: only a change to it explains it
        found = [(s, c) for s, c in found if field in map(leaf, [*c["missing"], *c["retyped"]])]
    if not found:
        return None
    span, details = found[0]
    details.update(exception=f.type, field=field)
    parts = [f"missing {', '.join(details['missing'])}"] if details["missing"] else []
    parts += [f"{p} {old} → {new}" for p, (old, new) in details["retyped"].items()]
    dep, where, code = details["dependency"], f.location(), f.code_line()
    fields = repr(field) if field else ", ".join([*details["missing"], *details["retyped"]])
    rename = (f" It now sends {', '.join(details['added'])} instead — a rename?"
              if details["added"] and details["missing"] else "")
    n = details["compared_with"]
    return RootCause(
        "payload_shape", f"{dep} answered {details['status']} with a changed body "
        f"({'; '.join(parts)}) — {_raised(f)} at {where}", dict(span), details,
        f"{dep} no longer answers as in {n} earlier successful call{'s' * (n != 1)}."
        f"{rename} Read {fields} defensively at {where}{f' (`{code}`)' if code else ''} and "
        "fail with a clear ctx.error(502, …) when it is absent or retyped, and pin the "
        "provider's API version (a version header or URL) so the shape cannot change under "
        "you.")


def _field_named(kind: str, message: str) -> str | None:
    """The key a KeyError or the attribute an AttributeError names, if any."""
    if kind == "KeyError" and (match := re.fullmatch(r"(['\"])(.*)\1|(-?\d+)", message)):
        return match.group(2) if match.group(2) is not None else match.group(3)
    if kind == "AttributeError" and (match := re.search(r"no attribute '([^']+)'", message)):
        return match.group(1)
    return None


# -- plain exceptions -----------------------------------------------------------------------


def _exception(f: _Failure, span: Mapping[str, Any] | None) -> RootCause:
    where, status, code = f.location(span), f.status, _text(f.error.get("code"))
    details: dict[str, Any] = {"type": f.type, "file": f.error.get("file") or None,
                               "line": _int(f.error.get("line")), "code": code or None,
                               "http_status": status}
    shown = dict(span) if span is not None else None
    if f.type == "GatewayError":
        return RootCause(
            "exception", "the gateway rejected the request before any function ran: "
            f"{code} ({status}) — {f.message}", shown, details,
            f"Nothing in a function to fix: the request was refused with {status} {code} "
            f"({f.message}). Check the URL, method and body the client sends.")
    if f.type == "FunctionError":
        return RootCause(
            "exception", f"the function rejected the request: {code} ({status}) — "
            f"{f.message} at {where}", shown, details,
            f"{f.function} raised ctx.error({status}, {code!r}) at {where} ({f.message}) "
            "with no failing query or call before it: read the condition at that line; "
            f"flux replay {f.short_id} reproduces it." if (status or 500) >= 500 else
            f"{f.function} answered {status} {code} on purpose at {where} ({f.message}). If "
            "the request was valid, the check at that line is wrong; otherwise the client "
            "must fix the input recorded here.")
    field, line = _field_named(f.type, f.message), f.code_line()
    details["field"] = field
    at = f"{where}{f' (`{line}`)' if line else ''}"
    advice = {
        "KeyError": f"{at} reads key {f.message if field is None else repr(field)} that the "
                    "value does not have. If it comes from the request, validate the input "
                    "up front and answer ctx.error(400, …); if from a query or a call, use "
                    ".get() and decide what its absence means.",
        "AttributeError": f"{at} reads .{field} of a value that lacks it — often None from "
                          "a query that found no row: check for None first.",
        "TypeError": f"{at} got a value of the wrong type ({f.message}): often a None or a "
                     "str where a number was expected — check it before use.",
        "IndexError": f"{at} indexes past the end of a sequence — often an empty result: "
                      "check its length first.",
        "ValueError": f"{at} could not use a value ({f.message}): validate it first and "
                      "answer ctx.error(400, …) when it is bad.",
    }.get(f.type, f"Fix the {_raised(f)} raised at {at}.")
    return RootCause("exception", f"{_raised(f)} at {where}", shown, details,
                     f"{advice} flux replay {f.short_id} reproduces it with the recorded "
                     "inputs.")


def _raised(f: _Failure) -> str:
    """``KeyError 'id'``, ``ValueError: bad literal``: an exception as Python prints it."""
    if not f.message or f.message == f.type:
        return f.type
    return f"KeyError {f.message}" if f.type == "KeyError" else f"{f.type}: {f.message}"


# -- small readers --------------------------------------------------------------------------


def _endpoint(url: str) -> str:
    url = url.split(" +secrets(", 1)[0]  # a tape key's note of secrets sent in headers/body
    if url.startswith("[redacted "):  # the base URL was a secret: its marker is the host
        host, _, rest = url.partition("]")
        path = "/".join(":id" if _ID_SEGMENT.fullmatch(s) else s
                        for s in rest.split("?", 1)[0].split("/")).rstrip("/")
        return f"{host}]{path}"
    try:
        parts = urlsplit(url if "://" in url or url.startswith("//") else f"//{url}")
        port = parts.port
    except ValueError:  # "http://[::1", a port out of range: keep what there is
        return url.split("?", 1)[0]
    host = (parts.hostname or "").lower()
    if port is not None and (parts.scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    path = "/".join(":id" if _ID_SEGMENT.fullmatch(s) else s
                    for s in parts.path.split("/")).rstrip("/")
    return f"{host}{path if path.startswith('/') or not path else '/' + path}"


def _bare_url(url: Any) -> str | None:
    try:
        parts = urlsplit(_text(url))
    except ValueError:
        return None
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else None


def _host(dep: str) -> str:
    return dep.split(" ", 1)[-1].split("/", 1)[0] or dep


def _site(where: Mapping[str, Any]) -> str:
    """``file:line`` of a span's call site or an error's frame."""
    if not where.get("file"):
        return "its call site"
    line = _int(where.get("line"))
    return f"{where.get('file')}:{line}" if line is not None else _text(where.get("file"))


def _quoted_after(text: str, word: str) -> str:
    match = re.search(rf'{word} "([^"]+)"', text)
    return match.group(1) if match else ""


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets and double quotes: ``lower(a), b`` → 2 parts."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "([":
            depth += 1
        elif not quoted and ch in ")]":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _split_values(text: str, count: int) -> list[str]:
    """The values of a ``Key (…)=(…)`` detail, one per column when that can be told: they
    are printed joined by ", " and may themselves contain commas."""
    if count > 1:
        for parts in (text.split(", "), _split_top(text)):
            if len(parts) == count:
                return parts
    return [text]


def _column_of(expression: str) -> str:
    """``email`` from ``lower(email::text)``; a plain (or quoted) column as itself."""
    found = [m.group(2) for m in _IDENT.finditer(expression)]
    return found[0] if found else expression


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else _EMPTY


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _line(value: Any, limit: int = 200) -> str:
    """The first line of a text, cut to ``limit`` characters: messages go on one line."""
    first = _text(value).strip().split("\n", 1)[0].strip()
    return first if len(first) <= limit else f"{first[:limit - 1]}…"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = None if isinstance(value, str) else _number(value)
    return int(number) if number is not None and number.is_integer() else None


def _ms(value: Any) -> str:
    ms = _number(value)
    if ms is None:
        return "an unknown time"
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.1f}s"
