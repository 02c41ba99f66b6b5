"""The host side of the Wasm ABI: the imports of module ``flux`` through which a guest
reaches the world, each a thin adapter over a ``ctx`` door — so a Wasm function's queries,
HTTP calls, clock reads and random numbers are recorded, put on the tape and served from it
on replay exactly as a Python function's are.

A host import never raises into wasmtime. wasmtime-py hands a Python exception from a host
function back to the caller through one process-wide variable, which two guests failing at
once in two threads would swap. Instead a failing import keeps its exception on the
guest's ``GuestCall`` and the trampoline (Flux's own, below) answers wasmtime with a trap of
its own: the guest stops at the call, and the exception is raised from there
(``WasmFunction`` in ``flux/runtime/wasm/_runner.py``) with the guest's frames.

The imports that wait on the world (``db_query``, ``http_fetch``) are async imports when
the guest runs on the event loop (flux/runtime/wasm/_fiber.py): the ``ctx`` door hands back
its coroutine, the guest pauses, the runner awaits it, and the answer is written into the
guest's memory when the guest is polled again. In a worker thread the same door blocks and
answers at once.

The ABI itself is documented in docs/wasm-abi.md.
"""

from __future__ import annotations

import contextvars
import ctypes
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import wasmtime

from flux._errors import FunctionError, WasmError
from flux._jsoncodec import plain
from flux.runtime.wasm import _fiber

if TYPE_CHECKING:
    from flux.runtime._context import Context

try:  # wasmtime-py's own ctypes binding of the C API, for the calls of the ABI (see call_guest)
    from wasmtime import _ffi

    _VAL, _TRAP, _I32_KIND = _ffi.wasmtime_val_t, _ffi.wasm_trap_t, _ffi.WASMTIME_I32.value
    _FUNC_CALL: Callable[..., Any] | None = _ffi.wasmtime_func_call
    _EXPORT_GET: Callable[..., Any] | None = _ffi.wasmtime_instance_export_get
    from wasmtime._extern import wrap_extern
    from wasmtime._trap import Frame, FrameList
except (ImportError, AttributeError):  # another wasmtime-py: Func.__call__ serves
    _FUNC_CALL = _EXPORT_GET = None

MODULE = "flux"
MASK32 = 0xFFFF_FFFF

_I32, _I64, _F64 = wasmtime.ValType.i32(), wasmtime.ValType.i64(), wasmtime.ValType.f64()

# name → (params, results): what a guest may import from module "flux".
SIGNATURES: dict[str, tuple[list[wasmtime.ValType], list[wasmtime.ValType]]] = {
    "db_query": ([_I32, _I32], [_I64]),
    "http_fetch": ([_I32, _I32], [_I64]),
    "now": ([], [_I64]),
    "random": ([], [_F64]),
    "log": ([_I32, _I32], []),
    "error": ([_I32, _I32], []),
    "config": ([_I32, _I32], [_I64]),
}

DB_MODES = ("all", "one", "value", "execute")
_DB_METHODS = {"all": "fetchall", "one": "fetchone", "value": "fetchval", "execute": "execute"}
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class GuestCall:
    """One call of a guest's ``handle``: what its host imports act for."""

    ctx: Context
    function: str
    store: wasmtime.Store
    memory: wasmtime.Memory
    alloc: wasmtime.Func
    failure: BaseException | None = None  # the exception a host import ended the call with
    abandoned: bool = False  # the execution gave up waiting (its timeout): act no more
    fast: bool = False  # alloc and handle have the ABI's exact types: call_guest's fast path
    fiber: bool = False  # an async store (_fiber.py): every call into it is made there
    deadline: float = math.inf  # time.monotonic() past which a fiber call is dropped
    pending: Pending | None = None  # the async import the paused guest waits on
    nested: int = 0  # inside a call made from an import (alloc): nothing may wait there

    def stop(self, failure: BaseException) -> None:
        """End the guest with ``failure`` as its outcome (the import traps)."""
        if self.failure is None:
            self.failure = failure


