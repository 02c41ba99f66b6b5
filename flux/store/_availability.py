"""Whether the database can be reached, as one serving process last saw it.

Three states. **up**: requests run. A connection-level failure anywhere in the runtime (the
server shut down, a socket closed, a connection refused) makes the process **check**: a
probe connects once, and requests keep being admitted meanwhile — a single connection
killed by a DBA must not turn away traffic. If the probe cannot connect the database is
**down**: the gateway refuses every new request at once with a 503 that says it was not run,
requests waiting for a pooled connection are woken with the same answer, and the probe tries
again every ``PROBE_INTERVAL``. When it connects, the pool's idle connections are checked
(those that went stale across the restart are replaced) and the state is up again.

psycopg_pool reconnects by itself too, but with an exponential backoff (1 s, 2 s, 4 s, …)
meant for a long outage; the probe is what notices the server is back within a fraction of
a second, and the pool's short ``reconnect_timeout`` (see ``Runtime.pool``) lets it grow
again on demand with fresh attempts instead of waiting out its backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import psycopg
from psycopg_pool import PoolTimeout

from flux._errors import DatabaseUnavailable
from flux.store._database import first_line

log = logging.getLogger("flux.database")

PROBE_INTERVAL = 0.25  # seconds between connection attempts while the database is down
PROBE_TIMEOUT = 2  # connect_timeout of one attempt (libpq takes whole seconds)

# SQLSTATEs of a server ending the session: admin_shutdown, crash_shutdown, cannot_connect_now.
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the server or the connection is gone, rather than that a
    statement failed (a statement timeout, a lock timeout, a constraint)."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if not isinstance(exc, psycopg.OperationalError) or isinstance(exc, PoolTimeout):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _SESSION_ENDED


class Cuttable(Protocol):
    """What a wait for a connection is cut short through: ``asyncio.Timeout`` or the
    runtime's ``Deadline`` (flux/runtime/_deadline.py)."""

    def reschedule(self, when: float | None) -> None: ...


class _Waiting:
    """``with availability.waiting(deadline):`` — a class rather than a generator: every
    execution that uses the database enters one."""

    __slots__ = ("_availability", "_deadline")

    def __init__(self, availability: Availability, deadline: Cuttable) -> None:
        self._availability = availability
        self._deadline = deadline

    def __enter__(self) -> None:
        availability = self._availability
        if availability.state == "down":
            self._deadline.reschedule(asyncio.get_running_loop().time())
        availability._waiters.add(self._deadline)

    def __exit__(self, *exc: object) -> None:
        self._availability._waiters.discard(self._deadline)


class Availability:
    """The database's state for one process. ``connect`` makes one connection attempt (and
    closes it); ``refresh`` runs when the database is back (the runtime checks its pool)."""

    def __init__(self, connect: Callable[[], Awaitable[None]],
                 refresh: Callable[[], Awaitable[None]]) -> None:
        self._connect = connect
        self._refresh = refresh
        self.state = "up"  # up | checking | down
        self.down_since: float | None = None
        self.outages = 0
        self._up = asyncio.Event()
        self._up.set()
        self._known = asyncio.Event()  # set unless a check is under way
        self._known.set()
        self._probe: asyncio.Task[None] | None = None
        self._waiters: set[Cuttable] = set()

    @property
    def down(self) -> bool:
        return self.state == "down"

    def lost(self, exc: BaseException) -> None:
        """A connection-level failure was seen: check the database (once at a time)."""
        if self._probe is not None and not self._probe.done():
            return
        if self.state == "up":
            self.state = "checking"
            self._up.clear()
            self._known.clear()
        self._probe = asyncio.get_running_loop().create_task(self._run(exc),
                                                             name="flux-db-probe")

    async def answers(self) -> bool:
        """Whether the database answers, as the check under way finds out (its first
        connection attempt) — at once when no check is under way."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PROBE_TIMEOUT + 1):
                await self._known.wait()
        return self.state == "up"

    async def wait_up(self, timeout: float) -> bool:
        """Whether the database is (or comes) up within ``timeout`` seconds."""
        if self._up.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._up.wait()
        return self._up.is_set()

    def waiting(self, deadline: Cuttable) -> _Waiting:
        """Register a wait for a pooled connection: it is cut short if the database goes
        down, so nobody queues for a connection that cannot come."""
        return _Waiting(self, deadline)

    async def _run(self, first: BaseException) -> None:
        reason = first
        while True:
            try:
                await self._connect()
            except Exception as exc:
                reason = exc
                if self.state != "down":
                    self._went_down(reason)
                await asyncio.sleep(PROBE_INTERVAL)
                continue
            with contextlib.suppress(Exception):  # a pool closing under us, say
                await self._refresh()
            if self.down_since is not None:
                log.warning("the database is reachable again after %.1f s",
                            time.monotonic() - self.down_since)
            self.state, self.down_since = "up", None
            self._up.set()
            self._known.set()
            return

    def _went_down(self, reason: BaseException) -> None:
        self.state = "down"
        self._known.set()
        self.down_since = time.monotonic()
        self.outages += 1
        log.warning("the database is unreachable (%s): refusing requests until it is back",
                    first_line(reason))
        now = asyncio.get_running_loop().time()
        for deadline in list(self._waiters):
            deadline.reschedule(now)

    async def close(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe

