"""Story: a GitHub-style webhook checks ``X-Hub-Signature-256`` — an HMAC-SHA256, keyed with
a secret from ``ctx.secrets``, over the raw body exactly as it came (pretty-printed JSON,
as a sender may send) — then looks the sender up at the provider and keeps the delivery.
Recorded, it replays with ``--expect same``: the handler gets the same bytes, the secret
with the recorded fingerprint, and the signature checks again; a forged delivery replays
as the same 401. A delivery whose body carried a redacted field cannot give back its bytes:
the replay says so, and does not pass as the same. The provider is never called again and
the secret is never stored."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.shop import serve_app
from tests.stories._world import Provider, dump, flux, init_project

WEBHOOK_SECRET = "whsec_Gh7Kq2Vx9Lm4Tz"

HANDLER = '''"""GitHub calls this on every push: verify the delivery, then keep it."""

import hashlib
import hmac

from flux import Response, function


@function(route="/hooks/github", methods=["POST"])
async def github_hook(ctx, input):
    secret = ctx.secrets.get("GITHUB_WEBHOOK_SECRET")
    expected = "sha256=" + hmac.new(secret.encode(), ctx.request.body,
                                    hashlib.sha256).hexdigest()
    given = ctx.request.headers.get("X-Hub-Signature-256", "")
    if not hmac.compare_digest(expected, given):
        return Response({"error": "bad signature"}, status=401)
    sender = await ctx.http.get(f"{ctx.secrets.get('CRM_URL')}/v1/customers/"
                                f"{input['sender']['login']}")
    row = await ctx.db.fetchone(
        "INSERT INTO deliveries (delivery, event, sender_email) VALUES (%s, %s, %s) "
        "RETURNING id", [ctx.request.headers["X-GitHub-Delivery"],
                         ctx.request.headers["X-GitHub-Event"], sender.json()["email"]])
    return Response({"kept": row["id"]}, status=202)
'''

SCHEMA = """CREATE TABLE deliveries (
    id           bigserial PRIMARY KEY,
    delivery     text NOT NULL UNIQUE,
    event        text NOT NULL,
    sender_email text NOT NULL
);
"""


def signed(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery(n: int, payload: dict[str, object], signature: str | None = None
             ) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload, indent=2).encode()  # its bytes are not any re-encoding's
    return body, {"Content-Type": "application/json", "X-GitHub-Event": "push",
                  "X-GitHub-Delivery": f"d-{n}",
                  "X-Hub-Signature-256": signature or signed(body)}


async def test_a_signed_webhook_replays_with_its_signature_checking_again(
        db: str, provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("CRM_URL", provider.url + "/crm")
    project = init_project(tmp_path, "hooks")
    (project / "schema" / "002_deliveries.sql").write_text(SCHEMA)
    (project / "functions" / "github_hook.py").write_text(HANDLER)
    push = {"ref": "refs/heads/main", "sender": {"login": "ada"},
            "head_commit": {"message": "Fix the café menu ☕"}}

    async with serve_app(project, db, provider) as app:  # type: ignore[arg-type]
        async def send(body: bytes, headers: dict[str, str]) -> tuple[int, dict, str]:
            async with app.client.post(f"{app.url}/hooks/github", data=body,
                                       headers=headers) as response:
                return (response.status, await response.json(),
                        response.headers["x-flux-request-id"])

        status, answer, good = await send(*delivery(1, push))
        assert (status, answer) == (202, {"kept": 1})
        body, headers = delivery(2, push, signature=signed(b"something else"))
        status, answer, forged = await send(body, headers)
        assert (status, answer) == (401, {"error": "bad signature"})
        # A body with a field Flux redacts: its bytes are not kept in the record.
        status, _, tokened = await send(*delivery(3, {**push, "token": "ghs_abcdef123456"}))
        assert status == 202
        record = app.record(good)
    assert record["request"]["raw"] == {"text": delivery(1, push)[0].decode()}
    assert record["request"]["path"] == "/hooks/github"
    assert record["response"] == {"status": 202, "body": {"kept": 1}}
    sent = len(provider.requests)
    assert sent == 2  # the forged one never reached the provider

    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT delivery, sender_email FROM deliveries ORDER BY id"
                            ).fetchall()
    assert rows == [("d-1", "ada@example.com"), ("d-3", "ada@example.com")]
    printed: list[str] = []
    for rid, status in ((good, 202), (forged, 401)):
        code, replay, out = flux(project, db, "replay", rid[:18], "--expect", "same")
        printed.append(out)
        assert code == 0 and replay["passed"] and replay["divergence"] is None, replay
        assert replay["http_status"] == {"original": status, "replayed": status}
        assert replay["request_body"] == {"exact": True, "read": True, "reason": None}
        assert replay["secrets_stood_in"] == []
    # Without the secret on this machine the stand-in cannot sign: not the same, and why.
    code, replay, out = flux(project, db, "replay", good[:18], "--expect", "same",
                             env={"GITHUB_WEBHOOK_SECRET": "not-the-production-one"})
    printed.append(out)
    assert code == 1 and replay["secrets_stood_in"] == ["GITHUB_WEBHOOK_SECRET"]
    assert replay["replayed"]["output"] == {"error": "bad signature"}
    # The redacted body: the replay says its bytes were not kept, and it is not the same.
    code, replay, out = flux(project, db, "replay", tokened[:18], "--expect", "same")
    printed.append(out)
    assert code == 1 and not replay["passed"]
    assert replay["request_body"]["exact"] is False and replay["request_body"]["read"]
    assert "redacted field(s) token" in replay["request_body"]["reason"]
    assert len(provider.requests) == sent  # replays sent nothing

    everything = "\n".join(printed) + dump(db)
    assert WEBHOOK_SECRET not in everything and "ghs_abcdef123456" not in everything
