"""The web view in a real browser: Playwright driving Debian's Chromium (one per module)
against the example shop served in-process (one server per module, on its own event loop in
a thread, so the synchronous Playwright API drives the page from the test's thread).

Screenshots go to docs/web/ only when FLUX_SCREENSHOTS=1 (docs/web.md shows them), so an
ordinary run leaves the tree clean."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from flux.runtime._access import AdminAccess
from flux.store._embedded import ServerInfo
from tests.fixtures.postgres import create_database, drop_database
from tests.fixtures.shop import SECRET, FakeProvider, Shop, copy_project, serve_app

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "docs" / "web"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "no Chromium on this machine: scripts/test installs Debian's `chromium` "
        "package when run as root (apt-get install -y chromium)"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Per module, not per session: while it runs, Playwright's sync API holds an event loop
    # running on this thread, and every async test after it would find it there.
    with sync_playwright() as playwright:
        # --no-sandbox: the suite may run as root, where Chromium's sandbox refuses to start
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    """Saved for the docs when FLUX_SCREENSHOTS=1."""
    if os.environ.get("FLUX_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@dataclass
class Live:
    """The shop served on a loop of its own; calls from the test's thread."""

    shop: Shop
    loop: asyncio.AbstractEventLoop
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.shop.url

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def post(
        self, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, Any, str]:
        data = raw if raw is not None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return (
                    response.status,
                    json.loads(response.read()),
                    response.headers["x-flux-request-id"],
                )
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), error.headers["x-flux-request-id"]

    def reload(self, relative: str) -> None:
        async def reload() -> None:
            self.shop.runtime.reload(self.shop.root / relative)

        self.run(reload())

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.shop.db) as conn:
            return conn.execute(query).fetchall()


def serve_live(root: Path, db: str, admin: AdminAccess) -> Iterator[Live]:
    """Start the provider and the shop on a new loop in a thread; stop both after."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ready: Future[Live] = Future()
    stop = asyncio.Event()

    async def main() -> None:
        provider = FakeProvider()
        await provider.start()
        try:
            copy_project(root, provider.url)
            async with serve_app(root, db, provider, admin=admin) as shop:
                ready.set_result(Live(shop, loop))
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            await provider.stop()

    done = asyncio.run_coroutine_threadsafe(main(), loop)
    try:
        yield ready.result(120)
    finally:
        loop.call_soon_threadsafe(stop.set)
        done.result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@pytest.fixture(scope="module")
def module_db(pg_server: ServerInfo) -> Iterator[str]:
    """One database for the module's server (the tests read one story in order)."""
    name = create_database(pg_server)
    try:
        yield pg_server.conninfo(name)
    finally:
        drop_database(pg_server, name)


@pytest.fixture(scope="module")
def payments_key() -> Iterator[None]:
    previous = os.environ.get("SHOP_PAYMENTS_API_KEY")
    os.environ["SHOP_PAYMENTS_API_KEY"] = SECRET
    yield
    if previous is None:
        os.environ.pop("SHOP_PAYMENTS_API_KEY", None)
    else:
        os.environ["SHOP_PAYMENTS_API_KEY"] = previous
