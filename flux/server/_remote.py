"""``flux --remote URL …``: the inspect commands and resume, asked of a running Flux's admin
API (flux/server/_admin.py) instead of a database.

The token is ``FLUX_ADMIN_TOKEN``, sent as ``Authorization: Bearer``. An error answer
becomes the same FluxError the command raises locally — the server sends the sentence and
the machine code — so ``flux --remote URL why 0190`` fails exactly like ``flux why 0190``.
The standard library's urllib does the HTTP: the CLI stays light and synchronous.

The token goes only where it was sent: a redirect is never followed (it would carry the
``Authorization`` header to wherever the answer points), and a token about to travel over
plain ``http://`` to another machine comes with a warning.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from flux._errors import (
    AmbiguousId,
    ConfigError,
    DatabaseError,
    FluxError,
    NotFound,
    ResumeRefused,
    Unauthorized,
)
from flux.runtime._access import CLIENT_HEADER, TOKEN_ENV, loopback_authority

TIMEOUT = 60.0  # a resume runs a function; reads are quicker
AI_TIMEOUT = 600.0  # why --ai waits for the server's model, which has its own [ai] timeout

_ERRORS: dict[str, type[FluxError]] = {
    "not_found": NotFound, "config": ConfigError, "database": DatabaseError,
    "unavailable": DatabaseError, "unauthorized": Unauthorized, "admin_closed": Unauthorized,
}


class Remote:
    """The Inspector (flux/server/_inspector.py) of a Flux reached over HTTP."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = TIMEOUT
                 ) -> None:
        parsed = urllib.parse.urlsplit(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"--remote takes the URL of a Flux server, like "
                              f"https://flux.example.com, not {url!r}")
        self.url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc,
                                            parsed.path.rstrip("/"), "", ""))
        self._token = token or None
        self._timeout = timeout
        self.warning: str | None = None
        if self._token and parsed.scheme == "http" and not loopback_authority(parsed.netloc):
            self.warning = (f"the admin token travels unencrypted to {parsed.hostname}: use "
                            f"https:// for a server on another machine")
        self._opener = urllib.request.build_opener(_NoRedirects)

    def executions(self, *, function: str | None = None, status: str | None = None,
                   since: str | None = None, window: str | None = None,
                   limit: int = 20, kind: str | None = None) -> list[dict[str, Any]]:
        # Times are read here, in this machine's zone, and sent as ISO: "14:05" means
        # what the person typing it means, wherever the server is.
        from flux.inspect._ls import parse_time, parse_window

        if since is not None:
            since = parse_time(since).isoformat()
        if window is not None:
            start, end = parse_window(window)
            window = f"{start.isoformat()}..{end.isoformat()}"
        document = self._call("GET", "/_flux/executions", function=function, status=status,
                              since=since, window=window, limit=limit, kind=kind)
        return list(document["executions"])

    def window(self, text: str) -> dict[str, Any]:
        # Read here, where the person typing it is (the times are sent as ISO); lazy like
        # the window above, so the remote CLI loads no more than it uses.
        from flux.inspect._ls import describe_window

        return describe_window(None, text)

    def record(self, prefix: str) -> dict[str, Any]:
        return self._call("GET", f"/_flux/executions/{_segment(prefix)}")

    def why(self, prefix: str) -> dict[str, Any]:
        return self._call("GET", f"/_flux/executions/{_segment(prefix)}/why", spans="true")

    def trace(self, prefix: str) -> dict[str, Any]:
        return self._call("GET", f"/_flux/executions/{_segment(prefix)}/trace")

    def diff(self, a: str, b: str) -> dict[str, Any]:
        return self._call("GET", "/_flux/diff", a=a, b=b)

    def history(self, table: str, key: str) -> dict[str, Any]:
        return self._call("GET", f"/_flux/state/{_segment(table)}/history", id=key)

    def blame(self, table: str, key: str | None, *, limit: int = 50) -> dict[str, Any]:
        return self._call("GET", f"/_flux/state/{_segment(table)}/blame", id=key,
                          limit=None if key is not None else limit)

    def resume(self, prefix: str, *, dry_run: bool = False, strict: bool = False
               ) -> dict[str, Any]:
        return self._call("POST", f"/_flux/executions/{_segment(prefix)}/resume",
                          dry_run="true" if dry_run else None,
                          strict="true" if strict else None)

    def ai_reading(self, prefix: str, *, send: bool = True, show_prompt: bool = False,
                   on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
        """The server asks its model with its own [ai], secrets and code; the answer
        arrives whole and is handed to ``on_text`` at once."""
        document = self._call("POST", f"/_flux/executions/{_segment(prefix)}/why/ai",
                              timeout_s=AI_TIMEOUT, send="true" if send else "false",
                              show_prompt="true" if show_prompt else None)
        answer = (document.get("ai") or {}).get("answer")
        if on_text is not None and answer:
            on_text(answer)
        return dict(document)

    def _call(self, method: str, path: str, *, timeout_s: float | None = None,
              **query: Any) -> Any:
        params = {k: str(v) for k, v in query.items() if v is not None}
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        request = urllib.request.Request(url, method=method,
                                         headers={"Accept": "application/json",
                                                  CLIENT_HEADER: "cli"})
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with self._opener.open(request, timeout=timeout_s or self._timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                where = exc.headers.get("Location", "elsewhere")
                raise FluxError(f"{self.url} answered with a redirect to {where}, which is "
                                f"not followed: it would carry the admin token",
                                hint="give --remote the server's final URL") from None
            raise self._error(exc) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FluxError(f"cannot reach the admin API at {self.url}: {reason}",
                            hint="is the server up, and is the URL right?") from None
        except ValueError as exc:
            raise FluxError(f"{self.url} answered something that is not JSON; is it a "
                            f"Flux server?") from exc

    def _error(self, exc: urllib.error.HTTPError) -> FluxError:
        """The answer's error as the FluxError the command would raise locally."""
        try:
            document = json.loads(exc.read())
            error = document["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            return FluxError(f"{self.url} answered HTTP {exc.code} {exc.reason}; is it a Flux "
                             "server?")
        hint = error.get("hint")
        if code == "ambiguous":
            found = AmbiguousId("", list(document.get("candidates") or []))
            found.message, found.hint = message, hint
            found.args = (message,)
            return found
        if code == "resume_refused":
            return ResumeRefused(message, hint=hint, details=document.get("details") or {})
        if exc.code == 401 and code == "unauthorized":
            hint = hint or (f"set {TOKEN_ENV} to the server's admin token"
                            if not self._token else f"check {TOKEN_ENV}")
        return _ERRORS.get(code, FluxError)(message, hint=hint)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are answers, not directions: urllib then raises HTTPError for them."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _segment(text: str) -> str:
    """One path segment, every reserved character escaped (a table may hold a slash)."""
    return urllib.parse.quote(text, safe="")
