"""``ctx``: the only door from a function to the outside world.

Every value that comes in through it — query results, HTTP answers, the clock, random
numbers, uuids, secret fingerprints — goes on the execution's tape, so the execution can be
replayed with the same IO. ``current()`` gives the running execution's context to code that
was not handed ``ctx`` (a helper module), and raises outside an execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import inspect
import os
import random as _random
import re
import uuid as _uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from flux._errors import ConfigError, FluxError, FunctionError, NotFound
from flux._ids import new_request_id
from flux._jsoncodec import encode
from flux.runtime._ctx_db import Database
from flux.runtime._ctx_http import Http
from flux.runtime._recorder import CallSite, Span
from flux.runtime._step import run_step, run_step_async
from flux.store._queries import load

if TYPE_CHECKING:
    from flux._function import FunctionSpec
    from flux.runtime._execution import Execution
    from flux.runtime._request import Request

_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "flux_context", default=None)


class OutsideExecution(FluxError):
    code = "outside_execution"


# The coroutine behind each ctx door (its qualified name) and how the user spells the door.
_DOORS = {"Database._run": "ctx.db", "Http._request": "ctx.http", "Queue._push":
          "ctx.queue.push", "run_step_async": "ctx.step", "Context._invoke": "ctx.invoke"}


class NotAwaited(FluxError):
    """An async handler called a ctx door and never awaited what it was handed: the call
    never ran (a job never pushed, a row never written), so the execution fails rather
    than answer as if it had. ``flux_site`` is the call's file:line."""

    code = "not_awaited"

    @classmethod
    def of(cls, coro: Any) -> NotAwaited:
        arguments = coro.cr_frame.f_locals if coro.cr_frame is not None else {}
        door = _DOORS.get(coro.cr_code.co_qualname, coro.cr_code.co_qualname)
        if door in ("ctx.db", "ctx.http"):
            verb = arguments.get("mode") or str(arguments.get("method", "request")).lower()
            door = f"{door}.{verb}"
        site = arguments.get("site")
        where = f" at {site.file}:{site.line}" if site is not None and site.file else ""
        error = cls(f"{door}(…){where} was never awaited, so it never ran",
                    hint=f"in an async function ctx's calls are coroutines: write "
                         f"`await {door}(…)`")
        error.flux_site = site  # type: ignore[attr-defined]
        return error


async def call_handler(spec: FunctionSpec, ctx: Context, input: Any) -> Any:
    """Run a handler: awaited if async, in a worker thread (with our contextvars) if not."""
    if spec.is_async:
        return await spec.handler(ctx, input)
    return await asyncio.to_thread(spec.handler, ctx, input)


def current() -> Context:
    """The context of the running execution."""
    ctx = _current.get()
    if ctx is None:
        raise OutsideExecution("flux.current() was called outside a Flux execution")
    return ctx


def context() -> Context:
    """The ``ctx`` of the running execution, for code Flux did not call with one: a route
    handler of an ASGI app Flux serves (``[asgi]`` in flux.toml), a helper module.
    ``flux.context().db``, ``.now()``, ``.step(…)``, ``.queue.push(…)`` are recorded as
    ``ctx``'s are. Outside an execution it raises OutsideExecution (a FluxError)."""
    ctx = _current.get()
    if ctx is None:
        raise OutsideExecution(
            "flux.context() was called outside a Flux execution",
            hint="call it while Flux runs a request: inside a function, or a route of the "
            "ASGI app Flux serves ([asgi] in flux.toml)")
    return ctx


class activate:
    """Make ``ctx`` the running execution's context inside the ``with``. A class rather
    than a generator: every execution enters one."""

    __slots__ = ("_ctx", "_token")

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._token: contextvars.Token[Context | None] | None = None

    def __enter__(self) -> Context:
        self._token = _current.set(self._ctx)
        return self._ctx

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _current.reset(self._token)


class Secrets:
    """``ctx.secrets.get(name)``: the value from the environment variable ``[secrets]``
    maps the name to (or the variable of that name). The value is never stored — only its
    keyed fingerprint goes on the tape — and it is scrubbed from anything recorded."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def get(self, name: str) -> str | None:
        ex = self._ctx._execution
        rec = ex.recorder
        site = rec.call_site()
        if ex.replay is not None and (served := ex.replay.value("secret", name, site)):
            # Replay hands back the local value (same fingerprint) or a stand-in, and the
            # marker recorded for it: calls that carry it get the key they were recorded with.
            value, mark = served.value if isinstance(served.value, tuple) else (served.value,
                                                                                None)
        else:
            mapping = ex.runtime.secrets_map
            value = os.environ.get(mapping.get(name, name))
            rec.tape_append("secret", name,
                            None if value is None else ex.policy.fingerprint(value), site=site)
            mark = None
        if value and len(value) >= 4:
            rec.secret_marks[value] = mark or ex.policy.marker(value)
        return value

    def __getitem__(self, name: str) -> str:
        """``ctx.secrets["NAME"]``: as ``get``, but a secret that is not set is a KeyError
        that says which environment variable to set, not a None sent on to a provider."""
        value = self.get(name)
        if value is None:
            variable = self._ctx._execution.runtime.secrets_map.get(name, name)
            raise SecretNotSet(f"secret {name} is not set: set the environment variable "
                               f"{variable}", hint="flux.toml's [secrets] maps a name to the "
                               "variable it is read from")
        return value


class SecretNotSet(FluxError, KeyError):
    """``ctx.secrets["NAME"]`` of a secret whose variable is not set. A KeyError, as a
    mapping's missing key is, that names the variable rather than quoting the key."""

    code = "secret_not_set"

    def __str__(self) -> str:
        return self.message


