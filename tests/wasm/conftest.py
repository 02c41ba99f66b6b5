"""The shop served with its Wasm functions: deposit.wat, quote.wasm (built from C once per
session with the ziglang wheel) and the misbehaving modules of tests/wasm/modules."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fixtures.shop import SECRET, SHOP, FakeProvider, Shop, copy_project, serve_app

MODULES = Path(__file__).resolve().parent / "modules"


def _build_script() -> object:
    spec = importlib.util.spec_from_file_location("shop_wasm_build", SHOP / "wasm" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def quote_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/shop/wasm/quote.c compiled by the repo's build script, once per session."""
    build = _build_script()
    return build.build(SHOP / "wasm" / "quote.c", tmp_path_factory.mktemp("wasm"))  # type: ignore[attr-defined,no-any-return]


def wasm_project(root: Path, provider: FakeProvider, quote: Path) -> Path:
    copy_project(root, provider.url)
    shutil.copy(quote, root / "functions" / "quote.wasm")
    for module in MODULES.iterdir():
        shutil.copy(module, root / "functions" / module.name)
    return root


@pytest.fixture
async def wasm_shop(db: str, provider: FakeProvider, tmp_path: Path, quote_wasm: Path,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Shop]:
    monkeypatch.setenv("SHOP_PAYMENTS_API_KEY", SECRET)
    root = wasm_project(tmp_path / "shop", provider, quote_wasm)
    async with serve_app(root, db, provider) as app:
        yield app