class Pending:
    """An async import's ``ctx`` call not answered yet: the runner awaits ``awaitable``
    and keeps what it gave (``value``, or ``failure``); ``finish`` turns the value into the
    import's result (writing the answer into the guest's memory)."""

    __slots__ = ("awaitable", "caller", "done", "failure", "finish", "kind", "results",
                 "trap_ret", "value")

    def __init__(self, awaitable: Any, finish: Callable[[Any], Any]) -> None:
        self.awaitable, self.finish = awaitable, finish
        self.done = False
        self.value: Any = None
        self.failure: BaseException | None = None
        self.caller: Any = None
        self.kind: int | None = None
        self.results: Any = None
        self.trap_ret: Any = None


def later(value: Any, finish: Callable[[Any], Any]) -> Any:
    """``finish(value)`` now, or a Pending when the ``ctx`` door handed back a coroutine
    (it does on the event loop's thread; in a worker thread it blocks and answers)."""
    if inspect.iscoroutine(value):
        return Pending(value, finish)
    return finish(value)


_current: contextvars.ContextVar[GuestCall | None] = contextvars.ContextVar(
    "flux_wasm_call", default=None)


def current_call() -> contextvars.ContextVar[GuestCall | None]:
    """The ContextVar the running guest call is kept in (set by flux/runtime/wasm/_runner.py)."""
    return _current


# -- memory --------------------------------------------------------------------------------

def unpack(packed: int) -> tuple[int, int]:
    """(ptr, len) from the i64 ``ptr << 32 | len`` (wasmtime hands i64 back signed)."""
    packed &= 0xFFFF_FFFF_FFFF_FFFF
    return packed >> 32, packed & MASK32


def span(store: Any, memory: wasmtime.Memory) -> tuple[int, int]:
    """The address and size of the guest's memory, as it is now (``memory.grow`` may move
    it: ask again after every call into the guest). ``Memory.read`` and ``write`` ask for
    both and build a ctypes array type each time; two calls serve a read or a write.
    Address 0: another wasmtime-py, use ``Memory``'s methods."""
    if _FUNC_CALL is None:
        return 0, memory.data_len(store)
    context, ref = store._context(), ctypes.byref(memory._memory)
    return (ctypes.cast(_ffi.wasmtime_memory_data(context, ref), ctypes.c_void_p).value or 0,
            _ffi.wasmtime_memory_data_size(context, ref))


def read(store: Any, memory: wasmtime.Memory, ptr: int, length: int, what: str) -> bytes:
    ptr &= MASK32
    length &= MASK32
    address, size = span(store, memory)
    if ptr + length > size:
        raise WasmError(f"{what}: bytes {ptr}..{ptr + length} lie outside the guest's "
                        f"memory of {size} bytes")
    if not address:
        return bytes(memory.read(store, ptr, ptr + length))
    return ctypes.string_at(address + ptr, length)


def abi_types(module: Any) -> bool:
    """Whether the module's ``alloc`` and ``handle`` have exactly the ABI's types
    (``(i32) -> i32`` and ``(i32, i32) -> i64``), so call_guest may call them directly."""
    if _FUNC_CALL is None:
        return False
    exports = {e.name: e.type for e in module.exports}
    alloc, handle = exports.get("alloc"), exports.get("handle")
    return (isinstance(alloc, wasmtime.FuncType) and isinstance(handle, wasmtime.FuncType)
            and alloc.params == [_I32] and alloc.results == [_I32]
            and handle.params == [_I32, _I32] and handle.results == [_I64])


