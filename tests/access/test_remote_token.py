"""``--remote`` hands the admin token to no one else: a redirect is refused, not followed
with the Authorization header, and a token about to cross the network over plain http://
is warned about (issue 20, item 9)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from flux.server._remote import Remote
from tests.fixtures.projects import run_flux

TOKEN = "admin-token-that-must-stay-home"


class Collector(http.server.BaseHTTPRequestHandler):
    """Where a redirect points: records every Authorization header it is sent."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        Collector.seen.append(self.headers.get("Authorization"))
        body = b'{"executions": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def collector() -> Iterator[str]:
    Collector.seen.clear()
    yield from serving(Collector)


@pytest.fixture
def redirector(collector: str) -> Iterator[str]:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(307)
            self.send_header("Location", f"{collector}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    yield from serving(Redirect)


def test_a_redirect_is_refused_and_the_token_stays_home(redirector: str, collector: str,
                                                        tmp_path: Any) -> None:
    result = run_flux(["--remote", redirector, "ls", "--json"], tmp_path,
                      env={"FLUX_ADMIN_TOKEN": TOKEN})
    assert result.returncode != 0
    assert "redirect" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert TOKEN not in result.stderr
    assert Collector.seen == []  # nothing reached where the redirect pointed
    # the collector itself answers, so a followed redirect would have "worked"
    direct = run_flux(["--remote", collector, "ls", "--json"], tmp_path,
                      env={"FLUX_ADMIN_TOKEN": TOKEN})
    assert direct.returncode == 0, direct.stderr
    assert Collector.seen == [f"Bearer {TOKEN}"]
    assert "warning" not in direct.stderr  # loopback: nothing crosses the network


@pytest.mark.parametrize(("url", "token", "warned"), [
    ("http://flux.example.com", TOKEN, True),
    ("http://10.1.2.3:4000", TOKEN, True),
    ("https://flux.example.com", TOKEN, False),
    ("http://localhost:4000", TOKEN, False),
    ("http://127.0.0.1:4000", TOKEN, False),
    ("http://[::1]:4000", TOKEN, False),
    ("http://flux.example.com", None, False),
])
def test_a_token_over_plain_http_to_another_machine_is_warned_about(
        url: str, token: str | None, warned: bool) -> None:
    warning = Remote(url, token).warning  # decided from the URL alone: nothing is sent
    assert (warning is not None) == warned
    if warning:
        assert "https://" in warning and TOKEN not in warning
