"""``ctx.step(name, fn, *args, **kwargs)``: any other outside call, run exactly once.

The step's result — or its exception — goes on the tape as a ``step`` entry keyed by its
name. Replay and resume serve it from there and never call ``fn`` again (DBOS steps,
Temporal activities, Restate's ``ctx.run``); an exception replays as the same class with
the same arguments when that class can be rebuilt, else as ``StepFailed`` naming it. A
step the tape does not hold runs only where calls are sent for real (serving, a resume's
live part); in a replay, a rehearsal or explain it is not run, answers None and is listed
with the calls beyond the tape.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from flux._errors import StepFailed
from flux._jsoncodec import encode
from flux.runtime._ctx_http import sending
from flux.runtime._recorder import CallSite, Span

if TYPE_CHECKING:
    from flux.runtime._execution import Execution

_NOT_SERVED = object()


def run_step(ex: Execution, name: str, site: CallSite, fn: Callable[..., Any],
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    with ex.recorder.span(f"step {name}", "step", site, {"step": name}) as span:
        served = _served(ex, name, site, span)
        if served is not _NOT_SERVED:
            return served
        try:
            with sending():
                result = fn(*args, **kwargs)
        except Exception as exc:
            _record_error(ex, name, site, span, exc)
            raise
        ex.recorder.tape_append("step", name, {"result": encode(result)}, site=site,
                                span_id=span.id)
        return result


async def run_step_async(ex: Execution, name: str, site: CallSite,
                         fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Any:
    with ex.recorder.span(f"step {name}", "step", site, {"step": name}) as span:
        served = _served(ex, name, site, span)
        if served is not _NOT_SERVED:
            return served
        try:
            with sending():
                result = await fn(*args, **kwargs)
        except Exception as exc:
            _record_error(ex, name, site, span, exc)
            raise
        ex.recorder.tape_append("step", name, {"result": encode(result)}, site=site,
                                span_id=span.id)
        return result


def _served(ex: Execution, name: str, site: CallSite, span: Span) -> Any:
    """The recorded result (or raises the recorded exception); _NOT_SERVED to run it."""
    source = ex.replay
    if source is None:
        return _NOT_SERVED
    served = source.value("step", name, site)
    if served is None:
        if getattr(source, "sends", False):
            return _NOT_SERVED
        span.attrs["suppressed"] = True
        beyond = getattr(source, "beyond", None)
        if isinstance(beyond, list):
            beyond.append({"kind": "step", "call": f"ctx.step({name!r})", "file": site.file,
                           "line": site.line, "handled": "not run; answered None"})
        return None
    value = served.value if isinstance(served.value, dict) else {}
    span.attrs["served"] = "tape"
    if "error" in value:
        raise rebuild(value["error"])
    return value.get("result")


def _record_error(ex: Execution, name: str, site: CallSite, span: Span,
                  exc: BaseException) -> None:
    cls = type(exc)
    try:
        args = encode(list(exc.args))
    except (TypeError, ValueError):
        args = None
    error = {"type": f"{cls.__module__}.{cls.__qualname__}",
             "message": ex.policy.scrub_text(str(exc), ex.recorder.secret_values),
             "args": args}
    span.error = {"type": cls.__name__, "message": error["message"][:2000]}
    ex.recorder.tape_append("step", name, {"error": error}, site=site, span_id=span.id)


def rebuild(error: dict[str, Any]) -> BaseException:
    """The recorded exception, as its own class when that can be imported and built."""
    path = str(error.get("type") or "")
    message = str(error.get("message") or "")
    module, _, qualname = path.rpartition(".")
    cls: Any = None
    try:
        cls = importlib.import_module(module or "builtins")
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        args = error.get("args")
        try:
            return cls(*args) if isinstance(args, list) else cls(message)
        except Exception:
            try:
                exc = cls.__new__(cls)
                Exception.__init__(exc, message)
                return exc
            except Exception:
                pass
    return StepFailed(f"step failed with {path}: {message} (from the tape)", type=path)
