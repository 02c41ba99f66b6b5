"""What the stories' handlers talk to, over real HTTP on loopback: a payments provider that
counts every request it receives, and helpers to build a project as a new user would."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web

from tests.fixtures.projects import run_flux

GIT_ENV = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
           "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}


class Provider:
    """A payments API: ``POST …/charges`` (idempotent by ``Idempotency-Key``), ``GET
    …/customers/{id}``, ``GET …/balance``; any path prefix (an account id in the path) is
    accepted. ``requests`` holds every request received; ``charges`` counts distinct
    charges. ``shape = "v2"`` renames the customer's ``email`` to ``email_address``; a charge
    for a customer in ``declined`` is answered 402 ``card_declined``, as a card network's."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.charges = 0
        self.shape = "v1"
        self.declined: set[str] = set()
        self._idempotent: dict[str, dict[str, Any]] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append({"method": request.method, "path": request.path,
                              "query": dict(request.query), "headers": dict(request.headers),
                              "body": body})
        if request.path.endswith("/charges") and request.method == "POST":
            if (body or {}).get("customer") in self.declined:
                return web.json_response({"error": {"type": "card_error",
                                                    "code": "card_declined"}}, status=402)
            key = request.headers.get("Idempotency-Key", f"anon-{len(self.requests)}")
            if key not in self._idempotent:
                self.charges += 1
                self._idempotent[key] = {"id": f"ch_{self.charges}", "status": "succeeded",
                                         "amount": (body or {}).get("amount")}
            return web.json_response(self._idempotent[key])
        if "/customers/" in request.path:
            cid = request.path.rsplit("/", 1)[1]
            email = {"email": f"{cid}@example.com"} if self.shape == "v1" else \
                {"email_address": f"{cid}@example.com"}
            return web.json_response({"id": cid, "name": f"Customer {cid}", **email})
        if request.path.endswith("/balance"):
            return web.json_response({"available": 1200, "currency": "usd"})
        return web.json_response({"ok": True, "path": request.path})


def init_project(parent: Path, name: str) -> Path:
    """``flux init NAME`` in ``parent``, as a new user starts."""
    done = run_flux(["init", name], parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return parent / name


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True, env={**os.environ, **GIT_ENV}).stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def flux(project: Path, db: str, *args: str, env: dict[str, str] | None = None
         ) -> tuple[int, Any, str]:
    """Run ``flux ARGS --json`` in the project: (exit code, the JSON document, everything
    printed — stdout and stderr — for the leak check)."""
    done = run_flux([*args, "--json"], project, env={"DATABASE_URL": db, **GIT_ENV,
                                                    **(env or {})}, timeout=600)
    try:
        document = json.loads(done.stdout) if done.stdout.strip() else None
    except ValueError:
        document = None
    return done.returncode, document, done.stdout + done.stderr


def dump(db: str) -> str:
    """Every row of every table, Flux's and the app's, as text: what a pg_dump holds."""
    out = []
    with psycopg.connect(db) as conn:
        tables = conn.execute(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) "
            "FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')").fetchall()
        for (table,) in tables:
            for (row,) in conn.execute(f"SELECT t::text FROM {table} t"):
                out.append(row)
    return "\n".join(out)
