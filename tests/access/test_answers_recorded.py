"""Every answer has its record, and bad input is one sentence: a body that does not decode
as its Content-Encoding says, a tenant header that is not UTF-8 (or holds a C1 control),
and times out of range given to the admin API and to ``flux ls`` (issue 20, items 10 and
13's tenant check)."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import psycopg

from tests.access.conftest import Served
from tests.fixtures.projects import run_flux


def raw_post(served: Served, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
             ) -> tuple[int, dict[str, object], str]:
    port = int(served.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("POST", path)
    for name, value in [*headers, (b"Content-Length", str(len(body)).encode())]:
        connection.putheader(name, value)  # bytes: sent as they are, invalid UTF-8 and all
    connection.endheaders(body)
    response = connection.getresponse()
    raw = response.read()
    try:
        answer = json.loads(raw)
    except ValueError:
        raise AssertionError((response.status, raw[:300])) from None
    connection.close()
    return response.status, answer, response.getheader("x-flux-request-id") or ""


def test_undecodable_bodies_and_tenants_are_recorded_400s(served: Served) -> None:
    cases = [
        ([(b"Content-Type", b"application/json"), (b"Content-Encoding", b"gzip")],
         "invalid_encoding"),
        ([(b"Content-Type", b"application/json"), (b"x-tenant-id", b"acme\xff\xfe")],
         "invalid_tenant"),
        ([(b"Content-Type", b"application/json"), (b"x-tenant-id", "acme\x9b".encode())],
         "invalid_tenant"),
    ]
    ids = []
    for headers, code in cases:
        status, answer, rid = raw_post(served, "/signup", b'{"email": "x@y.test"}', headers)
        assert (status, answer["error"]["code"]) == (400, code), answer  # type: ignore[index]
        ids.append(rid)
    with psycopg.connect(served.db) as conn:
        stored = conn.execute("SELECT http_status, error->>'code', tenant FROM "
                              "flux.trace_requests WHERE request_id = ANY(%s::uuid[])",
                              [ids]).fetchall()
    assert sorted(stored) == sorted((400, code, None) for _, code in cases)
    assert served.process.proc.poll() is None


def test_times_out_of_range_are_one_sentence(served: Served) -> None:
    for query in ("since=9999999999h", "since=99:99"):
        status, body, _ = served.call(f"/_flux/executions?{urllib.parse.quote(query, '=')}",
                                      token=served.token)
        assert status == 400, (query, body)
        assert "\n" not in body["error"]["message"]
    # The first day of year 1 is a time (in UTC it is in range; west of UTC it is not):
    # either way an answer, never a 500.
    for query in ("since=0001-01-01", "window=0001-01-01..now"):
        status, body, _ = served.call(f"/_flux/executions?{urllib.parse.quote(query, '=')}",
                                      token=served.token)
        assert (status == 200 and isinstance(body["executions"], list)) or \
            (status == 400 and "\n" not in body["error"]["message"]), (query, body)
    env = {"DATABASE_URL": served.db}
    result = run_flux(["ls", "--since", "9999999999h"], served.root, env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "out of the range" in result.stderr
    for args in (["ls", "--since", "0001-01-01"], ["ls", "--window", "0001-01-01..now"]):
        result = run_flux(args, served.root, env=env)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 0 or "out of the range" in result.stderr, result.stderr
