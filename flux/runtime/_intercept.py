"""Transparent capture of the HTTP clients Python code uses: httpx (sync and async),
requests / urllib3, aiohttp's ``ClientSession`` and the standard library's ``http.client``
(hence ``urllib.request``). Vendor SDKs built on them (stripe, openai, boto3, twilio) are
then recorded with no code change.

Each adapter turns the library's request into an ``Exchange`` — the very path ``ctx.http``
takes: same span at the user's line, same tape key and redaction, ``traceparent``, an
``Idempotency-Key`` only when the caller set none — and turns the answer (live, or served
by replay from the tape) back into the library's own response type. Recorded failures
replay as the library's own exceptions.

Capture is active only while an execution runs (the ContextVar ``flux.runtime._context`` sets);
outside one the patched methods call the originals at once. While a recorded call sends,
the lower layers it goes through (requests → urllib3 → http.client, and the sockets) are
not captured again (``flux.runtime._ctx_http.sending``).
"""

from __future__ import annotations

import functools
import http
import http.client
import importlib.util
import io
import json as jsonlib
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from flux._errors import HttpTimeout
from flux.runtime._context import _current
from flux.runtime._ctx_http import Exchange, Response, is_sending, sending
from flux.runtime._recorder import CallSite

if TYPE_CHECKING:
    from flux.runtime._execution import Execution

# Headers that describe the bytes on the wire, not the content a client is handed back.
_WIRE = frozenset({"content-encoding", "transfer-encoding", "content-length", "connection"})


def _active() -> Execution | None:
    """The running execution, if this call is to be captured."""
    if is_sending():
        return None
    ctx = _current.get()
    return None if ctx is None else ctx._execution


def _exchange(ex: Execution, method: str, url: str, headers: dict[str, str], body: Any,
              client: str) -> Exchange:
    return Exchange(ex, method.upper(), url, headers, _bytes(body), _call_site(ex),
                    client=client)


# The packages whose frames are never the user's line: Flux's and the captured clients'.
_OWN_PACKAGES: set[str] = {"flux"}
_OWN_MODULES: dict[str, bool] = {}  # module name -> it is in one of _OWN_PACKAGES


def _call_site(ex: Execution) -> CallSite:
    """The user's line that made the call: the recorder's call site, its walk started above
    the frames of Flux and of the client (httpx puts seven between the user's line and its
    transport). Frames are told apart by their module's name (``f_globals``), decided
    once per module: reading a frame's ``f_code`` raises an audit event, which Flux's own
    audit hook (flux/runtime/_iowatch.py) is then called for."""
    frame: FrameType | None = sys._getframe(1)
    depth = 2  # the recorder's depth of ``frame`` (1 is this function)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if not isinstance(name, str):
            break
        own = _OWN_MODULES.get(name)
        if own is None:
            own = _OWN_MODULES[name] = name.partition(".")[0] in _OWN_PACKAGES
        if not own:
            break
        frame = frame.f_back
        depth += 1
    return ex.recorder.call_site(depth)


def _text(value: Any) -> str:
    """A header name or value as text (botocore hands some over as bytes)."""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _bytes(body: Any) -> bytes | None:
    """A request body as bytes (a file or an iterable is read: it is sent as read)."""
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    if hasattr(body, "read"):
        data = body.read()
        return data.encode() if isinstance(data, str) else bytes(data)
    if isinstance(body, dict):
        return urlencode(body).encode()
    return b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in body)


def _httpx_request_headers(headers: Any) -> dict[str, str]:
    """``dict(headers.items())`` of httpx ``Headers`` (names lower-cased, a repeated header's
    values joined), without httpx's check of the encoding for every item it decodes."""
    out: dict[str, str] = {}
    try:
        for name, value in headers.raw:
            key = name.decode("ascii").lower()
            text = value.decode("ascii")
            out[key] = f"{out[key]}, {text}" if key in out else text
    except UnicodeDecodeError:
        return dict(headers.items())
    return out


def _httpx_response_headers(headers: Any) -> list[tuple[str, str]]:
    """``headers.multi_items()`` of httpx ``Headers``, decoded once (names as sent: they
    are recorded lower-cased)."""
    try:
        return [(name.decode("ascii"), value.decode("ascii")) for name, value in headers.raw]
    except UnicodeDecodeError:
        return headers.multi_items()  # type: ignore[no-any-return]


def _content_headers(response: Response) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _WIRE]
    return [*headers, ("Content-Length", str(len(response.content)))]


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


# -- httpx -------------------------------------------------------------------------------


