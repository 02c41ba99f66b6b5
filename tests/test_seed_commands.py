"""Every command line the product documents show (tests/seeds/, copied from the pages Flux
is built from) works as written, run against the example shop with the documents' ids,
tables and windows replaced by real ones — so a documented spelling can never silently
break.

A prompt line (``$ flux …``) is run with all its words; a command named in prose (``flux
why <id>``, ``flux state history``) with its placeholders filled and, where the prose names
only the command, the arguments it needs (FILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import pty
import re
import select
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer

from cli.main import app
from flux.store._embedded import EmbeddedServer
from tests.fixtures.projects import FLUX, run_flux
from tests.fixtures.shop import SECRET, FakeProvider, serve_app
from tests.replay.test_bisect import GIT_ENV, git, history

SEEDS = Path(__file__).resolve().parent / "seeds"
# A word that is an argument in prose: a placeholder, an id, a number, a time or a window.
_VALUE = re.compile(r"^(<[a-z_]+>|[0-9a-f]{5,}(-[0-9a-f]+)*|\d+|\d{1,2}:\d{2}"
                    r"(:\d{2})?((\.\.|-)\d{1,2}:\d{2}(:\d{2})?)?)$")
_WINDOW = re.compile(r"^(\d{1,2}:\d{2})(\.\.|-)(\d{1,2}:\d{2})$")
# What a command named alone in prose needs to run (the placeholders are filled after).
FILL: dict[tuple[str, ...], list[str]] = {
    ("why",): ["<id>"], ("trace",): ["<id>"], ("trace", "diff"): ["<a>", "<b>"],
    ("trace", "debug"): ["<id>"], ("replay",): ["<id>"], ("resume",): ["<id>"],
    ("state", "history"): ["<table>"], ("state", "blame"): ["<table>"],
    ("incident", "replay"): ["<window>"], ("bug", "bisect"): ["--request", "<id>"],
    ("explain",): ["checkout", "--input", '{"user_id": 1, "amount_cents": 900}'],
    ("init",): ["my-app"],
}
# Commands whose exit code is a verdict on the code (1: it still fails), not on the spelling.
VERDICTS = {("replay",), ("resume",), ("incident", "replay"), ("bug", "bisect")}


def _path(tokens: list[str]) -> list[str]:
    """The words of ``tokens`` that name a command (``state history``)."""
    group: Any = typer.main.get_command(app)
    path: list[str] = []
    while tokens[len(path):] and hasattr(group, "commands") and \
            tokens[len(path)] in group.commands:
        group = group.commands[tokens[len(path)]]
        path.append(tokens[len(path)])
    if path:
        # Words a command takes as arguments by name: "diff" and "debug" of flux trace.
        keywords = {word for param in group.params if getattr(param, "metavar", None)
                    for word in re.findall(r"\b[a-z]+\b", str(param.metavar))}
        for token in tokens[len(path):]:
            if token not in keywords:
                break
            path.append(token)
    return path


def documented_commands(text: str) -> list[list[str]]:
    """The command lines of a product document, as argv after ``flux``, in order."""
    found: list[list[str]] = []
    for line in text.splitlines():
        prompt = re.match(r"^\s*\$\s+flux\s+(.*)$", line)
        if prompt:  # "$ flux init my-app && cd my-app", "$ flux dev # starts …"
            found.append(shlex.split(re.split(r"\s+#|\s+&&\s|\s+←", prompt[1])[0]))
            continue
        for match in re.finditer(r"(?<![\w/.-])flux\s+(?=[a-z])", line):
            tokens = [t.rstrip(".:") for t in re.findall(r"[^\s,;()|`—→]+", line[match.end():])]
            path = _path(tokens)
            if not path:
                continue
            args = []
            for token in tokens[len(path):]:
                if not _VALUE.match(token):
                    break
                args.append(token)
            found.append(path + args)
    return found


def all_documented() -> list[list[str]]:
    seen: list[list[str]] = []
    for seed in sorted(SEEDS.glob("*.txt")):
        for argv in documented_commands(seed.read_text(encoding="utf-8")):
            if argv not in seen:
                seen.append(argv)
    return seen


def test_the_documents_name_the_commands_we_expect() -> None:
    """The walk finds what a reader finds (a guard against an extraction that finds nothing)."""
    found = all_documented()
    assert ["why", "550e8400"] in found
    assert ["incident", "replay", "14:00..14:05"] in found
    assert ["incident", "replay", "--window", "14:20-14:25"] in found
    assert ["state", "history", "users", "--id", "42"] in found
    assert ["trace", "diff", "<a>", "<b>"] in found
    assert ["trace", "debug", "<id>"] in found
    assert ["install"] in found and ["init", "my-app"] in found and ["dev"] in found


def _command(argv: list[str]) -> tuple[str, ...]:
    path = _path(argv)
    return tuple(w for w in path if w not in ("diff", "debug")) if path[:1] == ["trace"] \
        else tuple(path)


def fill(argv: list[str], facts: dict[str, str]) -> list[str]:
    """``argv`` with what it lacks added, and the documents' ids, tables, keys and windows
    replaced by real ones."""
    path = _path(argv)
    if argv == path and tuple(path) in FILL:
        argv = path + FILL[tuple(path)]
    if path == ["state", "history"] and "--id" not in argv:
        argv = [*argv, "--id", "<pk>"]
    example_ids = {"91a3f": facts["ok"]}  # "POST /create_order · 200 OK" in the document
    filled = []
    for i, word in enumerate(argv):
        if word in ("<id>", "<b>"):
            word = facts["failed"]
        elif word == "<a>":
            word = facts["ok"]
        elif word == "<table>":
            word = "users"
        elif word == "<pk>" or (i > 0 and argv[i - 1] == "--id"):
            word = facts["user"]
        elif word == "<window>":
            word = facts["window"]
        elif (window := _WINDOW.match(word)) is not None:
            word = facts["window"].replace("..", window[2])  # the document's separator
        elif i >= len(path) and re.fullmatch(r"[0-9a-f]{5,}", word):
            word = example_ids.get(word, facts["failed"])
        filled.append(word)
    return filled


def _window_around_now() -> str:
    now = dt.datetime.now().astimezone()
    start, end = now - dt.timedelta(minutes=30), now + dt.timedelta(minutes=2)
    return f"{start:%H:%M}..{end:%H:%M}"


def run_in_terminal(argv: list[str], cwd: Path, env: dict[str, str], *, until: str,
                    timeout: float = 90) -> tuple[int, str]:
    """Run a terminal UI in a pseudo-terminal, wait for ``until`` on the screen, press q."""
    main, sub = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environ.update(env, TERM="xterm-256color", COLUMNS="120", LINES="40")
    proc = subprocess.Popen([*FLUX, *argv], cwd=cwd, env=environ, stdin=sub, stdout=sub,
                            stderr=sub, start_new_session=True)
    os.close(sub)
    screen = b""
    deadline = time.monotonic() + timeout
    try:
        while until.encode() not in screen and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1)
            if ready:
                try:
                    screen += os.read(main, 65536)
                except OSError:
                    break
            if proc.poll() is not None:
                break
        # A key pressed while the app still starts up may be lost: press q until it quits.
        while proc.poll() is None and time.monotonic() < deadline + 30:
            os.write(main, b"q")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
            with contextlib.suppress(OSError):
                while select.select([main], [], [], 0)[0]:
                    screen += os.read(main, 65536)
        code = proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    return code, screen.decode(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_every_documented_command_runs_as_written(
        db: str, provider: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        make_project: Callable[..., Path], flux_process: Any) -> None:
    monkeypatch.setenv("SHOP_PAYMENTS_API_KEY", SECRET)
    # The shop in a git history whose last commit breaks checkout, so that bisect has a
    # commit to find: a checkout that worked before it, and one that fails at HEAD.
    repo, project, shas = history(tmp_path, provider.url, 3, 2)
    git(repo, "checkout", "-q", shas[1])
    async with serve_app(project, db, provider) as shop:
        _, user, _ = await shop.post("signup", {"email": "ada@example.com"})
        status, _, ok_id = await shop.post("checkout",
                                           {"user_id": user["id"], "amount_cents": 900})
        assert status == 200
        await shop.post("signup", {"email": "ada@example.com"})  # 500: duplicate
    git(repo, "checkout", "-q", "main")
    async with serve_app(project, db, provider) as shop:
        status, _, failed_id = await shop.post("checkout",
                                               {"user_id": user["id"], "amount_cents": 900})
        assert status == 500
    facts = {"ok": ok_id[:18], "failed": failed_id[:18], "user": str(user["id"]),
             "window": _window_around_now()}
    env = {"DATABASE_URL": db, **GIT_ENV}
    before = provider.stats()

    ran: list[tuple[str, ...]] = []
    for documented in all_documented():
        command = _command(documented)
        argv = fill(documented, facts)
        shown = f"flux {shlex.join(documented)} → flux {shlex.join(argv)}"
        if command in (("init",), ("dev",)):
            continue  # below, in a directory of their own
        if documented[:2] == ["trace", "debug"]:
            code, screen = await asyncio.to_thread(run_in_terminal, argv, project, env,
                                                   until="checkout")
            assert code == 0 and "checkout" in screen, f"{shown}\n{screen[-2000:]}"
            ran.append(command)
            continue
        result = await asyncio.to_thread(run_flux, argv, project, env=env, timeout=300)
        said = result.stdout + result.stderr
        assert result.returncode != 2 and "Usage:" not in said, f"{shown}\n{said}"
        assert "Traceback" not in said, f"{shown}\n{said}"
        if command in VERDICTS:
            assert result.returncode in (0, 1) and result.stdout.strip(), f"{shown}\n{said}"
        else:
            assert result.returncode == 0, f"{shown}\n{said}"
        if command == ("incident", "replay"):
            assert "Replay Window" in result.stdout and "replayed ·" in result.stdout, said
        if command == ("bug", "bisect"):
            assert shas[2][:8] in result.stdout, f"{shown}\n{said}"
        ran.append(command)
    assert set(ran) >= {("why",), ("trace",), ("state", "history"), ("state", "blame"),
                        ("incident", "replay"), ("replay",), ("resume",), ("bug", "bisect"),
                        ("explain",), ("install",)}
    # Nothing documented charged anyone again: replays answer from the tape, and resume
    # serves the charge the failed checkout already made from it.
    assert provider.stats()["charges"] == before["charges"], provider.stats()

    # Ids as Flux prints them and people copy them: "req:" in front, punctuation around.
    for argv in (["why", f"req:{facts['failed']}:"], ["trace", f"[req:{facts['ok']}],"],
                 ["trace", "diff", f"'{facts['ok']}'", f'"req:{facts["failed"]}"'],
                 ["incident", "replay", "--ids", f"req:{facts['ok']}, req:{facts['failed']},",
                  "--db", "tape"]):
        result = await asyncio.to_thread(run_flux, argv, project, env=env, timeout=300)
        assert result.returncode in (0, 1) and "error:" not in result.stderr, (
            f"flux {shlex.join(argv)}\n{result.stdout}{result.stderr}")
        assert facts["failed"] in result.stdout or facts["ok"] in result.stdout

    # flux init my-app && cd my-app, then flux dev: its own directory, embedded PostgreSQL.
    parent = make_project()
    init = await asyncio.to_thread(run_flux, fill(["init", "my-app"], facts), parent)
    assert init.returncode == 0, init.stdout + init.stderr
    my_app = parent / "my-app"
    toml = my_app / "flux.toml"
    toml.write_text(toml.read_text().replace("port = 4000", f"port = {_free_port()}"))
    try:
        dev = flux_process(["dev"], my_app)
        await asyncio.to_thread(dev.wait_for, "ready", 120)
        dev.signal(signal.SIGINT)
        assert await asyncio.to_thread(dev.wait, 60) == 0, dev.output()
    finally:
        EmbeddedServer(my_app / ".flux").stop()
