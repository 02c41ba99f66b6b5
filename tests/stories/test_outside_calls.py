"""Story: handlers reach a provider through real SDKs and HTTP clients — not ctx.http — and
Flux still records every call, replays and resumes without sending it again, and keeps the
API key out of the store.

Each handler charges once through its client against a loopback stub that counts what it
receives; with ``{"fail": true}`` it breaks after the charge (until ``fixed`` is set in
flux.toml, as a deployed fix would).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.projects import run_flux
from tests.fixtures.shop import Shop, serve_app
from tests.fixtures.stub import Stub

SECRET = "sk_live_Intercept7Hq2Lw9Rt4"  # must never reach the store
ENV = "INTERCEPT_PAY_KEY"

TAIL = ('''if input.get("fail") and not ctx.config.get("fixed"):
                raise RuntimeError("bug after the charge")''')

HANDLERS: dict[str, str] = {
    "pay_httpx": '''
        import httpx
        from flux import function

        @function
        def pay_httpx(ctx, input):
            key = ctx.secrets.get("PAY_KEY")
            with httpx.Client() as client:
                r = client.post(ctx.config["stub"] + "/v1/charges",  # the call
                                data={"amount": 900},
                                headers={"Authorization": f"Bearer {key}"})
            r.elapsed  # httpx raises here if it never saw the response closed
            # TAIL
            return {"charge": r.json()["id"]}
    ''',
    "pay_httpx_async": '''
        import httpx
        from flux import function

        @function
        async def pay_httpx_async(ctx, input):
            key = ctx.secrets.get("PAY_KEY")
            async with httpx.AsyncClient() as client:
                r = await client.post(ctx.config["stub"] + "/v1/charges",  # the call
                                      json={"amount": 900},
                                      headers={"Authorization": f"Bearer {key}"})
            r.elapsed  # live and served from the tape alike
            # TAIL
            return {"charge": r.json()["id"]}
    ''',
    "pay_requests": '''
        import requests
        from flux import function

        @function
        def pay_requests(ctx, input):
            key = ctx.secrets.get("PAY_KEY")
            r = requests.post(ctx.config["stub"] + "/v1/charges", data={"amount": 900},  # the call
                              headers={"Authorization": f"Bearer {key}"}, timeout=5)
            # TAIL
            return {"charge": r.json()["id"]}
    ''',
    "pay_requests_blocking": '''
        import requests
        from flux import function

        @function
        async def pay_requests_blocking(ctx, input):  # a blocking SDK call in an async handler
            key = ctx.secrets.get("PAY_KEY")
            r = requests.post(ctx.config["stub"] + "/v1/charges", data={"amount": 900},  # the call
                              headers={"Authorization": f"Bearer {key}"}, timeout=5)
            # TAIL
            return {"charge": r.json()["id"]}
    ''',
    "pay_urllib": '''
        import json
        import urllib.request
        from flux import function

        @function
        def pay_urllib(ctx, input):
            key = ctx.secrets.get("PAY_KEY")
            req = urllib.request.Request(ctx.config["stub"] + "/v1/charges", data=b"amount=900",
                                         headers={"Authorization": f"Bearer {key}"},
                                         method="POST")
            with urllib.request.urlopen(req, timeout=5) as r:  # the call
                body = json.loads(r.read())
            # TAIL
            return {"charge": body["id"]}
    ''',
    "pay_aiohttp": '''
        import aiohttp
        from flux import function

        @function
        async def pay_aiohttp(ctx, input):
            key = ctx.secrets.get("PAY_KEY")
            async with aiohttp.ClientSession() as session:
                async with session.post(ctx.config["stub"] + "/v1/charges",  # the call
                                        json={"amount": 900},
                                        headers={"Authorization": f"Bearer {key}"}) as r:
                    body = await r.json()
            # TAIL
            return {"charge": body["id"]}
    ''',
    "pay_stripe": '''
        import stripe
        from flux import function

        @function
        def pay_stripe(ctx, input):
            stripe.api_key = ctx.secrets.get("PAY_KEY")
            stripe.api_base = ctx.config["stub"]
            charge = stripe.Charge.create(amount=900, currency="usd", source="tok_visa")  # the call
            # TAIL
            return {"charge": charge.id}
    ''',
    "pay_openai": '''
        import openai
        from flux import function

        @function
        async def pay_openai(ctx, input):
            client = openai.AsyncOpenAI(api_key=ctx.secrets.get("PAY_KEY"),
                                        base_url=ctx.config["stub"] + "/v1", max_retries=0)
            answer = await client.chat.completions.create(  # the call
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            # TAIL
            return {"charge": answer.choices[0].message.content}
    ''',
    "pay_boto3": '''
        import boto3
        from flux import function

        @function
        def pay_boto3(ctx, input):
            s3 = boto3.client("s3", endpoint_url=ctx.config["stub"], region_name="us-east-1",
                              aws_access_key_id="AKIDSTUBEXAMPLE",
                              aws_secret_access_key=ctx.secrets.get("PAY_KEY"))
            put = s3.put_object(Bucket="receipts", Key="r-1", Body=b"paid 900")  # the call
            # TAIL
            return {"charge": put["ETag"]}
    ''',
}


def _write_project(root: Path, stub: Stub) -> None:
    (root / "flux.toml").write_text(textwrap.dedent(f'''
        name = "outside"
        capture = "trigger"

        [secrets]
        PAY_KEY = "{ENV}"

        [app]
        stub = "{stub.url}"
    '''))
    functions = root / "functions"
    functions.mkdir()
    for name, source in HANDLERS.items():
        (functions / f"{name}.py").write_text(textwrap.dedent(source.replace("# TAIL", TAIL)))


def _call_line(root: Path, name: str) -> int:
    lines = (root / "functions" / f"{name}.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if "# the call" in line)


@pytest.fixture
async def app(db: str, stub: Stub, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Shop]:
    monkeypatch.setenv(ENV, SECRET)
    root = tmp_path / "outside"
    root.mkdir()
    _write_project(root, stub)
    async with serve_app(root, db, None) as served:  # type: ignore[arg-type]
        yield served


def _cli(app: Shop, *args: str) -> tuple[int, Any, str]:
    result = run_flux([*args, "--json"], app.root, env={"DATABASE_URL": app.db, ENV: SECRET})
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None, \
        result.stderr


def _http_spans(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in record["spans"] if s["kind"] == "http"]


@pytest.mark.parametrize("name", sorted(HANDLERS))
async def test_library_call_is_recorded_replayed_and_resumed_once(
        app: Shop, stub: Stub, name: str) -> None:
    status, _, rid = await app.post(name, {})
    assert status == 200, json.dumps(app.record(rid)["error"])[:3000]
    assert stub.count == 1
    [received] = stub.received
    assert received.headers.get("traceparent", "").startswith("00-")
    keys = [v for k, v in received.headers.items() if k.lower() == "idempotency-key"]
    assert len(keys) <= 1  # the SDK's own key, or ours; never two

    record = app.record(rid)
    [span] = _http_spans(record)
    assert (span["file"], span["line"]) == (f"functions/{name}.py", _call_line(app.root, name))
    assert [e["kind"] for e in record["tape"] if e["kind"] == "http"] == ["http"]
    # The SDKs' incidentals (platform's uname, config reads) do not make it incomplete.
    assert [s["name"] for s in record["spans"] if s["kind"] == "unrecorded"] == []

    code, replayed, err = _cli(app, "replay", rid[:18], "--expect", "same")
    assert code == 0 and replayed["passed"], (err, replayed)
    assert stub.count == 1  # nothing sent

    status, _, bad = await app.post(name, {"fail": True})
    assert status == 500 and stub.count == 2

    code, incident, err = _cli(app, "incident", "replay", "--ids", bad[:18])
    assert incident is not None and incident["replayed"] == 1, err
    assert stub.count == 2  # never sent

    toml = app.root / "flux.toml"
    toml.write_text(toml.read_text().replace("[app]\n", "[app]\nfixed = true\n"))
    code, resumed, err = _cli(app, "resume", bad[:18])
    assert code == 0 and resumed["status"] == "ok", (err, resumed)
    assert stub.count == 2  # exactly one call for the failed execution, in total

    with psycopg.connect(app.db) as conn:
        stored = conn.execute("SELECT string_agg(t::text, '') FROM flux.trace_requests t"
                              ).fetchone()
    assert stored is not None and SECRET not in stored[0]
    if name != "pay_boto3":  # S3 signs with the key; the others send it as a bearer token
        assert any(SECRET in v for r in stub.received for k, v in r.headers.items()
                   if k.lower() == "authorization")
