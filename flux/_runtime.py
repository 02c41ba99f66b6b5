"""The runtime: what every execution of a serving process shares — the connection pool, the
outbound HTTP session, the loaded functions, the redaction policy and the code version."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from psycopg_pool import AsyncConnectionPool

from flux._access import AdminAccess
from flux._gitinfo import CodeVersion, code_version
from flux._loader import LoadError, Registry, load_all, load_file
from flux._project import Project
from flux._record import ExecutionRecord, store
from flux._redact import RedactionPolicy, load_policy
from flux._tenants import TenantPolicy, load_tenants

if TYPE_CHECKING:
    from flux._context import Context

DEFAULT_MAX_BODY = 1024 * 1024

LogEcho = Callable[[str, str, str, dict[str, Any]], None]


class Runtime:
    """Shared state of one serving process. ``start()`` before use, ``close()`` after."""

    def __init__(self, project: Project, conninfo: str | Callable[[], str], *,
                 pool_size: int = 20, pool_timeout: float = 10.0,
                 echo: LogEcho | None = None, keeps_records: bool = True,
                 admin: AdminAccess | None = None) -> None:
        self.project = project
        self.root = project.root
        self.functions_dir = project.functions_dir
        self.conninfo = conninfo
        self.pool_timeout = pool_timeout
        self.registry = Registry()
        record_cfg = project.raw.get("record", {})
        self.max_body = int(record_cfg.get("max_request_bytes", DEFAULT_MAX_BODY))
        self.policy: RedactionPolicy = load_policy(project.state_dir, project.raw,
                                                   keep_key=keeps_records)
        self.secrets_map: dict[str, str] = {
            str(k): str(v) for k, v in project.raw.get("secrets", {}).items()}
        self.app_config: dict[str, Any] = dict(project.raw.get("app", {}))
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

    async def start(self, *, open_pool: bool = True) -> list[LoadError]:
        """Open the pool and the HTTP session, load the functions; returns load errors.
        Without ``open_pool`` the pool opens on first use (a replay served from its tape
        may never need the database)."""
        if open_pool:
            await self.ensure_pool()
        self.http_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200, enable_cleanup_closed=True))
        self.refresh_code_version()
        return load_all(self.functions_dir, self.registry)

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
                open=False, kwargs={"autocommit": True}, name="flux")  # BEGIN is ours
        return self._pool

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
        if hasattr(self, "http_session"):
            await self.http_session.close()
        if self._pool is not None and not self._pool.closed:
            await self._pool.close()

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

    async def store_record(self, record: ExecutionRecord) -> None:
        """Store a record on a pooled connection of its own (executions that held no
        transaction, and requests rejected before any function ran)."""
        await self.ensure_pool()
        async with self.pool.connection(timeout=self.pool_timeout) as conn, \
                conn.transaction():
            await store(conn, record)

    def echo_log(self, ctx: Context, level: str, message: str, fields: dict[str, Any]) -> None:
        if self._echo is not None:
            self._echo(ctx.request_id, level, message, fields)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
