#!/usr/bin/env python3
"""Regenerate the generated parts of docs/: every command's output, the options of every
command, the columns of the ``flux`` schema and the keys of ``flux trace debug``.

    python scripts/docs.py                 # rewrite docs/ in place
    python scripts/docs.py --docs DIR      # rewrite the pages of another copy (the test)

It tells the story of docs/tour.md on a copy of examples/shop in a temporary directory:
``flux dev`` with its embedded PostgreSQL and the fake payment provider, sign-ups and
checkouts, a provider rate limit and a payload change, the questions (``why``, ``trace``,
``state``…), a fix committed to git, ``replay``, ``incident replay`` and ``resume``, then a
regression found by ``bug bisect``. Each command runs as a user runs it (a ``flux`` child
process, as ``python -m cli``) and its output is kept, with what varies between runs
replaced by stable placeholders (scripts/_docs_text.py), so a second run writes the same
pages. tests/test_docs.py fails when the committed pages differ from a fresh run.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from _docs_text import (  # noqa: E402
    MissingBlock,
    Normaliser,
    code_block,
    fill,
    markers,
    table,
)

from flux.store._embedded import EmbeddedServer  # noqa: E402

SHOP = REPO / "examples" / "shop"
HOME = "/home/ada"  # what the temporary directory is shown as
DEV_PORT, PROVIDER_PORT, PG_PORT = 4000, 4010, 5432
API_KEY = "sk_test_local"
WIDTH = "120"
TIMEOUT = 120.0


class Story:
    """One run of the docs' story: the processes, the captured outputs, the normaliser."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.shop = home / "shop"
        self.norm = Normaliser()
        self.norm.literals[str(home)] = HOME
        self.outputs: dict[str, str] = {}
        self.commits = 0
        self.env = {k: v for k, v in os.environ.items()
                    if k != "DATABASE_URL" and not k.startswith(("FLUX_", "GIT_"))}
        self.env.update({
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")])),
            "TZ": "UTC", "COLUMNS": WIDTH, "TERMINAL_WIDTH": WIDTH, "NO_COLOR": "1",
            "SHOP_PAYMENTS_API_KEY": API_KEY, "FLUX_REDACTION_KEY": "docs",
            "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com",
            "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.com",
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
        })
        self.schema: dict[str, str] = {}  # flux.X -> its columns, from the catalog
        self.relations: list[str] = []
        self.dev: Process | None = None
        self.provider: Process | None = None
        self.runner = Runner(self.env, home)

    # --- capturing ---------------------------------------------------------------------

    def keep(self, key: str, text: str) -> str:
        if key in self.outputs:
            raise ValueError(f"output {key!r} captured twice")
        self.outputs[key] = self.norm(text)
        return self.outputs[key]

    def flux(self, key: str | None, *args: str, codes: tuple[int, ...] = (0,),
             shown: list[str] | None = None, edit: Callable[[str], str] | None = None,
             cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        """Run ``flux ARGS`` in the shop; keep ``$ flux …`` and its output under ``key``."""
        code, output = self.runner.run(list(args), cwd or self.shop, env)
        if code not in codes:
            raise RuntimeError(f"flux {shlex.join(args)} exited {code}:\n{output}")
        if key is not None:
            self.keep(key, f"$ flux {shlex.join(shown or args)}\n"
                           f"{edit(output) if edit else output}")
        return output

    def pytest(self, key: str, *args: str) -> str:
        """Run ``pytest ARGS`` in the shop as its developer would; keep it under ``key``
        (the header names this machine and the run's time: both are cut)."""
        done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                               *args], cwd=self.shop, env=self.env, capture_output=True,
                              text=True, timeout=TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"pytest {shlex.join(args)} exited {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")
        lines = done.stdout.splitlines()
        # The header says which machine, Python and plugins ran it: only the first line stays.
        first = next(i for i, line in enumerate(lines) if "test session starts" in line)
        last = next(i for i, line in enumerate(lines) if line.startswith("collect"))
        lines[first + 1:last] = []
        text = re.sub(r" in \d+\.\d+s", " in 1.00s", "\n".join(lines))
        text = re.sub(r"(?m)^=+ (.*?) =+$", r"== \1 ==", text)  # its width follows the time
        return self.keep(key, f"$ pytest {shlex.join(args)}\n{text}")

    def query(self, name: str) -> str:
        """A query of sql/queries/docs.sql, on one line."""
        from flux.store._queries import load

        return " ".join(getattr(load("docs"), name).split())

    def psql(self, key: str, query: str) -> None:
        """Run one query with ``flux db psql -c``, kept as a psql session shows it."""
        output = self.flux(None, "db", "psql", "-c", query)
        self.keep(key, f"$ flux db psql\nflux=# {query};\n{output}")

    def post(self, route: str, body: Any, key: str | None = None) -> tuple[int, Any, str]:
        """POST to the shop, as curl would; wait for flux dev's line about the request."""
        data = json.dumps(body)
        request = urllib.request.Request(f"http://127.0.0.1:{self.dev_port}/{route}",
                                         data=data.encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text, rid = (response.status, response.read().decode(),
                                     response.headers["x-flux-request-id"])
        except urllib.error.HTTPError as error:
            status, text, rid = error.code, error.read().decode(), \
                error.headers["x-flux-request-id"]
        self.norm.register_id(rid)
        assert self.dev is not None
        self.dev.wait_for(f" ms  {rid[:18]}")  # its request line, not a log line
        if key is not None:
            self.keep(key, f"$ curl -s localhost:{DEV_PORT}/{route} -d '{data}'\n{text}")
        return status, json.loads(text), rid

    def provider_mode(self, mode: str, key: str | None = None) -> None:
        data = json.dumps({"mode": mode})
        request = urllib.request.Request(f"http://127.0.0.1:{self.provider_port}/_fake/mode",
                                         data=data.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        if key is not None:
            self.keep(key, f"$ curl -s localhost:{PROVIDER_PORT}/_fake/mode -d '{data}'\n"
                           f"{text}")

    def job_done(self, user_id: int) -> None:
        """Wait for the welcome email a sign-up queued (so the order of events is fixed)."""
        assert self.dev is not None
        self.dev.wait_for(f"welcome email sent user_id={user_id} ")

    # --- git ---------------------------------------------------------------------------

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", *args], cwd=self.shop, env=self.git_env(),
                              capture_output=True, text=True, check=True)
        return done.stdout

    def git_env(self) -> dict[str, str]:
        stamp = f"2026-03-10T14:{self.commits:02d}:00+00:00"
        return {**self.env, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}

    def commit(self, message: str, files: dict[str, str] | None = None) -> str:
        """Commit ``files`` (path → new text), then write them to the work tree: flux dev
        reloads after the commit exists, so later executions record a clean commit."""
        self.commits += 1
        if files is None:
            self.git("add", "-A")
        else:
            for path, text in files.items():
                blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], input=text,
                                      cwd=self.shop, capture_output=True, text=True,
                                      check=True).stdout.strip()
                self.git("update-index", "--cacheinfo", f"100644,{blob},{path}")
        self.git("commit", "-q", "-m", message)
        sha = self.git("rev-parse", "HEAD").strip()
        self.norm.register_sha(sha)
        for path, text in (files or {}).items():
            (self.shop / path).write_text(text)
        return sha

    # --- processes ---------------------------------------------------------------------

    def start(self) -> None:
        self.provider = Process([sys.executable, str(self.shop / "fake_provider.py"),
                                 "--port", "0"], self.shop, self.env)
        line = self.provider.wait_for("fake payments provider on")
        self.provider_port = int(re.search(r":(\d+) ", line)[1])  # type: ignore[index]
        self.norm.ports[self.provider_port] = PROVIDER_PORT
        toml = self.shop / "flux.toml"
        toml.write_text(toml.read_text().replace(
            f":{PROVIDER_PORT}", f":{self.provider_port}"))
        self.git("init", "-q", "-b", "main")
        self.commit("shop: sign-up, checkout, order status, webhooks, welcome email")
        self.dev_port = free_port()
        self.norm.ports[self.dev_port] = DEV_PORT
        self.dev = Process([sys.executable, "-m", "cli", "dev", "--port", str(self.dev_port)],
                           self.shop, self.env)
        self.dev.wait_for("ready")
        state = self.shop / ".flux"
        self.norm.ports[int((state / "pg.port").read_text())] = PG_PORT
        self.norm.literals[(state / "pg.password").read_text().strip()] = "<password>"
        self.keep("dev", "$ flux dev\n" + self.dev.output())

    def stop(self) -> None:
        self.runner.close()
        if self.dev is not None and self.dev.proc.poll() is None:
            self.dev.proc.send_signal(signal.SIGINT)
            self.dev.proc.wait(30)
        if self.provider is not None and self.provider.proc.poll() is None:
            self.provider.proc.send_signal(signal.SIGTERM)
            self.provider.proc.wait(30)
        EmbeddedServer(self.shop / ".flux").stop()  # if flux dev could not


class Runner:
    """``flux`` commands run by scripts/_docs_runner.py: each in a process of its own,
    forked from one that has already imported the CLI."""

    def __init__(self, env: dict[str, str], scratch: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "_docs_runner.py")],
                                     env=env, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self.output = scratch / "output.txt"

    def run(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None
            ) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"argv": argv, "cwd": str(cwd), "output": str(self.output), "env": env}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("scripts/_docs_runner.py stopped")
        return json.loads(answer)["code"], self.output.read_text()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


class Process:
    """A child process whose merged output is read as it comes."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, text=True, bufsize=1,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self.read = 0  # lines handed out by output()
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        for line in self.lines[self.read:]:
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"process ended before {text!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if text in line:
                return line
        raise RuntimeError(f"no {text!r} within {timeout:.0f}s:\n" + "\n".join(self.lines))

    def output(self) -> str:
        """The lines read since the last call."""
        text = "\n".join(self.lines[self.read:])
        self.read = len(self.lines)
        return text

    def finish(self, timeout: float = 30) -> str:
        self.proc.wait(timeout)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return self.output()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def next_second() -> None:
    """Sleep to the start of the next wall-clock second (incident windows are in seconds)."""
    time.sleep(1.05 - time.time() % 1)


def hhmmss() -> str:
    return time.strftime("%H:%M:%S", time.gmtime())


def without_latency_deltas(text: str) -> str:
    """``flux trace diff`` marks a span's latency change only when it is 1 ms or more, so
    whether a mark appears at all varies from run to run: keep the summary's, drop those."""
    return re.sub(r"(?m)\s+[+-]\d+ms$", "", text)


def without_charge_times(text: str) -> str:
    """Two charges may be created in the same second or not: drop their ``created`` line."""
    return re.sub(r"(?m)^\s*response\.body\.created: .*\n", "", text)


def ls_durations(text: str) -> str:
    """The ``ms`` column of ``flux ls`` (a bare number): ``12``, right-aligned."""
    return re.sub(r"(?m)^([0-9a-f-]{18}  .+? [1-5]\d\d)( +\d+)(?=  |$)",
                  lambda m: m[1] + "12".rjust(len(m[2])), text)


def jobs_after_requests(text: str) -> str:
    """A sign-up's welcome email is a job the worker picks up within half a second of the
    commit, which is now and then before flux dev has printed the sign-up's own line: put
    the job's line after it, where it almost always is."""
    lines = text.splitlines()
    for i in range(len(lines) - 1):
        if "welcome email sent" in lines[i] and " POST " in lines[i + 1]:
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
    return "\n".join(lines)


def as_shown_window(text: str) -> str:
    """The window incident replay says it read, as the command shown (14:20..14:25) names
    it: the run's real window is a few seconds wide, which the normaliser makes one instant."""
    text = text.replace("2026-03-10 14:22:31 → 14:22:31 (UTC)", "2026-03-10 14:20 → 14:25 (UTC)")
    text = re.sub(r'("start": "2026-03-10T)14:22:31', r"\g<1>14:20:00", text)
    return re.sub(r'("end": "2026-03-10T)14:22:31', r"\g<1>14:25:00", text)


def in_order(text: str) -> str:
    """``flux incident replay`` prints each result as it completes: sort them by id."""
    lines = text.splitlines(keepends=True)
    results = [i for i, line in enumerate(lines) if line.startswith(("  ✓ ", "  ✗ "))]
    if results:
        first, last = results[0], results[-1] + 1
        lines[first:last] = sorted(lines[first:last], key=lambda line: line[4:22])
    return "".join(lines)


# --- the story -----------------------------------------------------------------------------

