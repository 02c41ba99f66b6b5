"""The runtime: what every execution of a serving process shares — the connection pool, the
outbound HTTP session, the loaded functions, the redaction policy and the code version."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from flux._errors import DatabaseUnavailable, Overloaded
from flux._gitinfo import CodeVersion, code_version
from flux._project import Project
from flux.runtime._access import AdminAccess
from flux.runtime._asgi import AppError, LoadedApp, function_spec, load_app
from flux.runtime._deadline import Deadline
from flux.runtime._intercept import install as capture_clients
from flux.runtime._iowatch import IOAllowance
from flux.runtime._loader import LoadError, Registry, load_all, load_file
from flux.runtime._otel import exporter_for
from flux.runtime._redact import RedactionPolicy, load_policy
from flux.runtime._tenants import TenantPolicy, load_tenants
from flux.store._availability import PROBE_TIMEOUT, Availability, connection_lost
from flux.store._record import ExecutionRecord, RecordingConnection, store

if TYPE_CHECKING:
    from flux.runtime._otel import Exporter

DEFAULT_MAX_BODY = 1024 * 1024
# How long the pool keeps retrying a lost connection with its own backoff before it lets
# the slot go; a later demand grows the pool again with a fresh, immediate attempt.
RECONNECT_TIMEOUT = 2.0
UNAVAILABLE = "the database is unavailable"
INFLIGHT_PER_CONNECTION = 5  # default [server] max_inflight = 5 × [database] pool_size

LogEcho = Callable[[str, str, str, dict[str, Any]], None]
RecordSink = Callable[[ExecutionRecord], None]

# Where the record of one execution goes instead of the database (see records_to).
_record_sink: ContextVar[tuple[str, RecordSink] | None] = ContextVar("flux_record_sink",
                                                                     default=None)


@contextlib.contextmanager
def records_to(request_id: str, sink: RecordSink) -> Iterator[None]:
    """While the block runs, the record of execution ``request_id``, if it is stored on its
    own with nothing else to write (no failure signature, no rolled-back mutations: an
    execution that opened no transaction and succeeded), is handed to ``sink`` instead of
    being inserted — unless it called outside (HTTP, a step, an invoke): that record is
    stored at once, so a crash cannot make the job send its calls again. The queue worker
    writes the others in batches, each in the same transaction as its job's done-mark
    (flux/jobs/_worker.py). Any other record, and any other execution's (one this execution
    starts), is stored as usual."""
    token = _record_sink.set((request_id, sink))
    try:
        yield
    finally:
        _record_sink.reset(token)


# Tape entries of calls that reached outside the process: a record holding one is stored at
# once, so a crash before the job's done-mark finds it and does not run the job (and send
# the call) again (flux/jobs/_worker.py: a lease run out with an ok record is done).
_OUTSIDE = frozenset({"http", "step", "invoke"})


def _reached_out(record: ExecutionRecord) -> bool:
    return any(entry.get("kind") in _OUTSIDE for entry in record.tape)


class Runtime:
    """Shared state of one serving process. ``start()`` before use, ``close()`` after."""

    def __init__(self, project: Project, conninfo: str | Callable[[], str], *,
                 pool_size: int | None = None, pool_timeout: float | None = None,
                 echo: LogEcho | None = None, keeps_records: bool = True,
                 exports_spans: bool = True, admin: AdminAccess | None = None) -> None:
        self.project = project
        self.root = project.root
        self.functions_dir = project.functions_dir
        self.conninfo = conninfo
        db = project.database
        self.pool_timeout = db.pool_timeout if pool_timeout is None else pool_timeout
        self.statement_timeout = db.statement_timeout
        pool_size = db.pool_size if pool_size is None else pool_size
        # Executions in flight at once. A burst of a few times the pool waits a few
        # transactions' time for a connection; past this a request is refused at once (503)
        # instead of queueing without bound behind a stuck store.
        self.max_inflight = project.server.max_inflight or INFLIGHT_PER_CONNECTION * pool_size
        self.inflight = 0
        self.body_timeout = project.server.body_timeout
        self.refused: dict[str, int] = {"overloaded": 0, "unavailable": 0}
        self.availability = Availability(self._probe, self._pool_check)
        self.registry = Registry()
        record_cfg = project.raw.get("record", {})
        self.max_body = int(record_cfg.get("max_request_bytes", DEFAULT_MAX_BODY))
        self.sample_rate = project.record.sample_rate  # of successes (flux/runtime/_sampling.py)
        self.policy: RedactionPolicy = load_policy(project.state_dir, project.raw,
                                                   keep_key=keeps_records)
        self.secrets_map: dict[str, str] = {
            str(k): str(v) for k, v in project.raw.get("secrets", {}).items()}
        self.app_config: dict[str, Any] = dict(project.raw.get("app", {}))
        self.io_allow: IOAllowance = IOAllowance.of(project.root, project.raw)
        self.tenants: TenantPolicy = load_tenants(project.root, project.raw)
        # Who may call /_flux/: `flux dev` and `flux serve` say; otherwise a token from
        # the environment, and without one the admin API is closed.
        self.admin: AdminAccess = admin or AdminAccess.for_server(dev=False, host="")
        self.code_version: CodeVersion = CodeVersion(None, False)
        self._echo = echo
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        self.http_session: aiohttp.ClientSession
        self._pool_lock = asyncio.Lock()
        self.otel: Exporter | None = None  # [otel] endpoint: spans sent over OTLP/HTTP
        self.asgi: LoadedApp | None = None  # [asgi] app, once loaded and started
        self._exports_spans = exports_spans  # false where nothing is stored (dry runs)

    async def start(self, *, open_pool: bool = True) -> list[LoadError]:
        """Open the pool and the HTTP session, load the functions; returns load errors.
        Without ``open_pool`` the pool opens on first use (a replay served from its tape
        may never need the database)."""
        if open_pool:
            await self.ensure_pool()
        self.http_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200, enable_cleanup_closed=True))
        capture_clients()  # the HTTP clients handlers use, captured while one runs
        self.refresh_code_version()
        if self._exports_spans:

            self.otel = exporter_for(self.project)
        errors = load_all(self.functions_dir, self.registry)
        if self.project.asgi.app is not None:
            errors.extend(await self._start_asgi(self.project.asgi.app))
        return errors

    async def _start_asgi(self, spec: str) -> list[LoadError]:
        """Load the ASGI app of ``[asgi]`` and run its startup. An app that cannot be
        imported is a load error (the functions still serve, as with a broken function);
        a startup that fails stops the runtime from starting (AppError), as in uvicorn."""
        config = self.project.asgi
        where = self.root / "flux.toml"
        if config.name in self.registry.by_name:
            return [LoadError(where, f"[asgi] name {config.name!r} is also a function's name; "
                                     "give the app another with [asgi] name")]
        try:
            loaded = load_app(spec, self.root, config)  # before serving: blocking is fine
        except AppError as exc:
            return [LoadError(where, exc.message)]
        await loaded.lifespan.startup()
        self.asgi = loaded
        self.registry.asgi = function_spec(loaded, config)
        return []

    @property
    def pool(self) -> AsyncConnectionPool:
        """The connection pool (not necessarily open: see ensure_pool). The database
        address may be a callable, resolved only when a connection is first needed — a
        replay served from its tape never starts a database."""
        if self._pool is None:
            if callable(self.conninfo):
                self.conninfo = self.conninfo()
            self._pool = AsyncConnectionPool(
                self.conninfo, min_size=min(4, self._pool_size), max_size=self._pool_size,
                open=False, kwargs=self._connect_kwargs(), name="flux",
                reconnect_timeout=RECONNECT_TIMEOUT,
                connection_class=RecordingConnection)  # the record sent prepared
        return self._pool

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True}  # BEGIN is ours
        if self.statement_timeout is not None:
            # A connection option, so it costs no round trip; added to any options the
            # address already carries.
            assert isinstance(self.conninfo, str)
            given = psycopg.conninfo.conninfo_to_dict(self.conninfo).get("options") or ""
            ms = max(1, round(self.statement_timeout * 1000))
            kwargs["options"] = f"{given} -c statement_timeout={ms}".strip()
        return kwargs

    async def acquire(self, *, patience: float = 0.0) -> psycopg.AsyncConnection[Any]:
        """A pooled connection (give it back with ``pool.putconn``). While the database is
        down this is refused at once — unless ``patience`` seconds are given to wait for it
        to come back, as the record of an execution that already ran gets. When no
        connection comes free within ``pool_timeout`` the runtime is overloaded."""
        health = self.availability
        if health.down and not (patience and await health.wait_up(patience)):
            raise DatabaseUnavailable(UNAVAILABLE)
        pool = await self.ensure_pool()
        try:
            # The pool's own timeout bounds the wait, and arms its timer only when no
            # connection is free; ``deadline`` arms none (nor a coroutine: _deadline.py)
            # and is there for the availability monitor to cut the wait short if the
            # database goes down meanwhile.
            with Deadline(None) as deadline, health.waiting(deadline):
                return await pool.getconn(timeout=self.pool_timeout)
        except (TimeoutError, PoolTimeout) as exc:
            if health.down:  # woken early: the database went away while we waited
                raise DatabaseUnavailable(UNAVAILABLE) from exc
            raise Overloaded(f"no database connection came free within {self.pool_timeout:g}s",
                             hint="raise [database] pool_size or lower the load") from exc

    async def begin(self, statement: bytes | Callable[[psycopg.AsyncConnection[Any]],
                                                      Awaitable[None]]
                    ) -> psycopg.AsyncConnection[Any]:
        """A pooled connection with its transaction opened by ``statement`` (SQL, or a
        coroutine function that sends it on the connection). A connection that went stale
        while idle (the server restarted since) is replaced once, as soon as the server is
        known to answer again."""
        for attempt in (1, 2):
            conn = await self.acquire()
            try:
                if callable(statement):
                    await statement(conn)
                else:
                    await conn.execute(statement, prepare=False)
            except BaseException as exc:
                await self.pool.putconn(conn)
                if not connection_lost(exc):
                    raise
                self.availability.lost(exc)
                if attempt == 1 and await self.availability.answers():
                    continue
                raise DatabaseUnavailable(UNAVAILABLE) from exc
            return conn
        raise AssertionError("unreachable")

    async def _probe(self) -> None:
        assert isinstance(self.conninfo, str)
        conn = await psycopg.AsyncConnection.connect(self.conninfo,
                                                     connect_timeout=PROBE_TIMEOUT)
        await conn.close()

    async def _pool_check(self) -> None:
        if self._pool is not None and not self._pool.closed:
            await self._pool.check()

    async def ensure_pool(self) -> AsyncConnectionPool:
        if self._pool is None or self._pool.closed:
            async with self._pool_lock:
                if self._pool is None and callable(self.conninfo):
                    resolve = self.conninfo
                    self.conninfo = await asyncio.to_thread(resolve)
                if self.pool.closed:
                    await self.pool.open(wait=True, timeout=30)
        return self.pool

    async def close(self) -> None:
        """Run the ASGI app's shutdown, then close the HTTP session, the pool and the
        exporter."""
        asgi, self.asgi = self.asgi, None
        try:
            if asgi is not None:
                await asgi.lifespan.shutdown()
        finally:
            await self._close()

    async def _close(self) -> None:
        await self.availability.close()
        if hasattr(self, "http_session"):
            await self.http_session.close()
        if self._pool is not None and not self._pool.closed:
            await self._pool.close()
        if self.otel is not None:
            otel, self.otel = self.otel, None
            await asyncio.to_thread(otel.shutdown)  # sends what is queued, in its thread

    def refresh_code_version(self) -> None:
        self.code_version = code_version(self.root)

    def reload(self, path: Path) -> tuple[str | None, float, LoadError | None]:
        """Reload one changed module; on error the previous version keeps serving."""
        loaded = load_file(path)
        self.refresh_code_version()
        if loaded.error is not None:
            return self.registry.by_file.get(path), loaded.millis, loaded.error
        if loaded.spec is None:
            return self.registry.drop(path), loaded.millis, None
        self.registry.put(path, loaded.spec)
        return loaded.spec.name, loaded.millis, None

    @contextlib.asynccontextmanager
    async def connection(self, *, patience: float = 0.0
                         ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for the block (see ``acquire``); a connection-level failure
        inside it is reported and raised as DatabaseUnavailable."""
        conn = await self.acquire(patience=patience)
        try:
            yield conn
        except Exception as exc:
            if not connection_lost(exc) or isinstance(exc, DatabaseUnavailable):
                raise
            self.availability.lost(exc)
            raise DatabaseUnavailable(UNAVAILABLE) from exc
        finally:
            await self.pool.putconn(conn)

    async def store_record(self, record: ExecutionRecord) -> None:
        """Store a record on a pooled connection of its own (executions that held no
        transaction, failed ones whose connection was lost, and requests rejected before any
        function ran). The execution already ran, so a lost database is waited for up to
        ``pool_timeout``; then DatabaseUnavailable says the record was not stored."""
        sink = _record_sink.get()
        if sink is not None and sink[0] == record.request_id and record.signature is None \
                and not record.mutations and not _reached_out(record):
            sink[1](record)  # written later, with its job's done-mark (records_to)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.pool_timeout
        for attempt in (1, 2):
            try:
                async with self.connection(patience=max(0.0, deadline - loop.time())) as conn:
                    if record.signature is None and not record.mutations:
                        # One INSERT on an autocommit connection is its own transaction:
                        # one round trip instead of BEGIN, INSERT, COMMIT (a job's record).
                        await store(conn, record)
                    else:
                        async with conn.transaction():
                            await store(conn, record)
                return
            except DatabaseUnavailable:
                # Once more if the server answers again (the connection had gone stale
                # while idle) or comes back before the deadline.
                if attempt == 2 or not await self.availability.wait_up(
                        max(0.0, deadline - loop.time())):
                    raise

    def export_spans(self, record: ExecutionRecord) -> None:
        """Queue a stored record's spans for OTLP export (with ``[otel]`` configured); never
        raises, never waits: the SDK's batch thread sends them."""
        if self.otel is not None:
            self.otel.export(record)

    def configured_secrets(self) -> set[str]:
        """The values of every ``[secrets]`` entry set in the environment: scrubbed from
        each record whether or not its function read them (a client may send one back)."""
        if not self.secrets_map:
            return set()
        values = (os.environ.get(var) for var in self.secrets_map.values())
        return {v for v in values if v and len(v) >= 4}

    def echo_log(self, request_id: str, level: str, message: str,
                 fields: dict[str, Any]) -> None:
        """Hand a ``ctx.log`` line to whoever serves (flux dev prints it)."""
        if self._echo is not None:
            self._echo(request_id, level, message, fields)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
