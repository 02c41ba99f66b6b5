"""The admin API against its own description: every route described and every description
routed; schemathesis, fed the description a real ``flux serve`` publishes, finds no 5xx and
no answer that breaks it — with generated input and with real ids."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flux.server._admin import ROUTES, WEB_ROUTES, admin_app
from flux.server._openapi import description
from tests.access.conftest import Served

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def test_every_route_is_described_and_every_description_is_routed() -> None:
    # "*": the two catch-alls that bring what no route takes to the guard (a 404 or 405)
    routed = {(route.method, route.resource.canonical)
              for route in admin_app().router.routes() if route.method not in ("HEAD", "*")}
    described = {(method.upper(), path) for path, operations in description()["paths"].items()
                  for method in operations}
    web = {(m, p) for m, p in routed if p == "/" or p.startswith("/ui")}  # the web view
    assert len(web) == len(WEB_ROUTES)  # its pages are HTML, not the API
    assert routed - web == described == {(m, p) for m, p, _ in ROUTES}
    operation_ids = [op["operationId"] for ops in description()["paths"].values()
                     for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))


def traffic(served: Served) -> tuple[str, str]:
    ids = []
    for expected in (200, 500):  # a signup, and the same email again
        status, _, headers = served.call("/signup", method="POST", body={"email": "s@x.test"},
                                         headers={"x-tenant-id": "acme"})
        assert status == expected
        ids.append(headers["x-flux-request-id"])
    return ids[0], ids[1]


def test_schemathesis_finds_no_server_error(served: Served) -> None:
    ok, failed = traffic(served)
    schema = schemathesis.openapi.from_url(f"{served.url}/_flux/openapi.json")
    base = f"{served.url}/_flux"
    # (X-Flux-Client: what a state change needs besides the token; harmless on reads)
    auth = {"Authorization": f"Bearer {served.token}", "X-Flux-Client": "schemathesis"}

    # Real ids and tables first: the 200 answers must match their schemas too.
    real = [("/executions", "GET", {}, {"limit": "5"}),
            ("/executions", "GET", {}, {"status": "5xx", "since": "1h"}),
            ("/executions/{id}", "GET", {"id": failed[:18]}, {}),
            ("/executions/{id}/why", "GET", {"id": failed[:18]}, {"spans": "true"}),
            ("/executions/{id}/why/ai", "POST", {"id": failed[:18]},
             {"send": "false", "show_prompt": "true"}),
            ("/executions/{id}/trace", "GET", {"id": ok}, {}),
            ("/executions/{id}/resume", "POST", {"id": failed[:18]}, {"dry_run": "true"}),
            ("/state/{table}/history", "GET", {"table": "users"}, {"id": "1"}),
            ("/state/{table}/blame", "GET", {"table": "public.users"}, {"id": "1"}),
            ("/state/{table}/blame", "GET", {"table": "users"}, {"limit": "3"}),
            ("/diff", "GET", {}, {"a": ok, "b": failed[:18]}),
            ("/source", "GET", {}, {"file": "functions/signup.py", "line": "3"}),
            ("/openapi.json", "GET", {}, {})]
    for path, method, parameters, query in real:
        case = schema[path][method].Case(path_parameters=parameters, query=query)
        response = case.call_and_validate(base_url=base, headers=auth, checks=CHECKS)
        assert response.status_code == 200, (path, response.text)

    @given(case=schema.as_strategy())
    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def positive(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base, headers=auth, checks=CHECKS)

    @given(case=schema.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def negative(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base, headers=auth,
                               checks=[not_a_server_error, content_type_conformance])

    positive()
    negative()
