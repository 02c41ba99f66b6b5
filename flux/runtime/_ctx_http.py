"""``ctx.http``: outbound HTTP, every exchange recorded, unsafe calls made idempotent.

A POST/PUT/PATCH/DELETE carries ``Idempotency-Key: <request_id>-<call seq>`` unless the
handler set one, so a provider that honours the header deduplicates a call that is sent
again (a retry, a resume). Every call carries a W3C ``traceparent`` naming its own span, so
the callee's spans join the execution's trace. Answers are not raised on: check
``response.status`` or call ``response.raise_for_status()``, as with httpx.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from flux._errors import HttpConnectionError, HttpStatusError, HttpTimeout
from flux.runtime._recorder import CallSite

if TYPE_CHECKING:
    from flux.runtime._execution import Execution

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
        rec = ex.recorder
        rec.http_calls += 1
        call_seq = rec.http_calls
        sent_headers = dict(headers or {})
        if method in UNSAFE and not any(k.lower() == "idempotency-key" for k in sent_headers):
            sent_headers["Idempotency-Key"] = ex.idempotency_key(call_seq)
        if json is not None:
            body: bytes | None = jsonlib.dumps(json, default=str).encode()
            sent_headers.setdefault("Content-Type", "application/json")
        elif isinstance(data, str):
            body = data.encode()
        else:
            body = data
        parts = urlsplit(url)
        policy = ex.policy
        secrets = rec.secret_values
        shown_url = policy.scrub_text(url, secrets)  # a secret in a query string stays out
        attrs: dict[str, Any] = {
            "method": method, "url": shown_url, "call_seq": call_seq, "timeout_s": timeout,
            "request": {
                "headers": policy.redact_headers(sent_headers, secrets),
                "params": ex.prepare_body(params),
                "body": ex.prepare_body(json if json is not None else _text(body)),
            },
        }
        key = f"{method} {shown_url}"
        with rec.span(f"http.{method.lower()} {parts.netloc}{parts.path}", "http", site,
                      attrs) as span:
            added = _propagate(ex, span, sent_headers)
            attrs["request"]["headers"].update(added)
            if ex.replay is not None:
                served = await ex.replay.http(method, url, sent_headers, body, span, site)
                if served is not None:
                    response = served.value
                    span.attrs["status"] = response.status
                    if response.suppressed:
                        span.attrs["suppressed"] = True
                    return response
            try:
                async with ex.runtime.http_session.request(
                    method, url, data=body, headers=sent_headers, params=params,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as raw:
                    content = await raw.read()
                    response = Response(status=raw.status, headers=dict(raw.headers),
                                        content=content, url=str(raw.url))
                    raw_headers = list(raw.headers.items())
            except TimeoutError as exc:
                error = {"type": "timeout", "message": f"no answer within {timeout:g}s",
                         "timeout_s": timeout}
                span.error = error
                rec.tape_append("http", key, {"error": error}, site=site, span_id=span.id,
                                call_seq=call_seq)
                raise HttpTimeout(f"{method} {shown_url} timed out after {timeout:g}s",
                                  method=method, url=url) from exc
            except aiohttp.ClientError as exc:
                error = {"type": "connection",
                         "message": policy.scrub_text(str(exc) or type(exc).__name__, secrets)}
                span.error = error
                rec.tape_append("http", key, {"error": error}, site=site, span_id=span.id,
                                call_seq=call_seq)
                raise HttpConnectionError(f"{method} {shown_url} failed: {error['message']}",
                                          method=method, url=url) from exc
            except asyncio.CancelledError:
                raise
            span.attrs["status"] = response.status
            if response.status >= 400:
                span.status = "error"
                span.error = {"type": "http_status", "status": response.status,
                              "message": f"answered {response.status}"}
            recorded = {
                "status": response.status,
                "headers": policy.redact_headers(raw_headers, secrets),
                "body": ex.prepare_body(_decode_body(response)),
            }
            # The answer is on the tape (linked by span id), not copied into the span: the
            # record is encoded on the request path, and readers join the two.
            rec.tape_append("http", key, recorded, site=site, span_id=span.id,
                            call_seq=call_seq)
            return response


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


def _decode_body(response: Response) -> Any:
    """JSON bodies are stored as JSON (so `why` can compare their shape), others as text."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text

