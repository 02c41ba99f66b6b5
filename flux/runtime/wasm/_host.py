"""The host side of the Wasm ABI: the imports of module ``flux`` through which a guest
reaches the world, each a thin adapter over a ``ctx`` door — so a Wasm function's queries,
HTTP calls, clock reads and random numbers are recorded, put on the tape and served from it
on replay exactly as a Python function's are.

A host import never raises into wasmtime. wasmtime-py hands a Python exception from a host
function back to the caller through one process-wide variable, which two guests failing at
once in two threads would swap. Instead a failing import keeps its exception on the
guest's ``GuestCall``, answers a zero, and sets the store's epoch deadline to now: the guest
traps at its next function entry or loop back-edge, and the exception is raised from there
(``WasmFunction`` in ``flux/runtime/wasm/_runner.py``). Until then every further import
refuses to act. An import that pauses the guest (``GuestCall.answer``) stops it the same
way.

The ABI itself is documented in docs/wasm-abi.md.
"""

from __future__ import annotations

import contextvars
import ctypes
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import wasmtime

from flux._errors import FunctionError, WasmError
from flux._jsoncodec import plain

if TYPE_CHECKING:
    from flux.runtime._context import Context

try:  # wasmtime-py's own ctypes binding of the C API, for the calls of the ABI (see call_guest)
    from wasmtime import _ffi

    _VAL, _TRAP, _I32_KIND = _ffi.wasmtime_val_t, _ffi.wasm_trap_t, _ffi.WASMTIME_I32.value
    _FUNC_CALL: Callable[..., Any] | None = _ffi.wasmtime_func_call
    _EXPORT_GET: Callable[..., Any] | None = _ffi.wasmtime_instance_export_get
    from wasmtime._extern import wrap_extern
except (ImportError, AttributeError):  # another wasmtime-py: Func.__call__ serves
    _FUNC_CALL = _EXPORT_GET = None

MODULE = "flux"
MASK32 = 0xFFFF_FFFF

_I32, _I64, _F64 = wasmtime.ValType.i32(), wasmtime.ValType.i64(), wasmtime.ValType.f64()


DB_MODES = ("all", "one", "value", "execute")
_DB_METHODS = {"all": "fetchall", "one": "fetchone", "value": "fetchval", "execute": "execute"}
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Answer:
    """What one import call of a guest answered (the bytes for its memory, a number, or
    nothing) or raised, kept so that a re-run of the same guest gets it again."""

    name: str
    request: bytes  # the JSON the guest passed (empty for now and random)
    value: Any = None
    error: BaseException | None = None


PAUSED = object()  # GuestCall.answer: the guest waits for IO the runner performs


@dataclass
class GuestCall:
    """One run of a guest's ``handle``: what its host imports act for.

    An execution may run its guest more than once (flux/runtime/wasm/_runner.py): on the
    event loop's thread, a guest that reaches an import which waits on the world (a
    query, an HTTP call) is paused there — stopped, its request kept — and run again from
    a fresh instance once the answer is in. Each run is handed the answers of the import
    calls before, in order (``answers``, shared by the runs), so no ctx door is called
    twice and every run sees what the first saw."""

    ctx: Context
    function: str
    store: wasmtime.Store
    memory: wasmtime.Memory
    alloc: wasmtime.Func
    failure: BaseException | None = None  # the exception a host import ended the call with
    abandoned: bool = False  # the execution gave up waiting (its timeout): act no more
    fast: bool = False  # alloc and handle have the ABI's exact types: call_guest's fast path
    answers: list[Answer] = field(default_factory=list)  # the execution's import calls so far
    position: int = 0  # the index in ``answers`` of this run's next import call
    inline: bool = False  # on the event loop's thread: an IO import pauses the guest
    paused: Answer | None = None  # the IO import the guest paused at (its request only)
    interrupted: bool = False  # the epoch deadline passed in alloc, called by an import

    def stop(self, failure: BaseException) -> None:
        """End the guest at its next epoch check, with ``failure`` as its outcome."""
        if self.failure is None:
            self.failure = failure
        self.store.set_epoch_deadline(0)

    def answer(self, name: str, request: bytes, spec: Import) -> Any:
        """The answer of this run's next import call: an earlier run's, else the ctx
        door's — or PAUSED, for an IO import on the event loop's thread."""
        index = self.position
        self.position += 1
        if index < len(self.answers):
            kept = self.answers[index]
            if kept.name != name or kept.request != request:
                raise WasmError(
                    f"{self.function} called {name} where its earlier run called "
                    f"{kept.name} with other input: a guest must act the same on the same "
                    "answers")
            if kept.error is not None:
                raise kept.error
            return kept.value
        if self.inline and spec.io:
            self.paused = Answer(name, request)
            self.store.set_epoch_deadline(0)  # stop at the next epoch check
            return PAUSED
        value = spec.encode(spec.perform(self.ctx, request))
        self.answers.append(Answer(name, request, value))
        return value


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
    both and build a ctypes array type each time; two calls serve a read or a write."""
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


_ABI_EXPORTS = [(name, ctypes.create_string_buffer(name.encode()), len(name))
                for name in ("memory", "alloc", "handle")]


def exports(store: Any, instance: wasmtime.Instance
            ) -> tuple[wasmtime.Memory, wasmtime.Func, wasmtime.Func]:
    """The instance's ``memory``, ``alloc`` and ``handle`` (their kinds were checked when
    the module was loaded). ``Instance.exports`` wraps every export through
    ``wasmtime_instance_export_nth``, which costs ~15 µs an export; three lookups by name
    cost a third of that."""
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


def write(store: Any, call: GuestCall, data: bytes, what: str) -> int:
    """Copy ``data`` into memory the guest's ``alloc`` gave; returns the packed ptr/len."""
    ptr = call_guest(store, call.alloc, call.fast, len(data)) & MASK32
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