def call_guest(store: Any, func: wasmtime.Func, fast: bool, *args: int) -> int:
    """Call the guest's ``alloc`` or ``handle`` (i32 arguments, one integer result).

    ``Func.__call__`` asks wasmtime for the function's type and converts every value
    through fresh ``ValType`` objects, a dozen ctypes calls each time — a quarter of a
    millisecond, several times per request. The ABI fixes both types and ``abi_types``
    checked them once per module, so this calls ``wasmtime_func_call`` directly with the
    raw values (about 15 µs). Traps and errors are raised as wasmtime-py raises them."""
    if not fast or _FUNC_CALL is None:
        return int(func(store, *args))
    params = (_VAL * len(args))()
    for i, arg in enumerate(args):
        params[i].kind = _I32_KIND  # type: ignore[assignment]
        params[i].of.i32 = arg
    results = (_VAL * 1)()
    trap = ctypes.POINTER(_TRAP)()
    error = _FUNC_CALL(store._context(), ctypes.byref(func._func), params, len(args),
                       results, 1, ctypes.byref(trap))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        raise wasmtime.Trap._from_ptr(trap)
    result = results[0]
    return int(result.of.i32 if result.kind == _I32_KIND else result.of.i64)


def frames_of(raised: BaseException | None) -> list[Any]:
    """The guest's frames, innermost first, on a ``wasmtime.Trap`` or on the
    ``WasmtimeError`` wasmtime makes of a trap an import returned (wasmtime-py reads them
    from traps only: ``wasmtime_error_wasm_trace`` reads them from the error)."""
    if isinstance(raised, wasmtime.Trap):
        return raised.frames
    if not isinstance(raised, wasmtime.WasmtimeError) or _FUNC_CALL is None:
        return []
    frames = FrameList(raised)
    _ffi.wasmtime_error_wasm_trace(raised.ptr(), ctypes.byref(frames.vec))
    return [Frame._from_ptr(frames.vec.data[i], frames) for i in range(frames.vec.size)]


_ABI_EXPORTS = [(name, ctypes.create_string_buffer(name.encode()), len(name))
                for name in ("memory", "alloc", "handle")]


def exports(store: Any, instance: wasmtime.Instance
            ) -> tuple[wasmtime.Memory, wasmtime.Func, wasmtime.Func]:
    """The instance's ``memory``, ``alloc`` and ``handle`` (their kinds were checked when
    the module was loaded). ``Instance.exports`` wraps every export through
    ``wasmtime_instance_export_nth`` (~15 µs an export here); three lookups by name cost
    a third of that."""
    if _EXPORT_GET is None:
        found = instance.exports(store)
        return found["memory"], found["alloc"], found["handle"]  # type: ignore[return-value]
    out: list[Any] = []
    for name, buffer, size in _ABI_EXPORTS:
        item = _ffi.wasmtime_extern_t()
        if not _EXPORT_GET(store._context(), ctypes.byref(instance._instance), buffer, size,
                           ctypes.byref(item)):
            raise WasmError(f"does not export {name!r}")
        out.append(wrap_extern(item))
    return out[0], out[1], out[2]


def alloc(store: Any, call: GuestCall, size: int) -> int:
    """The guest's ``alloc(size)``: in an async store a call of its own, run to its end."""
    if not call.fiber:
        return call_guest(store, call.alloc, call.fast, size)
    call.nested += 1
    try:
        running = _fiber.call(store, call.alloc, (size,))
        _fiber.to_end(running, call.deadline, "alloc")
        return running.integer()
    finally:
        call.nested -= 1


def write(store: Any, call: GuestCall, data: bytes, what: str) -> int:
    """Copy ``data`` into memory the guest's ``alloc`` gave; returns the packed ptr/len."""
    ptr = alloc(store, call, len(data)) & MASK32
    address, size = span(store, call.memory)
    if ptr == 0 or ptr + len(data) > size:
        raise WasmError(f"{what}: the guest's alloc({len(data)}) returned {ptr}, which is not "
                        f"a block of its memory of {size} bytes (out of memory?)",
                        details={"alloc_failed": True, "size": len(data)})
    if data and address:
        ctypes.memmove(address + ptr, data, len(data))
    elif data:
        call.memory.write(store, data, ptr)
    return (ptr << 32) | len(data)


