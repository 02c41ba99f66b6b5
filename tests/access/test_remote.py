"""``flux --remote URL …`` against a real ``flux serve``: the same documents and the same
screens as the local commands, the same one-line errors, from a directory with no project."""

from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from tests.access.conftest import Served, free_port
from tests.fixtures.projects import run_flux


def local(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return run_flux(list(args), served.root, env={"DATABASE_URL": served.db, "COLUMNS": "120"})


def remote(served: Served, *args: str, token: str | None = "", cwd: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {"FLUX_ADMIN_TOKEN": served.token if token == "" else (token or ""),
               "COLUMNS": "120", **(env or {})}
    return run_flux(["--remote", served.url, *args], cwd or served.root.parent, env=environ)


def both(served: Served, command: list[str]
         ) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """The command run locally and remotely, at once."""
    with ThreadPoolExecutor(2) as pool:
        here = pool.submit(local, served, *command)
        there = pool.submit(remote, served, *command)
        return here.result(), there.result()


def traffic(served: Served) -> tuple[str, str]:
    ok = served.call("/signup", method="POST", body={"email": "ada@acme.test"},
                     headers={"x-tenant-id": "acme"})
    failed = served.call("/signup", method="POST", body={"email": "ada@acme.test"},
                         headers={"x-tenant-id": "acme"})
    assert ok[0] == 200 and failed[0] == 500
    return ok[2]["x-flux-request-id"], failed[2]["x-flux-request-id"]


def test_remote_commands_print_what_local_ones_print(served: Served) -> None:
    ok, failed = traffic(served)
    commands = [
        ["ls", "--json"], ["ls", "--status", "5xx", "--json"], ["ls", "--since", "1h"],
        ["why", failed[:18], "--json"], ["why", failed[:18]],
        ["trace", ok[:18], "--json"], ["trace", failed[:18]],
        ["state", "history", "users", "--id", "1", "--json"],
        ["state", "history", "users", "--id", "1"],
        ["state", "blame", "users", "--id", "1", "--json"], ["state", "blame", "users"],
        ["record", "export", failed[:18]],
        ["resume", failed[:18], "--dry-run", "--json"],
    ]
    for command in commands:
        here, there = both(served, command)
        assert here.returncode == there.returncode == 0, (command, here.stderr, there.stderr)
        if "--json" in command or command[0] == "record":
            mine, theirs = json.loads(here.stdout), json.loads(there.stdout)
            if command[0] == "record":
                mine.pop("exported_at"), theirs.pop("exported_at")
            assert mine == theirs, command
        else:  # and, remotely, the link to the server's web view
            link = f"{served.url}/_flux/ui/x/"
            assert (link in there.stdout) == (command[0] in ("why", "trace")), command
            shown = re.sub(r"\n  WEB +\S+\n", "", there.stdout)
            shown = re.sub(r"(?m)^  ── Web: \S+\n", "", shown)
            assert here.stdout == shown, command
    why = json.loads(remote(served, "why", failed[:18], "--json").stdout)
    assert why["root_cause"]["class"] == "constraint" and "spans" not in why


def test_remote_errors_are_the_local_sentences(served: Served, tmp_path: Path) -> None:
    traffic(served)
    for command in (["why", "ffffffff"], ["why", "0"], ["trace", "not-an-id"],
                    ["state", "history", "users", "--id", "x"],
                    ["state", "history", "nosuchtable", "--id", "1"],
                    ["state", "blame", 'users"; drop table users; --'],
                    ["ls", "--status", "teapot"], ["ls", "--since", "yesterday-ish"]):
        here, there = both(served, command)
        assert here.returncode != 0 and there.returncode == here.returncode, command
        assert there.stderr == here.stderr, command
        assert there.stderr.startswith("error: ") and "Traceback" not in there.stderr
    assert "matches" in remote(served, "why", "0").stderr  # an ambiguous prefix

    refused = remote(served, "ls", token=None)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[0] == \
        "error: the admin API needs the header Authorization: Bearer <token>"
    assert "FLUX_ADMIN_TOKEN" in refused.stderr
    wrong = remote(served, "ls", token=served.token[:-1] + "?")
    assert wrong.stderr.splitlines()[0] == "error: the admin token is wrong"
    gone = run_flux(["--remote", f"http://127.0.0.1:{free_port()}", "ls"], tmp_path)
    assert gone.returncode == 1 and gone.stderr.startswith("error: cannot reach the admin API")
    assert run_flux(["--remote", "ftp://x", "ls"], tmp_path).stderr.startswith(
        "error: --remote takes the URL of a Flux server")
    # commands that only work on the local project say so
    explain = remote(served, "explain", "signup", "--input", "{}")
    assert explain.returncode == 2 and "works on the local project" in explain.stderr
    diff = run_flux(["trace", "diff", "a", "b"], tmp_path, env={"FLUX_REMOTE": served.url})
    assert diff.returncode == 2 and "not with --remote" in diff.stderr
    with psycopg.connect(served.db) as conn:  # the quoted name reached no SQL
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)


def test_flux_remote_from_the_environment(served: Served, tmp_path: Path) -> None:
    _, failed = traffic(served)
    result = run_flux(["why", failed[:18], "--json"], tmp_path,
                      env={"FLUX_REMOTE": served.url, "FLUX_ADMIN_TOKEN": served.token})
    assert result.returncode == 0 and json.loads(result.stdout)["request_id"] == failed
    # set in the environment, it does not get in the way of local-only commands
    version = run_flux(["--version"], tmp_path, env={"FLUX_REMOTE": served.url})
    assert version.returncode == 0
    check = run_flux(["check", str(served.root / "functions")], tmp_path,
                     env={"FLUX_REMOTE": served.url})
    assert check.returncode == 0, check.stderr