def _patch_httpx(module: str = "httpx") -> None:
    """httpx, or httpx2 (its successor, which openai uses): the same transport API."""
    httpx = importlib.import_module(module)
    _OWN_PACKAGES.add(module)
    _OWN_MODULES.clear()

    sync_send = httpx.HTTPTransport.handle_request
    async_send = httpx.AsyncHTTPTransport.handle_async_request

    def answer(response: Response, request: Any) -> Any:
        served = httpx.Response(response.status, headers=_content_headers(response),
                                content=response.content, request=request)
        served.elapsed = timedelta(0)  # answered by the tape: nothing was waited for
        return served

    def replayed_error(exc: Exception, request: Any) -> Exception:
        if isinstance(exc, HttpTimeout):
            return httpx.ReadTimeout(str(exc), request=request)
        return httpx.ConnectError(str(exc), request=request)

    def begin(ex: Execution, request: Any, url: str) -> Exchange:
        # A request without a body is recorded as ctx.http's and the other clients' are
        # (no body, rather than an empty one).
        return _exchange(ex, request.method, url, _httpx_request_headers(request.headers),
                         request.content or None, module)

    def add_headers(call: Exchange, request: Any) -> None:
        for name, value in call.added.items():
            request.headers[name] = value

    @functools.wraps(sync_send)
    def handle_request(self: Any, request: Any) -> Any:
        ex = _active()
        if ex is None:
            return sync_send(self, request)
        request.read()
        start = time.perf_counter()
        url = str(request.url)
        with begin(ex, request, url) as call:
            try:
                served = call.served_now()
            except (HttpTimeout, ConnectionError) as exc:
                raise replayed_error(exc, request) from None
            if served is not None:
                return answer(served, request)
            add_headers(call, request)
            try:
                with sending():
                    raw = sync_send(self, request)
                    try:
                        content = raw.read()
                    finally:
                        raw.close()
            except httpx.TimeoutException as exc:
                call.timed_out(str(exc) or type(exc).__name__)
                raise
            except httpx.TransportError as exc:
                call.failed(str(exc) or type(exc).__name__)
                raise
            call.answered(raw.status_code, _httpx_response_headers(raw.headers), content, url)
            # Read and closed here, so the client finds its content in place but never
            # closes the stream it wraps, which is where httpx sets ``elapsed``.
            raw.elapsed = timedelta(seconds=time.perf_counter() - start)
            return raw

    @functools.wraps(async_send)
    async def handle_async_request(self: Any, request: Any) -> Any:
        ex = _active()
        if ex is None:
            return await async_send(self, request)
        try:
            request.content  # noqa: B018 - read already (a body given whole, a GET)?
        except httpx.RequestNotRead:
            await request.aread()
        start = time.perf_counter()
        url = str(request.url)
        with begin(ex, request, url) as call:
            try:
                served = await call.served()
            except (HttpTimeout, ConnectionError) as exc:
                raise replayed_error(exc, request) from None
            if served is not None:
                return answer(served, request)
            add_headers(call, request)
            try:
                with sending():
                    raw = await async_send(self, request)
                    try:
                        content = await raw.aread()
                    finally:
                        await raw.aclose()
            except httpx.TimeoutException as exc:
                call.timed_out(str(exc) or type(exc).__name__)
                raise
            except httpx.TransportError as exc:
                call.failed(str(exc) or type(exc).__name__)
                raise
            call.answered(raw.status_code, _httpx_response_headers(raw.headers), content, url)
            raw.elapsed = timedelta(seconds=time.perf_counter() - start)
            return raw

    httpx.HTTPTransport.handle_request = handle_request  # type: ignore[method-assign]
    httpx.AsyncHTTPTransport.handle_async_request = handle_async_request  # type: ignore[method-assign]


# -- urllib3 (requests, botocore, stripe) -----------------------------------------------


