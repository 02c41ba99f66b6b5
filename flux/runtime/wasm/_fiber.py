"""Wasm calls that can pause: wasmtime's async C API (``wasmtime/async.h``).

A call made this way runs the guest on a stack of its own (a fiber) and comes back to its
caller whenever the guest waits: at an import defined with ``define_async`` whose answer is
not there yet, or when the store's epoch deadline passes (the store yields instead of
trapping). ``poll`` runs it on from where it stopped. So a guest can run on the event loop's
thread: a query it makes is awaited like a Python handler's, with no worker thread and no
hop to the loop and back (flux/runtime/wasm/_runner.py drives it).

wasmtime-py binds none of this, so these are ctypes prototypes over the library wasmtime-py
itself loads (its private ``_ffi``); with another wasmtime-py, or a library without the
symbols, ``AVAILABLE`` is False and Wasm functions run in worker threads as before.
Once a store's linker holds an async import, every call into that store must be made here
(wasmtime refuses its synchronous calls for it).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from typing import Any

import wasmtime

from flux._errors import WasmError

try:
    from wasmtime import _ffi

    _VAL, _TRAP, _ERROR = _ffi.wasmtime_val_t, _ffi.wasm_trap_t, _ffi.wasmtime_error_t
    _CONTEXT = ctypes.POINTER(_ffi.wasmtime_context_t)
    _I32_KIND, _I64_KIND = _ffi.WASMTIME_I32.value, _ffi.WASMTIME_I64.value
    _dll = _ffi.dll

    RESUME = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p)  # continuation: done yet?
    FINALIZE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

    class Continuation(ctypes.Structure):
        """``wasmtime_async_continuation_t``: what an async import hands back."""

        _fields_ = [("callback", RESUME), ("env", ctypes.c_void_p), ("finalizer", FINALIZE)]

    ASYNC_CALLBACK = ctypes.CFUNCTYPE(
        None, ctypes.c_void_p, ctypes.POINTER(_ffi.wasmtime_caller_t), ctypes.POINTER(_VAL),
        ctypes.c_size_t, ctypes.POINTER(_VAL), ctypes.c_size_t,
        ctypes.POINTER(ctypes.POINTER(_TRAP)), ctypes.POINTER(Continuation))

    _define_async = _dll.wasmtime_linker_define_async_func
    _define_async.restype = ctypes.POINTER(_ERROR)
    _define_async.argtypes = [
        ctypes.POINTER(_ffi.wasmtime_linker_t), ctypes.c_char_p, ctypes.c_size_t,
        ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_ffi.wasm_functype_t),
        ASYNC_CALLBACK, ctypes.c_void_p, FINALIZE]
    _call_async = _dll.wasmtime_func_call_async
    _call_async.restype = ctypes.c_void_p
    _call_async.argtypes = [
        _CONTEXT, ctypes.POINTER(_ffi.wasmtime_func_t), ctypes.POINTER(_VAL), ctypes.c_size_t,
        ctypes.POINTER(_VAL), ctypes.c_size_t, ctypes.POINTER(ctypes.POINTER(_TRAP)),
        ctypes.POINTER(ctypes.POINTER(_ERROR))]
    _instantiate_async = _dll.wasmtime_instance_pre_instantiate_async
    _instantiate_async.restype = ctypes.c_void_p
    _instantiate_async.argtypes = [
        ctypes.POINTER(_ffi.wasmtime_instance_pre_t), _CONTEXT,
        ctypes.POINTER(_ffi.wasmtime_instance_t), ctypes.POINTER(ctypes.POINTER(_TRAP)),
        ctypes.POINTER(ctypes.POINTER(_ERROR))]
    _poll = _dll.wasmtime_call_future_poll
    _poll.restype = ctypes.c_bool
    _poll.argtypes = [ctypes.c_void_p]
    _delete = _dll.wasmtime_call_future_delete
    _delete.restype = None
    _delete.argtypes = [ctypes.c_void_p]
    _yield_and_update = _dll.wasmtime_context_epoch_deadline_async_yield_and_update
    _yield_and_update.restype = None  # void in the wasmtime this binds (an error before)
    _yield_and_update.argtypes = [_CONTEXT, ctypes.c_uint64]
    AVAILABLE = True
except (ImportError, AttributeError):  # another wasmtime-py, or a library without async.h
    AVAILABLE = False


class Running:
    """A guest call in flight: the future and everything it points into, kept alive
    together until the future is deleted (wasmtime's contract for these calls)."""

    __slots__ = ("error", "future", "instance", "keep", "params", "results", "trap")

    def __init__(self) -> None:
        self.trap = ctypes.POINTER(_TRAP)()
        self.error = ctypes.POINTER(_ERROR)()
        self.params: Any = None
        self.results: Any = None
        self.instance: Any = None
        self.keep: tuple[Any, ...] = ()
        self.future: int | None = None

    def poll(self) -> bool:
        """Run the guest on until it finishes (True) or pauses (False)."""
        return bool(_poll(self.future))

    def close(self) -> None:
        """Delete the future (a paused guest is dropped where it stands). Once."""
        future, self.future = self.future, None
        if future is not None:
            _delete(future)

    def outcome(self) -> None:
        """Raise the call's trap or error, as wasmtime-py raises them."""
        if self.error:
            raise wasmtime.WasmtimeError._from_ptr(self.error)
        if self.trap:
            raise wasmtime.Trap._from_ptr(self.trap)

    def integer(self) -> int:
        """The call's one integer result (i32 or i64)."""
        self.outcome()
        result = self.results[0]
        return int(result.of.i32 if result.kind == _I32_KIND else result.of.i64)


def yield_every(store: wasmtime.Store, ticks: int) -> None:
    """Make ``store`` pause its guest (not trap) each time ``ticks`` epochs have passed."""
    store.set_epoch_deadline(ticks)
    _yield_and_update(store._context(), ticks)


def call(store: Any, func: wasmtime.Func, args: Sequence[int]) -> Running:
    """Start ``func`` (i32 arguments, one result) in ``store`` (a Store or a Caller)."""
    running = Running()
    params = (_VAL * len(args))()
    for i, arg in enumerate(args):
        params[i].kind = _I32_KIND  # type: ignore[assignment]
        params[i].of.i32 = arg
    running.params, running.results = params, (_VAL * 1)()
    context = store._context()
    running.keep = (store, func, context)
    running.future = _call_async(context, ctypes.byref(func._func), params, len(args),
                                 running.results, 1, ctypes.byref(running.trap),
                                 ctypes.byref(running.error))
    return running


def instantiate(store: wasmtime.Store, pre: wasmtime.InstancePre, deadline: float
                ) -> wasmtime.Instance:
    """Instantiate ``pre`` in ``store`` (its start function, if any, runs here)."""
    running = Running()
    running.instance = _ffi.wasmtime_instance_t()
    context = store._context()
    running.keep = (store, pre, context)
    running.future = _instantiate_async(pre.ptr(), context, ctypes.byref(running.instance),
                                        ctypes.byref(running.trap), ctypes.byref(running.error))
    to_end(running, deadline, "instantiation")
    running.outcome()
    return wasmtime.Instance._from_raw(running.instance)


def to_end(running: Running, deadline: float, what: str) -> None:
    """Poll ``running`` until it finishes, here and now (a short call: ``alloc``, the
    start function). Past ``deadline`` (``time.monotonic()``) it is dropped."""
    try:
        while not running.poll():
            if time.monotonic() > deadline:
                raise WasmError(f"{what} ran past the function's timeout")
    finally:
        running.close()


def define_async(linker: wasmtime.Linker, module: str, name: str, ty: wasmtime.FuncType,
                 callback: Callable[..., None], data: int, finalize: Any) -> None:
    """``wasmtime_linker_define_async_func``: ``callback`` is an ``ASYNC_CALLBACK``."""
    module_bytes, name_bytes = module.encode(), name.encode()
    error = _define_async(linker.ptr(), module_bytes, len(module_bytes), name_bytes,
                          len(name_bytes), ty.ptr(), callback, data, finalize)
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
