"""Story: a handler charges through plain ``httpx`` — not ctx.http — with the provider's base
URL and its API key both read from ``ctx.secrets``. The call is captured and keyed in the one
canonical form ctx.http's calls have (issue 17's call key through issue 18's capture): the
tape key holds fingerprints, never a value, and ``flux replay --expect same`` matches the
call to its tape and answers it from there — the provider receives nothing more — on a
machine with the production secrets and on one without them (stand-ins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.shop import serve_app
from tests.stories._world import Provider, dump, flux, init_project

PAYMENTS_KEY = "sk_live_Httpx5Tq8Mw2Zr"
TENANT = "/t_Vb3Ns7Kd"  # the base URL names the account's prefix: a secret of its own

HANDLER = '''"""Charge a basket through the provider's HTTP API, with httpx."""

import httpx
from flux import function


@function
async def charge_basket(ctx, input):
    base = ctx.secrets.get("PAYMENTS_URL")
    key = ctx.secrets.get("PAYMENTS_KEY")
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(
            base + "/v1/charges", json={"amount": input["amount"], "basket": input["basket"]},
            headers={"Authorization": f"Bearer {key}"})
    response.raise_for_status()
    charge = response.json()
    return {"charge": charge["id"], "amount": charge["amount"]}
'''


async def test_httpx_behind_a_secret_url_and_key_replays_from_its_tape(
    db: str, provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = provider.url + TENANT
    monkeypatch.setenv("PAYMENTS_URL", base)
    monkeypatch.setenv("PAYMENTS_KEY", PAYMENTS_KEY)
    project = init_project(tmp_path, "baskets")
    (project / "functions" / "charge_basket.py").write_text(HANDLER)

    async with serve_app(project, db, provider) as app:  # type: ignore[arg-type]
        status, body, rid = await app.post("charge_basket", {"amount": 1800, "basket": "b-7"})
        record = app.record(rid)
    assert status == 200, record["error"]
    assert body == {"charge": "ch_1", "amount": 1800}
    assert provider.charges == 1 and len(provider.requests) == 1
    [sent] = provider.requests
    assert sent["path"] == TENANT + "/v1/charges"
    assert sent["headers"]["Authorization"] == f"Bearer {PAYMENTS_KEY}"
    assert sent["headers"]["traceparent"].startswith("00-")

    # Recorded like a ctx.http call: a span at the user's line, one tape entry whose key is
    # the canonical form — the base URL's fingerprint, the key's fingerprint, no value.
    [span] = [s for s in record["spans"] if s["kind"] == "http"]
    assert span["file"] == "functions/charge_basket.py"
    assert span["line"] == HANDLER.splitlines().index("        response = await client.post(") + 1
    [entry] = [e for e in record["tape"] if e["kind"] == "http"]
    key = entry["key"]
    assert key.startswith("POST [redacted hmac-sha256:") and key.count("hmac-sha256:") == 2
    assert "/v1/charges +secrets(hmac-sha256:" in key
    for value in (base, provider.url, TENANT.strip("/"), PAYMENTS_KEY):
        assert value not in key and value not in span["name"]
    assert [s for s in record["spans"] if s["kind"] == "unrecorded"] == []

    printed = []
    code, replay, out = flux(project, db, "replay", rid[:18], "--expect", "same")
    printed.append(out)
    assert code == 0 and replay["passed"], out
    assert replay["divergence"] is None and replay["beyond_tape"] == []
    assert replay["secrets_stood_in"] == []
    assert len(provider.requests) == 1 and provider.charges == 1  # nothing sent

    # A laptop without production's secrets: stand-ins keyed as the recorded fingerprints.
    monkeypatch.delenv("PAYMENTS_URL")
    monkeypatch.delenv("PAYMENTS_KEY")
    code, replay, out = flux(project, db, "replay", rid[:18], "--expect", "same")
    printed.append(out)
    assert code == 0 and replay["passed"], out
    assert replay["divergence"] is None and replay["beyond_tape"] == []
    assert sorted(replay["secrets_stood_in"]) == ["PAYMENTS_KEY", "PAYMENTS_URL"]
    assert len(provider.requests) == 1 and provider.charges == 1  # nothing sent

    stored = dump(db)
    for secret in (base, PAYMENTS_KEY, TENANT.strip("/")):
        assert all(secret not in text for text in printed)
        assert secret not in stored
