"""``@function``: how a handler declares itself to Flux.

The decorator only attaches a frozen ``FunctionSpec`` to the handler and returns the handler
unchanged, so a function stays a plain callable that unit tests can call directly.

A route is spelled as Starlette spells one: ``/orders/{id}`` takes one path segment as a
string, ``/orders/{id:int}`` one that must be digits and gives an ``int``; the other types
are ``str``, ``float``, ``uuid`` and ``path`` (the rest of the path, slashes and all). A
segment that does not fit its type does not match the route, so ``/orders/abc`` is a 404,
as in Starlette. Without ``route`` a function is ``POST /<name>``; ``methods`` names any
HTTP methods (``GET`` also answers ``HEAD``).
"""

from __future__ import annotations

import functools
import inspect
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, overload

from flux._errors import ConfigError

SPEC_ATTRIBUTE = "__flux_function__"
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?\}")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP method is a token (RFC 9110)
# type → (what a segment must look like, how it becomes a value)
CONVERTORS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "str": (r"[^/]+", str),
    "int": (r"[0-9]+", int),
    "float": (r"[0-9]+(?:\.[0-9]+)?", float),
    "uuid": (r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
             uuid.UUID),
    "path": (r".*", str),
}


@dataclass(frozen=True)
class RoutePattern:
    """A route as declared (``orders/{id:int}``, without the leading slash) and compiled."""

    text: str
    regex: re.Pattern[str] = field(compare=False, repr=False)
    params: tuple[tuple[str, str], ...] = ()  # (name, type) in order

    @property
    def literal(self) -> bool:
        return not self.params

    def match(self, path: str) -> dict[str, Any] | None:
        """The typed path parameters if ``path`` (without the leading slash) fits."""
        if self.literal:
            return {} if path == self.text else None
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        try:
            return {name: CONVERTORS[kind][1](found.group(name)) for name, kind in self.params}
        except ValueError:  # a float too long for a double, say: it does not fit
            return None


def parse_route(route: str) -> RoutePattern:
    """Compile a route spelling; a ConfigError names what is wrong with it."""
    text = route.strip("/")
    parts: list[str] = []
    params: list[tuple[str, str]] = []
    last = 0
    for found in _PARAM.finditer(text):
        name, kind = found.group(1), found.group(2) or "str"
        if kind not in CONVERTORS:
            raise ConfigError(f"route /{text}: {{{name}:{kind}}} has an unknown type",
                              hint="types: " + ", ".join(CONVERTORS))
        if name in dict(params):
            raise ConfigError(f"route /{text}: the parameter {name!r} appears twice")
        parts.append(re.escape(text[last:found.start()]))
        parts.append(f"(?P<{name}>{CONVERTORS[kind][0]})")
        params.append((name, kind))
        last = found.end()
    parts.append(re.escape(text[last:]))
    rest = _PARAM.sub("", text)
    if "{" in rest or "}" in rest:
        raise ConfigError(f"route /{text}: a parameter is spelled {{name}} or {{name:type}}")
    return RoutePattern(text=text, regex=re.compile("".join(parts)), params=tuple(params))


def parse_methods(methods: Iterable[str] | str | None, where: str) -> tuple[str, ...]:
    """Upper-cased, deduplicated, in the order given; POST when none are."""
    if methods is None:
        return ("POST",)
    if isinstance(methods, str):
        methods = [methods]
    out: list[str] = []
    for method in methods:
        if not isinstance(method, str) or not _TOKEN.match(method):
            raise ConfigError(f"{where}: {method!r} is not an HTTP method")
        if method.upper() not in out:
            out.append(method.upper())
    if not out:
        raise ConfigError(f"{where}: methods must name at least one HTTP method")
    return tuple(out)


@dataclass(frozen=True)
class FunctionSpec:
    """What Flux knows of one function, fixed when its module is loaded."""

    name: str
    route: str  # without the leading slash, as declared: orders/{id:int}
    handler: Callable[..., Any]
    is_async: bool
    timeout: float
    retries: int
    cron: str | None
    file: str
    line: int
    runtime: str = "python"
    methods: tuple[str, ...] = ("POST",)

    @property
    def pattern(self) -> RoutePattern:
        return _pattern(self.route)

    def allows(self, method: str) -> bool:
        return method in self.methods or (method == "HEAD" and "GET" in self.methods)


@overload
def function(handler: Callable[..., Any], /) -> Callable[..., Any]: ...
@overload
def function(*, name: str | None = ..., route: str | None = ...,
             methods: Iterable[str] | str | None = ..., timeout: float = ...,
             retries: int = ..., cron: str | None = ...
             ) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def function(handler: Callable[..., Any] | None = None, /, *, name: str | None = None,
             route: str | None = None, methods: Iterable[str] | str | None = None,
             timeout: float = 30.0, retries: int = 0, cron: str | None = None) -> Any:
    """Declare a Flux function: ``@function`` or ``@function(route=, methods=, timeout=,
    retries=)``.

    The handler takes ``(ctx, input)`` and returns something JSON can encode, or a
    ``flux.Response``. It is routed ``POST /<name>`` unless ``route`` and ``methods`` say
    otherwise: ``@function(route="/orders/{id:int}", methods=["GET"])``.
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
        pattern = parse_route(route or name or fn.__name__)
        spec = FunctionSpec(
            name=name or fn.__name__,
            route=pattern.text,
            methods=parse_methods(methods, fn.__name__),
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


@functools.lru_cache(maxsize=1024)
def _pattern(route: str) -> RoutePattern:
    return parse_route(route)


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
