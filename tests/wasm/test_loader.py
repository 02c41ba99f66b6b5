"""Loading Wasm modules: one sentence for a module that cannot work, a cache keyed by
content, and reload on change in `flux dev` (module and sidecar)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import wasmtime

from flux._errors import WasmError
from flux.runtime._loader import Registry, function_file, load_all, load_file
from flux.runtime.wasm._host import GuestCall, call_guest, exports, read, write
from flux.runtime.wasm._runner import shared_engine
from tests.runtime.test_serve import free_port, post
from tests.wasm.conftest import MODULES

HANDLE = '(func (export "handle") (param i32 i32) (result i64) (i64.const 0))'
ALLOC = '(func (export "alloc") (param i32) (result i32) (i32.const 64))'


def module(tmp_path: Path, name: str, body: str, sidecar: str | None = None) -> Path:
    path = tmp_path / name
    path.write_text(body)
    if sidecar is not None:
        path.with_suffix(".toml").write_text(sidecar)
    return path


def test_modules_that_cannot_work_are_refused_in_one_sentence(tmp_path: Path) -> None:
    cases = {
        "nohandle.wat": (f'(module (memory (export "memory") 1) {ALLOC})', None,
                         "does not export 'handle'"),
        "wasi.wat": ('(module (import "wasi_snapshot_preview1" "fd_write" '
                     '(func (param i32 i32 i32 i32) (result i32))) '
                     f'(memory (export "memory") 1) {ALLOC} {HANDLE})', None,
                     "imports wasi_snapshot_preview1.fd_write"),
        "syntax.wat": ("(module (func $f (i32.bogus)))", None, "does not compile"),
        "badtype.wat": ('(module (import "flux" "now" (func (result i32))) '
                        f'(memory (export "memory") 1) {ALLOC} {HANDLE})', None,
                        "cannot be linked"),
        "options.wat": (f'(module (memory (export "memory") 1) {ALLOC} {HANDLE})',
                        "timeout = 1\nmemroy_mb = 3\n", "unknown option 'memroy_mb'"),
        "slow.wat": (f'(module (memory (export "memory") 1) {ALLOC} {HANDLE})',
                     "timeout = -1\n", "timeout must be a positive number"),
    }
    for name, (text, sidecar, expected) in cases.items():
        loaded = load_file(module(tmp_path, name, text, sidecar))
        assert loaded.spec is None and loaded.error is not None, name
        assert expected in loaded.error.message, (name, loaded.error.message)
        assert "\n" not in loaded.error.message


def test_a_module_loads_as_a_function_spec_with_its_sidecar_options(tmp_path: Path) -> None:
    path = module(tmp_path, "hello.wat", f'(module (memory (export "memory") 1) {ALLOC} '
                  f'{HANDLE})', 'route = "/greet"\ntimeout = 2.5\nmemory_mb = 4\n')
    spec = load_file(path).spec
    assert spec is not None
    assert (spec.name, spec.route, spec.timeout, spec.runtime, spec.is_async) == (
        "hello", "greet", 2.5, "wasm", True)
    assert spec.handler.memory_cap == 4 * 1024 * 1024
    again = load_file(path).spec
    assert again is not None and again.handler.compiled is spec.handler.compiled  # cached
    assert shared_engine().compile(path) is spec.handler.compiled


def test_load_all_serves_python_and_wasm_side_by_side(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    functions.mkdir()
    for name in ("echo.wat", "divide.wat", "spin.wat", "spin.toml"):
        shutil.copy(MODULES / name, functions / name)
    (functions / "hi.py").write_text(
        "from flux import function\n\n\n@function\ndef hi(ctx, input):\n    return 1\n")
    (functions / "echo.wasm").write_bytes(b"\0asm\1\0\0\0")  # a second "echo": refused
    registry = Registry()
    errors = load_all(functions, registry)
    assert sorted(registry.by_name) == ["divide", "echo", "hi", "spin"]
    assert {s.runtime for s in registry.by_name.values()} == {"python", "wasm"}
    assert registry.by_name["spin"].timeout == 3.0
    assert [e.file.name for e in errors] == ["echo.wat"] or \
        [e.file.name for e in errors] == ["echo.wasm"]


def test_the_watcher_maps_a_sidecar_to_its_module(tmp_path: Path) -> None:
    wat = module(tmp_path, "a.wat", "")
    assert function_file(wat) == wat
    assert function_file(tmp_path / "a.toml") == wat
    assert function_file(tmp_path / "b.toml") is None
    assert function_file(tmp_path / "notes.txt") is None
    assert function_file(tmp_path / "_helper.py") is None


def test_dev_reloads_a_wasm_function_when_it_or_its_sidecar_changes(
        db: str, tmp_path: Path, flux_process) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "app"
    (root / "functions").mkdir(parents=True)
    (root / "flux.toml").write_text('name = "wasmdev"\n')
    echo = root / "functions" / "echo.wat"
    shutil.copy(MODULES / "echo.wat", echo)
    port = free_port()
    dev = flux_process(["dev", "--port", str(port)], root, env={"DATABASE_URL": db})
    dev.wait_for("ready")
    url = f"http://127.0.0.1:{port}"
    assert post(f"{url}/echo", {"a": 1})[:2] == (200, {"echo": {"a": 1}})

    dev.lines.clear()  # wait_for reads what was printed before, too
    echo.write_text(echo.read_text().replace('"{\\"echo\\":"', '"{\\"ECHO\\":"'))
    assert "echo reloaded" in dev.wait_for("echo reloaded")
    assert post(f"{url}/echo", {"a": 2})[:2] == (200, {"ECHO": {"a": 2}})

    dev.lines.clear()
    echo.with_suffix(".toml").write_text('route = "say"\n')
    dev.wait_for("echo reloaded")
    assert post(f"{url}/say", {"a": 3})[:2] == (200, {"ECHO": {"a": 3}})

    dev.lines.clear()
    echo.write_text("(module (func $oops (i32.nope)))")
    assert "does not compile" in dev.wait_for("echo.wat:")
    assert post(f"{url}/say", {"a": 4})[0] == 200  # the last good version keeps serving


def test_modules_with_the_abi_types_take_the_direct_call_path(tmp_path: Path) -> None:
    """alloc (i32) -> i32 and handle (i32, i32) -> i64 are called without wasmtime-py's
    per-call type lookups; any other types go through Func.__call__ (and its checks)."""
    engine = shared_engine()
    body = ('(memory (export "memory") 1) '
            '(func (export "alloc") (param i32) (result i32) (i32.add (local.get 0) '
            '(i32.const 100)))')
    exact = tmp_path / "exact.wat"
    exact.write_text(f'(module {body} (func (export "handle") (param i32 i32) (result i64) '
                     '(i64.const 7)))')
    other = tmp_path / "other.wat"
    other.write_text(f'(module {body} (func (export "handle") (param i32 i32) (result i32) '
                     '(i32.const 7)))')
    fast, slow = engine.compile(exact), engine.compile(other)
    assert fast.fast and not slow.fast
    for compiled in (fast, slow):
        store = wasmtime.Store(engine.engine)
        store.set_epoch_deadline(1000)
        memory, alloc, handle = exports(store, compiled.pre.instantiate(store))
        assert isinstance(memory, wasmtime.Memory) and isinstance(alloc, wasmtime.Func)
        assert isinstance(handle, wasmtime.Func)
        assert call_guest(store, alloc, compiled.fast, 5) == 105 == alloc(store, 5)
        assert call_guest(store, handle, compiled.fast, 1, 2) == 7
        # memory written and read through its address, as the host imports do
        call = GuestCall(None, "exact", store, memory, alloc, fast=compiled.fast)  # type: ignore[arg-type]
        assert write(store, call, b'{"a":1}', "the input") == (107 << 32) | 7
        assert bytes(memory.read(store, 107, 114)) == b'{"a":1}'
        assert read(store, memory, 107, 7, "the answer") == b'{"a":1}'
        with pytest.raises(WasmError, match="lie outside the guest's memory of 65536 bytes"):
            read(store, memory, 65530, 7, "the answer")