def json_in(store: Any, call: GuestCall, ptr: int, length: int, what: str) -> Any:
    raw = read(store, call.memory, ptr, length, what)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WasmError(f"{what}: the guest passed bytes that are not JSON ({exc})") from exc


def canonical(value: Any) -> bytes:
    """JSON with every object's keys sorted. A replay's answers come back from the tape,
    which PostgreSQL keeps as jsonb (keys reordered): sorted, the guest gets the same
    bytes live and replayed, so what it derives from them (a parameter, a key) matches."""
    return orjson.dumps(plain(value), option=orjson.OPT_SORT_KEYS)


def json_out(store: Any, call: GuestCall, value: Any, what: str) -> int:
    return write(store, call, canonical(value), what)


# -- the imports ---------------------------------------------------------------------------

def _db_query(caller: Any, call: GuestCall, ptr: int, length: int) -> int:
    request = json_in(caller, call, ptr, length, "db_query")
    if isinstance(request, str):
        request = {"sql": request}
    if not isinstance(request, dict) or not isinstance(request.get("sql"), str):
        raise WasmError('db_query takes {"sql": "...", "params": [...], "mode": "all"}')
    mode = request.get("mode", "all")
    if mode not in DB_MODES:
        raise WasmError(f"db_query: mode must be one of {', '.join(DB_MODES)}, not {mode!r}")
    method = getattr(call.ctx.db, _DB_METHODS[mode])
    return later(method(request["sql"], sql_params(request.get("params"))),
                 lambda result: json_out(caller, call, result, "db_query"))


def sql_params(params: Any) -> Any:
    """JSON parameters as psycopg takes them: arrays stay lists (PostgreSQL arrays), an
    object becomes JSON text (``%s::jsonb`` in the SQL), scalars are themselves."""
    if params is None:
        return None

    def one(value: Any) -> Any:
        return orjson.dumps(value).decode() if isinstance(value, dict) else value

    if isinstance(params, dict):
        return {str(k): one(v) for k, v in params.items()}
    if isinstance(params, list):
        return [one(v) for v in params]
    raise WasmError("db_query: params must be an array (%s) or an object (%(name)s)")


def _http_fetch(caller: Any, call: GuestCall, ptr: int, length: int) -> int:
    request = json_in(caller, call, ptr, length, "http_fetch")
    if not isinstance(request, dict) or not isinstance(request.get("url"), str):
        raise WasmError('http_fetch takes {"method": "POST", "url": "...", "json": {...}}')
    kwargs: dict[str, Any] = {}
    for key in ("json", "headers", "params", "timeout"):
        if request.get(key) is not None:
            kwargs[key] = request[key]
    if isinstance(request.get("body"), str):
        kwargs["data"] = request["body"]
    return later(call.ctx.http.request(str(request.get("method", "GET")), request["url"],
                                       **kwargs),
                 lambda response: _http_answer(caller, call, response))


def _http_answer(caller: Any, call: GuestCall, response: Any) -> int:
    try:
        body: Any = response.json() if response.content else None
    except ValueError:
        body = response.text
    headers = {name.lower(): value for name, value in response.headers.items()}
    # The status first, always: a guest without a JSON parser finds it at byte 10.
    answer = b"".join([
        b'{"status":', str(int(response.status)).encode(), b',"headers":', canonical(headers),
        b',"body":', canonical(body), b',"suppressed":true}' if response.suppressed else b"}"])
    return write(caller, call, answer, "http_fetch")


def _now(caller: Any, call: GuestCall) -> int:
    return int(call.ctx.now().timestamp() * 1000)  # Unix milliseconds


def _random(caller: Any, call: GuestCall) -> float:
    return float(call.ctx.random())


def _log(caller: Any, call: GuestCall, ptr: int, length: int) -> None:
    entry = json_in(caller, call, ptr, length, "log")
    if not isinstance(entry, dict):
        entry = {"message": entry if isinstance(entry, str) else orjson.dumps(entry).decode()}
    level = entry.pop("level", "info")
    message = str(entry.pop("message", ""))
    getattr(call.ctx.log, level if level in LOG_LEVELS else "info")(message, **entry)


