"""Escape sequences from outside never reach the operator's terminal: a request path, a
body and what they put in the database carry an OSC 52 clipboard write and a CSI, and the
serve log, ``flux ls``, ``why``, ``trace``, ``state history`` and ``state blame`` draw them
as visible characters (issue 20, item 6)."""

from __future__ import annotations

import json
import signal

from tests.access.conftest import Served
from tests.fixtures.projects import run_flux

OSC52 = "\x1b]52;c;cm0gLXJmIH4K\x07"  # would put "rm -rf ~" on the clipboard
CSI = "\x1b[2J\x9b1A"  # clear the screen, and an 8-bit cursor-up


def test_control_characters_are_drawn_not_obeyed(served: Served) -> None:
    email = f"{OSC52}{CSI}@x.test"
    status, _, headers = served.call("/signup", method="POST", body={"email": email})
    assert status == 200
    status, _, headers = served.call("/signup", method="POST", body={"email": email})
    assert status == 500  # the duplicate: its error quotes the email
    failed = headers["x-flux-request-id"]
    status, _, _ = served.call("/sign%1B%5D52%3Bc%3BcwO%3D%07up", method="POST", body={})
    assert status == 404
    env = {"DATABASE_URL": served.db}
    outputs = {}
    for args in (["ls"], ["why", failed], ["trace", failed],
                 ["state", "history", "users", "--id", "1"],
                 ["state", "blame", "users", "--id", "1"], ["ls", "--json"]):
        result = run_flux(args, served.root, env=env)
        assert result.returncode == 0, (args, result.stderr)
        outputs[" ".join(args)] = result.stdout + result.stderr
    served.process.signal(signal.SIGTERM)
    served.process.wait(30)
    outputs["serve log"] = served.process.output()
    for name, text in outputs.items():
        assert not any(c in text for c in "\x1b\x07\x9b"), (name, text)
    assert "␛]52;c;cm0gLXJmIH4K␇" in outputs["state history users --id 1"]
    assert "␛[2J\\x9b1A@x.test" in outputs["state history users --id 1"]
    assert "/sign␛]52;c;cwO=␇up" in outputs["serve log"]
    listed = json.loads(outputs["ls --json"])["executions"]
    assert any("\x1b]52" in (e.get("route") or "") for e in listed)  # JSON keeps the data