def tell(story: Story) -> None:
    """Everything docs/ shows, in the order docs/tour.md tells it."""
    s = story
    s.flux("init", "init", "my-app", cwd=s.home)

    # A healthy shop.
    _, ada, signup_ok = s.post("signup", {"email": "ada@example.com"}, "curl-signup")
    s.job_done(ada["id"])
    _, _, checkout_ok = s.post("checkout", {"user_id": 1, "amount_cents": 900}, "curl-checkout")
    s.post("update_order_status", {"order_id": 1, "status": "shipped"})
    _, _, duplicate = s.post("signup", {"email": "ada@example.com"}, "curl-signup-duplicate")
    event = {"id": "evt_1", "type": "charge.refunded",
             "data": {"order_id": 1, "charge_id": "ch_1"}}
    s.post("webhooks/payments", event)
    s.post("webhooks/payments", event)  # a duplicate delivery
    _, grace, _ = s.post("signup", {"email": "grace@example.com"})
    s.job_done(grace["id"])
    s.post("checkout", {"user_id": grace["id"], "amount_cents": 2500})
    assert s.dev is not None
    s.keep("dev-requests", jobs_after_requests(s.dev.output()))

    # The incident: the provider rate-limits, then changes the shape of its answer.
    next_second()
    window_start = hhmmss()
    s.provider_mode("rate_limit", "provider-rate-limit")
    _, _, rate_limited = s.post("checkout", {"user_id": 1, "amount_cents": 900},
                                "curl-checkout-429")
    s.provider_mode("shape_change", "provider-shape-change")
    _, _, reshaped = s.post("checkout", {"user_id": grace["id"], "amount_cents": 1200},
                            "curl-checkout-reshaped")
    s.post("checkout", {"user_id": 1, "amount_cents": 400})
    s.provider_mode("ok")
    s.post("checkout", {"user_id": grace["id"], "amount_cents": 700})
    next_second()
    window = f"{window_start}..{hhmmss()}"
    s.keep("dev-incident", s.dev.output())

    # Questions.
    s.flux("ls", "ls", edit=ls_durations)
    s.flux("ls-5xx", "ls", "--status", "5xx", edit=ls_durations)
    s.flux("ls-json", "ls", "--function", "checkout", "--limit", "1", "--json")
    short = {name: rid[:18] for name, rid in (("ok", checkout_ok), ("dup", duplicate),
                                              ("429", rate_limited), ("shape", reshaped))}
    s.flux("why-constraint", "why", short["dup"])
    s.flux("why-rate-limit", "why", short["429"])
    s.flux("why-payload-shape", "why", short["shape"])
    s.flux("why-json", "why", short["shape"], "--json")
    s.flux("trace-checkout", "trace", short["ok"])
    s.flux("trace-signup", "trace", signup_ok[:18])
    s.flux("trace-json", "trace", short["dup"], "--json")
    s.flux("trace-diff", "trace", "diff", short["ok"], short["shape"],
           edit=lambda t: without_charge_times(without_latency_deltas(t)))
    s.flux("history-orders", "state", "history", "orders", "--id", "1")
    s.flux("history-users", "state", "history", "users", "--id", "1")
    s.flux("history-json", "state", "history", "users", "--id", "1", "--json")
    s.flux("blame-users", "state", "blame", "users", "--id", "1")
    s.flux("blame-orders", "state", "blame", "orders", "--limit", "2")
    s.flux("blame-json", "state", "blame", "orders", "--id", "1", "--json")
    s.flux("explain-function", "explain", "update_order_status", "--input",
           '{"order_id": 1, "status": "shipped"}')
    s.flux("explain-sql", "explain", "--sql",
           "SELECT id, status FROM orders WHERE user_id = 1 AND status = 'paid'")
    s.flux("replay-failing", "replay", short["shape"], codes=(1,))
    s.flux("queue-ls", "queue", "ls")
    job = json.loads(s.flux(None, "queue", "ls", "--json", "--limit", "1"))["jobs"][0]["id"]
    s.flux("queue-show", "queue", "show", job[:18])
    s.flux("queue-dead", "queue", "dead")
    s.flux("record-export", "record", "export", short["shape"], "-o", "checkout-500.json")
    s.flux("record-import", "record", "import", "checkout-500.json")
    s.flux("record-pin", "record", "pin", short["shape"])
    s.flux("test-generate", "test", "generate", short["shape"])
    generated = next((s.shop / "tests").glob("test_replay_*.py"))
    s.keep("test-generate-file", generated.read_text())
    s.flux("record-export-dir", "record", "export", "--function", "checkout", "-o", "records")
    s.pytest("pytest-records", "records", "--flux-records", "records", "-v")
    s.flux("check", "check")
    (s.shop / "lint_demo.py").write_text(LINT_DEMO)  # not in functions/: flux dev ignores it
    s.keep("lint-demo-file", LINT_DEMO)
    s.flux("check-findings", "check", "lint_demo.py", codes=(1,))
    s.flux("db-status", "db", "status", edit=lambda t: re.sub(r"(?m)^\s*runs as .*\n", "", t))
    s.flux("db-url", "db", "url")
    s.flux("db-start", "db", "start")
    s.flux("db-migrate", "db", "migrate")
    s.psql("psql-failures", s.query("example_failures"))
    s.psql("psql-history", s.query("example_history"))
    s.psql("psql-blame", s.query("example_blame"))
    s.psql("psql-request", s.query("example_request_changes").replace(
        "%(request)s", f"'{short['429']}%'"))
    s.psql("psql-jobs", s.query("example_jobs"))
    server = EmbeddedServer(s.shop / ".flux").running()
    assert server is not None
    s.schema, s.relations = schema_blocks(server.conninfo("flux"))

    # The fix, proved on the recorded traffic, then the failed checkouts finished.
    checkout = s.shop / "functions" / "checkout.py"
    before = checkout.read_text()
    after = before.replace('    charge_id = charge["id"]\n', FIX)
    assert after != before, "examples/shop/functions/checkout.py no longer reads charge['id']"
    s.commit("checkout: read the charge id of the provider's v2 answers",
             {"functions/checkout.py": after})
    s.keep("fix-patch", s.git("show", "--format=", "HEAD"))
    s.dev.wait_for("checkout reloaded")
    s.keep("dev-reload", s.dev.output())
    s.flux("replay-passing", "replay", short["shape"])
    s.flux("replay-json", "replay", short["shape"], "--json")
    s.flux("resume-dry-run", "resume", short["shape"], "--dry-run")
    s.flux("incident", "incident", "replay", "--window", window, codes=(1,), edit=in_order,
           shown=["incident", "replay", "--window", "14:20..14:25"])
    s.flux("incident-json", "incident", "replay", "--window", window, "--status", "5xx",
           "--json", codes=(1,), shown=["incident", "replay", "--window", "14:20..14:25",
                                        "--status", "5xx", "--json"])
    for key in ("incident", "incident-json"):
        s.outputs[key] = as_shown_window(s.outputs[key])
    s.flux("resume", "resume", short["shape"])
    s.flux("resume-again", "resume", short["shape"], codes=(1,))
    s.flux("resume-json", "resume", short["429"], "--json")

    # A regression, found by bisecting the commits since the last good sign-up.
    s.commit("docs: how the shop is run", {"README.md": (s.shop / "README.md").read_text()
                                           + "\nSee docs/tour.md for a walk through.\n"})
    signup = s.shop / "functions" / "signup.py"
    s.commit("signup: one account per mailbox (ignore +tags)",
             {"functions/signup.py": signup.read_text().replace(
                 "    email = email.strip()\n", TAG_BUG)})
    s.dev.wait_for("signup reloaded")
    status = s.shop / "functions" / "update_order_status.py"
    s.commit("update_order_status: say why the status is checked twice",
             {"functions/update_order_status.py": status.read_text().replace(
                 "typo is a clear 400", "typo is a clear 400 naming the valid statuses")})
    s.dev.wait_for("update_order_status reloaded")
    _, _, tagged = s.post("signup", {"email": "lin+news@example.com"}, "curl-signup-tag")
    s.flux("why-regression", "why", tagged[:18])
    s.flux("bisect", "bug", "bisect", "--request", tagged[:18])
    s.dev.output()  # reloads and the failed sign-up: not shown

    # flux install on a database the shop did not make: an older app's, on the same server.
    install_story(s)

    # Capture modes, a production server beside it, and the end of flux dev.
    s.flux("capture-wal", "capture", "switch", "wal")
    s.flux("capture-trigger", "capture", "switch", "trigger")
    serve_port = free_port()
    s.norm.ports[serve_port] = DEV_PORT
    serve = Process([sys.executable, "-m", "cli", "serve", "--port", str(serve_port)],
                    s.shop, s.env)
    serve.wait_for("ready")
    serve.proc.send_signal(signal.SIGTERM)
    s.keep("serve", "$ flux serve\n" + serve.finish())
    s.dev.proc.send_signal(signal.SIGINT)
    s.keep("dev-stop", "^C\n" + s.dev.finish())