MISSING_CONFIG = {"_flux_missing": True}  # on the tape: the key was read and was absent


class Config(Mapping[str, Any]):
    """``ctx.config``: the ``[app]`` table of flux.toml. Each key a function reads goes on
    the tape (kind ``config``, once per execution), so the record says which configuration
    the execution saw, and a replay runs with production's values (``--config local`` for
    today's), as it does with every other value from outside."""

    def __init__(self, execution: Execution, values: Mapping[str, Any]) -> None:
        self._execution = execution
        self._values = values
        self._seen: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._seen:
            self._seen[name] = self._read(name)
        value = self._seen[name]
        if value is _ABSENT:
            raise KeyError(name)
        return value

    def _read(self, name: str) -> Any:
        ex = self._execution
        site = ex.recorder.call_site()
        if ex.replay is not None and isinstance(name, str) and \
                (served := ex.replay.value("config", name, site)):
            return _ABSENT if served.value == MISSING_CONFIG else served.value
        present = name in self._values
        value = self._values[name] if present else _ABSENT
        if isinstance(name, str):
            ex.recorder.tape_append("config", name,
                                    encode(value) if present else dict(MISSING_CONFIG),
                                    site=site)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Config({dict(self._values)!r})"


_ABSENT = object()


class Log:
    """``ctx.log.info("charged", order_id=…)``: structured lines, attached to the span."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> None:
        ex = self._ctx._execution
        scrubbed = ex.policy.scrub_text(str(message), ex.recorder.secret_values)
        prepared = ex.prepare_body(encode(fields))
        ex.recorder.log(level, scrubbed, prepared, ex.recorder.call_site())
        # The terminal gets what the store gets: a field named token, redacted there, is
        # redacted here too.
        ex.runtime.echo_log(self._ctx.request_id, level, scrubbed,
                            prepared if isinstance(prepared, dict) else {"fields": prepared})

    def debug(self, message: str, **fields: Any) -> None:
        self._emit("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._emit("warning", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("error", message, fields)


_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_delay(delay: float | int | str | dt.timedelta | None) -> dt.timedelta:
    """``"5m"``, ``"30s"``, ``90``, a timedelta → a timedelta."""
    if delay is None:
        return dt.timedelta(0)
    if isinstance(delay, dt.timedelta):
        return delay
    if isinstance(delay, int | float) and not isinstance(delay, bool) and delay >= 0:
        return dt.timedelta(seconds=delay)
    match = _DELAY.match(str(delay))
    if not match:
        raise ConfigError(f"delay must look like 30s, 5m, 2h or a number of seconds, "
                          f"not {delay!r}")
    return dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])


class Queue:
    """``ctx.queue.push(fn, payload)``: a job row inserted in the execution's transaction,
    so it exists only if the execution commits."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def push(self, function: str, payload: Any = None, *, delay: Any = None,
             idempotency_key: str | None = None) -> Any:
        ex = self._ctx._execution
        return ex.bridge(self._push(function, payload, delay, idempotency_key,
                                    ex.recorder.call_site()))

    async def _push(self, function: str, payload: Any, delay: Any,
                    idempotency_key: str | None, site: CallSite) -> str:
        ex = self._ctx._execution
        rec = ex.recorder
        target = ex.runtime.registry.by_name.get(function)
        if target is None:
            raise NotFound(f"ctx.queue.push: no function named {function!r}")
        wait = parse_delay(delay)
        with rec.span(f"queue.push({function})", "queue", site,
                      {"function": function, "delay_s": wait.total_seconds(),
                       "idempotency_key": idempotency_key}) as span:
            if ex.replay is not None and (served := ex.replay.value("queue", function, site)):
                return str(served.value)
            q = load("execution")
            job_id = str(new_request_id())
            async with ex.db_lock:
                conn = await ex.connection()
                row = await (await conn.execute(q.push_job, {
                    "id": job_id, "function": function, "payload": Jsonb(encode(payload)),
                    "max_attempts": target.retries + 1, "delay": wait,
                    "idempotency_key": idempotency_key, "parent_id": ex.request_id,
                })).fetchone()
                if row is None:  # the idempotency key was used already: that job stands
                    row = await (await conn.execute(q.existing_job, {
                        "function": function, "idempotency_key": idempotency_key})).fetchone()
            job_id = str(row[0]) if row else job_id
            span.attrs["job_id"] = job_id
            rec.tape_append("queue", function, job_id, site=site, span_id=span.id)
            return job_id


