"""``ctx.http``: outbound HTTP, every exchange recorded, unsafe calls made idempotent.

A POST/PUT/PATCH/DELETE carries ``Idempotency-Key: <request_id>-<call seq>`` unless the
handler set one, so a provider that honours the header deduplicates a call that is sent
again (a retry, a resume). Every call carries a W3C ``traceparent`` naming its own span, so
the callee's spans join the execution's trace. Answers are not raised on: check
``response.status`` or call ``response.raise_for_status()``, as with httpx.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json as jsonlib
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

import aiohttp
import orjson

from flux._errors import HttpConnectionError, HttpStatusError, HttpTimeout
from flux.runtime._callkey import http_key, redact
from flux.runtime._recorder import CallSite, Span

if TYPE_CHECKING:
    from flux.runtime._execution import Execution

T = TypeVar("T")

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Response:
    """An HTTP answer as the handler sees it (live or from the tape)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    url: str = ""
    suppressed: bool = False  # answered by replay without sending anything

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def raise_for_status(self) -> Response:
        if self.status >= 400:
            raise HttpStatusError(f"{self.url} answered {self.status}", method="", url=self.url,
                                  status=self.status)
        return self


def suppressed_response(stubs: dict[str, Any], url: str) -> tuple[Response, bool]:
    """The answer to an HTTP call that must not be sent (a dry run, a replay past the end of
    its tape): the first ``[replay.stubs]`` entry whose pattern is in the URL, else an empty
    200. Either is marked ``x-flux-suppressed: true``. Returns (response, from a stub)."""
    stub = next((v for pattern, v in stubs.items() if pattern in url), None)
    status = int(stub.get("status", 200)) if isinstance(stub, dict) else 200
    content = jsonlib.dumps(stub.get("body", {}) if isinstance(stub, dict) else {}).encode()
    return Response(status=status, headers={"x-flux-suppressed": "true"}, content=content,
                    url=url, suppressed=True), stub is not None


class Http:
    """The ``ctx.http`` door."""

    def __init__(self, execution: Execution) -> None:
        self._ex = execution

    def get(self, url: str, **kwargs: Any) -> Any:
        return self._ex.bridge(self._request("GET", url, self._ex.recorder.call_site(), **kwargs))

    def post(self, url: str, **kwargs: Any) -> Any:
        return self._ex.bridge(self._request("POST", url, self._ex.recorder.call_site(), **kwargs))

    def put(self, url: str, **kwargs: Any) -> Any:
        return self._ex.bridge(self._request("PUT", url, self._ex.recorder.call_site(), **kwargs))

    def patch(self, url: str, **kwargs: Any) -> Any:
        return self._ex.bridge(self._request("PATCH", url, self._ex.recorder.call_site(), **kwargs))

    def delete(self, url: str, **kwargs: Any) -> Any:
        site = self._ex.recorder.call_site()
        return self._ex.bridge(self._request("DELETE", url, site, **kwargs))

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return self._ex.bridge(self._request(method.upper(), url, self._ex.recorder.call_site(),
                                            **kwargs))

    async def _request(self, method: str, url: str, site: CallSite, *, json: Any = None,
                       data: Any = None,
                       headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
                       timeout: float = DEFAULT_TIMEOUT) -> Response:
        ex = self._ex
        sent_headers = dict(headers or {})
        if json is not None:
            body: bytes | None = jsonlib.dumps(json, default=str).encode()
            sent_headers.setdefault("Content-Type", "application/json")
        elif isinstance(data, str):
            body = data.encode()
        else:
            body = data
        with Exchange(ex, method, url, sent_headers, body, site, timeout=timeout,
                      params=params, shown=json) as call:
            served = await call.served()
            if served is not None:
                return served
            try:
                with sending():
                    async with ex.runtime.http_session.request(
                        method, url, data=body, headers=call.headers, params=params,
                        timeout=aiohttp.ClientTimeout(total=timeout),
                    ) as raw:
                        content = await raw.read()
                        raw_headers = list(raw.headers.items())
                        status, final_url = raw.status, str(raw.url)
            except TimeoutError as exc:
                raise call.timed_out(f"no answer within {timeout:g}s") from exc
            except aiohttp.ClientError as exc:
                raise call.failed(str(exc) or type(exc).__name__) from exc
            return call.answered(status, raw_headers, content, final_url)