def install_story(s: Story) -> None:
    """``flux install`` on an existing application's database (``legacy``: customers and an
    audit log without a primary key): the check, the install, a second run."""
    import psycopg

    server = EmbeddedServer(s.shop / ".flux").running()
    assert server is not None
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE legacy")
    with psycopg.connect(server.conninfo("legacy"), autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id bigserial PRIMARY KEY, "
                     "email text UNIQUE NOT NULL, plan text NOT NULL)")
        conn.execute("INSERT INTO customers (email, plan) VALUES ('ada@example.com', 'pro'), "
                     "('grace@example.com', 'free'), ('lin@example.com', 'free')")
        conn.execute("CREATE TABLE audit_log (at timestamptz DEFAULT now(), line text)")
        conn.execute("ANALYZE")
    env = {"DATABASE_URL": f"postgresql://postgres:{EmbeddedServer(s.shop / '.flux').password()}"
                           f"@127.0.0.1:{server.port}/legacy"}
    s.flux("install-check", "install", "--check", cwd=s.home, env=env, codes=(1,))
    s.flux("install", "install", "--yes", cwd=s.home, env=env)
    s.flux("install-again", "install", cwd=s.home, env=env)


FIX = '''\
    # The provider's v2 answers name the charge "charge_id" (and send amounts as text).
    charge_id = charge["id"] if "id" in charge else charge["charge_id"]
'''

