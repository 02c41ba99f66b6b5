"""The line ``flux dev`` / ``flux serve`` prints for each request: a 500 names its exception
(type and the first line of its message, control characters drawn, never sent) beside the
``flux why`` hint."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cli.serve import _events
from flux.runtime._gateway import ERROR_LINE_MAX, error_line
from flux.server._serve import application
from tests.fixtures.shop import serve_app
from tests.stories._world import init_project

# An exception whose message is an attacker's: an OSC 52 clipboard write, a line break
# that would forge a second log line, a CSI that clears the screen.
BROKEN = '''from flux import function


@function
async def lookup(ctx, input):
    raise LookupError("no customer \\x1b]52;c;cHduZWQ=\\x07" + input["name"]
                      + "\\n  12:00:00  POST /fake 200")
'''


def test_error_line_is_one_line_and_capped() -> None:
    assert error_line({"type": "ValueError", "message": "bad\nsecond"}) == "ValueError: bad"
    assert error_line({"type": "KeyError", "message": "KeyError"}) == "KeyError"
    assert error_line({"type": "Boom", "message": ""}) == "Boom"
    assert error_line({"type": "FunctionError", "message": "the provider answered 429",
                       "code": "rate_limited"}) == "the provider answered 429"
    long = error_line({"type": "E", "message": "x" * 500})
    assert len(long) == ERROR_LINE_MAX and long.endswith("…")


async def test_a_500_names_its_exception_with_control_characters_drawn(
        db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = init_project(tmp_path, "log")
    (project / "functions" / "lookup.py").write_text(BROKEN)
    async with serve_app(project, db, None) as app:  # type: ignore[arg-type]
        # The app as flux serve builds it, with the CLI's own request line as its observer.
        runner = web.AppRunner(application(app.runtime,
                                           observer=_events("log", mode="serve").request))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as client:
                async with client.post(url + "/lookup", json={"name": "\x1b[2Jeve"}) as answer:
                    assert answer.status == 500
                    rid = answer.headers["x-flux-request-id"]
                async with client.post(url + "/create_user",
                                       json={"email": "ada@example.com"}) as answer:
                    assert answer.status == 200
        finally:
            await runner.cleanup()
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if "POST" in line]
    assert len(lines) == 2, printed  # the forged line break made no second line
    failed, ok = lines
    assert f"→ flux why {rid[:18]}" in failed
    assert "LookupError: no customer ␛]52;c;cHduZWQ=␇␛[2Jeve" in failed, failed
    assert "\x1b" not in printed and "\x07" not in printed
    assert "flux why" not in ok and "Error" not in ok
