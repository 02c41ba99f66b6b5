"""A real ``flux serve`` of the shop with an admin token and tenants, and login roles made
for one test (roles belong to the cluster, so each test's names are its own)."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.fixtures.processes import FluxProcess
from tests.fixtures.shop import SECRET, copy_project

TENANTS = '\n[tenants]\nheader = "x-tenant-id"\n'
_roles = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_tenants(root: Path) -> Path:
    toml = root / "flux.toml"
    toml.write_text(toml.read_text() + TENANTS)
    return root


@dataclass
class Served:
    url: str
    token: str
    db: str
    root: Path
    process: FluxProcess
    env: dict[str, str]

    def call(self, path: str, *, token: str | None = None, method: str = "GET",
             body: Any = None, headers: dict[str, str] | None = None
             ) -> tuple[int, Any, dict[str, str]]:
        """One HTTP call: (status, JSON body, headers)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=headers or {})
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), dict(error.headers)


def serve_project(root: Path, db: str, flux_process: type[FluxProcess], *,
               token: str | None, args: tuple[str, ...] = ("serve",),
               host: str = "127.0.0.1") -> Served:
    port = free_port()
    env = {"DATABASE_URL": db, "SHOP_PAYMENTS_API_KEY": SECRET}
    if token is not None:
        env["FLUX_ADMIN_TOKEN"] = token
    process = flux_process([*args, "--port", str(port), "--host", host], root, env=env)
    process.wait_for("ready")
    return Served(f"http://127.0.0.1:{port}", token or "", db, root, process, env)


@pytest.fixture
def served(db: str, provider: Any, tmp_path: Path, flux_process: type[FluxProcess]
           ) -> Iterator[Served]:
    """``flux serve`` of the shop (tenants from x-tenant-id, no queue worker) and a long
    admin token."""
    root = with_tenants(copy_project(tmp_path / "shop", provider.url))
    toml = root / "flux.toml"  # queued jobs stay queued: what is read stays still
    toml.write_text(toml.read_text() + "\n[queue]\nconcurrency = 0\n")
    token = secrets.token_urlsafe(1500)  # long: a naive comparison would have time to show
    server = serve_project(root, db, flux_process, token=token)
    yield server
    server.process.signal(signal.SIGTERM)
    server.process.wait(30)


@pytest.fixture
def login_role(db: str) -> Iterator[Callable[..., tuple[str, str]]]:
    """Make a LOGIN role for this test: ``make(prefix, *in_roles)`` → (name, conninfo to
    the test database as that role, through the trusted socket)."""
    made: list[str] = []
    admin = conninfo_to_dict(db)

    def make(prefix: str, *in_roles: str) -> tuple[str, str]:
        name = f"{prefix}_{os.getpid()}_{next(_roles)}"
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
            for role in in_roles:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role),
                                                              sql.Identifier(name)))
        made.append(name)
        return name, make_conninfo(**{**admin, "user": name})

    yield make
    with psycopg.connect(db, autocommit=True) as conn:
        for name in made:
            # What a test made it own or granted it in this database goes first.
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(
                sql.Identifier(name)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