class SpanHandle:
    """``with ctx.span("name"):`` or ``async with ctx.span("name"):`` — a custom span."""

    def __init__(self, ctx: Context, name: str, attrs: dict[str, Any]) -> None:
        self._ctx = ctx
        self._name = name
        self._attrs = attrs
        self._cm: contextlib.AbstractContextManager[Span] | None = None

    def __enter__(self) -> Span:
        rec = self._ctx._execution.recorder
        self._cm = rec.span(self._name, "custom", rec.call_site(), self._attrs)
        return self._cm.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        assert self._cm is not None
        return self._cm.__exit__(*exc)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        return self.__exit__(*exc)


class Context:
    """What a function receives as ``ctx``."""

    def __init__(self, execution: Execution, spec: FunctionSpec, *,
                 headers: Mapping[str, str], request: Request,
                 is_replay: bool = False) -> None:
        self._execution = execution
        self.request_id: str = execution.request_id
        self.function: str = spec.name
        self._headers_in = headers
        self.request: Request = request  # as it came (flux/runtime/_request.py)
        self.is_replay = is_replay

        self._headers: dict[str, str] | None = None
        self._config: Config | None = None
        self._db: Database | None = None
        self._http: Http | None = None
        self._secrets: Secrets | None = None
        self._log: Log | None = None
        self._queue: Queue | None = None

    # The headers' copy, the configuration and the doors are made on first use (a handler
    # opens two or three of them), by plain properties: functools.cached_property takes a
    # lock on every first read, which costs more than making them all.

    @property
    def headers(self) -> dict[str, str]:
        """The request's headers, the handler's own copy (made on first read)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = dict(self._headers_in)
        return headers

    @property
    def config(self) -> Config:
        config = self._config
        if config is None:
            config = self._config = Config(self._execution, self._execution.runtime.app_config)
        return config

    @property
    def db(self) -> Database:
        door = self._db
        if door is None:
            door = self._db = Database(self._execution)
        return door

    @property
    def http(self) -> Http:
        door = self._http
        if door is None:
            door = self._http = Http(self._execution)
        return door

    @property
    def secrets(self) -> Secrets:
        door = self._secrets
        if door is None:
            door = self._secrets = Secrets(self)
        return door

    @property
    def log(self) -> Log:
        door = self._log
        if door is None:
            door = self._log = Log(self)
        return door

    @property
    def queue(self) -> Queue:
        door = self._queue
        if door is None:
            door = self._queue = Queue(self)
        return door

    # -- values from outside: recorded, and served from the tape on replay ----------------

    def _value(self, kind: str, key: str, live: Any, encode_: Any = encode) -> Any:
        ex = self._execution
        site = ex.recorder.call_site()
        if ex.replay is not None and (served := ex.replay.value(kind, key, site)):
            return served.value
        ex.recorder.tape_append(kind, key, encode_(live), site=site)
        return live

    def now(self) -> dt.datetime:
        """The current time (UTC, aware)."""
        return self._value("clock", "now", dt.datetime.now(dt.UTC))

    def uuid(self) -> _uuid.UUID:
        """A random UUID (v4)."""
        return self._value("uuid", "uuid4", _uuid.uuid4())

    def random(self) -> float:
        """A random float in [0, 1)."""
        return self._value("random", "random", _random.random())

    # -- any other outside call ------------------------------------------------------------

    def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once — a gRPC stub, an SMTP send, a cache read — with
        its result or exception on the tape: replay and resume serve it from there and never
        run ``fn`` again. An async ``fn`` gives an awaitable (run to completion for a sync
        handler). What ``fn`` does inside is the step's, not unrecorded IO."""
        ex = self._execution
        site = ex.recorder.call_site()
        if inspect.iscoroutinefunction(fn):
            return ex.bridge(run_step_async(ex, name, site, fn, args, kwargs))
        return run_step(ex, name, site, fn, args, kwargs)

    # -- structure ------------------------------------------------------------------------

    def span(self, name: str, **attrs: Any) -> SpanHandle:
        return SpanHandle(self, name, attrs)

    def error(self, status: int, code: str, message: str) -> FunctionError:
        """An intended failure for the handler to raise: ``raise ctx.error(404, …)``."""
        return FunctionError(status, code, message)

    def invoke(self, function: str, input: Any = None) -> Any:
        """Call another function inside this execution (same transaction, a child span)."""
        ex = self._execution
        return ex.bridge(self._invoke(function, input, ex.recorder.call_site()))

    async def _invoke(self, function: str, input: Any, site: CallSite) -> Any:
        ex = self._execution
        rec = ex.recorder
        target = ex.runtime.registry.by_name.get(function)
        if target is None:
            raise NotFound(f"ctx.invoke: no function named {function!r}")
        with rec.span(f"invoke({function})", "invoke", site, {"function": function}) as span:
            child = Context(ex, target, headers=self.headers, is_replay=self.is_replay,
                            request=self.request)
            output = await call_handler(target, child, input)
            rec.tape_append("invoke", function, encode(output), site=site, span_id=span.id)
            return output
