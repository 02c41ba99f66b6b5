"""What recording costs: the same handler served by Flux (recorded) and by a plain
aiohttp + psycopg app, measured side by side in one run.

The handler does one SELECT, one INSERT and one outbound GET to a loopback stub, inside one
transaction. Two more sides make the GET through a plain ``httpx.AsyncClient`` instead:
``httpx`` (Flux, the call captured transparently by flux/runtime/_intercept.py) and its baseline
``plain-httpx`` (the hand-written app, the same httpx call). httpx itself costs several
times aiohttp's CPU per request, so the capture is judged by what recording costs on each
path: recorded/plain through httpx against recorded/plain through ``ctx.http`` (target:
within 5%), both as throughput and as the app CPU recording adds per request. Both httpx
clients keep no idle connection, and the httpx sides run in three alternating blocks per
round (see ``HTTPX_LIMITS`` and ``HTTPX_BLOCKS`` for why). Setup, all in a temporary
directory under /tmp that is removed at the end:

- one embedded PostgreSQL with two databases: ``bench_flux`` (flux schema migrated, the
  ``items`` table created through the project's ``schema/001.sql`` so capture triggers are
  on it, as in real use) and ``bench_plain`` (the same table, no triggers);
- three child processes: the stub, the plain server and the Flux server (``make_app`` over a
  ``Runtime``), each on its own 127.0.0.1 port, so the load generator in this process does
  not compete with them for one event loop.

A third side, ``lean`` (bench/_lean.py), is the plain app's handler with recording written
by hand as small as it can be: the same record (the same columns, JSON keys and tape keys;
checked at the end, read back as stored and through ``flux trace`` and ``flux record
export``), the same request id and span id for the capture trigger, written in the data's
transaction — a prepared INSERT, or Flux's ``flux.record`` message with ``--capture wal``,
pipelined with the COMMIT. It writes into the Flux database (its sessions' application_name
tells its changes apart) and is the floor of what recording must cost in Python: the report
gives lean/plain (the floor), flux/plain and flux/lean (what Flux's machinery adds over it).
``--no-httpx`` leaves the httpx sides out; ``--spy DIR`` samples the plain, lean and
recorded servers with py-spy during the rounds (bench/recording_split.py splits them by subsystem).

Each side is warmed up, then the rounds alternate (plain, recorded, plain, recorded, …) so
machine noise hits both alike. A side's throughput is the median over its rounds; its p50
and p99 are over every request of its rounds. Only 200 responses count. Each round also
reports the CPU time per request of the side's server process and of PostgreSQL, which is
steadier than throughput on a busy machine and shows where recording costs.

    .venv/bin/python bench/recording_overhead.py [--concurrency 16] [--seconds 8] [--rounds 3]
        [--capture {trigger,wal}] [--no-httpx] [--spy DIR]

With ``--capture wal`` the Flux database captures by WAL, and a committing request's record
travels in its transaction's WAL as a logical message (flux/store/_record.py: wal_payload)
instead of being inserted: the WAL consumer (flux/capture/_consumer.py) writes it, as ``flux
serve`` runs it, in a child process. In production it runs on a core or host of its own;
here it would take its CPU from the servers, so it is paused (SIGSTOP) during each round and
resumed after it, and every round waits until it has caught up before the next begins. Its
CPU — its Python process and its backends (the walsender decoding, the apply session
writing) — from each round's start to caught up is printed per recorded request beside the
headline, and left out of the rounds' PostgreSQL CPU.

The last line is ``ratio: <recorded/plain throughput>``. The exit status is 1 only when
something was wrong (a non-200 answer, a failed request, records missing), never for the
ratio itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import psycopg
from _children import Child, scratch_dir, spawn, stop_all
from _lean import Lean, record_shape
from _lean import prepare as prepare_lean
from _load import Round, closed_loop, cpu_seconds, percentile_ms
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from flux._project import parse
from flux.capture import _consumer, _running
from flux.capture._schema import apply_schema
from flux.runtime._gateway import make_app
from flux.runtime._runtime import Runtime
from flux.server._inspector import Local
from flux.store._database import ensure_database
from flux.store._embedded import EmbeddedServer, ServerInfo
from flux.store._migrate import migrate
from flux.store._retention import maintain

ROUTE = "bench_handler"
HTTPX_ROUTE = "bench_httpx"  # the same handler, its GET through httpx (captured)
HTTPX_TARGET = 0.95  # httpx's recorded/plain throughput over ctx.http's, at least
HTTPX_CPU_TARGET = 1.05  # recording's added app CPU through httpx over ctx.http's, at most
# Both httpx clients (the handler's, written out in HTTPX_PY, and the plain app's) keep no
# idle connection: each GET opens its own, and closes it once answered. httpcore's pool
# does work per request over every idle connection it holds (``has_expired`` polls its
# socket, ``is_idle`` is scanned quadratically), and the slower recorded server holds more
# of them idle: with keep-alive, recording through httpx looked 0.4-0.8 ms dearer per
# request than through ctx.http for that alone — httpcore's bookkeeping, not capture. One
# connection per GET costs the same on both sides whatever the timing.
HTTPX_LIMITS = httpx.Limits(max_keepalive_connections=0)
POOL_SIZE = 20  # Runtime's default pool_size; the plain side gets the same pool
TARGET = 0.8  # issue 21 (moonshot 0.9)
ADDED_TARGET = 0.35  # issue 21: app + database CPU recording may add per request, ms
FLUX_DB = "bench_flux"
PLAIN_DB = "bench_plain"
# The lean side writes into bench_flux too (WAL capture's slot is one per cluster, so one
# database captures by WAL here): its sessions' application_name tells its changes apart.
LEAN_APP = "lean"
SEED_ROWS = 1000  # so the SELECT counts the same rows on both sides from the first request
COUNT_BELOW = SEED_ROWS

SELECT_SQL = "SELECT count(*) FROM items WHERE id < %s"
INSERT_SQL = "INSERT INTO items (name) VALUES (%s) RETURNING id"
TABLE_SQL = f"""\
CREATE TABLE items (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    created_at timestamptz DEFAULT now()
);
-- In the Flux database these seed rows are captured too (no request id): the check at
-- the end counts only what the run added.
INSERT INTO items (name) SELECT 'seed-' || g FROM generate_series(1, {SEED_ROWS}) AS g;
"""

HANDLER_PY = f'''\
"""The benchmark handler: one SELECT, one INSERT, one outbound GET."""

from flux import function


@function
async def {ROUTE}(ctx, input):
    row = await ctx.db.fetchone({SELECT_SQL!r}, [{COUNT_BELOW}])
    item = await ctx.db.fetchone({INSERT_SQL!r}, [input.get("name", "bench")])
    response = await ctx.http.get(ctx.config["stub_url"])
    return {{"count": row["count"], "id": item["id"], "stub": response.json()}}
'''

HTTPX_PY = f'''\
"""The benchmark handler with its outbound GET through httpx, as SDK-based code does."""

import httpx

from flux import function

# No idle connections kept: see HTTPX_LIMITS in bench/recording_overhead.py.
_client = httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


@function
async def {HTTPX_ROUTE}(ctx, input):
    row = await ctx.db.fetchone({SELECT_SQL!r}, [{COUNT_BELOW}])
    item = await ctx.db.fetchone({INSERT_SQL!r}, [input.get("name", "bench")])
    response = await _client.get(ctx.config["stub_url"])
    return {{"count": row["count"], "id": item["id"], "stub": response.json()}}
'''

TRACES_SQL = "SELECT count(*) FROM flux.trace_requests"
MUTATIONS_SQL = "SELECT count(*) FROM flux.state_mutations"

STUB_BODY = json.dumps({"ok": True, "service": "stub", "items": [1, 2, 3]}).encode()
REQUEST_BODY = json.dumps({"name": "bench"}).encode()


# -- the servers, each in a child process -----------------------------------------------

Cleanup = Callable[[], Awaitable[None]]


async def _stub_app(options: dict[str, Any]) -> tuple[web.Application, Cleanup]:
    async def stub(request: web.Request) -> web.Response:
        return web.Response(body=STUB_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/stub", stub)

    async def cleanup() -> None:
        pass

    return app, cleanup


async def _plain_app(options: dict[str, Any]) -> tuple[web.Application, Cleanup]:
    """The baseline: what one would write by hand, configured like Flux's runtime."""
    pool = AsyncConnectionPool(options["conninfo"], min_size=min(4, POOL_SIZE),
                               max_size=POOL_SIZE, open=False, kwargs={"autocommit": False},
                               name="plain")
    await pool.open(wait=True, timeout=30)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200, enable_cleanup_closed=True))
    client = httpx.AsyncClient(timeout=10, limits=HTTPX_LIMITS)
    stub_url = options["stub_url"]

    async def through_aiohttp() -> Any:
        async with session.get(stub_url, timeout=aiohttp.ClientTimeout(total=10)) as raw:
            return json.loads(await raw.read())

    async def through_httpx() -> Any:
        return (await client.get(stub_url)).json()

    def handler(get: Callable[[], Awaitable[Any]]) -> Callable[[web.Request],
                                                                Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            payload = json.loads(await request.read())
            async with pool.connection() as conn, conn.transaction():
                cur = await conn.execute(SELECT_SQL, [COUNT_BELOW])
                (count,) = await cur.fetchone()  # type: ignore[misc]
                cur = await conn.execute(INSERT_SQL, [payload.get("name", "bench")])
                (item_id,) = await cur.fetchone()  # type: ignore[misc]
                stub = await get()
            return web.json_response({"count": count, "id": item_id, "stub": stub})
        return handle

    app = web.Application()
    app.router.add_post(f"/{ROUTE}", handler(through_aiohttp))
    app.router.add_post(f"/{HTTPX_ROUTE}", handler(through_httpx))

    async def cleanup() -> None:
        await session.close()
        await client.aclose()
        await pool.close()

    return app, cleanup


async def _lean_app(options: dict[str, Any]) -> tuple[web.Application, Cleanup]:
    """The plain app's handler with recording written by hand (bench/_lean.py): the
    floor of what a record costs in Python."""
    pool = AsyncConnectionPool(options["conninfo"], min_size=min(4, POOL_SIZE),
                               max_size=POOL_SIZE, open=False, configure=prepare_lean, name="lean",
                               kwargs={"autocommit": True, "application_name": LEAN_APP})
    await pool.open(wait=True, timeout=30)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200, enable_cleanup_closed=True))
    lean = Lean(pool, session, options["stub_url"], ROUTE, SELECT_SQL, INSERT_SQL, COUNT_BELOW,
                wal=options["capture"] == "wal")
    app = web.Application()
    app.router.add_post(f"/{ROUTE}", lean.handle)

    async def cleanup() -> None:
        await session.close()
        await pool.close()

    return app, cleanup