_sending: contextvars.ContextVar[bool] = contextvars.ContextVar("flux_sending", default=False)


@contextlib.contextmanager
def sending() -> Iterator[None]:
    """Mark a recorded call's own sending: the clients it goes through and the sockets it
    opens are not captured again, nor reported as unrecorded IO."""
    token = _sending.set(True)
    try:
        yield
    finally:
        _sending.reset(token)


def is_sending() -> bool:
    return _sending.get()


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (a replay source's answer) from sync code, even
    on the event loop's own thread: a sync client called in an async handler has no other
    way to ask the tape."""
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coro.close()
    raise RuntimeError("a replay source suspended while answering a sync client")


class Exchange:
    """One outbound HTTP call through the recorder: ``ctx.http``'s, and every captured
    client's (flux/runtime/_intercept.py adapts httpx, requests/urllib3, aiohttp and http.client
    requests into one). It adds ``Idempotency-Key`` (unsafe methods, when the caller set
    none) and ``traceparent``, opens the span at the user's call site, asks the replay
    source for the answer, and puts the answer — or the failure — on the tape keyed and
    redacted in one way whatever the client."""

    def __init__(self, ex: Execution, method: str, url: str, headers: dict[str, str],
                 body: bytes | None, site: CallSite, *, timeout: float | None = None,
                 params: dict[str, Any] | None = None, shown: Any = None,
                 client: str | None = None) -> None:
        self._ex = ex
        rec = ex.recorder
        rec.http_calls += 1
        self.call_seq = rec.http_calls
        self.method, self.url, self.body, self.site = method, url, body, site
        self.timeout = timeout
        self.headers = headers
        self.added: dict[str, str] = {}  # the headers Flux adds to the caller's
        if method in UNSAFE and not any(k.lower() == "idempotency-key" for k in headers):
            self.added["Idempotency-Key"] = headers["Idempotency-Key"] = \
                ex.idempotency_key(self.call_seq)
        policy = ex.policy
        secrets = rec.secret_values
        marks = rec.secret_marks
        # The call's canonical form: secrets replaced by their markers wherever they are.
        # The key, the span's name and every message are made from it, never from ``url``.
        self.shown_url = redact(url, marks)
        self.key = http_key(method, url, marks, params=params, headers=headers,
                            body=shown if shown is not None else body)
        self.attrs: dict[str, Any] = {
            "method": method, "url": self.shown_url, "call_seq": self.call_seq,
            "timeout_s": timeout,
            "request": {  # nothing to redact in what was not sent (most GETs)
                "headers": policy.redact_headers(headers, secrets) if headers else {},
                "params": None if params is None else ex.prepare_body(params),
                "body": ex.prepare_body(shown) if shown is not None else
                None if body is None else ex.prepare_body(_text(body)),
            },
        }
        if client is not None:
            self.attrs["client"] = client
        self._name = f"http.{method.lower()} {span_target(self.shown_url)}"
        self._cm: contextlib.AbstractContextManager[Span] | None = None
        self.span: Span

    def __enter__(self) -> Exchange:
        self._cm = self._ex.recorder.span(self._name, "http", self.site, self.attrs)
        self.span = self._cm.__enter__()
        added = _propagate(self._ex, self.span, self.headers)
        self.attrs["request"]["headers"].update(added)
        self.added.update(added)
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        assert self._cm is not None
        return self._cm.__exit__(*exc)

    async def served(self) -> Response | None:
        """The replay source's answer (from the tape, a stub or a synthetic 200), or None
        when the call is to be sent."""
        ex = self._ex
        if ex.replay is None:
            return None
        served = await ex.replay.http(self.method, self.url, self.headers, self.body,
                                      self.span, self.site, key=self.key)
        if served is None:
            return None
        response: Response = served.value
        self.span.attrs["status"] = response.status
        if response.suppressed:
            self.span.attrs["suppressed"] = True
        return response

    def served_now(self) -> Response | None:
        """``served`` for a sync client."""
        return run_now(self.served())

    def answered(self, status: int, headers: list[tuple[str, str]], content: bytes,
                 url: str) -> Response:
        """The live answer, recorded."""
        ex = self._ex
        response = Response(status=status, headers=dict(headers), content=content, url=url)
        span = self.span
        span.attrs["status"] = status
        if status >= 400:
            span.status = "error"
            span.error = {"type": "http_status", "status": status,
                          "message": f"answered {status}"}
        recorded = {
            "status": status,
            "headers": ex.policy.redact_headers(headers, ex.recorder.secret_values),
            # decoded here for the record alone: no copy to make of it
            "body": ex.policy.prepare(_decode_body(response), ex.recorder.secret_values,
                                      fresh=True),
        }
        # The answer is on the tape (linked by span id), not copied into the span: the
        # record is encoded on the request path, and readers join the two.
        ex.recorder.tape_append("http", self.key, recorded, site=self.site, span_id=span.id,
                                call_seq=self.call_seq)
        return response

    def timed_out(self, message: str) -> HttpTimeout:
        """A timeout, recorded; the error to raise (a captured client raises its own)."""
        error = {"type": "timeout", "message": message, "timeout_s": self.timeout}
        self._fail(error)
        return HttpTimeout(f"{self.method} {self.shown_url} timed out"
                           + (f" after {self.timeout:g}s" if self.timeout else ""),
                           method=self.method, url=self.shown_url)

    def failed(self, message: str) -> HttpConnectionError:
        """A connection failure, recorded; the error to raise."""
        ex = self._ex
        error = {"type": "connection",
                 "message": ex.policy.scrub_text(message, ex.recorder.secret_values)}
        self._fail(error)
        return HttpConnectionError(f"{self.method} {self.shown_url} failed: "
                                   f"{error['message']}", method=self.method, url=self.shown_url)

    def _fail(self, error: dict[str, Any]) -> None:
        self.span.error = error
        self._ex.recorder.tape_append("http", self.key, {"error": error}, site=self.site,
                                      span_id=self.span.id, call_seq=self.call_seq)


@functools.lru_cache(maxsize=1024)
def span_target(shown_url: str) -> str:
    """Host and path of a (redacted) URL, for a span's name: no scheme, no query. A URL
    whose base is a secret keeps the secret's marker in place of the host."""
    parts = urlsplit(shown_url)
    if parts.netloc:
        return f"{parts.netloc}{parts.path}"
    return shown_url.split("?", 1)[0]


