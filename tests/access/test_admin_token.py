"""The admin API's door: a token everywhere except ``flux dev`` on loopback, decided by how
the server was started; the token never shows in logs, records or answers."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.runtime._access import AdminAccess, is_loopback
from tests.access.conftest import Served, serve_project
from tests.fixtures.processes import FluxProcess
from tests.fixtures.shop import copy_project

NEEDS_TOKEN = "the admin API needs the header Authorization: Bearer <token>"


def test_no_token_and_a_wrong_token_are_401_with_one_sentence(served: Served) -> None:
    status, body, headers = served.call("/_flux/executions")
    assert status == 401 and body["error"] == {"code": "unauthorized", "message": NEEDS_TOKEN,
                                               "hint": None}
    assert headers["WWW-Authenticate"].startswith("Bearer") and headers["x-flux-request-id"]
    for wrong in ("wrong", served.token[:-1], served.token + "x", served.token.upper()):
        status, body, _ = served.call("/_flux/executions", token=wrong)
        assert status == 401 and body["error"]["message"] == "the admin token is wrong"
    status, body, _ = served.call("/_flux/executions", headers={
        "Authorization": f"Basic {served.token}"})
    assert status == 401 and body["error"]["message"] == NEEDS_TOKEN
    # unknown endpoints and other methods are behind the same door
    assert served.call("/_flux/nothing-here")[0] == 401
    assert served.call("/_flux/executions", method="DELETE")[0] == 401

    status, body, _ = served.call("/_flux/executions", token=served.token)
    assert status == 200 and body == {"executions": []}
    status, body, _ = served.call("/_flux/nothing-here", token=served.token)
    assert status == 404 and "GET /_flux/openapi.json" in body["error"]["hint"]
    status, body, headers = served.call("/_flux/executions", token=served.token,
                                        method="DELETE")
    assert status == 405 and headers["Allow"] == "GET"
    assert body["error"]["code"] == "method_not_allowed" and headers["x-flux-request-id"]
    # The prefix itself, and a path below a routed one (the guard's catch-alls, not aiohttp)
    for path in ("/_flux", "/_flux/executions/x/nothing"):
        status, body, headers = served.call(path, token=served.token)
        assert status == 404 and body["error"]["message"] == f"no admin endpoint {path}"
        assert body["request_id"] == headers["x-flux-request-id"]
    assert served.call("/_flux", method="POST")[0] == 401  # still behind the door
    # The description is public: it holds nothing a caller could not read in the source.
    status, body, _ = served.call("/_flux/openapi.json")
    assert status == 200 and body["openapi"] == "3.1.0"


def test_the_token_is_never_logged_recorded_or_echoed(served: Served) -> None:
    token = served.token
    served.call("/_flux/executions", token=token)
    served.call("/_flux/executions", token=token[:-1])
    # A function request carrying the token (a client that sends it everywhere).
    status, body, _ = served.call("/signup", method="POST", body={"email": "t@example.com"},
                                  headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and token not in str(body)
    served.process.signal(signal.SIGTERM)
    served.process.wait(30)
    assert token not in served.process.output() and token[:40] not in served.process.output()
    with psycopg.connect(served.db) as conn:
        stored = conn.execute("SELECT string_agg(t::text, '') FROM flux.trace_requests t"
                              ).fetchone()[0]
    assert stored and token[:40] not in stored


def test_serve_without_a_token_refuses_every_admin_call(db: str, provider: Any,
                                                        tmp_path: Path,
                                                        flux_process: type[FluxProcess]
                                                        ) -> None:
    root = copy_project(tmp_path / "shop", provider.url)
    server = serve_project(root, db, flux_process, token=None)
    server.process.wait_for("admin API /_flux/ closed")
    for token in (None, "anything"):
        status, body, _ = server.call("/_flux/executions", token=token)
        assert status == 403  # even from loopback: the server was started as `flux serve`
        assert body["error"]["code"] == "admin_closed"
        assert body["error"]["message"].count(".") <= 1 and "FLUX_ADMIN_TOKEN" in \
            body["error"]["message"]


def test_dev_on_loopback_is_open_and_dev_on_all_addresses_is_not(
        db: str, provider: Any, tmp_path: Path, flux_process: type[FluxProcess]) -> None:
    root = copy_project(tmp_path / "shop", provider.url)
    dev = serve_project(root, db, flux_process, token=None, args=("dev",))
    dev.process.wait_for("admin API /_flux/ open to this machine")
    status, body, _ = dev.call("/_flux/executions")
    assert status == 200 and body == {"executions": []}
    dev.process.signal(signal.SIGINT)
    assert dev.process.wait(30) == 0

    exposed = serve_project(root, db, flux_process, token="t0ken-for-dev", args=("dev",),
                         host="0.0.0.0")
    exposed.process.wait_for("needs Authorization")
    assert exposed.call("/_flux/executions")[0] == 401
    assert exposed.call("/_flux/executions", token="t0ken-for-dev")[0] == 200


@pytest.mark.parametrize(("dev", "host", "token", "header", "expected"), [
    (True, "127.0.0.1", None, None, None),
    (True, "::1", None, None, None),
    (True, "localhost", None, "Bearer whatever", None),
    (True, "0.0.0.0", None, None, 403),
    (True, "0.0.0.0", "s3cret", "Bearer s3cret", None),
    (True, "192.168.1.5", "s3cret", None, 401),
    (False, "127.0.0.1", None, None, 403),
    (False, "127.0.0.1", "s3cret", None, 401),
    (False, "127.0.0.1", "s3cret", "Bearer s3cre", 401),
    (False, "127.0.0.1", "s3cret", "bearer  s3cret ", None),
    (False, "0.0.0.0", "s3cret", "Bearer s3cret", None),
    (False, "0.0.0.0", "", "Bearer ", 403),  # an empty variable is no token
])
def test_access_is_decided_by_how_the_server_started(dev: bool, host: str, token: str | None,
                                                     header: str | None,
                                                     expected: int | None) -> None:
    environ = {} if token is None else {"FLUX_ADMIN_TOKEN": token}
    access = AdminAccess.for_server(dev=dev, host=host, environ=environ)
    refusal = access.refusal(header)
    assert (refusal.status if refusal else None) == expected
    assert token is None or token == "" or token not in repr(access)


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "", "::", "10.0.0.1", "example.com"]))