TAG_BUG = '''\
    email = email.strip()
    # ada+news@example.com is ada's mailbox: one account per mailbox.
    email = email.split("+")[0]
'''

LINT_DEMO = '''\
import os
import random
import time

import redis
import requests
from flux import function


@function
def quote(ctx, input):
    started = time.time()
    price = requests.get(os.environ["PRICES_URL"]).json()["price"]  # captured: no finding
    redis.Redis().set("last_price", price)
    return {"price": price * random.uniform(0.9, 1.1), "took": time.time() - started}
'''


# --- blocks made from the code and the catalog ---------------------------------------------

def options_block(words: str) -> str | None:
    """The arguments and options of ``flux WORDS`` as a Markdown table, from the CLI.
    (Typer's commands are click's, duck-typed: Typer may bring a click of its own.)"""
    import typer

    from cli.main import app

    command: Any = typer.main.get_command(app)
    for word in words.split():
        if word not in getattr(command, "commands", {}):
            return None
        command = command.commands[word]
    rows = []
    for param in command.params:
        if param.name == "help" or getattr(param, "hidden", False):
            continue
        help_text = " ".join((getattr(param, "help", None) or "").split())
        if param.param_type_name == "argument":
            name = f"`{_metavar(param)}`"
            if not param.required:
                help_text += " (optional)"
        else:
            spelled = ", ".join(param.opts + param.secondary_opts)
            value = "" if param.is_flag else " " + _metavar(param)
            name = f"`{spelled}{value}`"
            if param.required:
                help_text += " Required."
            elif param.default not in (None, False, ()) and not param.is_flag:
                help_text += f" Default: `{param.default}`."
        rows.append([name, help_text.strip()])
    for name, sub in getattr(command, "commands", {}).items():
        rows.append([f"`{name}`", " ".join((sub.help or "").split("\n\n")[0].split())])
    return table(["usage", "meaning"], rows) if rows else "No options."


# How DESIGN.md spells the values of options and arguments, by parameter name.
METAVARS = {"request": "ID", "request_id": "ID", "target": "ID|FILE", "good": "REV",
            "bad": "REV", "window": "A..B", "when": "A..B", "ids": "ID,ID,…", "function": "F",
            "status": "S", "since": "T", "limit": "N", "port": "N", "workers": "N",
            "concurrency": "N", "id": "PK", "input": "JSON", "sql": "SQL", "db": "tape|live",
            "expect": "same", "output": "FILE", "path": "FILE", "paths": "PATH", "job": "JOB",
            "host": "HOST", "asgi": "MODULE:APP"}


def _metavar(param: Any) -> str:
    return METAVARS.get(param.name) or param.metavar or param.name.upper()


def keys_block(words: str) -> str | None:
    """The keys of the terminal UI, from its bindings."""
    if words != "trace debug":
        return None
    from cli.tui.app import DebugApp

    rows = [[f"`{b.key_display or b.key}`", b.description]  # type: ignore[union-attr]
            for b in DebugApp.BINDINGS if getattr(b, "show", True)]
    return table(["key", "does"], rows)


