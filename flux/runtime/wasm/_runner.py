"""WebAssembly functions on wasmtime: a ``.wasm`` or ``.wat`` module in ``functions/`` is
served like a Python function — same route, same record, same replay.

A module becomes a plain ``FunctionSpec`` whose handler is a ``WasmFunction``: the
executor, replay and resume see an async handler and nothing else. Its host imports
(flux/runtime/wasm/_host.py) go through the same ``ctx`` doors as Python code.

- One engine per process, with epoch interruption. A ticker thread advances the epoch every
  ``TICK`` seconds while any guest runs; each call's store gets a deadline of its
  function's timeout, so a runaway loop traps instead of holding its thread forever.
- Modules are compiled once per content hash (``.wat`` through ``wasmtime.wat2wasm``) and
  pre-linked (``InstancePre``); each call instantiates into a fresh ``Store`` of its own,
  capped by ``store.set_limits(memory_size=…)``, so no state survives between requests
  and a replay starts from the same memory as the original.
- A module with the ABI's exact types runs on the event loop's thread, on a stack of its
  own (wasmtime's async calls, flux/runtime/wasm/_fiber.py): a query it makes pauses it,
  the query is awaited as an async Python handler's is, and the guest goes on with the
  answer — no thread, no hop to the loop and back. Its store pauses it at each epoch tick
  rather than trapping: a guest still running then has long work (or a runaway loop) and
  is polled to its end in a worker thread, so the loop serves everything else meanwhile;
  there its ctx calls block on the loop as a sync handler's do, and the function's
  timeout drops it at the next tick.
- Any other module runs in a worker thread of a pool of its own (wasmtime calls are
  synchronous and release the GIL), and its ctx calls reach the event loop through
  ``Execution.bridge``, as a sync Python handler's do.
- Options come from a sidecar ``functions/<name>.toml`` (route, timeout, retries, cron,
  memory_mb); they live beside the module as a decorator lives beside its Python function.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import hashlib
import math
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import wasmtime

from flux._errors import ConfigError, WasmError, WasmMemoryLimit, WasmTrap
from flux._function import (
    FunctionSpec,
    FunctionTimeout,
    parse_methods,
    parse_route,
    validate_cron,
)
from flux.runtime._recorder import CallSite
from flux.runtime.wasm import _fiber
from flux.runtime.wasm._host import (
    SIGNATURES,
    GuestCall,
    abi_types,
    call_guest,
    current_call,
    define_imports,
    exports,
    frames_of,
    read,
    unpack,
    write,
)
from flux.runtime.wasm._source import SourceMap, source_map

if TYPE_CHECKING:
    from flux.runtime._context import Context

SUFFIXES = (".wasm", ".wat")
TICK = 0.01  # seconds per epoch: the granularity of a Wasm timeout
DEFAULT_TIMEOUT = 30.0
DEFAULT_MEMORY_MB = 64
PAGE = 65536
CACHE_SIZE = 64
POOL_THREADS = 32
_OPTIONS = {"route", "methods", "timeout", "retries", "cron", "memory_mb"}


@dataclass(frozen=True)
class Compiled:
    """A module compiled and linked against the host imports, ready to instantiate."""

    digest: str
    pre: wasmtime.InstancePre
    source: SourceMap  # function lines (.wat), local declaration sizes
    fast: bool = False  # alloc and handle have the ABI's exact types (host.call_guest)
    on_loop: bool = False  # linked with async imports: runs on the loop (_fiber.py)


class WasmEngine:
    """The process's one wasmtime engine, its linker, compile cache, epoch ticker and
    worker threads."""

    def __init__(self) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        self.linker = wasmtime.Linker(self.engine)
        define_imports(self.linker)
        # The same imports, the waiting ones async: for the modules that run on the loop.
        self.fiber_linker: wasmtime.Linker | None = None
        if _fiber.AVAILABLE:
            self.fiber_linker = wasmtime.Linker(self.engine)
            define_imports(self.fiber_linker, fiber=True)
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=POOL_THREADS, thread_name_prefix="flux-wasm")
        self._cache: collections.OrderedDict[str, Compiled] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._running = 0
        self._wake = threading.Condition()
        self._ticker: threading.Thread | None = None

    def compile(self, path: Path) -> Compiled:
        """The module at ``path``, compiled once per content (a reload of an unchanged
        file, or the same module under two names, costs a hash)."""
        data = path.read_bytes()
        digest = hashlib.sha256(path.suffix.encode() + data).hexdigest()
        with self._lock:
            if (hit := self._cache.get(digest)) is not None:
                self._cache.move_to_end(digest)
                return hit
        text = None
        try:
            if path.suffix == ".wat":
                text = data.decode("utf-8")
                binary = bytes(wasmtime.wat2wasm(text))
            else:
                binary = data
            module = wasmtime.Module(self.engine, binary)
        except (wasmtime.WasmtimeError, UnicodeDecodeError) as exc:
            raise WasmError(f"does not compile: {_first_line(exc)}") from exc
        check_abi(module)
        fast = abi_types(module)
        linker = self.fiber_linker if fast and self.fiber_linker is not None else self.linker
        try:
            pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise WasmError(f"cannot be linked: {_first_line(exc)}") from exc
        compiled = Compiled(digest, pre, source_map(binary, text), fast,
                            linker is not self.linker)
        with self._lock:
            self._cache[digest] = compiled
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    # -- the epoch ticker: runs only while a guest does ----------------------------------

    def enter(self) -> None:
        with self._wake:
            self._running += 1
            self._wake.notify()
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="flux-wasm-epoch",
                                                daemon=True)
                self._ticker.start()

    def leave(self) -> None:
        with self._wake:
            self._running -= 1

    def _tick(self) -> None:
        while True:
            with self._wake:
                while self._running == 0:
                    self._wake.wait()
            time.sleep(TICK)
            self.engine.increment_epoch()


@functools.cache
def shared_engine() -> WasmEngine:
    """The process-wide engine (wasmtime's advice: one engine, many stores)."""
    return WasmEngine()


def check_abi(module: wasmtime.Module) -> None:
    """Refuse, at load time and in one sentence, a module that cannot work."""
    exports = {e.name: e.type for e in module.exports}
    for name, kind in (("memory", wasmtime.MemoryType), ("alloc", wasmtime.FuncType),
                       ("handle", wasmtime.FuncType)):
        if not isinstance(exports.get(name), kind):
            raise WasmError(f"does not export {name!r} (the ABI needs memory, alloc and "
                            "handle; see docs/wasm-abi.md)")
    for imp in module.imports:
        if imp.module != "flux" or imp.name not in SIGNATURES:
            raise WasmError(f"imports {imp.module}.{imp.name}; a Flux function may import "
                            f"only flux.{{{','.join(SIGNATURES)}}}")


def read_options(path: Path) -> dict[str, Any]:
    """The sidecar ``<name>.toml`` beside the module, if any."""
    sidecar = path.with_suffix(".toml")
    if not sidecar.is_file():
        return {}
    try:
        options = tomllib.loads(sidecar.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{sidecar.name} is not valid TOML: {exc}") from exc
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ConfigError(f"{sidecar.name}: unknown option {unknown[0]!r} "
                          f"(known: {', '.join(sorted(_OPTIONS))})")
    return options


def load_module(path: Path) -> FunctionSpec:
    """A Wasm module as a FunctionSpec (raises WasmError or ConfigError)."""
    options = read_options(path)
    name = path.stem
    timeout = options.get("timeout", DEFAULT_TIMEOUT)
    memory_mb = options.get("memory_mb", DEFAULT_MEMORY_MB)
    retries = options.get("retries", 0)
    for key, value in (("timeout", timeout), ("memory_mb", memory_mb)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{name}.toml: {key} must be a positive number, not {value!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"{name}.toml: retries must be 0 or more, not {retries!r}")
    cron = options.get("cron")
    if cron is not None:
        validate_cron(str(cron))
    compiled = shared_engine().compile(path)
    handler = WasmFunction(name, path, compiled, float(timeout),
                           int(float(memory_mb) * 1024 * 1024))
    handler.spec = FunctionSpec(
        name=name, route=parse_route(str(options.get("route", name))).text,
        methods=parse_methods(options.get("methods"), f"{name}.toml"), handler=handler,
        is_async=True, timeout=float(timeout), retries=retries,
        cron=None if cron is None else str(cron), file=str(path),
        line=compiled.source.handle_line, runtime="wasm")
    return handler.spec


class WasmFunction:
    """The handler of a Wasm function: ``await handler(ctx, input)`` like any other."""

    def __init__(self, name: str, path: Path, compiled: Compiled, timeout: float,
                 memory_cap: int) -> None:
        self.name = name
        self.path = path
        self.compiled = compiled
        self.timeout = timeout
        self.memory_cap = memory_cap
        self.spec: FunctionSpec  # set by load_module, once the spec exists

    async def __call__(self, ctx: Context, input: Any) -> Any:
        if self.compiled.on_loop:
            return await self._on_loop(ctx, input)
        engine = shared_engine()
        holder: list[GuestCall] = []
        context = contextvars.copy_context()  # activate(ctx), the current span
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                engine.pool, functools.partial(context.run, self._run, ctx, input, holder))
        except asyncio.CancelledError:
            # The execution gave up (its timeout): the guest may act no more, and its
            # epoch deadline ends it within a tick of the same timeout.
            for call in holder:
                call.abandoned = True
            raise

    # -- on the event loop (modules linked with async imports) ---------------------------

    async def _on_loop(self, ctx: Context, input: Any) -> Any:
        engine = shared_engine()
        rec = ctx._execution.recorder
        file = rec.relative(str(self.path))
        store = wasmtime.Store(engine.engine)
        store.set_limits(memory_size=self.memory_cap)
        _fiber.yield_every(store, 1)  # pause at the next tick: long work goes to a thread
        deadline = time.monotonic() + self.timeout
        engine.enter()
        try:
            try:
                instance = _fiber.instantiate(store, self.compiled.pre, deadline)
            except (wasmtime.WasmtimeError, wasmtime.Trap, WasmError) as exc:
                raise self._instantiation_error(exc, file) from exc
            memory, alloc, handle = exports(store, instance)
            call = GuestCall(ctx, self.name, store, memory, alloc, fast=True, fiber=True,
                             deadline=deadline)
            token = current_call().set(call)
            try:
                with rec.calls_from(CallSite(file, 0, self.name)):
                    output = b""
                    try:
                        ptr, length = unpack(write(store, call, orjson.dumps(input),
                                                   "the input"))
                        packed = await self._drive(_fiber.call(store, handle, (ptr, length)),
                                                   call)
                        if call.failure is None:
                            ptr, length = unpack(packed)
                            output = read(store, call.memory, ptr, length, "handle's result")
                    except (wasmtime.Trap, wasmtime.WasmtimeError, WasmError) as exc:
                        raise self._failure(call, exc, file) from None
                    except FunctionTimeout as exc:  # polled past its timeout in a thread
                        raise self._located(exc, None, file) from None
                    return self._output(call, output, file)
            finally:
                current_call().reset(token)
        finally:
            engine.leave()

    async def _drive(self, running: _fiber.Running, call: GuestCall) -> int:
        """Poll the guest's ``handle`` to its end: await each ctx call it pauses on; once it
        pauses at an epoch tick (long work), go on polling in a worker thread."""
        try:
            while not running.poll():
                pending = call.pending
                if pending is None or pending.done:  # paused at a tick
                    break
                try:
                    pending.value = await pending.awaitable
                except Exception as exc:  # the guest's outcome: the import traps with it
                    pending.failure = exc
                pending.done = True
            else:
                running.close()
                return running.integer()
        except BaseException:  # cancelled (the function's timeout): drop the paused guest
            call.abandoned = True
            running.close()
            raise
        return await self._in_thread(running, call)

    async def _in_thread(self, running: _fiber.Running, call: GuestCall) -> int:
        context = contextvars.copy_context()  # the guest call, the current span
        done = shared_engine().pool.submit(context.run, self._poll_to_end, running, call)
        try:
            return await asyncio.wrap_future(done)
        except asyncio.CancelledError:
            call.abandoned = True  # the thread drops the guest at its next tick
            raise

    def _poll_to_end(self, running: _fiber.Running, call: GuestCall) -> int:
        # The ticker runs while this thread polls: the loop side may have left already
        # (cancelled), and a guest that is never paused again would spin on for ever.
        engine = shared_engine()
        engine.enter()
        try:
            while not running.poll():
                if call.abandoned:
                    raise asyncio.CancelledError
                if time.monotonic() > call.deadline:
                    raise FunctionTimeout(self.spec)
            return running.integer()
        finally:
            running.close()
            engine.leave()

    # -- in the worker thread ------------------------------------------------------------

    def _run(self, ctx: Context, input: Any, holder: list[GuestCall]) -> Any:
        engine = shared_engine()
        rec = ctx._execution.recorder
        file = rec.relative(str(self.path))
        store = wasmtime.Store(engine.engine)
        store.set_limits(memory_size=self.memory_cap)
        store.set_epoch_deadline(math.ceil(self.timeout / TICK) + 2)
        engine.enter()
        try:
            try:
                instance = self.compiled.pre.instantiate(store)
            except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
                raise self._instantiation_error(exc, file) from exc
            memory, alloc, handle = exports(store, instance)
            call = GuestCall(ctx, self.name, store, memory, alloc, fast=self.compiled.fast)
            holder.append(call)
            token = current_call().set(call)
            try:
                with rec.calls_from(CallSite(file, 0, self.name)):
                    return self._handle(store, call, handle, input, file)
            finally:
                current_call().reset(token)
        finally:
            engine.leave()

    def _handle(self, store: wasmtime.Store, call: GuestCall, handle: wasmtime.Func,
                input: Any, file: str) -> Any:
        output = b""
        try:
            ptr, length = unpack(write(store, call, orjson.dumps(input), "the input"))
            packed = call_guest(store, handle, call.fast, ptr, length)
            if call.failure is None:
                ptr, length = unpack(packed)
                output = read(store, call.memory, ptr, length, "handle's result")
        except (wasmtime.Trap, wasmtime.WasmtimeError, WasmError) as exc:
            raise self._failure(call, exc, file) from None
        return self._output(call, output, file)

    def _output(self, call: GuestCall, output: bytes, file: str) -> Any:
        if call.failure is not None:  # a host import failed and the guest returned anyway
            raise self._located(call.failure, None, file, from_host=True)
        try:
            return orjson.loads(output) if output else None
        except orjson.JSONDecodeError as exc:
            raise self._located(WasmError(
                f"{self.name}: handle returned bytes that are not JSON ({exc})"), None, file
            ) from None

    def _failure(self, call: GuestCall, exc: Exception, file: str) -> BaseException:
        """The exception a failed call ends in: the host import's own (a query that
        failed, ctx.error), a timeout, the memory cap, or the trap itself."""
        trap = exc if isinstance(exc, wasmtime.Trap) else None
        if call.failure is not None:
            # The import trapped: the guest's frames are on the trap, or on the error
            # wasmtime made of it.
            return self._located(call.failure, trap, file, from_host=True, raised=exc)
        if trap is not None and trap.trap_code == wasmtime.TrapCode.INTERRUPT:
            return self._located(FunctionTimeout(self.spec), trap, file)
        where = _where(wasm_frames(trap, self.compiled.source.lines))
        reason = _reason(trap) if trap is not None else _first_line(exc)
        size = call.memory.data_len(call.store)
        if size + PAGE > self.memory_cap:
            return self._located(WasmMemoryLimit(
                f"{self.name} reached its memory cap of {_mib(self.memory_cap)} (memory.grow "
                f"refused at {_mib(size)}), then failed: {reason}{where}",
                details={"memory_cap": self.memory_cap, "memory": size}), trap, file)
        if trap is not None:
            return self._located(WasmTrap(f"{self.name} trapped: {reason}{where}",
                                          details={"trap": reason}), trap, file)
        if isinstance(exc, WasmError):
            return self._located(exc, None, file)
        return self._located(WasmError(f"{self.name}: {reason}"), None, file)

    def _instantiation_error(self, exc: Exception, file: str) -> BaseException:
        text = _first_line(exc)
        if "memory" in text and ("limit" in text or "minimum" in text):
            error: WasmError = WasmMemoryLimit(
                f"{self.name} needs more memory than its cap of {_mib(self.memory_cap)} "
                f"to start: {text}", details={"memory_cap": self.memory_cap})
        else:
            error = WasmError(f"{self.name} could not be instantiated: {text}")
        return self._located(error, None, file)

    def _located(self, exc: BaseException, trap: wasmtime.Trap | None, file: str, *,
                 from_host: bool = False, raised: BaseException | None = None
                 ) -> BaseException:
        """Say on the exception where in the module it happened, for the record (the
        guest's frames from ``trap``, or from ``raised``: what wasmtime raised)."""
        frames = wasm_frames(raised if raised is not None else trap,
                             self.compiled.source.lines)
        if from_host and len(frames) > 1 and \
                frames[0]["func_offset"] < self.compiled.source.prologue.get(frames[0]["index"], 1):
            # A failed import stops the guest at its next epoch check. When that is the
            # entry of a function, that function did not make the call: its caller did.
            frames = frames[1:]
        top = frames[0] if frames else None
        exc.flux_site = CallSite(  # type: ignore[attr-defined]
            file, top["line"] if top else self.compiled.source.handle_line,
            top["function"] if top else "handle")
        exc.flux_wasm = {  # type: ignore[attr-defined]
            "module": file, "frames": frames,
            "trap": _reason(trap) if trap is not None else None,
            "offset": top["offset"] if top else None,
            **(exc.details if isinstance(exc, WasmError) else {}),
        }
        return exc


def wasm_frames(raised: BaseException | None, lines: dict[int, int]) -> list[dict[str, Any]]:
    """The guest's stack at a trap, innermost first: function name, offsets, .wat line."""
    return [{"function": f.func_name or f"<wasm function {f.func_index}>",
             "index": f.func_index, "offset": f.module_offset, "func_offset": f.func_offset,
             "line": lines.get(f.func_index, 0)} for f in frames_of(raised)]


def _where(frames: list[dict[str, Any]]) -> str:
    if not frames:
        return ""
    top = frames[0]
    return f" in {top['function']} at offset {top['offset']:#x}"


def _reason(trap: wasmtime.Trap | None) -> str:
    if trap is None:
        return ""
    message = trap.message
    tail = message.rsplit("Caused by:", 1)[-1].strip()
    return tail.removeprefix("wasm trap: ").splitlines()[0] if tail else message


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):g} MiB"
