"""Hostile request bodies against a real ``flux serve``: invalid UTF-8, deep nesting, huge
numbers, NUL and lone surrogates, 10 MB — no crash, a 4xx for what cannot be taken, and
exactly one record for every request sent."""

from __future__ import annotations

import http.client
import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.access.conftest import Served, serve_project
from tests.fixtures.processes import FluxProcess

ECHO = '''from flux import function


@function
async def echo(ctx, input):
    return input
'''
KEEP = '''import json

from flux import function


@function
async def keep(ctx, input):
    row = await ctx.db.fetchone(
        "INSERT INTO notes (body) VALUES (%s::jsonb) RETURNING id", [json.dumps(input)])
    return {"id": row["id"], "input": input}
'''
ITEM = '''from flux import Response, function


@function(route="/items/{id:int}", methods=["GET", "PUT"])
async def item(ctx, input):
    if ctx.request.method == "PUT":
        return Response({"id": ctx.request.path_params["id"], "input": input}, status=201)
    return Response(ctx.request.body, content_type="application/octet-stream")
'''
ROUTES = ("echo", "keep")


@pytest.fixture
def bodies_server(db: str, tmp_path: Path, flux_process: type[FluxProcess]
                  ) -> Iterator[Served]:
    root = tmp_path / "bodies"
    (root / "functions").mkdir(parents=True)
    (root / "schema").mkdir()
    (root / "flux.toml").write_text('name = "bodies"\n')
    (root / "functions" / "echo.py").write_text(ECHO)
    (root / "functions" / "keep.py").write_text(KEEP)
    (root / "functions" / "item.py").write_text(ITEM)
    (root / "schema" / "001_notes.sql").write_text(
        "CREATE TABLE notes (id bigserial PRIMARY KEY, body jsonb NOT NULL);\n")
    server = serve_project(root, db, flux_process, token=None)
    yield server
    server.process.signal(signal.SIGTERM)
    server.process.wait(30)