def _propagate(ex: Execution, span: Any, headers: dict[str, str]) -> dict[str, str]:
    """Add W3C ``traceparent`` (naming this call's span as the parent) and the caller's
    ``tracestate`` to ``headers``, unless the handler set its own; returns what was added.
    Tape matching keys HTTP calls by method and URL, so the header never disturbs a
    replay."""
    names = {k.lower() for k in headers}
    if "traceparent" in names:
        return {}
    added = {"traceparent": ex.traceparent(span)}
    if ex.trace.tracestate and "tracestate" not in names:
        added["tracestate"] = ex.trace.tracestate
    headers.update(added)
    return added


def _text(body: bytes | None) -> Any:
    if body is None:
        return None
    try:
        return jsonlib.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


# Every byte to a space but digits, which all become "0": a run of 19 digits is then found
# by ``find`` (a memchr-driven search) instead of a regular expression's character class,
# which Python's engine steps through byte by byte (126 µs for a 4.5 KB answer, loaded:
# more than orjson takes to parse it).
_DIGITS_TO_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_NINETEEN_DIGITS = b"0" * 19


def _long_digit_run(content: bytes) -> bool:
    """Whether ``content`` holds a run of 19 digits (an integer orjson may read as a float)."""
    return content.translate(_DIGITS_TO_ZERO).find(_NINETEEN_DIGITS) >= 0


def _decode_body(response: Response) -> Any:
    """JSON bodies are stored as JSON (so `why` can compare their shape), others as text."""
    if not response.content:
        return None
    # orjson first (the answer is recorded on the request path), unless the text holds a
    # run of 19 digits: orjson reads an integer beyond 64 bits as a float, json exactly.
    # What orjson refuses (NaN, a lone surrogate, UTF-16) json reads, as before.
    if not _long_digit_run(response.content):
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            pass
    try:
        return response.json()
    except ValueError:
        return response.text

