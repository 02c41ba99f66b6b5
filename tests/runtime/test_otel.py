"""OpenTelemetry: a request joins its caller's trace, ``ctx.http`` passes the trace on, and
every execution's spans reach an OTLP/HTTP receiver (a real one, on loopback, decoding the
protobuf the SDK sends) with the right ids, parents, times and attributes."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus

from flux._errors import ConfigError
from flux._project import parse
from flux._tracecontext import span_id
from flux.replay._replay import replay
from flux.runtime._otel import endpoint_of, spans_of
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import REPO, SECRET, FakeProvider, Shop, copy_project, serve_app

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


class Receiver:
    """An OTLP/HTTP trace receiver: every span it was sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.batches = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1/traces"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest.FromString(body)
        self.batches += 1
        for resource_spans in message.resource_spans:
            resource = _attrs(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append({
                        "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex() or None, "kind": s.kind,
                        "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                        "attrs": _attrs(s.attributes), "status": s.status.code,
                        "status_message": s.status.message,
                        "events": [(e.name, _attrs(e.attributes)) for e in s.events],
                        "resource": resource, "scope": scope_spans.scope.name,
                    })
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def of(self, request_id: str) -> dict[str, dict[str, Any]]:
        """The spans of one execution, by their Flux span id (s1, s2, …)."""
        return {s["attrs"]["flux.span.id"]: s for s in self.spans
                if s["attrs"].get("flux.request_id") == request_id}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def with_otel(root: Path, endpoint: str, **extra: Any) -> None:
    lines = [f'endpoint = "{endpoint}"', "schedule_delay_ms = 50",
             *(f"{k} = {v!r}" for k, v in extra.items())]
    toml = root / "flux.toml"
    toml.write_text(toml.read_text() + "\n[otel]\n" + "\n".join(lines) + "\n")


@pytest.fixture
async def traced(db: str, provider: FakeProvider, receiver: Receiver, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Shop]:
    """The example shop, exporting its spans to ``receiver``."""
    monkeypatch.setenv("SHOP_PAYMENTS_API_KEY", SECRET)
    root = copy_project(tmp_path / "shop", provider.url)
    with_otel(root, receiver.url)
    async with serve_app(root, db, provider) as app:
        yield app


async def exported(shop: Shop) -> None:
    """Send what the batch processor holds, now."""
    assert shop.runtime.otel is not None
    assert await asyncio.to_thread(shop.runtime.otel.flush, 10_000)


async def signup(shop: Shop, email: str = "ada@example.com") -> int:
    status, body, _ = await shop.post("signup", {"email": email})
    assert status == 200, body
    return int(body["id"])


async def test_spans_arrive_in_the_callers_trace_with_their_tree(
        traced: Shop, receiver: Receiver) -> None:
    user_id = await signup(traced)
    before = time.time_ns()
    status, body, rid = await traced.post(
        "checkout", {"user_id": user_id, "amount_cents": 900},
        headers={"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"})
    after = time.time_ns()
    assert status == 200, body
    await exported(traced)
    record = traced.record(rid)
    assert record["request"]["trace"] == {"trace_id": CALLER_TRACE, "parent_span_id": CALLER_SPAN,
                                          "sampled": True, "tracestate": "congo=t61rcWkgMzE"}
    got = receiver.of(rid)
    assert set(got) == {s["id"] for s in record["spans"]}  # every recorded span, once
    assert {s["trace_id"] for s in got.values()} == {CALLER_TRACE}
    for local, s in got.items():
        assert s["span_id"] == span_id(rid, local)
    kinds = {s["id"]: s["kind"] for s in record["spans"]}
    gateway = next(got[i] for i, k in kinds.items() if k == "gateway")
    function = next(got[i] for i, k in kinds.items() if k == "function")
    assert gateway["parent"] == CALLER_SPAN and gateway["kind"] == PbSpan.SPAN_KIND_SERVER
    assert function["parent"] == gateway["span_id"]
    by_id = {s["span_id"]: s for s in got.values()}
    dbs = [got[i] for i, k in kinds.items() if k == "db"]
    assert len(dbs) == 4 and all(s["parent"] == function["span_id"] for s in dbs)
    http = next(got[i] for i, k in kinds.items() if k == "http")
    charge = by_id[http["parent"]]  # the handler's own span around the call
    assert charge["name"] == "payments.charge" and charge["parent"] == function["span_id"]
    # Real times: inside the request as the client saw it, children inside their parents.
    assert before <= gateway["start"] <= gateway["end"] <= after
    for s in got.values():
        if s["parent"] in by_id:
            parent = by_id[s["parent"]]
            assert parent["start"] <= s["start"] and s["end"] <= parent["end"] + 2_000
    # Attributes.
    assert gateway["resource"]["service.name"] == "shop"
    assert gateway["attrs"]["flux.function"] == "checkout"
    assert gateway["attrs"]["http.route"] == "/checkout"
    assert gateway["attrs"]["http.response.status_code"] == 200
    assert function["attrs"]["code.filepath"] == "functions/checkout.py"
    source = (traced.root / "functions/checkout.py").read_text().splitlines()
    line = function["attrs"]["code.lineno"]  # the decorated definition's first line
    assert source[line - 1] == "@function" and source[line].startswith("async def checkout(")
    insert = next(s for s in dbs if s["name"] == "db.insert(orders)")
    assert "INSERT INTO orders" in insert["attrs"]["db.statement"]
    assert insert["attrs"]["db.system"] == "postgresql"
    assert insert["attrs"]["db.sql.table"] == "orders"
    assert insert["attrs"]["db.operation"] == "INSERT"
    assert "ctx.db.fetchone(" in source[insert["attrs"]["code.lineno"] - 1]
    assert http["kind"] == PbSpan.SPAN_KIND_CLIENT
    assert http["attrs"]["http.request.method"] == "POST"
    assert http["attrs"]["url.full"] == f"{traced.provider.url}/v1/charges"
    assert http["attrs"]["http.response.status_code"] == 200
    assert all(s["status"] == PbStatus.STATUS_CODE_UNSET for s in got.values())
    (name, fields), = function["events"]  # ctx.log.info, on the span it was logged in
    assert name == "checkout done" and fields["log.level"] == "info"
    assert fields["charge_id"] == body["charge_id"]
    assert SECRET not in repr(receiver.spans)  # the secret is scrubbed before export too


async def test_http_call_sends_traceparent_naming_its_span(
        traced: Shop, receiver: Receiver) -> None:
    user_id = await signup(traced)
    _, _, rid = await traced.post("checkout", {"user_id": user_id, "amount_cents": 500},
                                  headers={"traceparent": TRACEPARENT})
    sent = [r for r in traced.provider.requests if r["path"] == "/v1/charges"][-1]
    version, trace_id, parent, flags = sent["headers"]["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", CALLER_TRACE, "01")
    await exported(traced)
    http = next(s for s in receiver.of(rid).values() if s["attrs"]["flux.span.kind"] == "http")
    assert parent == http["span_id"]
    # What was sent is on the record too, beside the Idempotency-Key.
    span = next(s for s in traced.record(rid)["spans"] if s["kind"] == "http")
    assert span["attrs"]["request"]["headers"]["traceparent"] == sent["headers"]["traceparent"]


@pytest.mark.parametrize("header", [
    f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01", "00-not-a-trace-01", f"ff-{CALLER_TRACE}"])
async def test_malformed_traceparent_starts_a_new_trace(
        traced: Shop, receiver: Receiver, header: str) -> None:
    user_id = await signup(traced)
    status, body, rid = await traced.post(
        "checkout", {"user_id": user_id, "amount_cents": 500}, headers={"traceparent": header})
    assert status == 200, body
    own = uuid.UUID(rid).hex
    assert traced.record(rid)["request"]["trace"] == {"trace_id": own, "sampled": True}
    sent = [r for r in traced.provider.requests if r["path"] == "/v1/charges"][-1]
    assert sent["headers"]["traceparent"].split("-")[1] == own
    await exported(traced)
    got = receiver.of(rid)
    assert {s["trace_id"] for s in got.values()} == {own}
    roots = [s for s in got.values() if s["parent"] is None]
    assert [r["attrs"]["flux.span.kind"] for r in roots] == ["gateway"]


async def test_without_traceparent_the_trace_id_is_the_request_id(
        traced: Shop, receiver: Receiver) -> None:
    status, _, rid = await traced.post("signup", {"email": "bo@example.com"})
    assert status == 200
    await exported(traced)
    got = receiver.of(rid)
    assert got and {s["trace_id"] for s in got.values()} == {uuid.UUID(rid).hex}


async def test_failed_execution_exports_error_status_and_exception(
        traced: Shop, receiver: Receiver) -> None:
    user_id = await signup(traced)
    traced.provider.mode = "rate_limit"
    status, _, rid = await traced.post("checkout", {"user_id": user_id, "amount_cents": 900},
                                       headers={"traceparent": TRACEPARENT})
    assert status == 502
    await exported(traced)
    got = receiver.of(rid).values()
    http = next(s for s in got if s["attrs"]["flux.span.kind"] == "http")
    assert http["status"] == PbStatus.STATUS_CODE_ERROR
    assert http["attrs"]["http.response.status_code"] == 429
    function = next(s for s in got if s["attrs"]["flux.span.kind"] == "function")
    assert function["status"] == PbStatus.STATUS_CODE_ERROR
    name, attrs = function["events"][-1]
    assert name == "exception" and attrs["exception.type"] == "FunctionError"
    assert "functions/checkout.py" in attrs["exception.stacktrace"]
    gateway = next(s for s in got if s["attrs"]["flux.span.kind"] == "gateway")
    assert gateway["attrs"]["http.response.status_code"] == 502


async def test_rejected_request_is_exported_in_the_callers_trace(
        traced: Shop, receiver: Receiver) -> None:
    status, _, rid = await traced.post("no_such_function", {},
                                       headers={"traceparent": TRACEPARENT})
    assert status == 404
    await exported(traced)
    (span,) = receiver.of(rid).values()
    assert (span["trace_id"], span["parent"]) == (CALLER_TRACE, CALLER_SPAN)
    assert span["status"] == PbStatus.STATUS_CODE_ERROR


async def test_unsampled_caller_is_not_exported_but_passed_on(
        traced: Shop, receiver: Receiver) -> None:
    user_id = await signup(traced)
    _, _, rid = await traced.post("checkout", {"user_id": user_id, "amount_cents": 500},
                                  headers={"traceparent": TRACEPARENT[:-2] + "00"})
    sent = [r for r in traced.provider.requests if r["path"] == "/v1/charges"][-1]
    assert sent["headers"]["traceparent"].endswith("-00")
    _, _, other = await traced.post("signup", {"email": "cy@example.com"})
    await exported(traced)
    assert receiver.of(other) and not receiver.of(rid)
    assert traced.record(rid)["status"] == "ok"  # recorded all the same


async def test_replay_of_a_traced_call_matches_its_tape(traced: Shop) -> None:
    user_id = await signup(traced)
    _, _, rid = await traced.post("checkout", {"user_id": user_id, "amount_cents": 700},
                                  headers={"traceparent": TRACEPARENT})
    charges = traced.provider.charges
    result = await replay(traced.runtime, traced.record(rid), expect_same=True)
    assert result["passed"] and result["divergence"] is None, result
    assert traced.provider.charges == charges  # answered from the tape, never sent


async def test_endpoint_down_costs_one_log_line_and_no_request(
        db: str, provider: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SHOP_PAYMENTS_API_KEY", SECRET)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = copy_project(tmp_path / "shop", provider.url)
    with_otel(root, f"http://127.0.0.1:{port}/v1/traces", timeout=0.5)
    caplog.set_level(logging.INFO)
    async with serve_app(root, db, provider) as shop:
        for email in ("a@example.com", "b@example.com", "c@example.com"):
            status, _, _ = await shop.post("signup", {"email": email})
            assert status == 200
            assert shop.runtime.otel is not None
            assert not await asyncio.to_thread(shop.runtime.otel.flush, 10_000)
    lines = [r for r in caplog.records if r.name.startswith("opentelemetry")
             or r.name == "flux.otel"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].name == "flux.otel" and str(port) in lines[0].getMessage()


def test_otel_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    toml = tmp_path / "flux.toml"
    toml.write_text('name = "demo"\n')
    assert endpoint_of(parse(tmp_path)) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert endpoint_of(parse(tmp_path)) == "http://collector:4318/v1/traces"
    toml.write_text('name = "demo"\n[otel]\nendpoint = "http://x:4318/v1/traces"\n')
    assert endpoint_of(parse(tmp_path)) == "http://x:4318/v1/traces"
    toml.write_text('name = "demo"\n[otel]\nendpoint = ""\n')  # off, whatever the env says
    assert endpoint_of(parse(tmp_path)) is None
    for bad in ('endpoint = "localhost:4318"', "schedule_delay_ms = 0", "timeout = -1",
                'headers = "x"'):
        toml.write_text(f'name = "demo"\n[otel]\n{bad}\n')
        with pytest.raises(ConfigError, match="otel"):
            parse(tmp_path)


def test_sdk_is_not_imported_without_otel(tmp_path: Path) -> None:
    (tmp_path / "flux.toml").write_text('name = "demo"\n')
    script = (
        "import sys, asyncio\n"
        "from flux._project import parse\n"
        "from flux.runtime._runtime import Runtime\n"
        "import flux.runtime._gateway, flux.runtime._executor\n"
        f"rt = Runtime(parse(__import__('pathlib').Path({str(tmp_path)!r})), 'dbname=none')\n"
        "async def main():\n"
        "    await rt.start(open_pool=False)\n"
        "    assert rt.otel is None\n"
        "    await rt.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


async def test_flux_trace_prints_the_trace_id(traced: Shop) -> None:
    _, _, rid = await traced.post("signup", {"email": "tr@example.com"},
                                  headers={"traceparent": TRACEPARENT})
    env = {"DATABASE_URL": traced.db}
    result = run_flux(["trace", rid[:18], "--json"], traced.root, env=env)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert (facts["trace_id"], facts["caller_span_id"]) == (CALLER_TRACE, CALLER_SPAN)
    text = run_flux(["trace", rid[:18]], traced.root, env=env).stdout
    assert f"Trace id: {CALLER_TRACE}" in text and CALLER_SPAN in text


async def test_flux_serve_sends_what_is_queued_when_it_stops(
        db: str, provider: FakeProvider, receiver: Receiver, tmp_path: Path,
        flux_process: Any) -> None:
    root = copy_project(tmp_path / "shop", provider.url)
    with_otel(root, receiver.url)
    toml = root / "flux.toml"  # nothing is sent on a schedule: only the stop can send it
    toml.write_text(toml.read_text().replace("schedule_delay_ms = 50",
                                             "schedule_delay_ms = 600000"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = flux_process(["serve", "--port", str(port), "--host", "127.0.0.1"], root,
                         env={"DATABASE_URL": db, "SHOP_PAYMENTS_API_KEY": SECRET})
    await asyncio.to_thread(serve.wait_for, "ready")
    async with aiohttp.ClientSession() as client, client.post(
            f"http://127.0.0.1:{port}/signup", json={"email": "s@example.com"},
            headers={"traceparent": TRACEPARENT}) as response:
        assert response.status == 200
        rid = response.headers["x-flux-request-id"]
    assert not receiver.of(rid)
    serve.signal(signal.SIGTERM)
    assert await asyncio.to_thread(serve.wait, 30) == 0
    got = receiver.of(rid)
    assert got and {s["trace_id"] for s in got.values()} == {CALLER_TRACE}
    assert "Traceback" not in serve.output()


def test_spans_of_a_stored_record_keep_its_times_and_tree() -> None:
    record = json.loads((REPO / "tests/tui/checkout_failed.json").read_text())["record"]
    rid = record["request_id"]
    spans = {d.attributes["flux.span.id"]: d for d in spans_of(record)}
    assert list(spans) == [s["id"] for s in record["spans"]]
    assert {d.trace_id for d in spans.values()} == {uuid.UUID(rid).hex}  # no caller: its own
    started = 1768485900 * 10**9  # 2026-01-15T14:05:00Z, to the nanosecond
    assert (spans["s3"].start_ns, spans["s3"].end_ns) == (started + 143_000,
                                                          started + 1_683_000)
    assert spans["s1"].parent_span_id is None and not spans["s1"].remote_parent
    for s in record["spans"]:
        if s["parent_id"]:
            assert spans[s["id"]].parent_span_id == spans[s["parent_id"]].span_id
    assert [k for k, d in spans.items() if d.error is not None] == ["s1", "s2", "s6"]
    assert spans["s6"].error == "answered 429" and spans["s6"].kind == "client"
    assert spans["s6"].attributes["http.response.status_code"] == 429
    assert spans["s2"].events[-1][0] == "exception"
