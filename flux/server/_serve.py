"""Serving a project: ``flux dev`` (embedded PostgreSQL, reload on change, loopback) and
``flux serve`` (DATABASE_URL, no reload, several worker processes on one port).

Both prepare the database the same way — start it if embedded, migrate the flux schema,
apply ``schema/*.sql``, install capture — then serve until SIGINT or SIGTERM, finish the
requests in flight, and stop the embedded server if this process started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from flux._errors import ConfigError, FluxError
from flux._project import Project
from flux.capture._schema import SchemaResult, apply_schema
from flux.jobs._worker import start_jobs
from flux.runtime._access import AdminAccess
from flux.runtime._gateway import Observer, make_app
from flux.runtime._loader import LoadError, function_file
from flux.runtime._runtime import LogEcho, Runtime
from flux.server._admin import admin_app
from flux.server._running import announce, withdraw
from flux.store._database import Target, resolve
from flux.store._migrate import migrate
from flux.store._retention import Background as Retention
from flux.store._retention import maintain

SHUTDOWN_GRACE = 10.0


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse with the parser's exception, whose message
    quotes the raw bytes — an ``Authorization`` header among them. Keep the line, drop the
    bytes: the client got its 400, and nothing of what it sent reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused a malformed request from %s (%s, HTTP %s)"
            record.args = (remote, type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
        return True


_MALFORMED = MalformedRequestFilter()


def application(runtime: Runtime, *, observer: Observer | None = None) -> web.Application:
    """The application ``flux dev`` and ``flux serve`` run: the functions, with the admin API
    mounted at ``/_flux/`` before their catch-all route."""
    return make_app(runtime, observer=observer, admin=admin_app())


@dataclass
class ServeEvents:
    """What the CLI is told while serving, to render as it likes."""

    ready: Callable[[ServeInfo], None] = lambda info: None
    reloaded: Callable[[str | None, float, LoadError | None, Path], None] = \
        lambda name, ms, err, path: None
    request: Observer | None = None
    log: LogEcho | None = None
    stopping: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class ServeInfo:
    url: str
    database: str
    embedded: bool
    functions: list[tuple[str, str, str]]  # the route table: (method, /route, name)
    load_errors: list[LoadError]
    schema: SchemaResult
    data_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    admin: str = "closed"  # open (flux dev on loopback), token, or closed
    asgi: str | None = None  # "shop.api:app as asgi (lifespan on)": the ASGI app served


def _asgi_state(runtime: Runtime) -> str | None:
    loaded = runtime.asgi
    if loaded is None:
        return None
    life = "on" if loaded.lifespan.supported else \
        "off" if loaded.lifespan.mode == "off" else "not supported by the app"
    return f"{loaded.spec} as {runtime.project.asgi.name} (lifespan {life})"


def _admin_state(access: AdminAccess) -> str:
    if access.open_locally:
        return "open"
    return "token" if access.token_digest is not None else "closed"


def prepare_database(project: Project) -> tuple[Target, SchemaResult]:
    """Start (if embedded) and migrate the database, make the day partitions ahead, apply
    schema/, install capture."""
    target = resolve(project, start=True)
    migrate(target.conninfo)
    maintain(target.conninfo)
    return target, apply_schema(target.conninfo, project.schema_dir, capture=project.capture)


async def serve(project: Project, *, host: str, port: int, reload: bool,
                events: ServeEvents, prepared: tuple[Target, SchemaResult] | None = None,
                reuse_port: bool = False, stop_embedded: bool = True,
                dev: bool = False) -> None:
    """Serve until SIGINT/SIGTERM. ``dev``: started by ``flux dev`` (bound to loopback, its
    admin API needs no token; flux/runtime/_access.py)."""
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED)  # once: a set of filters
    if prepared is None:
        prepared = await asyncio.to_thread(prepare_database, project)
    target, schema = prepared
    access = AdminAccess.for_server(dev=dev, host=host)
    runtime = Runtime(project, target.conninfo, echo=events.log, admin=access)
    runner: web.AppRunner | None = None
    jobs = None  # the queue worker and cron (flux/jobs/_worker.py)
    capture = None  # the WAL capture consumer (flux/capture/_consumer.py), in WAL mode
    retention = None  # partitions ahead and gc (flux/store/_retention.py)
    try:
        load_errors = await runtime.start()
        runner = web.AppRunner(application(runtime, observer=events.request),
                               access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} is already in use",
                                  hint="stop what uses it, or pick another with --port") from exc
            raise FluxError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        # Before "ready": a SIGTERM right after it must stop gracefully, not kill.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        shown_host = "localhost" if host in ("127.0.0.1", "0.0.0.0", "") else host
        if dev:  # flux why / flux trace print links to this server's web view
            announce(project, f"http://{shown_host}:{port}")
        events.ready(ServeInfo(
            url=f"http://{shown_host}:{port}", database=target.display,
            embedded=target.embedded is not None,
            functions=[(method, route, spec.name)
                       for method, route, spec in runtime.registry.table()],
            load_errors=load_errors, schema=schema,
            data_dir=str(target.embedded.data_dir) if target.embedded else None,
            admin=_admin_state(access), asgi=_asgi_state(runtime)))

        jobs = await start_jobs(runtime)
        # Always: idle in trigger mode, it takes over when `flux capture switch wal` runs.
        from flux.capture._running import Background as CaptureConsumer

        capture = CaptureConsumer(target.conninfo).start()

        retention = Retention(target.conninfo, project.record.retention).start()
        watcher = asyncio.create_task(_watch(runtime, events, stop)) if reload else None
        await stop.wait()
        events.stopping()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    finally:
        if dev:
            withdraw(project)
        if retention is not None:
            await retention.stop()
        if jobs is not None:
            await jobs.stop()  # finish the jobs in flight, while the pool is still open
        if runner is not None:
            await runner.cleanup()  # stops accepting, lets requests in flight finish
        await runtime.close()
        if capture is not None:
            await asyncio.to_thread(capture.stop)  # after the last request's commit
        if stop_embedded and target.started and target.embedded is not None:
            await asyncio.to_thread(target.embedded.stop)


async def _watch(runtime: Runtime, events: ServeEvents, stop: asyncio.Event) -> None:
    """Reload a function when its file (or a Wasm function's sidecar .toml) changes."""
    # watchfiles: only flux dev reloads on save
    from watchfiles import Change, awatch

    directory = runtime.functions_dir
    if not directory.is_dir():
        return
    async for changes in awatch(directory, stop_event=stop, debounce=50, step=20):
        reloaded: set[Path] = set()
        for change, name in sorted(changes, key=lambda c: c[1]):
            path = function_file(Path(name))
            if path is None or path in reloaded:
                continue  # not a function, or already reloaded (a module and its sidecar)
            reloaded.add(path)
            if change == Change.deleted and path == Path(name):
                dropped = runtime.registry.drop(path)
                events.reloaded(dropped, 0.0, None, path)
                continue
            fn, millis, error = runtime.reload(path)
            events.reloaded(fn, millis, error, path)
