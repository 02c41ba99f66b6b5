"""A soak: the recorded handler of ``recording_overhead.py`` under the highest load this
machine sustains for a minute, to show that the serving process's memory stays flat and
its latency bounded.

The load is a closed loop (``--concurrency`` clients, each sending its next request as
soon as it has an answer), so the rate is whatever the server and PostgreSQL can do. After
a warm-up (the pool grows to its size, caches fill), the run is cut into 10-second windows;
each prints its throughput, p50 and p99 and the resident memory of the Flux server process
(``VmRSS`` from ``/proc/<pid>/status``) at its end. Setup as in ``recording_overhead.py``:
one embedded PostgreSQL in a temporary directory under ``/tmp``, a stub for the outbound
call and the Flux server each in a child process, all removed at the end.

    .venv/bin/python bench/soak.py [--seconds 60] [--concurrency 32] [--warmup 10]

The last line is ``ratio: <end RSS / start RSS>``. The exit status is 1 only when something
was wrong (an answer other than 200, a request without an answer, records missing).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path

import aiohttp
import psycopg
from _children import Child, scratch_dir, spawn, stop_all
from _load import Round, closed_loop, percentile_ms
from recording_overhead import REQUEST_BODY, ROUTE, _serve, _write_project

from flux._project import parse
from flux.capture._schema import apply_schema
from flux.store._database import ensure_database
from flux.store._embedded import EmbeddedServer
from flux.store._migrate import migrate

WINDOW = 10.0  # seconds per reported window
DB = "bench_soak"


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from the kernel's own accounting."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def _records(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM flux.trace_requests").fetchone()
    return int(row[0]) if row else 0


async def _soak(url: str, pid: int, args: argparse.Namespace) -> tuple[list[Round], int, int]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    windows: list[Round] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if args.warmup:
            warm = await closed_loop(session, "warm-up", url, REQUEST_BODY, args.concurrency,
                                     args.warmup)
            windows.append(warm)
            print(f"warm-up   {warm.summary()}", flush=True)
        start = rss_kib(pid)
        print(f"start RSS {_mib(start)} (Flux server, pid {pid})", flush=True)
        elapsed = 0.0
        while elapsed < args.seconds - 1e-9:
            length = min(WINDOW, args.seconds - elapsed)
            window = await closed_loop(session, f"{elapsed:>3.0f}-{elapsed + length:<3.0f}s",
                                       url, REQUEST_BODY, args.concurrency, length)
            windows.append(window)
            elapsed += length
            print(f"{window.side:<9} {window.summary()}  RSS {_mib(rss_kib(pid))}", flush=True)
        end = rss_kib(pid)
    return windows, start, end


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Resident memory and latency of a Flux server under a minute of "
                    "closed-loop load at the highest rate the machine sustains.")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="length of the measured load (default: 60)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="requests in flight at once (default: 32)")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds of load before the start RSS is read (default: 10)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--seconds must be positive, --concurrency at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    with scratch_dir("flux-soak-") as tmp:
        server: EmbeddedServer | None = None
        children: list[Child] = []
        try:
            print(f"concurrency {args.concurrency}, {args.seconds:g} s after {args.warmup:g} s "
                  f"of warm-up, windows of {WINDOW:g} s", flush=True)
            stub = spawn(_serve, "stub", {})
            children.append(stub)
            project = _write_project(tmp / "project", f"http://127.0.0.1:{stub.port}/stub")
            server = EmbeddedServer(project / ".flux")
            info, _ = server.start()
            ensure_database(info.conninfo("postgres"), DB)
            conninfo = info.conninfo(DB)
            migrate(conninfo)
            apply_schema(conninfo, parse(project).schema_dir)
            flux = spawn(_serve, "recorded", {"conninfo": conninfo, "project": str(project)})
            children.append(flux)
            pid = int(flux.process.pid or 0)
            url = f"http://127.0.0.1:{flux.port}/{ROUTE}"
            windows, start, end = asyncio.run(_soak(url, pid, args))
            records = _records(conninfo)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            stop_all(children, server)

    measured = windows[1:] if args.warmup else windows
    latencies = [t for w in measured for t in w.latencies]
    served = sum(w.ok for w in measured)
    seconds = sum(w.elapsed for w in measured)
    answered = sum(w.answered for w in windows)
    bad = sum(w.bad for w in windows)
    p99s = [percentile_ms(w.latencies, 0.99) for w in measured]
    print()
    print(f"requests {served} in {seconds:.1f} s: {served / seconds:.1f} req/s, "
          f"p50 {percentile_ms(latencies, 0.50):.1f} ms, p99 {percentile_ms(latencies, 0.99):.1f} "
          f"ms (per window {min(p99s):.1f}–{max(p99s):.1f} ms), non-200 {bad}")
    print(f"records stored {records} for {answered} answers "
          f"({'ok' if records == answered else 'MISMATCH'})")
    for w in windows:
        if w.sample:
            print(f"first bad answer: {w.sample}")
            break
    print(f"RSS start {_mib(start)}, end {_mib(end)} ({(end - start) / 1024:+.1f} MiB)")
    ratio = end / start if start else math.nan
    print(f"ratio: {ratio:.2f}")
    return 0 if not bad and records == answered else 1


if __name__ == "__main__":
    sys.exit(main())
