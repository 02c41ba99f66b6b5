"""What running a function as WebAssembly costs: the same price quote as a Python function
and as a Wasm module (examples/shop/wasm/quote.c, built with the ziglang wheel), both
recorded by Flux, measured side by side in one run.

The logic on both sides: read the user's plan (one SELECT through ctx.db / flux.db_query),
apply the pro discount, read the clock and a random number (both on the tape), log one
line, answer JSON. Setup, all in a temporary directory under /tmp removed at the end: one
embedded PostgreSQL, one project holding ``functions/quote.wasm`` and
``functions/quote_py.py``, and two server processes (``make_app`` over a ``Runtime``), one
per side, so the load generator in this process competes with neither.

Each side is warmed up, then rounds alternate (python, wasm, python, wasm, …) so machine
noise hits both alike. A side's throughput is the median of its rounds; p50/p99 are over
every request of its rounds; CPU per request is the side's server process only.

    .venv/bin/python bench/wasm_overhead.py [--concurrency 16] [--seconds 6] [--rounds 3]

The last line is ``ratio: <wasm req/s / python req/s>``. The exit status is 1 only when
something was wrong (a non-200 answer, different answers, records missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg
from _children import Child, scratch_dir, spawn, stop_all
from _load import Round, closed_loop, cpu_seconds, percentile_ms
from aiohttp import web

from flux._project import parse
from flux.capture._schema import apply_schema
from flux.runtime._gateway import make_app
from flux.runtime._runtime import Runtime
from flux.store._database import ensure_database
from flux.store._embedded import EmbeddedServer
from flux.store._migrate import migrate

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "examples" / "shop" / "wasm" / "build.py"
SIDES = {"python": "quote_py", "wasm": "quote"}  # side → route
DATABASE = "bench_wasm"
POOL_SIZE = 20
REQUEST = {"user_id": 1, "amount_cents": 2000}
BODY = json.dumps(REQUEST).encode()

SCHEMA_SQL = """\
CREATE TABLE users (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    plan text NOT NULL DEFAULT 'free'
);
INSERT INTO users (email, plan) VALUES ('pro@example.com', 'pro');
"""

QUOTE_PY = '''\
"""The Python twin of examples/shop/wasm/quote.c: the same reads, the same answer."""

from flux import function

VALID_FOR_MS = 15 * 60 * 1000
PRO_DISCOUNT_PERCENT = 20


def _positive(ctx, input, key):
    value = input.get(key) if isinstance(input, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ctx.error(400, f"invalid_{key}", f"{key} must be a positive integer")
    return value


@function
async def quote_py(ctx, input):
    user_id = _positive(ctx, input, "user_id")
    amount = _positive(ctx, input, "amount_cents")
    row = await ctx.db.fetchone("SELECT plan FROM users WHERE id = %s", [user_id])
    if row is None:
        raise ctx.error(404, "user_not_found", "no user with that user_id")
    plan = row["plan"]
    quote = amount - amount * PRO_DISCOUNT_PERCENT // 100 if plan == "pro" else amount
    valid_until = int(ctx.now().timestamp() * 1000) + VALID_FOR_MS
    number = int(ctx.random() * 1_000_000_000)
    ctx.log.info("quoted", quote_cents=quote)
    return {"user_id": user_id, "plan": plan, "amount_cents": amount, "quote_cents": quote,
            "valid_until_ms": valid_until, "quote_id": f"q-{number}"}
'''


# -- the servers, each in a child process ---------------------------------------------------

async def _serve(role: str, options: dict[str, Any], pipe: Connection) -> None:
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    runtime = Runtime(parse(Path(options["project"])), options["conninfo"],
                      pool_size=POOL_SIZE)
    errors = await runtime.start()
    runner = web.AppRunner(make_app(runtime), access_log=None)
    try:
        if errors or runtime.registry.route(SIDES[role]) is None:
            raise RuntimeError(f"the bench project did not load: {errors}")
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        pipe.send(("ready", runner.addresses[0][1]))
        await stopped.wait()
    finally:
        await runner.cleanup()
        await runtime.close()


def _write_project(root: Path) -> Path:
    (root / "functions").mkdir(parents=True)
    (root / "schema").mkdir()
    (root / "flux.toml").write_text('name = "bench_wasm"\n')
    (root / "schema" / "001.sql").write_text(SCHEMA_SQL)
    (root / "functions" / "quote_py.py").write_text(QUOTE_PY)
    subprocess.run([sys.executable, str(BUILD), "--out", str(root / "functions"), "quote"],
                   check=True, capture_output=True, text=True)
    return root


def _count(conninfo: str, query: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(query.encode()).fetchone()
    return int(row[0]) if row else 0


# -- the load -------------------------------------------------------------------------------

async def _same_answers(session: aiohttp.ClientSession, urls: dict[str, str]) -> str | None:
    """Both sides must compute the same quote (the clock and the number aside)."""
    answers = {}
    for side, url in urls.items():
        async with session.post(url, json=REQUEST) as response:
            answer = await response.json()
        answers[side] = {k: v for k, v in answer.items()
                         if k not in ("valid_until_ms", "quote_id")}
    return None if answers["python"] == answers["wasm"] else f"answers differ: {answers}"


async def _drive(urls: dict[str, str], pids: dict[str, int], args: argparse.Namespace
                 ) -> tuple[list[Round], int, str | None]:
    processes = {side: psutil.Process(pid) for side, pid in pids.items()}
    timeout = aiohttp.ClientTimeout(total=30)
    rounds: list[Round] = []
    warm = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        mismatch = await _same_answers(session, urls)
        for side in SIDES:
            warmup = await closed_loop(session, side, urls[side], BODY, args.concurrency,
                                       args.warmup)
            warm += len(warmup.latencies) + warmup.bad
            print(f"warm-up   {_line(warmup)}", flush=True)
        for number in range(1, args.rounds + 1):
            for side in SIDES:
                before = cpu_seconds(processes[side])
                result = await closed_loop(session, side, urls[side], BODY, args.concurrency,
                                           args.seconds)
                result.app_cpu = cpu_seconds(processes[side]) - before
                rounds.append(result)
                print(f"round {number:<3} {_line(result)}", flush=True)
    return rounds, warm + 2, mismatch  # + the two answers compared


def _line(r: Round) -> str:
    line = f"{r.side:<7} {r.summary(5)}"
    if r.app_cpu and r.latencies:
        line += f"  cpu/req {r.per_request(r.app_cpu):.2f} ms"
    return line


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Throughput of the same recorded function as Python and as Wasm.")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per side")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per side")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.rounds < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--concurrency and --rounds must be at least 1, --seconds positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    with scratch_dir("flux-bench-wasm-") as tmp:
        server: EmbeddedServer | None = None
        children: list[Child] = []
        try:
            print(f"concurrency {args.concurrency}, {args.rounds} rounds of {args.seconds:g} s "
                  f"per side after {args.warmup:g} s of warm-up", flush=True)
            project = _write_project(tmp / "project")
            server = EmbeddedServer(project / ".flux")
            info, _ = server.start()
            ensure_database(info.conninfo("postgres"), DATABASE)
            conninfo = info.conninfo(DATABASE)
            migrate(conninfo)
            apply_schema(conninfo, project / "schema")
            for side in SIDES:
                children.append(spawn(_serve, side, {"conninfo": conninfo,
                                                     "project": str(project)}))
            urls = {c.role: f"http://127.0.0.1:{c.port}/{SIDES[c.role]}" for c in children}
            pids = {c.role: int(c.process.pid or 0) for c in children}
            rounds, unmeasured, mismatch = asyncio.run(_drive(urls, pids, args))
            answered = sum(len(r.latencies) + r.bad for r in rounds) + unmeasured
            recorded = _count(conninfo, "SELECT count(*) FROM flux.trace_requests")
            runtimes = _count(conninfo, "SELECT count(DISTINCT runtime) FROM "
                                        "flux.trace_requests")
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            stop_all(children, server)

    print()
    print(f"{'side':<7} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'non-200':>8} {'cpu/req':>9}")
    medians: dict[str, float] = {}
    cpus: dict[str, float] = {}
    bad = 0
    for side in SIDES:
        mine = [r for r in rounds if r.side == side]
        latencies = [t for r in mine for t in r.latencies]
        medians[side] = statistics.median(r.throughput for r in mine)
        cpu = statistics.median(r.per_request(r.app_cpu)
                                for r in mine)
        cpus[side] = cpu
        bad += sum(r.bad for r in mine)
        print(f"{side:<7} {len(latencies):>9} {medians[side]:>9.1f} "
              f"{percentile_ms(latencies, 0.5):>8.1f} {percentile_ms(latencies, 0.99):>8.1f} "
              f"{sum(r.bad for r in mine):>8} {cpu:>6.2f} ms")
        if sample := next((r.sample for r in mine if r.sample), ""):
            print(f"{side}: first bad answer: {sample}")
    records_ok = recorded == answered and runtimes == 2
    print(f"stored {recorded} records for {answered} requests, runtimes python and wasm "
          f"({'ok' if records_ok else 'MISMATCH'})")
    if mismatch:
        print(mismatch)
    ratio = medians["wasm"] / medians["python"] if medians["python"] else 0.0
    if cpus["wasm"]:
        # On a loaded machine the servers starve and throughput says little; on a quiet one
        # they are CPU-bound and this is about what the throughput ratio comes to.
        print(f"python/wasm CPU per request: {cpus['python'] / cpus['wasm']:.3f}")
    print(f"wasm/python throughput: {ratio:.3f}")
    print(f"ratio: {ratio:.2f}")
    return 0 if records_ok and not bad and not mismatch else 1


if __name__ == "__main__":
    sys.exit(main())