def parse(raw: bytes, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WasmError(f"{what}: the guest passed bytes that are not JSON ({exc})") from exc


def canonical(value: Any) -> bytes:
    """JSON with every object's keys sorted. A replay's answers come back from the tape,
    which PostgreSQL keeps as jsonb (keys reordered): sorted, the guest gets the same
    bytes live and replayed, so what it derives from them (a parameter, a key) matches."""
    return orjson.dumps(plain(value), option=orjson.OPT_SORT_KEYS)


# -- the imports ---------------------------------------------------------------------------
# Each import is two steps: ``perform`` asks the ctx door with the guest's request (on the
# event loop's thread an IO door answers an awaitable, which the runner awaits), and
# ``encode`` turns the door's answer into what the guest gets: bytes (copied into a block
# of its memory), a number, or nothing.

def _db_query(ctx: Context, raw: bytes) -> Any:
    request = parse(raw, "db_query")
    if isinstance(request, str):
        request = {"sql": request}
    if not isinstance(request, dict) or not isinstance(request.get("sql"), str):
        raise WasmError('db_query takes {"sql": "...", "params": [...], "mode": "all"}')
    mode = request.get("mode", "all")
    if mode not in DB_MODES:
        raise WasmError(f"db_query: mode must be one of {', '.join(DB_MODES)}, not {mode!r}")
    method = getattr(ctx.db, _DB_METHODS[mode])
    return method(request["sql"], sql_params(request.get("params")))


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


def _http_fetch(ctx: Context, raw: bytes) -> Any:
    request = parse(raw, "http_fetch")
    if not isinstance(request, dict) or not isinstance(request.get("url"), str):
        raise WasmError('http_fetch takes {"method": "POST", "url": "...", "json": {...}}')
    kwargs: dict[str, Any] = {}
    for key in ("json", "headers", "params", "timeout"):
        if request.get(key) is not None:
            kwargs[key] = request[key]
    if isinstance(request.get("body"), str):
        kwargs["data"] = request["body"]
    return ctx.http.request(str(request.get("method", "GET")), request["url"], **kwargs)


def _http_answer(response: Any) -> bytes:
    try:
        body: Any = response.json() if response.content else None
    except ValueError:
        body = response.text
    headers = {name.lower(): value for name, value in response.headers.items()}
    # The status first, always: a guest without a JSON parser finds it at byte 10.
    return b"".join([
        b'{"status":', str(int(response.status)).encode(), b',"headers":', canonical(headers),
        b',"body":', canonical(body), b',"suppressed":true}' if response.suppressed else b"}"])


def _now(ctx: Context, raw: bytes) -> int:
    return int(ctx.now().timestamp() * 1000)  # Unix milliseconds


def _random(ctx: Context, raw: bytes) -> float:
    return float(ctx.random())


def _log(ctx: Context, raw: bytes) -> None:
    entry = parse(raw, "log")
    if not isinstance(entry, dict):
        entry = {"message": entry if isinstance(entry, str) else orjson.dumps(entry).decode()}
    level = entry.pop("level", "info")
    message = str(entry.pop("message", ""))
    getattr(ctx.log, level if level in LOG_LEVELS else "info")(message, **entry)


def _error(ctx: Context, raw: bytes) -> None:
    """``raise ctx.error(status, code, message)`` for a guest: it never returns."""
    spec = parse(raw, "error")
    if not isinstance(spec, dict):
        spec = {"message": str(spec)}
    status = spec.get("status", 500)
    raise FunctionError(status if isinstance(status, int) and 400 <= status < 600 else 500,
                        str(spec.get("code", "error")), str(spec.get("message", "")))


def _config(ctx: Context, raw: bytes) -> Any:
    """A value of ``[app]`` in flux.toml (``ctx.config``), by key; the whole table for null."""
    key = parse(raw, "config")
    # Read through ctx.config so each key the guest reads goes on the tape.
    return dict(ctx.config) if key is None else ctx.config.get(str(key))


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Import:
    """One import of module ``flux``: its wasm type, whether it takes a JSON request
    ``(ptr, len)``, whether it waits on the world, and its two steps."""

    params: list[wasmtime.ValType]
    results: list[wasmtime.ValType]
    takes_json: bool
    io: bool
    perform: Callable[[Context, bytes], Any]
    encode: Callable[[Any], Any] = _same


IMPORTS: dict[str, Import] = {
    "db_query": Import([_I32, _I32], [_I64], True, True, _db_query, canonical),
    "http_fetch": Import([_I32, _I32], [_I64], True, True, _http_fetch, _http_answer),
    "now": Import([], [_I64], False, False, _now),
    "random": Import([], [_F64], False, False, _random),
    "log": Import([_I32, _I32], [], True, False, _log),
    "error": Import([_I32, _I32], [], True, False, _error),
    "config": Import([_I32, _I32], [_I64], True, False, _config, canonical),
}

# name → (params, results): what a guest may import from module "flux".
SIGNATURES: dict[str, tuple[list[wasmtime.ValType], list[wasmtime.ValType]]] = {
    name: (spec.params, spec.results) for name, spec in IMPORTS.items()}


async def perform_paused(ctx: Context, paused: Answer) -> Answer:
    """Ask the ctx door a paused guest waits for, on the event loop: its answer, or the
    exception it raised (for the next run's import call to end the guest with)."""
    spec = IMPORTS[paused.name]
    try:
        result = spec.perform(ctx, paused.request)
        if inspect.isawaitable(result):
            result = await result
        return Answer(paused.name, paused.request, spec.encode(result))
    except Exception as exc:  # the guest's outcome, raised where it made the call
        return Answer(paused.name, paused.request, error=exc)


def _guarded(name: str, spec: Import, zero: Any) -> Callable[..., Any]:
    takes_json = spec.takes_json

    def host(caller: Any, *args: Any) -> Any:
        call = _current.get()
        if call is None:  # a guest calling an import outside a Flux call: not ours to serve
            return zero
        if call.failure is not None or call.abandoned or call.paused is not None \
                or call.interrupted:
            call.store.set_epoch_deadline(0)
            return zero
        try:
            request = read(caller, call.memory, args[0], args[1], name) if takes_json else b""
            value = call.answer(name, request, spec)
            if value is PAUSED or value is None:
                return zero
            if isinstance(value, bytes):
                return write(caller, call, value, name)
            return value
        except wasmtime.Trap as trap:
            if trap.trap_code != wasmtime.TrapCode.INTERRUPT:
                call.stop(trap)
            else:  # the deadline passed in alloc: a timeout, not this import's failure
                call.interrupted = True
                call.store.set_epoch_deadline(0)
            return zero
        except BaseException as exc:  # kept for the guest's outcome, never raised into wasm
            call.stop(exc)
            return zero

    host.__name__ = f"flux_{name}"
    return host


def define_imports(linker: wasmtime.Linker) -> None:
    """Define every import of module ``flux`` on ``linker`` (once per engine)."""
    for name, spec in IMPORTS.items():
        params, results = spec.params, spec.results
        zero: Any = None if not results else (0.0 if results[0] == _F64 else 0)
        host = _guarded(name, spec, zero)
        if _FUNC_CALL is not None:
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
            if kind is not None:
                results[0].kind = kind
                if kind == _F64_KIND:
                    results[0].of.f64 = float(value)
                else:
                    results[0].of.i64 = int(value)
            return 0
        except BaseException:  # _guarded never raises; a trap if it ever did
            trap = wasmtime.Trap("flux host import failed")._consume()
            return ctypes.cast(trap, ctypes.c_void_p).value
        finally:
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
