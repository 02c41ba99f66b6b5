"""What recording adds to the app's Python CPU per request, measured in one process.

``recording_overhead.py`` serves each side from its own process and reads the processes'
CPU; this harness serves both sides of the same handler (plain aiohttp + psycopg, and Flux
recorded through ``make_app``) from this one process, drives them over loopback with the
same in-process client, and reads this process's CPU (``time.process_time``) per block of
requests. The client's share is the same on both sides, so the difference is what
recording adds to the app: gateway, executor, recorder, record encoding, psycopg. A third
side, ``lean`` (bench/_lean.py: the plain handler recorded by hand, the same record), gives
the floor; its line says what it adds and what Flux adds over it. Blocks
alternate between the sides so machine noise hits both alike. The stub the handler calls
runs in a child process; PostgreSQL is the embedded server, its CPU read per block too.

    .venv/bin/python bench/recording_cpu.py [--requests 400] [--blocks 6] [--profile FILE]
                                             [--httpx]

``--profile FILE`` cProfiles each side's blocks into ``FILE.<side>`` (pstats, CPU time);
the CPU figures of such a run mean nothing. The last line is ``added: <app ms> app, <db ms>
db`` (medians per request).

``--httpx`` adds the two sides whose GET goes through a plain ``httpx.AsyncClient``
(``plain-httpx``, and ``httpx``: the Flux handler's call captured by
flux/runtime/_intercept.py), all four alternating, and reports what recording adds through
httpx against through ``ctx.http``: the capture's own CPU per call is the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from _children import Child, scratch_dir, spawn, stop_all
from aiohttp import web
from recording_overhead import (
    HTTPX_ROUTE,
    REQUEST_BODY,
    ROUTE,
    CpuMeter,
    _lean_app,
    _plain_app,
    _prepare_databases,
    _recorded_app,
    _serve,
    _write_project,
)

from flux.store._embedded import EmbeddedServer


async def _block(session: aiohttp.ClientSession, url: str, requests: int, concurrency: int) -> int:
    """Send ``requests`` POSTs, ``concurrency`` at a time; the number of 200 answers."""
    left = requests
    ok = 0

    async def client() -> None:
        nonlocal left, ok
        while left > 0:
            left -= 1
            async with session.post(
                url, data=REQUEST_BODY, headers={"Content-Type": "application/json"}
            ) as r:
                await r.read()
                ok += r.status == 200

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return ok


async def _run(
    args: argparse.Namespace, options: dict[str, dict[str, Any]], meter: CpuMeter
) -> dict[str, list[tuple[float, float]]]:
    runners: list[web.AppRunner] = []
    cleanups = []
    urls: dict[str, str] = {}
    for side, build in (("plain", _plain_app), ("lean", _lean_app), ("recorded", _recorded_app)):
        app, cleanup = await build(options[side])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        cleanups.append(cleanup)
        urls[side] = f"http://127.0.0.1:{runner.addresses[0][1]}/{ROUTE}"
    if args.httpx:
        urls["plain-httpx"] = urls["plain"].replace(ROUTE, HTTPX_ROUTE)
        urls["httpx"] = urls["recorded"].replace(ROUTE, HTTPX_ROUTE)
    sides = list(urls)
    # CPU time, not wall time: on a loaded machine a wall-clock profile charges a send()
    # with the time the process then waited for a core.
    profilers = {side: cProfile.Profile(time.thread_time) for side in urls} if args.profile else {}
    figures: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for side in urls:  # warm-up: pools filled, statements prepared, code imported
                await _block(session, urls[side], args.requests, args.concurrency)
            for number in range(args.blocks):
                for side in sides if number % 2 == 0 else reversed(sides):
                    db_before = meter.sample()[1]
                    cpu = time.process_time()
                    if profilers:
                        profilers[side].enable()
                    ok = await _block(session, urls[side], args.requests, args.concurrency)
                    if profilers:
                        profilers[side].disable()
                    app = time.process_time() - cpu
                    db_after = meter.sample()[1]
                    db = sum(t - db_before.get(pid, 0.0) for pid, t in db_after.items())
                    if ok != args.requests:
                        raise RuntimeError(f"{side}: {args.requests - ok} answers were not 200")
                    figures[side].append((app / ok * 1000, db / ok * 1000))
                    print(
                        f"block {number + 1:<3} {side:<9} app {app / ok * 1000:.3f} ms/req"
                        f"  db {db / ok * 1000:.3f} ms/req",
                        flush=True,
                    )
    finally:
        for runner in runners:
            await runner.cleanup()
        for cleanup in cleanups:
            await cleanup()
    for side, profiler in profilers.items():
        profiler.dump_stats(f"{args.profile}.{side}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per block")
    parser.add_argument("--blocks", type=int, default=6, help="blocks per side, alternating")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", metavar="FILE", help="cProfile each side into FILE.<side>")
    parser.add_argument(
        "--httpx",
        action="store_true",
        help="add the sides whose GET goes through httpx (plain and captured)",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.blocks < 1 or args.concurrency < 1:
        parser.error("--requests, --blocks and --concurrency must be at least 1")
    with scratch_dir("flux-bench-") as tmp:
        server: EmbeddedServer | None = None
        children: list[Child] = []
        try:
            stub = spawn(_serve, "stub", {})
            children.append(stub)
            stub_url = f"http://127.0.0.1:{stub.port}/stub"
            project = _write_project(tmp / "project", stub_url)
            server = EmbeddedServer(project / ".flux")
            info, _ = server.start()
            flux_db, plain_db = _prepare_databases(info, project)
            options = {
                "plain": {"conninfo": plain_db, "stub_url": stub_url},
                "recorded": {"conninfo": flux_db, "project": str(project)},
                "lean": {"conninfo": flux_db, "stub_url": stub_url, "capture": "trigger"},
            }
            meter = CpuMeter({}, info.pid)
            figures = asyncio.run(_run(args, options, meter))
        finally:
            stop_all(children, server)
    medians = {
        side: (statistics.median(a for a, _ in f), statistics.median(d for _, d in f))
        for side, f in figures.items()
    }
    for side, (app, db) in medians.items():
        print(
            f"{side:<9} median app {app:.3f} ms/req  db {db:.3f} ms/req (this process "
            "includes the client)"
        )
    app = medians["recorded"][0] - medians["plain"][0]
    db = medians["recorded"][1] - medians["plain"][1]
    if args.httpx:
        through_httpx = medians["httpx"][0] - medians["plain-httpx"][0]
        print(
            f"added through httpx: {through_httpx:.3f} ms app; through ctx.http: {app:.3f} ms;"
            f" capture's own: {(through_httpx - app) * 1000:+.0f} us per call"
        )
    lean_app = medians["lean"][0] - medians["plain"][0]
    lean_db = medians["lean"][1] - medians["plain"][1]
    print(f"lean (the floor, bench/_lean.py) added: {lean_app:.3f} ms app, {lean_db:.3f} ms db;"
          f" flux over lean: {app - lean_app:.3f} ms app, {db - lean_db:.3f} ms db")
    print(f"added: {app:.3f} ms app, {db:.3f} ms db")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
