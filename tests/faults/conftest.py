"""Fixtures of the fault suite: a PostgreSQL of its own that a test may stop and start
(the session's shared server must never go away under the other tests), and the example
shop configured with a small pool so that faults show within seconds."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from flux.jobs._worker import Background, QueueConfig
from flux.store._database import ensure_database
from flux.store._embedded import EmbeddedServer, ServerInfo
from flux.store._migrate import migrate
from tests.fixtures.shop import SECRET, Shop, copy_project, serve_app

# Small on purpose: the pool runs out, and a slow store sheds load, within a few requests.
FAULT_TOML = """
[database]
pool_size = 6
pool_timeout = "2s"
"""

_names = itertools.count()


@dataclass
class RestartableServer:
    """An embedded PostgreSQL in a directory of its own, stopped and started for real."""

    server: EmbeddedServer
    info: ServerInfo

    def conninfo(self, dbname: str) -> str:
        return self.info.conninfo(dbname)

    def stop(self, mode: str) -> None:
        """``fast`` (SIGINT: sessions terminated, a checkpoint) or ``immediate`` (SIGQUIT:
        every process quits at once, crash recovery at the next start) — what ``pg_ctl stop
        -m fast|immediate`` sends."""
        if mode == "fast":
            assert self.server.stop()
            return
        postmaster = psutil.Process(self.info.pid)
        postmaster.send_signal(signal.SIGQUIT)
        postmaster.wait(30)

    def start(self) -> None:
        info, started = self.server.start()
        assert started
        # Same socket directory and port: the runtime's address stays valid.
        assert (info.socket_dir, info.port) == (self.info.socket_dir, self.info.port)
        self.info = info

    def new_database(self) -> str:
        name = f"fault_{next(_names)}"
        ensure_database(self.conninfo("postgres"), name)
        migrate(self.conninfo(name))
        return self.conninfo(name)


@pytest.fixture(scope="module")
def own_server() -> Iterator[RestartableServer]:
    state = Path(tempfile.mkdtemp(prefix="flux-fault-", dir="/tmp"))
    state.chmod(0o755)  # as root, the server's unprivileged user must reach it
    server = EmbeddedServer(state, settings={"fsync": "off"})
    info, _ = server.start()
    try:
        yield RestartableServer(server, info)
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


@contextlib.asynccontextmanager
async def fault_shop(db: str, provider: object, root: Path, *, toml: str = FAULT_TOML,
                     capture: str = "trigger", jobs: bool = False) -> AsyncIterator[Shop]:
    """The shop on ``db`` with the fault suite's pool settings (and its queue worker and
    cron scheduler running, with ``jobs``)."""
    copy_project(root, provider.url)  # type: ignore[attr-defined]
    config = root / "flux.toml"
    text = config.read_text().replace('capture = "trigger"', f'capture = "{capture}"')
    config.write_text(text + toml)
    async with serve_app(root, db, provider) as shop:  # type: ignore[arg-type]
        background = None
        if jobs:
            background = Background(shop.runtime, QueueConfig(
                concurrency=4, backoff_base=0.2, poll_interval=0.05)).start()
        try:
            yield shop
        finally:
            if background is not None:
                await background.stop()


@pytest.fixture
def shop_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_PAYMENTS_API_KEY", SECRET)
