"""``@function``: how a handler declares itself to Flux.

The decorator only attaches a frozen ``FunctionSpec`` to the handler and returns the handler
unchanged, so a function stays a plain callable that unit tests can call directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

from flux._errors import ConfigError

SPEC_ATTRIBUTE = "__flux_function__"


@dataclass(frozen=True)
class FunctionSpec:
    """What Flux knows of one function, fixed when its module is loaded."""

    name: str
    route: str  # without the leading slash: POST /<route>
    handler: Callable[..., Any]
    is_async: bool
    timeout: float
    retries: int
    cron: str | None
    file: str
    line: int
    runtime: str = "python"


@overload
def function(handler: Callable[..., Any], /) -> Callable[..., Any]: ...
@overload
def function(*, name: str | None = ..., route: str | None = ..., timeout: float = ...,
             retries: int = ..., cron: str | None = ...
             ) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def function(handler: Callable[..., Any] | None = None, /, *, name: str | None = None,
             route: str | None = None, timeout: float = 30.0, retries: int = 0,
             cron: str | None = None) -> Any:
    """Declare a Flux function: ``@function`` or ``@function(route=, timeout=, retries=)``.

    The handler takes ``(ctx, input)`` and returns something JSON can encode. It is routed
    ``POST /<name>`` unless ``route`` says otherwise.
    """

    def declare(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise ConfigError(f"@function must decorate a function, not {fn!r}")
        if timeout <= 0:
            raise ConfigError(f"{fn.__name__}: timeout must be positive, not {timeout!r}")
        if retries < 0:
            raise ConfigError(f"{fn.__name__}: retries must be 0 or more, not {retries!r}")
        if cron is not None:
            validate_cron(cron)
        code = getattr(fn, "__code__", None)
        spec = FunctionSpec(
            name=name or fn.__name__,
            route=(route or name or fn.__name__).strip("/"),
            handler=fn,
            is_async=inspect.iscoroutinefunction(fn),
            timeout=float(timeout),
            retries=int(retries),
            cron=cron,
            file=code.co_filename if code else "?",
            line=code.co_firstlineno if code else 0,
        )
        setattr(fn, SPEC_ATTRIBUTE, spec)
        return fn

    if handler is not None:
        return declare(handler)
    return declare


def spec_of(obj: Any) -> FunctionSpec | None:
    spec = getattr(obj, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, FunctionSpec) else None


class FunctionTimeout(TimeoutError):
    """A handler ran past its ``timeout``; recorded as a ``timeout`` failure."""

    def __init__(self, spec: FunctionSpec) -> None:
        super().__init__(f"{spec.name} did not finish within its timeout of {spec.timeout:g}s")


def validate_cron(expression: str) -> None:
    """Raise ConfigError if croniter cannot parse ``expression``."""
    from croniter import croniter  # only for functions that use cron: off the CLI's start-up

    if not croniter.is_valid(expression):
        raise ConfigError(f"invalid cron expression {expression!r}",
                          hint="five fields (minute hour day month weekday), "
                               "or six with seconds last")