def _patch_urllib3() -> None:
    # urllib3 is optional (requests and botocore bring it): imported only when installed
    import urllib3
    from urllib3.connectionpool import HTTPConnectionPool
    from urllib3.exceptions import HTTPError, MaxRetryError, ProtocolError, ReadTimeoutError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    original = HTTPConnectionPool.urlopen

    def full_url(pool: Any, url: str) -> str:
        if url.startswith(("http://", "https://")):
            return url
        default = 443 if pool.scheme == "https" else 80
        port = "" if pool.port in (None, default) else f":{pool.port}"
        return f"{pool.scheme}://{pool.host}{port}{url}"

    def answer(response: Response, method: str, url: str, preload: bool
               ) -> urllib3.HTTPResponse:
        headers = urllib3.HTTPHeaderDict()
        for name, value in _content_headers(response):
            headers.add(name, value)
        return urllib3.HTTPResponse(
            body=io.BytesIO(response.content), headers=headers,
            status=response.status, reason=_reason(response.status), preload_content=preload,
            decode_content=False, request_method=method, request_url=url)

    @functools.wraps(original)
    def urlopen(self: Any, method: str, url: str, body: Any = None,
                headers: Any = None, *args: Any, **kwargs: Any) -> Any:
        ex = _active()
        if ex is None or args:
            return original(self, method, url, body, headers, *args, **kwargs)
        target = full_url(self, url)
        data = _bytes(body)
        preload = kwargs.pop("preload_content", True)
        kwargs.pop("decode_content", None)
        given = {_text(k): _text(v) for k, v in (headers or {}).items()}
        with _exchange(ex, method, target, given, data, "urllib3") as call:
            try:
                served = call.served_now()
            except HttpTimeout as exc:
                raise ReadTimeoutError(self, url, str(exc)) from None
            except ConnectionError as exc:
                raise ProtocolError(str(exc)) from None
            if served is not None:
                return answer(served, method, target, preload)
            try:
                with sending():
                    raw = original(self, method, url, data, call.headers, preload_content=False,
                                   decode_content=True, **kwargs)
                    try:
                        content = raw.read(decode_content=True)
                    finally:
                        raw.release_conn()
            except Urllib3Timeout as exc:
                call.timed_out(str(exc))
                raise
            except MaxRetryError as exc:
                if isinstance(exc.reason, Urllib3Timeout):
                    call.timed_out(str(exc.reason))
                else:
                    call.failed(str(exc.reason or exc))
                raise
            except (HTTPError, OSError) as exc:
                call.failed(str(exc) or type(exc).__name__)
                raise
            return answer(call.answered(raw.status, list(raw.headers.items()), content, target),
                          method, target, preload)

    HTTPConnectionPool.urlopen = urlopen  # type: ignore[method-assign]


# -- http.client (urllib.request) -------------------------------------------------------


