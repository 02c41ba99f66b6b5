"""Capture of HTTP clients and the unrecorded-IO watch, without a server: outside an
execution the libraries behave exactly as before; what counts as outside access."""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

import httpx
import pytest
import requests

from flux._errors import ConfigError, UnrecordedIO
from flux.runtime._intercept import install
from flux.runtime._iowatch import IOAllowance, Watch, _describe
from flux.runtime._recorder import CallSite, Recorder
from tests.fixtures.stub import Stub


def test_outside_an_execution_clients_send_untouched(stub: Stub) -> None:
    assert {"httpx", "urllib3", "http.client", "aiohttp"} <= set(install())
    httpx.post(stub.url + "/a", content=b"x")
    requests.post(stub.url + "/b", data=b"y", timeout=5)
    urllib.request.urlopen(stub.url + "/c", timeout=5).read()
    conn = http.client.HTTPConnection("127.0.0.1", int(stub.url.rsplit(":", 1)[1]))
    conn.request("GET", "/d")
    assert conn.getresponse().read()
    assert [r.path for r in stub.received] == ["/a", "/b", "/c", "/d"]
    for received in stub.received:
        names = {k.lower() for k in received.headers}
        assert "traceparent" not in names and "idempotency-key" not in names


def test_allowance_defaults_and_flux_toml(tmp_path: Path) -> None:
    allow = IOAllowance.of(tmp_path, {"io": {"allow_commands": ["git"],
                                             "allow_writes": [str(tmp_path / "out")],
                                             "allow_hosts": ["10.0.0.5:8125"]}})
    tmp = os.path.join(tempfile.gettempdir(), "x.json")
    assert _describe("subprocess.Popen", ("uname", ["uname", "-p"], None, None), allow) is None
    assert _describe("subprocess.Popen", ("git", ["git", "status"], None, None), allow) is None
    assert _describe("subprocess.Popen", ("curl", ["curl", "x"], None, None), allow) == \
        "subprocess curl x"
    assert _describe("open", (tmp, "w", 0), allow) is None
    assert _describe("open", (str(Path.home() / ".config/stripe/id"), "w", 0), allow) is None
    assert _describe("open", (str(tmp_path / "out" / "a"), "a", 0), allow) is None
    assert _describe("open", ("/etc/passwd", "r", 0), allow) is None  # a read
    assert _describe("open", ("/srv/report.csv", "w", 0), allow) == \
        "file /srv/report.csv opened for writing"
    assert _describe("socket.connect", (None, ("10.0.0.5", 8125)), allow) is None
    assert _describe("socket.connect", (None, ("10.0.0.6", 6379)), allow) == \
        "socket connection to 10.0.0.6:6379"
    assert _describe("socket.getaddrinfo", ("127.0.0.1", 80, 0, 0, 0), allow) is None
    assert _describe("socket.getaddrinfo", ("redis.internal", 6379, 0, 0, 0), allow) == \
        "DNS lookup of redis.internal"
    with pytest.raises(ConfigError, match=r"\[io\] allow_hosts"):
        IOAllowance.of(tmp_path, {"io": {"allow_hosts": "all"}})


def test_blocking_watch_refuses_with_file_and_line(tmp_path: Path) -> None:
    rec = Recorder("01a2471c-0000-7000-8000-000000000000", project_root=tmp_path,
                   functions_dir=tmp_path / "functions")
    watch = Watch(rec, block=True)
    with pytest.raises(UnrecordedIO, match=r"^unrecorded IO: subprocess ls at f.py:3$"):
        watch.report("subprocess ls", CallSite("f.py", 3))
    noting = Watch(rec, block=False)
    noting.report("subprocess ls", CallSite("f.py", 3))
    noting.report("subprocess ls", CallSite("f.py", 3))  # once per place
    assert [(s.kind, s.status, s.file, s.line) for s in rec.spans] == [
        ("unrecorded", "incomplete", "f.py", 3)]
