"""Concurrent HTTP load for the fault suite, and the reconciliation every fault test ends
with: requests sent, answers received, records stored and mutations stored must agree
exactly."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psycopg
from psycopg.rows import dict_row

# A request that gets no answer within this is a hung request: the test fails on it.
CLIENT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Answer:
    request_id: str
    route: str
    status: int
    body: Any
    seconds: float = 0.0  # how long the answer took (reported, never asserted)

    @property
    def recorded(self) -> bool | None:
        """False: the answer says the request was not recorded; None: in doubt; True:
        recorded, as every other answer is."""
        if isinstance(self.body, dict) and "recorded" in self.body:
            return self.body["recorded"]  # type: ignore[no-any-return]
        return True

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


@dataclass
class Load:
    """``concurrency`` clients POSTing in a closed loop until ``stop()``; every answer is
    kept. ``request(n)`` gives the n-th request's route and JSON body. A client that gets
    a 503 waits ``pause`` seconds before its next request (as Retry-After asks, shortened)."""

    url: str
    request: Callable[[int], tuple[str, Any]]
    concurrency: int = 16
    pause: float = 0.02
    sent: int = 0
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT))
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    async def _client(self) -> None:
        while not self._stop.is_set():
            route, body = self.request(next(self._numbers))
            self.sent += 1
            started = time.perf_counter()
            try:
                async with self._session.post(f"{self.url}/{route}",
                                              data=json.dumps(body)) as response:
                    raw = await response.read()
                    status = response.status
                    request_id = response.headers.get("x-flux-request-id", "")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.errors.append(f"{route}: {type(exc).__name__}: {exc}")
                continue
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode("utf-8", "replace")
            self.answers.append(Answer(request_id, route, status, payload,
                                       time.perf_counter() - started))
            if status == 503:
                await asyncio.sleep(self.pause)

    def count(self, predicate: Callable[[Answer], bool]) -> int:
        return sum(1 for a in self.answers if predicate(a))

    async def until(self, predicate: Callable[[], bool], what: str,
                    timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds (a bound so a broken runtime fails the test
        rather than hanging it, not a timing assertion)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    if self.errors:
                        raise AssertionError(f"a request got no answer: {self.errors[0]}")
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"not within {timeout:g}s: {what}; answers so far: "
                                 f"{self.statuses()}") from None

    def statuses(self) -> Counter[tuple[int, str | None]]:
        return Counter((a.status, a.code) for a in self.answers)


@dataclass(frozen=True)
class Reconciled:
    answers: int
    records: int
    mutations: int
    unrecorded: int
    in_doubt: int


def reconcile(db: str, load: Load, *, writes: Callable[[Answer], int]) -> Reconciled:
    """Check, exactly: every request sent got an answer; every answer but a refusal that
    says ``"recorded": false`` has exactly one record with its status; a refusal has no
    record and no mutation; a commit in doubt (``"recorded": null``) has either its whole
    success (record and mutations) or nothing; a 2xx has exactly ``writes(answer)``
    committed mutations and nothing else any; every committed mutation and every HTTP
    record belongs to an answered request."""
    assert not load.errors, f"requests without an answer: {load.errors[:3]}"
    assert load.sent == len(load.answers), (load.sent, len(load.answers))
    ids = [a.request_id for a in load.answers]
    assert all(ids) and len(set(ids)) == len(ids), "every answer has its own request id"
    with psycopg.connect(db, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT request_id::text, kind, status, http_status "
                    "FROM flux.trace_requests")
        records = {r["request_id"]: r for r in cur.fetchall()}
        cur.execute("SELECT request_id::text, rolled_back, table_name FROM flux.state_mutations "
                    "WHERE table_schema = 'public'")
        mutations = cur.fetchall()
    committed: Counter[str] = Counter()
    touched: set[str] = set()
    for m in mutations:
        assert m["request_id"] is not None, f"a change with no request: {m}"
        touched.add(m["request_id"])
        if not m["rolled_back"]:
            committed[m["request_id"]] += 1
    unrecorded = in_doubt = 0
    for a in load.answers:
        record = records.get(a.request_id)
        if a.recorded is False:
            assert a.status == 503, a
            assert record is None, f"{a} says it was not recorded, but it was: {record}"
            assert a.request_id not in touched, f"{a} was not recorded but wrote rows"
            unrecorded += 1
        elif a.recorded is None:
            assert a.status == 503, a
            in_doubt += 1
            if record is None:
                assert a.request_id not in touched, f"{a}: half-written"
            else:
                assert record["status"] == "ok" and committed[a.request_id] == writes(a), \
                    f"{a}: half-written: {record}, {committed[a.request_id]} changes"
        else:
            assert record is not None, f"no record for {a}"
            assert record["http_status"] == a.status, (a, record)
            expected = writes(a) if 200 <= a.status < 300 else 0
            assert committed[a.request_id] == expected, \
                f"{a}: {committed[a.request_id]} committed changes, expected {expected}"
    answered = set(ids)
    for request_id, record in records.items():
        if record["kind"] == "http":
            assert request_id in answered, f"a record without its answer: {record}"
    for request_id in committed:
        assert request_id in records, f"committed changes of {request_id} have no record"
    return Reconciled(len(load.answers), len(records), sum(committed.values()), unrecorded,
                      in_doubt)


def tracebacks(records: list[logging.LogRecord]) -> list[str]:
    """Log lines that carry a traceback, or errors: a fault must produce neither."""
    return [f"{r.name}: {r.getMessage()}" for r in records
            if r.exc_info is not None or r.levelno >= logging.ERROR]