def schema_blocks(conninfo: str) -> tuple[dict[str, str], list[str]]:
    """Each table and view of the ``flux`` schema as Markdown, from the live catalog."""
    import psycopg

    from flux.store._queries import load

    q = load("docs")
    blocks: dict[str, str] = {}
    with psycopg.connect(conninfo) as conn:
        relations = conn.execute(q.relations).fetchall()
        for name, kind in relations:
            columns = conn.execute(q.columns, {"relation": name}).fetchall()
            rows = [[f"`{column}`", f"`{type_}`", "" if not_null else "yes",
                     f"`{default}`" if default else ""]
                    for column, type_, not_null, default in columns]
            if kind == "view":
                rows = [row[:2] for row in rows]
                text = table(["column", "type"], rows)
            else:
                text = table(["column", "type", "null", "default"], rows)
            rules = [r[0] for r in conn.execute(q.constraints, {"relation": name})]
            indexes = [r[0] for r in conn.execute(q.indexes, {"relation": name})]
            if rules:
                text += "\n\nConstraints: " + "; ".join(f"`{r}`" for r in rules) + "."
            if indexes:
                text += "\n\nIndexes: " + "; ".join(f"`{i}`" for i in indexes) + "."
            blocks[name] = text
    return blocks, [name for name, _ in relations]


# --- main ----------------------------------------------------------------------------------

def language(key: str) -> str:
    """The code block's language: a diff, a Python file, or a terminal session."""
    return "diff" if key.endswith("-patch") else "python" if key.endswith("-file") \
        else "console"


def pages(docs: Path) -> Iterator[Path]:
    yield from sorted(p for p in docs.rglob("*.md") if "_build" not in p.parts)


@contextmanager
def workdir() -> Iterator[Path]:
    # In /tmp, mode 755: as root, the embedded server's own user must reach the project.
    home = Path(tempfile.mkdtemp(prefix="flux-docs-", dir="/tmp"))
    home.chmod(0o755)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def generate(docs: Path, dump: Path | None = None) -> list[Path]:
    """Tell the story and rewrite the generated blocks of every page under ``docs``;
    returns the pages that changed."""
    with workdir() as home:
        story = Story(home)
        shutil.copytree(SHOP, story.shop, ignore=shutil.ignore_patterns(
            ".flux", "__pycache__", "*.wasm", "tests"))
        try:
            story.start()
            tell(story)
        finally:
            story.stop()
    if dump is not None:
        dump.write_text("".join(f"<!-- output: {key} -->\n{text}\n<!-- /output -->\n\n"
                                for key, text in story.outputs.items()), encoding="utf-8")
    makers: dict[str, Callable[[str], str | None]] = {
        "output": lambda key: code_block(story.outputs[key], language(key))
        if key in story.outputs else None,
        "options": options_block,
        "schema": story.schema.get,
        "keys": keys_block,
    }
    changed = []
    asked: set[tuple[str, str]] = set()
    for page in pages(docs):
        text = page.read_text(encoding="utf-8")
        asked.update(markers(text))
        new = fill(text, makers, name=str(page.relative_to(docs)))
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed.append(page)
    missing = [name for name in story.relations if ("schema", name) not in asked]
    if missing:
        raise MissingBlock(f"docs/schema.md has no block for {', '.join(missing)}: add "
                           f"<!-- schema: NAME --><!-- /schema --> for each")
    unused = sorted(set(story.outputs) - {arg for kind, arg in asked if kind == "output"})
    if unused:
        print(f"note: captured but shown nowhere: {', '.join(unused)}", file=sys.stderr)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, default=REPO / "docs",
                        help="the docs directory to rewrite (default: docs/ of this tree)")
    parser.add_argument("--dump", type=Path, help="also write every captured output, under "
                        "its key, to this file (to see what a page can show)")
    args = parser.parse_args()
    # SIGTERM (a test's timeout) unwinds like an error: the servers, processes and the
    # temporary directory of the run are cleaned up on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("error: stopped by SIGTERM"))
    started = time.monotonic()
    try:
        changed = generate(args.docs.resolve(), args.dump)
    except (MissingBlock, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    for page in changed:
        print(f"rewrote {page}")
    print(f"docs generated in {time.monotonic() - started:.0f}s "
          f"({len(changed)} page(s) changed)")


if __name__ == "__main__":
    main()