async def _recorded_app(options: dict[str, Any]) -> tuple[web.Application, Cleanup]:
    """Flux as ``flux serve`` runs it: a Runtime behind the gateway."""
    runtime = Runtime(parse(Path(options["project"])), options["conninfo"],
                      pool_size=POOL_SIZE)
    errors = await runtime.start()
    if errors or runtime.registry.route(ROUTE) is None or \
            runtime.registry.route(HTTPX_ROUTE) is None:
        await runtime.close()
        raise RuntimeError(f"the bench project did not load: {errors}")
    return make_app(runtime), runtime.close


async def _consumer_app(options: dict[str, Any]) -> tuple[web.Application, Cleanup]:
    """The WAL consumer, as `flux serve` runs it (a thread), in a child of its own."""
    halt = threading.Event()
    thread = threading.Thread(target=_consumer.Consumer(options["conninfo"]).run,
                              args=(halt,), daemon=True)
    thread.start()

    async def cleanup() -> None:
        halt.set()
        await asyncio.to_thread(thread.join, 10)

    return web.Application(), cleanup


BUILDERS = {"stub": _stub_app, "plain": _plain_app, "recorded": _recorded_app,
            "consumer": _consumer_app, "lean": _lean_app}



async def _serve(role: str, options: dict[str, Any], pipe: Connection) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    app, cleanup = await BUILDERS[role](options)
    runner = web.AppRunner(app, access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        profiler = cProfile.Profile() if options.get("profile") else None
        if profiler is not None:
            profiler.enable()
        pipe.send(("ready", runner.addresses[0][1]))
        await stop.wait()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(options["profile"])
    finally:
        await runner.cleanup()
        await cleanup()


# -- the database -------------------------------------------------------------------------

def _write_project(root: Path, stub_url: str, capture: str = "trigger") -> Path:
    (root / "functions").mkdir(parents=True)
    (root / "schema").mkdir()
    (root / "flux.toml").write_text(f'name = "bench"\ncapture = "{capture}"\n\n'
                                    f'[app]\nstub_url = "{stub_url}"\n')
    (root / "functions" / f"{ROUTE}.py").write_text(HANDLER_PY)
    (root / "functions" / f"{HTTPX_ROUTE}.py").write_text(HTTPX_PY)
    (root / "schema" / "001.sql").write_text(TABLE_SQL)
    return root


def _prepare_databases(info: ServerInfo, project_root: Path) -> tuple[str, str]:
    admin = info.conninfo("postgres")
    ensure_database(admin, FLUX_DB)
    ensure_database(admin, PLAIN_DB)
    flux_db, plain_db = info.conninfo(FLUX_DB), info.conninfo(PLAIN_DB)
    migrate(flux_db)
    maintain(flux_db)  # today's partitions, as flux serve makes them at start
    project = parse(project_root)
    apply_schema(flux_db, project.schema_dir, capture=project.capture)  # capture on items
    with psycopg.connect(plain_db, autocommit=True) as conn:
        conn.execute(TABLE_SQL.encode())
    return flux_db, plain_db


def _triggers(conninfo: str) -> int:
    """Row-level triggers on items (capture's in trigger mode; none in WAL mode)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'items'::regclass"
                           " AND NOT tgisinternal AND tgtype & 1 = 1").fetchone()
    return int(row[0]) if row else 0


def _count(conninfo: str, query: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(query.encode()).fetchone()
    return int(row[0]) if row else 0


# -- the load -----------------------------------------------------------------------------

class CpuMeter:
    """CPU time used so far by each server process and by PostgreSQL, so a round can say
    what one request cost on each side — steadier than throughput on a busy machine."""

    def __init__(self, servers: dict[str, int], postmaster: int) -> None:
        self.servers = {side: psutil.Process(pid) for side, pid in servers.items()}
        self.postmaster = psutil.Process(postmaster)
        self.consumer: Consumer | None = None

    def sample(self) -> tuple[dict[str, float], dict[int, float]]:
        apps = {side: cpu_seconds(process) for side, process in self.servers.items()}
        db: dict[int, float] = {}
        with contextlib.suppress(psutil.Error):
            for process in (self.postmaster, *self.postmaster.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    db[process.pid] = cpu_seconds(process)
        return apps, db

    def charge(self, result: Round, before: tuple[dict[str, float], dict[int, float]],
               after: tuple[dict[str, float], dict[int, float]]) -> None:
        result.app_cpu = after[0][result.side] - before[0][result.side]
        # A backend that started during the round counts from zero; one that ended is lost.
        # The WAL consumer's backends are the consumer's, not the request path's.
        mine = self.consumer.backends if self.consumer is not None else set()
        result.db_cpu = sum(t - before[1].get(pid, 0.0) for pid, t in after[1].items()
                            if pid not in mine)


class Consumer:
    """The WAL consumer's child: paused during the rounds, resumed after each, waited for
    until it has caught up; its CPU (its process and its backends) added up meanwhile."""

    def __init__(self, pid: int, conninfo: str) -> None:
        self.process = psutil.Process(pid)
        self.conninfo = conninfo
        self.backends: set[int] = set()
        self.cpu = 0.0  # seconds, over the measured rounds
        self.lean_cpu = 0.0  # the same over the lean side's rounds
        self.waits: list[float] = []

    def sample(self) -> float:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            self.backends |= {r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                [_consumer.APPLICATION_NAME])}
        total = cpu_seconds(self.process)
        for pid in list(self.backends):
            try:
                total += cpu_seconds(psutil.Process(pid))
            except psutil.Error:
                self.backends.discard(pid)
        return total

    def pause(self, paused: bool) -> None:
        os.kill(self.process.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def catch_up(self) -> float:
        """Resume it and wait until it has written everything committed; seconds waited."""
        self.pause(False)
        started = time.monotonic()
        _running.wait_caught_up(self.conninfo, timeout=300)
        return time.monotonic() - started


async def _drive(urls: dict[str, str], meter: CpuMeter, args: argparse.Namespace
                 ) -> tuple[list[Round], dict[str, Round]]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    warmups: dict[str, Round] = {}
    rounds: list[Round] = []
    httpx_sides = () if args.no_httpx else HTTPX_SIDES
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for side in MAIN_SIDES + httpx_sides:
            warmups[side] = await closed_loop(session, side, urls[side], REQUEST_BODY,
                                              args.concurrency, args.warmup)
            _progress(f"warm-up   {_round_line(warmups[side])}")
        if meter.consumer is not None:
            await asyncio.to_thread(meter.consumer.catch_up)
        spies = _spy(args.spy, meter) if args.spy else []
        for number in range(1, args.rounds + 1):
            for side in MAIN_SIDES:
                result = await _measured(session, meter, side, urls[side], args)
                rounds.append(result)
                _progress(f"round {number:<3} {_round_line(result)}")
            # The httpx pair: HTTPX_BLOCKS blocks each, alternating, one round per side.
            blocks: dict[str, list[Round]] = {side: [] for side in httpx_sides}
            for _ in range(HTTPX_BLOCKS):
                for side in httpx_sides:
                    blocks[side].append(await _measured(session, meter, side, urls[side],
                                                        args))
            for side in httpx_sides:
                rounds.append(_merged(side, blocks[side]))
                _progress(f"round {number:<3} {_round_line(rounds[-1])}")
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            await asyncio.to_thread(spy.wait, 120)
    return rounds, warmups


def _spy(directory: str, meter: CpuMeter) -> list[subprocess.Popen[bytes]]:
    """py-spy on the plain, lean and recorded servers for the measured rounds: their Python
    stacks sampled (idle excluded), written as collapsed stacks into ``directory``
    (bench/recording_split.py reads them)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    return [subprocess.Popen([spy, "record", "--pid", str(meter.servers[side].pid),
                              "--rate", "200", "--format", "raw", "--nonblocking",
                              "--output", str(Path(directory) / f"{side}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for side in ("plain", "lean", "recorded")]


async def _measured(session: aiohttp.ClientSession, meter: CpuMeter, side: str, url: str,
                    args: argparse.Namespace) -> Round:
    consumer = meter.consumer
    if consumer is not None:
        consumer_before = await asyncio.to_thread(consumer.sample)
        consumer.pause(True)
    before = meter.sample()
    result = await closed_loop(session, side, url, REQUEST_BODY, args.concurrency,
                               args.seconds)
    after = meter.sample()
    if consumer is not None:
        waited = await asyncio.to_thread(consumer.catch_up)
        if side in ("recorded", "httpx"):  # what the plain sides left it is not theirs
            consumer.cpu += await asyncio.to_thread(consumer.sample) - consumer_before
            consumer.waits.append(waited)
        elif side == "lean":
            consumer.lean_cpu += await asyncio.to_thread(consumer.sample) - consumer_before
    meter.charge(result, before, after)
    return result


def _merged(side: str, blocks: list[Round]) -> Round:
    """Blocks of one side as one round: their requests, time and CPU added up."""
    merged = Round(side)
    for block in blocks:
        merged.elapsed += block.elapsed
        merged.latencies.extend(block.latencies)
        merged.statuses.update(block.statuses)
        merged.failures += block.failures
        merged.sample = merged.sample or block.sample
        merged.app_cpu += block.app_cpu
        merged.db_cpu += block.db_cpu
    return merged


MAIN_SIDES = ("plain", "lean", "recorded")  # lean: the plain handler, recorded by hand
HTTPX_SIDES = ("plain-httpx", "httpx")
# httpx costs about three times aiohttp's CPU per request, so in one block of --seconds its
# sides answer a third as many requests as the ctx.http sides, and their CPU per request
# swung most from run to run; three alternating blocks per round give them about as many
# requests per round as the ctx.http sides and expose both to the same stretch of noise.
HTTPX_BLOCKS = 3


# -- the report ---------------------------------------------------------------------------

def _round_line(r: Round) -> str:
    line = f"{r.side:<9} {r.summary(5)}"
    if r.app_cpu:
        line += (f"  cpu/req app {r.per_request(r.app_cpu):.2f} ms"
                 f" db {r.per_request(r.db_cpu):.2f} ms")
    return line


def _progress(line: str) -> None:
    print(line, flush=True)


@dataclass
class Side:
    name: str
    requests: int
    throughput: float
    p50: float
    p99: float
    bad: int
    sample: str
    app_cpu: float  # ms per request, median over rounds
    db_cpu: float


def _summarise(name: str, rounds: list[Round]) -> Side:
    mine = [r for r in rounds if r.side == name]
    latencies = [t for r in mine for t in r.latencies]
    return Side(name=name, requests=sum(r.ok for r in mine),
                throughput=statistics.median(r.throughput for r in mine),
                p50=percentile_ms(latencies, 0.50), p99=percentile_ms(latencies, 0.99),
                bad=sum(r.bad for r in mine),
                sample=next((r.sample for r in mine if r.sample), ""),
                app_cpu=statistics.median(r.per_request(r.app_cpu) for r in mine),
                db_cpu=statistics.median(r.per_request(r.db_cpu) for r in mine))


def _added(rounds: list[Round], plain: str, recorded: str) -> str:
    """Recording's app CPU per request in each round (the two sides of a round ran
    back to back), to show how steady the median is."""
    pairs = zip([r for r in rounds if r.side == plain], [r for r in rounds if r.side == recorded],
                strict=True)
    return " ".join(f"{b.per_request(b.app_cpu) - a.per_request(a.app_cpu):+.2f}"
                    for a, b in pairs) + " ms"


# -- main ---------------------------------------------------------------------------------

def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Throughput and latency of a recorded Flux handler against the same "
                    "handler in plain aiohttp + psycopg.")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight at once (default: 16)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="length of one measured round, per side (default: 8)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measured rounds per side, alternating (default: 3)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="warm-up per side before the rounds, not counted (default: 3)")
    parser.add_argument("--capture", choices=("trigger", "wal"), default="trigger",
                        help="the Flux database's capture mode; with wal the records travel "
                             "in the WAL and a consumer child writes them (default: trigger)")
    parser.add_argument("--no-httpx", action="store_true",
                        help="leave out the two httpx sides (their lines are not printed)")
    parser.add_argument("--spy", metavar="DIR",
                        help="py-spy the three servers during the rounds into "
                             "DIR (collapsed stacks); the ratio of such a run means nothing")
    parser.add_argument("--profile", metavar="FILE",
                        help="cProfile the recorded server into FILE (pstats format); the "
                             "ratio of such a run means nothing")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.rounds < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--concurrency and --rounds must be at least 1, --seconds positive")
    return args



def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    with scratch_dir("flux-bench-") as tmp:
        server: EmbeddedServer | None = None
        children: list[Child] = []
        try:
            print(f"concurrency {args.concurrency}, {args.rounds} rounds of {args.seconds:g} s "
                  f"per side after {args.warmup:g} s of warm-up, pool size {POOL_SIZE}, "
                  f"capture {args.capture}", flush=True)
            stub = spawn(_serve, "stub", {})
            children.append(stub)
            stub_url = f"http://127.0.0.1:{stub.port}/stub"
            project = _write_project(tmp / "project", stub_url, args.capture)
            server = EmbeddedServer(project / ".flux")
            info, _ = server.start()
            flux_db, plain_db = _prepare_databases(info, project)
            triggers = (_triggers(flux_db), _triggers(plain_db))
            if (triggers[0] == 0) != (args.capture == "wal") or triggers[1] != 0:
                raise RuntimeError(f"capture triggers on items: flux {triggers[0]}, "
                                   f"plain {triggers[1]} (want {args.capture}'s and none)")
            traces_before = _count(flux_db, TRACES_SQL)
            mutations_before = _count(flux_db, MUTATIONS_SQL)
            children.append(spawn(_serve, "plain", {"conninfo": plain_db, "stub_url": stub_url}))
            children.append(spawn(_serve, "recorded", {
                "conninfo": flux_db, "project": str(project), "profile": args.profile}))
            children.append(spawn(_serve, "lean", {"conninfo": flux_db, "stub_url": stub_url,
                                                   "capture": args.capture}))
            urls = {c.role: f"http://127.0.0.1:{c.port}/{ROUTE}" for c in children[1:]}
            urls["httpx"] = urls["recorded"].replace(ROUTE, HTTPX_ROUTE)
            urls["plain-httpx"] = urls["plain"].replace(ROUTE, HTTPX_ROUTE)
            pids = {c.role: int(c.process.pid or 0) for c in children[1:]}
            meter = CpuMeter({**pids, "httpx": pids["recorded"], "plain-httpx": pids["plain"]},
                             info.pid)
            if args.capture == "wal":
                child = spawn(_serve, "consumer", {"conninfo": flux_db})
                children.append(child)
                meter.consumer = Consumer(int(child.process.pid or 0), flux_db)

            rounds, warmups = asyncio.run(_drive(urls, meter, args))

            sides = {name: _summarise(name, rounds) for name in
                     MAIN_SIDES + (() if args.no_httpx else HTTPX_SIDES)}
            plain, recorded, lean = sides["plain"], sides["recorded"], sides["lean"]
            flux_sides = [s for s in sides.values() if s.name in ("recorded", "httpx")]
            served = sum(s.requests + warmups[s.name].ok for s in flux_sides)
            executions = sum(r.answered for r in (*rounds, *warmups.values())
                             if r.side in ("recorded", "httpx"))
            lean_served = lean.requests + warmups["lean"].ok
            if meter.consumer is not None:  # every record written before they are counted
                meter.consumer.catch_up()
            traces = _count(flux_db, TRACES_SQL) - traces_before
            mutations = _count(flux_db, MUTATIONS_SQL) - mutations_before
            lean_mutations, lean_traces = _lean_counts(flux_db)
            shape = _compare_records(flux_db)
            plain_rows = _count(plain_db, "SELECT count(*) FROM items") - SEED_ROWS
            plain_served = sum(s.requests + warmups[s.name].ok for s in sides.values()
                               if s.name in ("plain", "plain-httpx"))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            stop_all(children, server)

    print()
    print(f"{'side':<11} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'non-200':>8} {'app cpu/req':>12} {'db cpu/req':>11}")
    for side in sides.values():
        print(f"{side.name:<11} {side.requests:>9} {side.throughput:>9.1f} {side.p50:>8.1f} "
              f"{side.p99:>8.1f} {side.bad:>8} {side.app_cpu:>9.2f} ms {side.db_cpu:>8.2f} ms")
    for side in sides.values():
        if side.bad:
            print(f"{side.name}: first bad answer: {side.sample}")
    # Flux's records and mutations are the totals less the lean side's.
    recorded_ok = traces - lean_traces == executions and mutations - lean_mutations == served
    print(f"recorded side stored {traces - lean_traces} trace_requests and "
          f"{mutations - lean_mutations} state_mutations for {served} requests served with "
          f"warm-up ({'ok' if recorded_ok else 'MISMATCH'})")
    counted = lean_traces == lean_mutations == lean_served
    lean_ok = counted and shape is None
    print(f"lean side stored {lean_traces} trace_requests and {lean_mutations} state_mutations "
          f"for {lean_served} requests ({'ok' if counted else 'MISMATCH'}); "
          f"its record against Flux's, as stored, through flux trace and record export: "
          f"{shape or 'the same columns, keys and spans'}")
    if plain_rows != plain_served:
        print(f"plain side inserted {plain_rows} rows for {plain_served} requests (MISMATCH)")
    ratio = recorded.throughput / plain.throughput if plain.throughput else 0.0
    if not args.no_httpx:
        _httpx_report(rounds, ratio, plain, recorded, sides["plain-httpx"], sides["httpx"])
    _lean_report(rounds, plain, lean, recorded)
    verdict = "pass" if ratio >= TARGET else "FAIL"
    print(f"recorded/plain throughput: {ratio:.3f} (target >= {TARGET}: {verdict})")
    if args.profile:
        print(f"profile of the recorded server: {args.profile} (this run's ratio is skewed)")
    if args.spy:
        (Path(args.spy) / "cpu.json").write_text(json.dumps(
            {s.name: {"app_cpu_ms": s.app_cpu, "db_cpu_ms": s.db_cpu, "requests": s.requests}
             for s in sides.values()}))
        print(f"py-spy of the plain, lean and recorded servers: {args.spy} (this run's ratio is "
              f"skewed); bench/recording_split.py reads them")
    consumer = meter.consumer
    if consumer is not None:
        recorded_requests = sum(r.answered for r in rounds if r.side in ("recorded", "httpx"))
        per_request = consumer.cpu / recorded_requests * 1000 if recorded_requests else 0.0
        print(f"WAL consumer cpu/recorded request (its process and its backends, each round's "
              f"start to caught up): {per_request:.3f} ms; caught up {min(consumer.waits):.1f}"
              f"–{max(consumer.waits):.1f} s after each recorded round")
        lean_requests = sum(r.answered for r in rounds if r.side == "lean")
        print(f"WAL consumer cpu/lean request (the same): "
              f"{consumer.lean_cpu / lean_requests * 1000 if lean_requests else 0.0:.3f} ms")
    print(f"ratio: {ratio:.2f}")
    healthy = not any(s.bad for s in sides.values()) and recorded_ok and lean_ok and \
        plain_rows == plain_served
    return 0 if healthy else 1


def _httpx_report(rounds: list[Round], ratio: float, plain: Side, recorded: Side,
                  plain_httpx: Side, through_httpx: Side) -> None:
    via_httpx = through_httpx.throughput / plain_httpx.throughput if plain_httpx.throughput \
        else 0.0
    relative = via_httpx / ratio if ratio else 0.0
    print(f"through httpx, recorded/plain throughput: {via_httpx:.3f}; through ctx.http: "
          f"{ratio:.3f}; httpx's over ctx.http's: {relative:.3f} (target >= {HTTPX_TARGET}: "
          f"{'pass' if relative >= HTTPX_TARGET else 'FAIL'})")
    added_httpx = through_httpx.app_cpu - plain_httpx.app_cpu
    added_ctx = recorded.app_cpu - plain.app_cpu
    cpu_relative = added_httpx / added_ctx if added_ctx > 0 else float("inf")
    print(f"recording's app cpu/req: through httpx {added_httpx:+.2f} ms, through ctx.http "
          f"{added_ctx:+.2f} ms; httpx's over ctx.http's: {cpu_relative:.3f} (target <= "
          f"{HTTPX_CPU_TARGET}: {'pass' if cpu_relative <= HTTPX_CPU_TARGET else 'FAIL'})")
    print(f"  per round, through httpx: {_added(rounds, 'plain-httpx', 'httpx')}; "
          f"through ctx.http: {_added(rounds, 'plain', 'recorded')}")


def _lean_report(rounds: list[Round], plain: Side, lean: Side, recorded: Side) -> None:
    """The floor (lean over plain) and what Flux's machinery adds over it (flux over lean)."""
    for name, side, base in (("lean/plain", lean, plain), ("flux/plain", recorded, plain),
                             ("flux/lean", recorded, lean)):
        ratio = side.throughput / base.throughput if base.throughput else 0.0
        app, db = side.app_cpu - base.app_cpu, side.db_cpu - base.db_cpu
        print(f"{name:<10} throughput {ratio:.3f}; added cpu/req app {app:+.3f} ms, db "
              f"{db:+.3f} ms, sum {app + db:+.3f} ms")
    print(f"  app cpu added per round, lean over plain: {_added(rounds, 'plain', 'lean')}; "
          f"flux over lean: {_added(rounds, 'lean', 'recorded')}")
    floor = lean.throughput / plain.throughput if plain.throughput else 0.0
    added = lean.app_cpu + lean.db_cpu - plain.app_cpu - plain.db_cpu
    print(f"the floor (lean) against issue 21's first target: ratio {floor:.3f} (>= {TARGET}: "
          f"{'pass' if floor >= TARGET else 'FAIL'}), added cpu {added:+.3f} ms (<= "
          f"{ADDED_TARGET}: {'pass' if added <= ADDED_TARGET else 'FAIL'})")


LEAN_COUNTS_SQL = f"""\
SELECT count(*), count(t.request_id) FROM flux.state_mutations m
LEFT JOIN flux.trace_requests t ON t.request_id = m.request_id
WHERE m.application_name = '{LEAN_APP}' AND m.span_id = 's4'"""


def _lean_counts(conninfo: str) -> tuple[int, int]:
    """The lean side's mutations (its sessions' application_name, stamped with the request
    and the span), and how many of them have their record."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(LEAN_COUNTS_SQL.encode()).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _compare_records(conninfo: str) -> str | None:
    """One lean record against one of Flux's, both read back as stored and as ``flux trace``
    and ``flux record export`` read them (flux/server/_inspector.py): None if the same
    columns, JSON keys and value types, else what differs."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        ids = [conn.execute(
            f"SELECT m.request_id::text FROM flux.state_mutations m JOIN flux.trace_requests t "
            f"USING (request_id) WHERE m.application_name {op} '{LEAN_APP}' AND t.function = "
            f"'{ROUTE}' LIMIT 1".encode()).fetchone() for op in ("=", "<>")]
        if not all(ids):
            return "no record to compare"
        lean_id, flux_id = ids[0][0], ids[1][0]  # type: ignore[index]
        rows = [conn.execute(b"SELECT * FROM flux.trace_requests WHERE request_id = %s",
                             [rid]).fetchone() for rid in (lean_id, flux_id)]
        columns = [c.name for c in conn.execute(
            b"SELECT * FROM flux.trace_requests LIMIT 0").description or ()]
    inspector = Local.of_conninfo(conninfo)
    found: list[str] = []
    stored = {rid: dict(zip(columns, row or (), strict=False))
              for rid, row in zip((lean_id, flux_id), rows, strict=True)}
    # flux why explains failures only; a success is read by trace and record export
    for what, read in (("stored row", stored.__getitem__), ("flux trace", inspector.trace),
                       ("flux record export", inspector.record)):
        lean_shape, flux_shape = record_shape(read(lean_id)), record_shape(read(flux_id))
        if lean_shape != flux_shape:
            found.append(f"{what}: lean {json.dumps(lean_shape)[:600]} flux "
                         f"{json.dumps(flux_shape)[:600]}")
    for what, pick in (("tape keys", lambda r: [e["key"] for e in r["tape"]]),
                       ("span names", lambda r: [span["name"] for span in r["spans"]])):
        if pick(stored[lean_id]) != pick(stored[flux_id]):  # the same calls: the same values
            found.append(f"{what}: lean {pick(stored[lean_id])} flux {pick(stored[flux_id])}")
    return "; ".join(found) or None


if __name__ == "__main__":
    sys.exit(main())