def _error(caller: Any, call: GuestCall, ptr: int, length: int) -> None:
    """``raise ctx.error(status, code, message)`` for a guest: it never returns."""
    spec = json_in(caller, call, ptr, length, "error")
    if not isinstance(spec, dict):
        spec = {"message": str(spec)}
    status = spec.get("status", 500)
    raise FunctionError(status if isinstance(status, int) and 400 <= status < 600 else 500,
                        str(spec.get("code", "error")), str(spec.get("message", "")))


def _config(caller: Any, call: GuestCall, ptr: int, length: int) -> int:
    """A value of ``[app]`` in flux.toml (``ctx.config``), by key; the whole table for null."""
    key = json_in(caller, call, ptr, length, "config")
    # Read through ctx.config so each key the guest reads goes on the tape.
    value = dict(call.ctx.config) if key is None else call.ctx.config.get(str(key))
    return json_out(caller, call, value, "config")


_IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {
    "db_query": _db_query, "http_fetch": _http_fetch, "now": _now, "random": _random,
    "log": _log, "error": _error, "config": _config,
}


class _Stop:
    """What a guarded import answers when the guest must stop: the trampoline traps."""


STOP = _Stop()
WAITING = {"db_query", "http_fetch"}  # the imports that wait on the world


def _guarded(name: str, implementation: Callable[..., Any], zero: Any) -> Callable[..., Any]:
    def host(caller: Any, *args: Any) -> Any:
        call = _current.get()
        if call is None:  # a guest calling an import outside a Flux call: not ours to serve
            return zero
        if call.failure is not None or call.abandoned:
            return STOP
        try:
            value = implementation(caller, call, *args)
        except BaseException as exc:  # kept for the guest's outcome, never raised into wasm
            call.stop(exc)
            return STOP
        if isinstance(value, Pending) and call.nested:
            value.awaitable.close()
            call.stop(WasmError(f"{name} was called inside the guest's alloc, where "
                                "nothing may wait"))
            return STOP
        return value

    host.__name__ = f"flux_{name}"
    return host


def define_imports(linker: wasmtime.Linker, fiber: bool = False) -> None:
    """Define every import of module ``flux`` on ``linker`` (once per engine). ``fiber``:
    the imports that wait are async imports (the linker of guests run on the loop)."""
    for name, (params, results) in SIGNATURES.items():
        zero: Any = None if not results else (0.0 if results[0] == _F64 else 0)
        host = _guarded(name, _IMPLEMENTATIONS[name], zero)
        if fiber and name in WAITING:
            _HOSTS.append((host, _I64_KIND))
            _fiber.define_async(linker, MODULE, name, wasmtime.FuncType(params, results),
                                _async_trampoline, len(_HOSTS) - 1, _finalize)
        elif _FUNC_CALL is not None:
            _define_direct(linker, name, wasmtime.FuncType(params, results), host,
                           None if not results else results[0])
        else:
            linker.define_func(MODULE, name, wasmtime.FuncType(params, results), host,
                               access_caller=True)


# -- the imports' trampoline ---------------------------------------------------------------
# wasmtime-py's own trampoline converts each argument and result through ``Val`` and fresh
# ``ValType`` objects (several ctypes calls per value). Every import of the ABI takes i32s
# and answers one i64, one f64 or nothing, so this one reads and writes the raw values.

_HOSTS: list[tuple[Callable[..., Any], int | None]] = []  # (host function, result kind)