class Client:
    """Raw bodies over one keep-alive connection; every answer checked and its id kept."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.sent = 0
        self.ids: list[str] = []
        port = int(served.url.rsplit(":", 1)[1])
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, route: str, body: bytes) -> tuple[int, Any]:
        self.sent += 1
        self.connection.request("POST", f"/{route}", body=body,
                                headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        answer = json.loads(response.read())
        rid = response.getheader("x-flux-request-id")
        assert rid, answer
        if response.status != 200:  # an error answer names its request
            assert answer["request_id"] == rid, answer
        self.ids.append(rid)
        return response.status, answer


def check(status: int, answer: Any, body: bytes) -> None:
    """200 for what a record can hold; otherwise a 400 in one sentence."""
    if status == 200:
        return
    assert status == 400, (status, answer, body[:200])
    message = answer["error"]["message"]
    assert answer["error"]["code"] == "invalid_json" and "\n" not in message


def reconcile(served: Served, client: Client, extra: int = 0) -> None:
    """Exactly one record per request: by the ids answered, and by count."""
    with psycopg.connect(served.db) as conn:
        stored = conn.execute("SELECT count(*) FROM flux.trace_requests WHERE request_id = "
                              "ANY(%s::uuid[])", [client.ids]).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM flux.trace_requests WHERE route = ANY(%s)",
                             [list(ROUTES)]).fetchone()[0]
    assert stored == len(client.ids) == client.sent - extra
    assert total == client.sent
    assert served.process.proc.poll() is None  # still serving
    assert served.call("/health")[0] == 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


def nested(depth: int, opener: str = "[") -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return ('{"a":' * depth + "1" + "}" * depth).encode()
    return (opener * depth + closer * depth).encode()


hostile = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8",
                                                                        "surrogatepass")),
    st.binary(max_size=64),  # mostly invalid UTF-8, mostly not JSON
    st.sampled_from([100, 127, 128, 129, 1000, 100_000]).map(nested),
    st.sampled_from([100, 128, 129, 5000]).map(lambda d: nested(d, "{")),
    st.integers(0, 6000).map(lambda n: b"1" + b"0" * n),
    st.sampled_from([b"1e400", b"-1e400", b"1.5e-400", b"[1e308, 1e309]", b"NaN",
                     b"-Infinity", b'{"a": Infinity}', b"1" * 4301, b"-" + b"9" * 4301]),
    st.text(min_size=1, max_size=8).map(lambda t: json.dumps({"s": t + "\x00"}).encode()),
    st.integers(0xD800, 0xDFFF).map(lambda c: f'{{"s": "x\\u{c:04x}y"}}'.encode()),
    st.just(b'"\\ud83d\\ude00"'),  # a surrogate pair is fine
)


def test_hostile_bodies_get_4xx_and_one_record_each(bodies_server: Served) -> None:
    client = Client(bodies_server)

    @given(body=hostile, route=st.sampled_from(ROUTES))
    @settings(max_examples=250, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def send(body: bytes, route: str) -> None:
        status, answer = client.post(route, body)
        check(status, answer, body)

    send()
    # the edges, for certain
    for body, expected in [(nested(128), 200), (nested(129), 400), (nested(100_000), 400),
                           (b"1e400", 400), (b"1" + b"0" * 4299, 200),
                           (b"1" * 4301, 400), (b"\xff\xfe", 400),
                           (json.dumps({"s": "a\x00b"}).encode(), 400),
                           (b'{"s": "\\udc00"}', 400), (b'"\\ud83d\\ude00"', 200)]:
        for route in ROUTES:
            status, answer = client.post(route, body)
            assert status == expected, (body[:40], answer)
    reconcile(bodies_server, client)


def test_a_10_mb_body_is_a_recorded_413(bodies_server: Served) -> None:
    client = Client(bodies_server)
    huge = b'{"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    refused = 0
    for route in ROUTES:
        try:
            status, answer = client.post(route, huge)
        except (TimeoutError, ConnectionError, http.client.HTTPException):
            # The server may answer and close before the client has sent it all; the
            # record is what counts.
            refused += 1
            client.connection.close()
            continue
        assert status == 413 and answer["error"]["code"] == "payload_too_large"
    reconcile(bodies_server, client, extra=refused)
    with psycopg.connect(bodies_server.db) as conn:
        rows = conn.execute("SELECT http_status, length(request::text) FROM "
                            "flux.trace_requests").fetchall()
    assert [status for status, _ in rows] == [413, 413]
    assert all(size < 10_000 for _, size in rows)  # the body itself was never kept


def test_hostile_paths_queries_and_headers_get_one_record_each(bodies_server: Served) -> None:
    """What the HTTP parser lets through reaches a record: %00 and bad UTF-8 in the path
    and the query, raw bytes in a header value."""
    port = int(bodies_server.url.rsplit(":", 1)[1])
    requests = [b"POST /%00 HTTP/1.1", b"POST /echo%00 HTTP/1.1", b"GET /%ff%fe/%c0 HTTP/1.1",
                b"POST /echo?a=%00&b=%ff&%00=1 HTTP/1.1", b"POST /keep?x=%ud800 HTTP/1.1"]
    ids = []
    for line in requests:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(line + b"\r\nHost: x\r\nX-Odd: \xff\xfe\r\nContent-Length: 2\r\n"
                         b"Connection: close\r\n\r\n{}")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        assert status in (200, 404, 405), answer
        ids.append(json.loads(body).get("request_id") or
                   head.split(b"x-flux-request-id: ")[1].split(b"\r\n")[0].decode())
    with psycopg.connect(bodies_server.db) as conn:
        assert conn.execute("SELECT count(*) FROM flux.trace_requests WHERE request_id = "
                            "ANY(%s::uuid[])", [ids]).fetchone() == (len(requests),)


def test_huge_headers_are_stored_capped_as_bodies_are(bodies_server: Served) -> None:
    """Issue 20, item 8: an anonymous client's ~800 KB of headers, a request after another,
    cost the store no more than a capped body each."""
    port = int(bodies_server.url.rsplit(":", 1)[1])
    ids = []
    for n in range(5):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.putrequest("POST", "/echo")
        for h in range(100):
            connection.putheader(f"X-Fill-{h}", chr(65 + n) * 8000)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", "2")
        connection.endheaders(b"{}")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        ids.append(response.getheader("x-flux-request-id"))
        connection.close()
    with psycopg.connect(bodies_server.db) as conn:
        sizes = conn.execute("SELECT pg_column_size(request), length(request::text) FROM "
                             "flux.trace_requests WHERE request_id = ANY(%s::uuid[])",
                             [ids]).fetchall()
        headers = conn.execute("SELECT request->'headers' FROM flux.trace_requests "
                               "WHERE request_id = %s", [ids[0]]).fetchone()[0]
    assert len(sizes) == 5
    assert all(text < 70_000 for _, text in sizes), sizes  # 64 KiB cap, not 800 KB
    assert "left out" in headers["x-flux-truncated"]


def test_routes_methods_and_content_types_get_clean_answers_and_one_record_each(
        bodies_server: Served) -> None:
    """Issue 19: every new path — typed path parameters, methods, form and other bodies —
    keeps the guarantees: never a 5xx, a 4xx in one sentence, one record per answer."""
    port = int(bodies_server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    ids: list[str] = []
    segments = st.one_of(st.integers(0, 10**30).map(str), st.text(max_size=12),
                         st.sampled_from(["-1", "1.5", "0x1", "%00", "%ff", "1/extra", ""]))

    @given(method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"]),
           segment=segments, body=hostile | st.binary(max_size=32),
           kind=st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                                 "text/xml", "application/octet-stream", None]))
    @example(method="GET", segment="\n", body=b"", kind=None)  # CI: aiohttp's own 404
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def send(method: str, segment: str, body: bytes, kind: str | None) -> None:
        path = "/items/" + quote(segment, safe="/%")
        headers = {"Content-Type": kind} if kind else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        rid = response.getheader("x-flux-request-id")
        assert rid and response.status in (200, 201, 400, 404, 405), (response.status, data)
        if response.status == 405:
            assert response.getheader("Allow") == "GET, PUT, HEAD"
        if response.status >= 400 and method != "HEAD":
            answer = json.loads(data)
            assert answer["request_id"] == rid and "\n" not in answer["error"]["message"]
        ids.append(rid)

    send()
    with psycopg.connect(bodies_server.db) as conn:
        stored = conn.execute("SELECT count(*) FROM flux.trace_requests WHERE request_id = "
                              "ANY(%s::uuid[])", [ids]).fetchone()[0]
    assert stored == len(ids) > 0
