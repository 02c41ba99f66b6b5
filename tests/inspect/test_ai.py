"""`flux why ID --ai`: the record, redacted and of one tenant only, sent to an
OpenAI-compatible chat endpoint (a loopback stub, streaming and not), the answer under its
heading after the deterministic report; a model that hangs, fails or is not there leaves
the report intact with one sentence and exit code 0."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flux._errors import ConfigError
from flux._project import parse
from flux.inspect._ai import HEADING, Prompt, build_prompt, clean
from flux.runtime._access import AdminAccess
from tests.access.conftest import with_tenants
from tests.fixtures.chat_stub import ANSWER, ChatStub
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import SECRET, Shop, copy_project, serve_app

AI_KEY = "ai_key_Lm4Qr8sT2vW6"  # the model's own key: sent as its bearer token, nowhere else
LEAK_COMMENT = f"    # staging used the key {SECRET} (rotate it)\n"
# What the failing checkout carries that must never reach the model (the secret-dump
# test's values, and a card number the store redacts).
NEVER_SENT = [SECRET, AI_KEY, "tok_abcdef123456", "s3cr3t", "hunter2hunter2", "4242424242424242"]


def ai_section(base_url: str, **options: Any) -> str:
    lines = [f'base_url = "{base_url}"', 'model = "stub-coder"', 'api_key_secret = "AI_KEY"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n[ai]\n" + "\n".join(lines) + "\n"


def set_ai(root: Path, base_url: str, **options: Any) -> None:
    toml = root / "flux.toml"
    text = toml.read_text().split("\n[ai]\n")[0]
    toml.write_text(text + ai_section(base_url, **options))


def prepare(root: Path, base_url: str, **options: Any) -> Path:
    """The shop with [ai], and a key someone pasted in a comment next to the charge."""
    checkout = root / "functions" / "checkout.py"
    text = checkout.read_text()
    anchor = '    async with ctx.span("payments.charge"):\n'
    checkout.write_text(text.replace(anchor, LEAK_COMMENT + anchor))
    set_ai(root, base_url, **options)
    return root


@pytest.fixture
async def ai_shop(
    db: str, provider: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chat_stub: ChatStub
) -> AsyncIterator[Shop]:
    monkeypatch.setenv("SHOP_PAYMENTS_API_KEY", SECRET)
    monkeypatch.setenv("AI_KEY", AI_KEY)
    root = prepare(copy_project(tmp_path / "shop", provider.url), chat_stub.base_url)
    async with serve_app(root, db, provider) as app:
        yield app


async def failed_checkout(
    shop: Shop, headers: dict[str, str] | None = None, email: str = "ada@example.com"
) -> tuple[str, str]:
    """A good checkout, then one the provider rate-limits: (good id, failed id)."""
    status, user, _ = await shop.post(
        "signup", {"email": email, "password": "hunter2hunter2"}, headers=headers
    )
    assert status == 200, user
    _, _, good = await shop.post(
        "checkout", {"user_id": user["id"], "amount_cents": 900}, headers=headers
    )
    shop.provider.mode = "rate_limit"
    status, _, failed = await shop.post(
        "checkout",
        {"user_id": user["id"], "amount_cents": 900, "card_number": "4242424242424242"},
        headers={
            "Authorization": "Bearer tok_abcdef123456",
            "Cookie": "session=s3cr3t",
            **(headers or {}),
        },
    )
    assert status == 502
    shop.provider.mode = "ok"
    return good, failed


def why(shop: Shop, *args: str) -> Any:
    result = run_flux(["why", *args], shop.root, env={"DATABASE_URL": shop.db})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout) if "--json" in args else result.stdout


def failing_line(shop: Shop) -> str:
    return next(
        line
        for line in (shop.root / "functions" / "checkout.py").read_text().splitlines()
        if "ctx.http.post(" in line
    ).strip()


async def test_the_models_reading_streams_under_its_heading_after_the_report(
    ai_shop: Shop, chat_stub: ChatStub
) -> None:
    _, failed = await failed_checkout(ai_shop)
    text = why(ai_shop, failed[:18], "--ai")
    [request] = chat_stub.requests
    sent = chat_stub.sent()
    body = request["body"]
    assert body["model"] == "stub-coder" and body["stream"] is True
    assert request["headers"]["Authorization"] == f"Bearer {AI_KEY}"
    # The failing line, marked, and the root cause are in the request …
    [marked] = [
        line for line in body["messages"][1]["content"].splitlines() if line.startswith("»")
    ]
    assert marked.endswith(failing_line(ai_shop))
    assert "429" in sent and "rate_limit" in sent
    assert "orders" in sent  # the rolled-back insert
    assert "departure_from_last_success" in sent and "where the last success got 200" in sent
    # … no secret value is: not the key in the comment beside it, not the headers, not the
    # card number, not the model's own key.
    for value in NEVER_SENT:
        assert value not in sent, value
    assert "staging used the key [redacted hmac-sha256:" in sent
    # The deterministic report first, then the answer under its heading.
    assert (
        text.index("ROOT CAUSE")
        < text.index("SUGGESTION")
        < text.index(HEADING)
        < text.index(ANSWER)
    )
    assert "stub-coder at http://127.0.0.1:" in text


async def test_json_carries_the_answer_as_ai_beside_the_usual_keys(
    ai_shop: Shop, chat_stub: ChatStub
) -> None:
    set_ai(ai_shop.root, chat_stub.base_url, stream=False)
    _, failed = await failed_checkout(ai_shop)
    report = why(ai_shop, failed[:18], "--ai", "--json", "--show-prompt")
    assert chat_stub.requests[-1]["body"]["stream"] is False
    assert report["root_cause"]["class"] == "rate_limit"
    assert set(report) >= {
        "request_id",
        "function",
        "status",
        "root_cause",
        "location",
        "mutations",
        "similar",
        "suggestion",
        "ai",
    }
    ai = report["ai"]
    assert ai["answer"] == ANSWER and ai["error"] is None and ai["complete"] and ai["sent"]
    assert ai["model"] == "stub-coder"
    # --show-prompt shows exactly what was sent.
    assert ai["prompt"] == chat_stub.requests[-1]["body"]["messages"]
    assert ai["sent_chars"] == sum(len(m["content"]) for m in ai["prompt"])


async def test_a_model_that_hangs_fails_or_is_away_leaves_the_report_and_exit_0(
    ai_shop: Shop, chat_stub: ChatStub
) -> None:
    _, failed = await failed_checkout(ai_shop)
    plain = why(ai_shop, failed[:18])
    set_ai(ai_shop.root, chat_stub.base_url, timeout="1s")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    for mode, base_url, sentence in [
        ("hang", chat_stub.base_url, "did not answer within 1s"),
        ("error", chat_stub.base_url, "answered HTTP 500 (model crashed)"),
        ("answer", closed, "could not be reached"),
        ("partial", chat_stub.base_url, "stopped answering after 1s"),
    ]:
        chat_stub.mode = mode
        set_ai(ai_shop.root, base_url, timeout="1s")
        text = why(ai_shop, failed[:18], "--ai")
        # The deterministic report is whole: everything `flux why` alone prints is there.
        report_part = text[: text.index(HEADING)]
        assert [
            line
            for line in report_part.splitlines()
            if "ROOT CAUSE" in line or "SUGGESTION" in line
        ] == [line for line in plain.splitlines() if "ROOT CAUSE" in line or "SUGGESTION" in line]
        after = text[text.index(HEADING) :]
        assert sentence in after, (mode, after)
        assert sum(1 for line in after.splitlines() if "the AI model at" in line) == 1
        report = why(ai_shop, failed[:18], "--ai", "--json")
        assert report["root_cause"]["class"] == "rate_limit"
        assert sentence in report["ai"]["error"] and not report["ai"]["complete"]
        if mode == "partial":  # what arrived before the model stopped is kept
            assert report["ai"]["answer"] == "The provider rate-limited "
        else:
            assert report["ai"]["answer"] is None


async def test_show_prompt_alone_shows_what_would_be_sent_and_sends_nothing(
    ai_shop: Shop, chat_stub: ChatStub
) -> None:
    _, failed = await failed_checkout(ai_shop)
    text = why(ai_shop, failed[:18], "--show-prompt")
    assert chat_stub.requests == []
    assert "that --ai would send" in text and failing_line(ai_shop) in text
    assert SECRET not in text and HEADING not in text
    document = why(ai_shop, failed[:18], "--show-prompt", "--json")
    assert document["ai"]["sent"] is False and document["ai"]["answer"] is None
    assert chat_stub.requests == []


async def test_ai_off_or_its_key_unset_is_one_sentence(
    ai_shop: Shop, chat_stub: ChatStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, failed = await failed_checkout(ai_shop)
    monkeypatch.delenv("AI_KEY")
    result = run_flux(["why", failed[:18], "--ai"], ai_shop.root, env={"DATABASE_URL": ai_shop.db})
    assert result.returncode != 0 and "AI_KEY is not set" in result.stderr
    toml = ai_shop.root / "flux.toml"
    toml.write_text(toml.read_text().split("\n[ai]\n")[0])
    result = run_flux(["why", failed[:18], "--ai"], ai_shop.root, env={"DATABASE_URL": ai_shop.db})
    assert result.returncode != 0 and "the AI reading is off" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert chat_stub.requests == []


async def test_nothing_of_another_tenant_reaches_the_model(
    db: str, provider: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chat_stub: ChatStub
) -> None:
    monkeypatch.setenv("SHOP_PAYMENTS_API_KEY", SECRET)
    monkeypatch.setenv("AI_KEY", AI_KEY)
    root = with_tenants(prepare(copy_project(tmp_path / "shop", provider.url), chat_stub.base_url))
    async with serve_app(root, db, provider) as shop:
        globex = {"x-tenant-id": "globex"}
        _, globex_user, _ = await shop.post("signup", {"email": "g@globex.test"}, headers=globex)
        _, _, globex_good = await shop.post(
            "checkout", {"user_id": globex_user["id"], "amount_cents": 700}, headers=globex
        )
        # acme's checkout is the last success of the function before globex's failure
        acme = {"x-tenant-id": "acme"}
        _, acme_user, acme_signup = await shop.post(
            "signup", {"email": "boss@acme.test"}, headers=acme
        )
        shop.provider.mode = "rate_limit"  # acme fails once …
        _, _, acme_failed = await shop.post(
            "checkout", {"user_id": acme_user["id"], "amount_cents": 4100}, headers=acme
        )
        shop.provider.mode = "ok"  # … then succeeds: the function's last success
        _, _, acme_good = await shop.post(
            "checkout", {"user_id": acme_user["id"], "amount_cents": 4100}, headers=acme
        )
        shop.provider.mode = "rate_limit"
        _, _, failed = await shop.post(
            "checkout", {"user_id": globex_user["id"], "amount_cents": 700}, headers=globex
        )
        # The owner's report departs from acme's success and finds acme's failure alike:
        # the risk is real …
        owners = why(shop, failed[:18], "--json")
        assert owners["departure"]["from"] == acme_good
        assert [s["request_id"] for s in owners["similar"]] == [acme_failed]
        report = why(shop, failed[:18], "--ai", "--json", "--show-prompt")
    sent = chat_stub.sent()
    # … and what the model got is globex's alone: the departure from globex's own last
    # success, no similar failure (acme's is not globex's), nothing of acme's.
    for value in (acme_good, acme_failed, acme_signup, "acme", "boss@acme.test"):
        assert value not in sent, value
    assert globex_good in sent and '"similar_failures_seen": 0' in chat_stub.content()
    assert "departure_from_last_success" in sent and "where the last success got 200" in sent
    assert report["ai"]["answer"] == ANSWER


async def test_the_admin_api_and_the_remote_cli_ask_the_servers_model(
    ai_shop: Shop, chat_stub: ChatStub
) -> None:
    ai_shop.runtime.admin = AdminAccess.with_token("admin-token-1234")
    ai_shop.runtime.project = parse(ai_shop.root)
    _, failed = await failed_checkout(ai_shop)
    auth = {"Authorization": "Bearer admin-token-1234", "X-Flux-Client": "test"}
    url = f"{ai_shop.url}/_flux/executions/{failed[:18]}/why/ai"
    async with aiohttp.ClientSession() as client:
        async with client.post(url, headers=auth) as response:
            assert response.status == 200
            document = await response.json()
        async with client.post(url + "?send=false&show_prompt=true", headers=auth) as response:
            preview = await response.json()
        async with client.post(url) as response:
            assert response.status == 401
    assert document["request_id"] == failed
    assert document["ai"]["answer"] == ANSWER and "prompt" not in document["ai"]
    assert len(chat_stub.requests) == 1
    assert preview["ai"]["prompt"] == chat_stub.requests[0]["body"]["messages"]
    for value in NEVER_SENT:
        assert value not in chat_stub.sent()
    # the server answers on this test's event loop: the CLI waits in a thread
    result = await asyncio.to_thread(
        run_flux,
        ["--remote", ai_shop.url, "why", failed[:18], "--ai"],
        ai_shop.root,
        env={"FLUX_ADMIN_TOKEN": "admin-token-1234"},
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.index("ROOT CAUSE")
        < result.stdout.index(HEADING)
        < result.stdout.index(ANSWER)
    )
    assert len(chat_stub.requests) == 2


# -- pure parts ----------------------------------------------------------------------------


def facts(**overrides: Any) -> dict[str, Any]:
    report = {
        "request_id": "r",
        "function": "f",
        "kind": "http",
        "method": "POST",
        "route": "f",
        "status": "error",
        "http_status": 500,
        "duration_ms": 1.0,
        "input": {"password": "pw-123456", "note": "x"},
        "root_cause": {
            "class": "exception",
            "message": "KeyError: 'id'",
            "span": None,
            "details": {},
        },
        "location": {
            "file": "functions/f.py",
            "line": 3,
            "function": "f",
            "code_sha": None,
            "code_dirty": False,
        },
        "error": {"type": "KeyError"},
        "mutations": [],
        "departure": None,
        "similar": [],
        "suggestion": "read it with .get",
    }
    report.update(overrides)
    return {
        "report": report,
        "tape": [],
        "tape_of": "last_outside_value",
        "source": {
            "file": "functions/f.py",
            "line": 3,
            "from": "work tree",
            "first": 1,
            "lines": ["def f():", "    x = {}", "    return x['id']"],
        },
        "secret_names": [],
    }


def redact_with(secrets: list[str]) -> Any:
    from flux._project import Project
    from flux.server._inspector import redactor

    return redactor(Project(root=Path("/nonexistent")), set(secrets))


def test_the_prompt_marks_the_failing_line_and_redacts_fields_and_secrets() -> None:
    prompt = build_prompt(
        facts(suggestion="the key topsecret-99 leaked"),
        redact=redact_with(["topsecret-99"]),
        max_chars=24_000,
    )
    user = prompt.messages[1]["content"]
    assert "» 3 |     return x['id']" in user and "KeyError: 'id'" in user
    assert "pw-123456" not in user and "topsecret-99" not in user
    assert user.count("[redacted hmac-sha256:") == 2
    assert not prompt.truncated and prompt.chars == sum(len(m["content"]) for m in prompt.messages)


def test_the_prompt_is_cut_to_the_cap_and_says_so() -> None:
    huge = [
        {
            "table": "t",
            "pk": {"id": i},
            "op": "INSERT",
            "changes": {"b": [None, "x" * 5000]},
            "rolled_back": True,
        }
        for i in range(400)
    ]
    prompt: Prompt = build_prompt(facts(mutations=huge), redact=lambda v: v, max_chars=6000)
    assert prompt.chars <= 6000 and prompt.truncated
    assert "return x['id']" in prompt.messages[1]["content"]  # the head survives the cut
    assert "more)" in prompt.messages[1]["content"]


def test_a_models_text_cannot_drive_the_terminal() -> None:
    assert clean("ok\x1b[2J\x07 fine\n\tnext\x9b") == "ok[2J fine\n\tnext"


@pytest.mark.parametrize(
    ("toml", "sentence"),
    [
        ('[ai]\nbase_url = "http://x/v1"\n', "needs both base_url and model"),
        ('[ai]\nbase_url = "ftp://x"\nmodel = "m"\n', "ai.base_url must be an http"),
        ('[ai]\nbase_url = "http://x/v1"\nmodel = "m"\napi_key = "sk-1"\n', "takes no api_key"),
        (
            '[ai]\nbase_url = "http://x/v1"\nmodel = "m"\napi_key_secret = "sk-live-1"\n',
            "not the key itself",
        ),
        ('[ai]\nbase_url = "http://x/v1"\nmodel = "m"\ntimeout = "soon"\n', "ai.timeout must"),
        ('[ai]\nbase_url = "http://x/v1"\nmodel = "m"\nmax_prompt_chars = 10\n', "at least"),
        ('[ai]\nbase_url = "http://x/v1"\nmodel = "m"\nstream = "yes"\n', "true or false"),
        ('[ai]\nbase_url = "http://x/v1"\nmodel = "m"\ntemprature = 1\n', "no option"),
    ],
)
def test_a_wrong_ai_table_is_one_sentence(tmp_path: Path, toml: str, sentence: str) -> None:
    (tmp_path / "flux.toml").write_text(toml)
    with pytest.raises(ConfigError, match=sentence):
        parse(tmp_path)


def test_ai_is_off_unless_set(tmp_path: Path) -> None:
    (tmp_path / "flux.toml").write_text('name = "x"\n')
    assert not parse(tmp_path).ai.enabled