class _Wire:
    """A socket that only hands back bytes already read, for ``HTTPResponse`` to parse."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self._data))  # type: ignore[arg-type]


def _http_client_response(response: Response, method: str) -> http.client.HTTPResponse:
    status = response.status
    head = [f"HTTP/1.1 {status} {_reason(status)}",
            *(f"{k}: {v}" for k, v in _content_headers(response)), "", ""]
    raw = http.client.HTTPResponse(
        _Wire("\r\n".join(head).encode("latin-1", "replace") + response.content),  # type: ignore[arg-type]
        method=method)
    raw.begin()
    return raw


def _patch_http_client() -> None:
    conn_cls = http.client.HTTPConnection
    send_request = conn_cls.request
    get_response = conn_cls.getresponse

    def full_url(conn: Any, url: str) -> str:
        if url.startswith(("http://", "https://")):
            return url
        scheme = "https" if isinstance(conn, http.client.HTTPSConnection) else "http"
        default = 443 if scheme == "https" else 80
        port = "" if conn.port in (None, default) else f":{conn.port}"
        return f"{scheme}://{conn.host}{port}{url}"

    @functools.wraps(send_request)
    def request(self: Any, method: str, url: str, body: Any = None,
                headers: Any = None, **kwargs: Any) -> None:
        if _active() is None:
            return send_request(self, method, url, body, headers or {}, **kwargs)
        # Held until getresponse: the call is made (or served) there, as one exchange.
        self._flux_pending = (method, url, body, dict(headers or {}), kwargs)
        return None

    @functools.wraps(get_response)
    def getresponse(self: Any) -> http.client.HTTPResponse:
        pending = self.__dict__.pop("_flux_pending", None)
        ex = _active()
        if pending is None or ex is None:
            return get_response(self)
        method, url, body, headers, kwargs = pending
        target = full_url(self, url)
        data = _bytes(body)
        with _exchange(ex, method, target, headers, data, "http.client") as call:
            try:
                served = call.served_now()
            except HttpTimeout as exc:
                raise TimeoutError(str(exc)) from None
            except ConnectionError as exc:
                raise http.client.RemoteDisconnected(str(exc)) from None
            if served is not None:
                return _http_client_response(served, method)
            kwargs.pop("encode_chunked", None)
            try:
                with sending():
                    send_request(self, method, url, data, call.headers, **kwargs)
                    raw = get_response(self)
                    content = raw.read()
            except TimeoutError as exc:
                call.timed_out(str(exc) or "timed out")
                raise
            except (OSError, http.client.HTTPException) as exc:
                call.failed(str(exc) or type(exc).__name__)
                raise
            live = call.answered(raw.status, raw.getheaders(), content, target)
            return _http_client_response(live, method)

    conn_cls.request = request  # type: ignore[method-assign]
    conn_cls.getresponse = getresponse  # type: ignore[method-assign]


# -- aiohttp ----------------------------------------------------------------------------


class _AiohttpResponse:
    """What ``ClientSession.request`` hands back for a captured call: the parts of
    ``aiohttp.ClientResponse`` handlers use (status, headers, read/text/json,
    raise_for_status, the async context manager)."""

    def __init__(self, response: Response, method: str) -> None:
        self.status = response.status
        self.reason = _reason(response.status)
        self.method = method
        self.url = URL(response.url)
        self.real_url = self.url
        self.headers = CIMultiDictProxy(CIMultiDict(_content_headers(response)))
        self._body = response.content
        self.content_type = self.headers.get("Content-Type", "application/octet-stream"
                                             ).split(";")[0]
        self.history = ()

    @property
    def ok(self) -> bool:
        return self.status < 400

    async def read(self) -> bytes:
        return self._body

    async def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        return self._body.decode(encoding or "utf-8", errors)

    async def json(self, *, encoding: str | None = None,
                   loads: Callable[[str], Any] = jsonlib.loads, content_type: Any = None
                   ) -> Any:
        return loads(self._body.decode(encoding or "utf-8"))

    def raise_for_status(self) -> None:
        if self.status >= 400:
            raise aiohttp.ClientResponseError(None, (), status=self.status,  # type: ignore[arg-type]
                                              message=self.reason, headers=self.headers)

    def release(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def wait_for_close(self) -> None:
        return None

    async def __aenter__(self) -> _AiohttpResponse:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None


def _patch_aiohttp() -> None:
    original = aiohttp.ClientSession._request

    @functools.wraps(original)
    async def _request(self: Any, method: str, str_or_url: Any, **kwargs: Any) -> Any:
        ex = _active()
        if ex is None:
            return await original(self, method, str_or_url, **kwargs)
        parts = urlsplit(str(self._build_url(str_or_url)) if hasattr(self, "_build_url")
                         else str(str_or_url))
        params = kwargs.pop("params", None)
        query = parts.query
        if params:
            extra = urlencode(list(params.items()) if isinstance(params, dict) else params)
            query = f"{query}&{extra}" if query else extra
        url = urlunsplit(parts._replace(query=query))
        headers = {**{str(k): str(v) for k, v in (self.headers or {}).items()},
                   **{str(k): str(v) for k, v in (kwargs.pop("headers", None) or {}).items()}}
        given, body = kwargs.pop("json", None), kwargs.pop("data", None)
        if given is not None:
            body = jsonlib.dumps(given).encode()
            headers.setdefault("Content-Type", "application/json")
        with _exchange(ex, method, url, headers, body, "aiohttp") as call:
            try:
                served = await call.served()
            except HttpTimeout as exc:
                raise TimeoutError(str(exc)) from None
            except ConnectionError as exc:
                raise aiohttp.ClientConnectionError(str(exc)) from None
            if served is not None:
                return _AiohttpResponse(served, method)
            try:
                with sending():
                    raw = await original(self, method, url, headers=call.headers,
                                         data=call.body, **kwargs)
                    try:
                        content = await raw.read()
                    finally:
                        raw.release()
            except TimeoutError as exc:
                call.timed_out(str(exc) or "timed out")
                raise
            except aiohttp.ClientError as exc:
                call.failed(str(exc) or type(exc).__name__)
                raise
            live = call.answered(raw.status, list(raw.headers.items()), content, str(raw.url))
            return _AiohttpResponse(live, method)

    aiohttp.ClientSession._request = _request  # type: ignore[method-assign]


_PATCHES: dict[str, Callable[[], None]] = {
    "httpx": _patch_httpx, "httpx2": functools.partial(_patch_httpx, "httpx2"),
    "urllib3": _patch_urllib3,
}
_installed: set[str] = set()


def install() -> list[str]:
    """Capture every supported client installed here (once per process); returns the
    names captured. Importing them now costs a little start-up, once."""
    if "http.client" not in _installed:
        _patch_http_client()
        _patch_aiohttp()  # a dependency of Flux: always there
        _installed.update(("http.client", "aiohttp"))
    for name, patch in _PATCHES.items():
        if name not in _installed and importlib.util.find_spec(name) is not None:
            patch()
            _installed.add(name)
    return sorted(_installed)