if _FUNC_CALL is not None:
    _F64_KIND, _I64_KIND = _ffi.WASMTIME_F64.value, _ffi.WASMTIME_I64.value

    @_ffi.wasmtime_func_callback_t  # type: ignore[untyped-decorator]
    def _trampoline(data: int | None, caller_ptr: Any, params: Any, nparams: int,
                    results: Any, nresults: int) -> int | None:
        caller = wasmtime.Caller(caller_ptr)
        try:
            host, kind = _HOSTS[data or 0]
            value = host(caller, *[params[i].of.i32 for i in range(nparams)])
            if value is STOP:
                return _trap()
            _answer(results, kind, value)
            return 0
        except BaseException:  # _guarded never raises; a trap if it ever did
            return _trap()
        finally:
            caller._invalidate()

    def _trap() -> int | None:
        """A trap for wasmtime to raise in the guest (it takes ownership)."""
        trap = wasmtime.Trap("flux host import failed")._consume()
        return ctypes.cast(trap, ctypes.c_void_p).value

    def _answer(results: Any, kind: int | None, value: Any) -> None:
        if kind is not None:
            results[0].kind = kind
            if kind == _F64_KIND:
                results[0].of.f64 = float(value)
            else:
                results[0].of.i64 = int(value)

    def _set_trap(trap_ret: Any) -> None:
        trap_ret[0] = ctypes.cast(_trap() or 0, ctypes.POINTER(_TRAP))

    if _fiber.AVAILABLE:
        @_fiber.RESUME  # type: ignore[untyped-decorator]
        def _done(env: int | None) -> bool:
            return True

        @_fiber.RESUME  # type: ignore[untyped-decorator]
        def _resume(env: int | None) -> bool:
            """The continuation of an async import: the answer, once the runner has it."""
            call = _current.get()
            pending = call.pending if call is not None else None
            if pending is None or not pending.done:
                return False
            call.pending = None  # type: ignore[union-attr]
            try:
                if pending.failure is not None:
                    call.stop(pending.failure)  # type: ignore[union-attr]
                    _set_trap(pending.trap_ret)
                else:
                    _answer(pending.results, pending.kind, pending.finish(pending.value))
                # The ticks that passed while the guest waited were not its own: its next
                # pause at a tick (long work: a worker thread) counts from now.
                _ffi.wasmtime_context_set_epoch_deadline(pending.caller._context(), 1)
            except BaseException as exc:  # as _guarded: kept, never raised into wasm
                call.stop(exc)  # type: ignore[union-attr]
                _set_trap(pending.trap_ret)
            finally:
                pending.caller._invalidate()
            return True

        @_fiber.ASYNC_CALLBACK  # type: ignore[untyped-decorator]
        def _async_trampoline(data: int | None, caller_ptr: Any, params: Any, nparams: int,
                              results: Any, nresults: int, trap_ret: Any,
                              continuation: Any) -> None:
            continuation[0].callback, continuation[0].finalizer = _done, _finalize
            caller = wasmtime.Caller(caller_ptr)
            try:
                host, kind = _HOSTS[data or 0]
                value = host(caller, *[params[i].of.i32 for i in range(nparams)])
                if isinstance(value, Pending):  # the guest pauses; _resume answers
                    value.caller, value.kind, value.results, value.trap_ret = (
                        caller, kind, results, trap_ret)
                    _current.get().pending = value  # type: ignore[union-attr]
                    continuation[0].callback = _resume
                    return
                if value is STOP:
                    _set_trap(trap_ret)
                else:
                    _answer(results, kind, value)
            except BaseException:  # _guarded never raises; a trap if it ever did
                _set_trap(trap_ret)
            caller._invalidate()

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    def _finalize(data: int | None) -> None:
        """The linker keeps the imports for the engine's life: nothing to free."""


def _define_direct(linker: wasmtime.Linker, name: str, ty: wasmtime.FuncType,
                   host: Callable[..., Any], result: wasmtime.ValType | None) -> None:
    kind = None if result is None else (_F64_KIND if result == _F64 else _I64_KIND)
    _HOSTS.append((host, kind))
    module, field = MODULE.encode(), name.encode()
    error = _ffi.wasmtime_linker_define_func(
        linker.ptr(), ctypes.create_string_buffer(module), len(module),
        ctypes.create_string_buffer(field), len(field), ty.ptr(), _trampoline,
        len(_HOSTS) - 1, _finalize)
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
