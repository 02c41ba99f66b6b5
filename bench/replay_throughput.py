"""How fast ``flux incident replay`` re-runs an incident, against how fast the same requests
were served when they were recorded.

Setup, all in a temporary directory under /tmp that is removed at the end (also after
Ctrl-C, SIGTERM or an error):

- one embedded PostgreSQL, database ``bench_shop``, flux schema migrated and the example
  shop's ``schema/`` applied (capture triggers on ``users`` and ``orders``, as in real use);
- a copy of ``examples/shop`` whose ``flux.toml`` points ``[app] payments_url`` at the fake
  payment provider (``examples/shop/fake_provider.py``), which runs in a child process on a
  free port; ``SHOP_PAYMENTS_API_KEY`` is set for the shop;
- the shop served by Flux (``make_app`` over a ``Runtime``, as ``flux serve`` does) in
  another child process, so the load generator in this process does not share its loop.

Then:

1. **original**: a few users sign up, a short warm-up of checkouts (not part of the
   incident), then ``--executions`` ``checkout`` requests at ``--concurrency`` in flight.
   In every block of 100 requests the provider is switched (``POST /_fake/mode``) to
   ``shape_change`` for the last 10, so about 10 % fail (500, ``KeyError 'id'``) as in the
   shop's README. The serving rate is answers per second over those requests.
2. The server is stopped; the incident is selected with ``flux.replay._incident.select(ids=…)``.
3. **replay --db tape**, then **replay --db live**: ``replay_incident`` in this process, each
   timed from the call to its return (runtime start-up included, as ``flux incident replay``
   pays it), at ``--replay-concurrency``. Same code, so the passing count must equal the
   original success count; the provider's charge counter must not move (nothing is sent);
   every replay is recorded (a ``trace_requests`` row with ``replay_of``), 2 × executions
   in all.

    .venv/bin/python bench/replay_throughput.py [--executions 1000] [--concurrency 16]
                                                [--replay-concurrency 8]

The last line is ``ratio: <replay --db tape rate / original serving rate>``. The exit status
is 1 only when something was wrong (an unanswered request, a passing count that differs from
the original success count, a charge sent during replay, replay records missing), never for
the ratio itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg
from _children import Child, scratch_dir, spawn, stop, stop_all
from _load import cpu_seconds
from aiohttp import web

from flux._project import parse
from flux.capture._schema import apply_schema
from flux.replay._incident import replay_incident, select
from flux.runtime._gateway import make_app
from flux.runtime._runtime import Runtime
from flux.store._database import ensure_database
from flux.store._embedded import EmbeddedServer, ServerInfo
from flux.store._migrate import migrate

REPO = Path(__file__).resolve().parents[1]
SHOP = REPO / "examples" / "shop"
DB_NAME = "bench_shop"
SECRET_ENV = "SHOP_PAYMENTS_API_KEY"
SECRET = "sk_test_bench_replay"  # any value; the fake records only whether it was sent
DEFAULT_TOML_URL = 'payments_url = "http://127.0.0.1:4010"'
POOL_SIZE = 20  # Runtime's default, as `flux serve` runs it
USERS = 16  # checkouts go round-robin over them, so concurrent ones rarely share a row
BLOCK = 100  # in every block of BLOCK requests ...
BROKEN = 10  # ... the last BROKEN are sent with the provider in shape_change mode

REPLAYS_SQL = ("SELECT count(*) FROM flux.trace_requests "
               "WHERE kind = 'replay' AND replay_of = ANY(%s::uuid[])")
ORIGINALS_SQL = ("SELECT status, count(*) FROM flux.trace_requests "
                 "WHERE request_id = ANY(%s::uuid[]) GROUP BY status")


# -- the provider and the shop, each in a child process ------------------------------------


async def _serve(role: str, options: dict[str, Any], pipe: Connection) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if role == "provider":
        sys.path.insert(0, str(SHOP))
        from fake_provider import FakeProvider

        provider = FakeProvider()
        port = await provider.start(port=0)
        try:
            pipe.send(("ready", port))
            await stop.wait()
        finally:
            await provider.stop()
        return
    runtime = Runtime(parse(Path(options["project"])), options["conninfo"],
                      pool_size=POOL_SIZE)
    errors = await runtime.start()
    if errors or runtime.registry.route("checkout") is None:
        await runtime.close()
        raise RuntimeError(f"the shop did not load: {errors}")
    runner = web.AppRunner(make_app(runtime), access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        pipe.send(("ready", runner.addresses[0][1]))
        await stop.wait()
    finally:
        await runner.cleanup()
        await runtime.close()


# -- setup ---------------------------------------------------------------------------------

def _copy_shop(target: Path, payments_url: str) -> Path:
    shutil.copytree(SHOP, target, ignore=shutil.ignore_patterns(".flux", "__pycache__"))
    toml = (target / "flux.toml").read_text()
    if DEFAULT_TOML_URL not in toml:
        raise RuntimeError(f"examples/shop/flux.toml no longer says {DEFAULT_TOML_URL!r}")
    (target / "flux.toml").write_text(
        toml.replace(DEFAULT_TOML_URL, f'payments_url = "{payments_url}"'))
    return target


def _prepare_database(info: ServerInfo, project_root: Path) -> str:
    ensure_database(info.conninfo("postgres"), DB_NAME)
    conninfo = info.conninfo(DB_NAME)
    migrate(conninfo)
    apply_schema(conninfo, parse(project_root).schema_dir)
    return conninfo


def _scalar(conninfo: str, query: str, params: Any = None) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(query.encode(), params).fetchone()
    return int(row[0]) if row else 0


def _original_statuses(conninfo: str, ids: list[str]) -> Counter[str]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(ORIGINALS_SQL.encode(), [ids]).fetchall()
    return Counter({str(status): int(n) for status, n in rows})


# -- CPU -----------------------------------------------------------------------------------

class CpuMeter:
    """CPU seconds used so far by one process (the server, or this one while it replays) and
    by PostgreSQL: says where an execution's time goes, original or replay.

    PostgreSQL's total is the postmaster's own time, the time of every backend alive now,
    and the time of the backends that already exited (the postmaster reaps them, so the
    kernel adds theirs to its ``children_*`` times). A replay opens a connection per record
    and a pool that lives only as long as the call: without the last term most of its
    database time would be lost."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = psutil.Process(postmaster)

    def sample(self, app: psutil.Process) -> tuple[float, float]:
        times = self.postmaster.cpu_times()
        db = times.user + times.system + times.children_user + times.children_system
        for process in self.postmaster.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                db += cpu_seconds(process)
        return cpu_seconds(app), db

    @staticmethod
    def used(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, float]:
        """(app, db) CPU seconds between two samples."""
        return after[0] - before[0], after[1] - before[1]


# -- the original traffic --------------------------------------------------------------------

@dataclass
class Phase:
    """One measured run: the original serving, or one replay."""

    name: str
    executions: int = 0
    elapsed: float = 0.0
    ok: int = 0  # original: 200 answers; replay: passing
    failing: int = 0  # original: other answers; replay: failing
    app_cpu: float = 0.0
    db_cpu: float = 0.0
    detail: str = ""

    @property
    def rate(self) -> float:
        return self.executions / self.elapsed if self.elapsed > 0 else 0.0

    def per_execution(self, seconds: float) -> float:
        return seconds / self.executions * 1000 if self.executions else 0.0


@dataclass
class Original:
    phase: Phase
    ids: list[str] = field(default_factory=list)  # in the order the requests were issued
    statuses: Counter[int] = field(default_factory=Counter)
    unanswered: int = 0
    sample: str = ""  # the first unanswered request's error, or a 500 body
    users: int = 0


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]
                ) -> tuple[int, str | None, bytes]:
    async with session.post(url, data=json.dumps(body).encode(),
                            headers={"Content-Type": "application/json"}) as response:
        return response.status, response.headers.get("x-flux-request-id"), \
            await response.read()


async def _record_incident(shop: str, provider: str, args: argparse.Namespace,
                           cpu: Callable[[], tuple[float, float]]) -> Original:
    """Sign users up, warm up, then send the incident's checkouts and time them; ``cpu``
    samples (app, db) CPU seconds, taken around the incident only."""
    result = Original(Phase("original (served)"))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        mode_lock = asyncio.Lock()

        async def set_mode(mode: str) -> None:
            async with mode_lock:  # FIFO: switches reach the provider in order
                status, _, body = await _post(session, f"{provider}/_fake/mode",
                                              {"mode": mode})
                if status != 200:
                    raise RuntimeError(f"the provider refused mode {mode}: {body[:200]!r}")

        await set_mode("ok")
        users: list[int] = []
        for n in range(USERS):
            status, _, body = await _post(session, f"{shop}/signup",
                                          {"email": f"bench{n}@example.com"})
            if status != 200:
                raise RuntimeError(f"signup answered {status}: {body[:300]!r}")
            users.append(int(json.loads(body)["id"]))
        result.users = len(users)

        async def run(count: int, record: bool) -> None:
            indices = iter(range(count))

            async def client() -> None:
                for i in indices:
                    if record and i % BLOCK == BLOCK - BROKEN:
                        await set_mode("shape_change")
                    elif record and i % BLOCK == 0 and i:
                        await set_mode("ok")
                    body = {"user_id": users[i % len(users)], "amount_cents": 100 + i % 900}
                    try:
                        status, rid, raw = await _post(session, f"{shop}/checkout", body)
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        if record:
                            result.unanswered += 1
                            result.sample = result.sample or f"{type(exc).__name__}: {exc}"
                        continue
                    if not record:
                        continue
                    result.statuses[status] += 1
                    if rid:
                        result.ids.append(rid)
                    if status != 200 and not result.sample:
                        result.sample = f"{status}: {raw[:200].decode('utf-8', 'replace')}"

            await asyncio.gather(*(client() for _ in range(args.concurrency)))

        await run(args.warmup, record=False)
        before = cpu()
        start = time.perf_counter()
        await run(args.executions, record=True)
        result.phase.elapsed = time.perf_counter() - start
        result.phase.app_cpu, result.phase.db_cpu = CpuMeter.used(before, cpu())
        await set_mode("ok")
    result.phase.executions = sum(result.statuses.values())
    result.phase.ok = result.statuses.get(200, 0)
    result.phase.failing = result.phase.executions - result.phase.ok
    return result


async def _charges(provider: str) -> int:
    async with aiohttp.ClientSession() as session, \
            session.get(f"{provider}/_fake/stats") as response:
        return int((await response.json())["charges"])


# -- the replays -----------------------------------------------------------------------------

@dataclass
class Replay:
    phase: Phase
    summary: dict[str, Any]
    first: float = 0.0  # seconds from the call to the first result
    last: float = 0.0  # ... and to the last one


def _replay(name: str, db_mode: str, project_root: Path, conninfo: str, ids: list[str],
            meter: CpuMeter, args: argparse.Namespace) -> Replay:
    project = parse(project_root)
    me = psutil.Process()
    stamps: list[float] = []

    def on_result(result: dict[str, Any]) -> None:
        stamps.append(time.perf_counter())

    profiler = cProfile.Profile() if args.profile else None
    before = meter.sample(me)
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    summary = replay_incident(project, conninfo, ids, db_mode=db_mode, on_result=on_result,
                              concurrency=args.replay_concurrency)
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - start
    app_cpu, db_cpu = meter.used(before, meter.sample(me))
    if profiler is not None:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(Path(args.profile) / f"replay-{db_mode}.prof")
    phase = Phase(name, executions=summary["replayed"], elapsed=elapsed,
                  ok=summary["passing"], failing=summary["failing"], app_cpu=app_cpu,
                  db_cpu=db_cpu)
    return Replay(phase, summary, first=(stamps[0] - start) if stamps else 0.0,
                  last=(stamps[-1] - start) if stamps else 0.0)


def _mismatches(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Replays whose verdict differs from the original answer (200 ⇔ passing)."""
    return [r for r in summary["results"] if r["passed"] != (r["original_status"] == 200)]


# -- main ------------------------------------------------------------------------------------

def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Executions replayed per second by `flux incident replay` (--db tape and "
                    "--db live) against the rate at which they were originally served.")
    parser.add_argument("--executions", type=int, default=1000,
                        help="checkout requests in the incident (default: 1000)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight while serving the original (default: 16)")
    parser.add_argument("--replay-concurrency", type=int, default=8,
                        help="replay_incident's concurrency (default: 8, as the CLI)")
    parser.add_argument("--warmup", type=int, default=50,
                        help="checkouts served before the incident, not part of it "
                             "(default: 50)")
    parser.add_argument("--profile", metavar="DIR",
                        help="cProfile each replay_incident run into DIR/replay-tape.prof and "
                             "DIR/replay-live.prof (pstats; the event-loop thread only, not "
                             "the per-record lookups in worker threads); skews the rates")
    args = parser.parse_args(argv)
    if args.executions < 1 or args.concurrency < 1 or args.replay_concurrency < 1 \
            or args.warmup < 0:
        parser.error("--executions and the concurrencies must be at least 1, --warmup >= 0")
    return args



def _line(phase: Phase) -> str:
    return (f"{phase.name:<19} {phase.executions:>6} {phase.elapsed:>8.2f} {phase.rate:>8.1f}"
            f" {phase.ok:>7} {phase.failing:>7} {phase.per_execution(phase.app_cpu):>9.2f} ms"
            f" {phase.per_execution(phase.db_cpu):>7.2f} ms")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    os.environ[SECRET_ENV] = SECRET  # the children inherit it; checkout needs the secret
    with scratch_dir("flux-bench-replay-") as tmp:
        server: EmbeddedServer | None = None
        children: list[Child] = []
        shop: Child | None = None
        try:
            print(f"{args.executions} checkout executions served at concurrency "
                  f"{args.concurrency} (pool size {POOL_SIZE}), {BROKEN} in every {BLOCK} with "
                  f"the provider in shape_change mode; replayed at concurrency "
                  f"{args.replay_concurrency}", flush=True)
            provider = spawn(_serve, "provider", {})
            children.append(provider)
            provider_url = f"http://127.0.0.1:{provider.port}"
            project = _copy_shop(tmp / "shop", provider_url)
            server = EmbeddedServer(tmp / "pg")
            info, _ = server.start()
            conninfo = _prepare_database(info, project)
            meter = CpuMeter(info.pid)

            shop = spawn(_serve, "shop", {"conninfo": conninfo, "project": str(project)})
            children.append(shop)
            shop_process = psutil.Process(shop.process.pid)
            original = asyncio.run(_record_incident(f"http://127.0.0.1:{shop.port}",
                                                    provider_url, args,
                                                    lambda: meter.sample(shop_process)))
            stop(shop)
            print(f"served {original.phase.executions} in "
                  f"{original.phase.elapsed:.2f} s: {original.phase.rate:.1f} req/s, "
                  f"{original.phase.ok} × 200, {original.phase.failing} other "
                  f"({dict(sorted(original.statuses.items()))}), "
                  f"{original.unanswered} unanswered", flush=True)

            recorded = _original_statuses(conninfo, original.ids)
            started = time.perf_counter()
            with psycopg.connect(conninfo, autocommit=True) as conn:
                chosen = select(conn, ids=original.ids, function="checkout")
            select_s = time.perf_counter() - started
            print(f"selected {len(chosen)} executions with select(ids=…) in {select_s:.2f} s; "
                  f"recorded as {dict(sorted(recorded.items()))}", flush=True)

            charges = [_charges_now(provider_url)]
            replays_before = _scalar(conninfo, REPLAYS_SQL, [chosen])
            runs: list[Replay] = []
            stored: list[int] = []
            for name, mode in (("replay --db tape", "tape"), ("replay --db live", "live")):
                run = _replay(name, mode, project, conninfo, chosen, meter, args)
                runs.append(run)
                charges.append(_charges_now(provider_url))
                stored.append(_scalar(conninfo, REPLAYS_SQL, [chosen]) - replays_before)
                print(f"{name}: {run.phase.executions} in {run.phase.elapsed:.2f} s "
                      f"({run.phase.rate:.1f}/s; first result after {run.first:.2f} s, "
                      f"{_steady(run):.1f}/s from first to last), {run.phase.ok} passing, "
                      f"{run.phase.failing} failing", flush=True)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            stop_all(children, server)

    tape, live = runs
    phases = [original.phase, tape.phase, live.phase]
    print()
    print(f"{'':<19} {'execs':>6} {'seconds':>8} {'exec/s':>8} {'ok/pass':>7} {'failing':>7}"
          f" {'app cpu/exec':>12} {'db cpu/exec':>10}")
    for phase in phases:
        print(_line(phase))
    print("(app cpu: the shop server process while serving, this process while replaying; "
          "db cpu: all PostgreSQL processes)")

    healthy = True
    if original.unanswered or len(original.ids) != original.phase.executions:
        print(f"original: {original.unanswered} requests unanswered, "
              f"{original.phase.executions - len(original.ids)} answers without a request id "
              f"({original.sample}) (MISMATCH)")
        healthy = False
    if original.phase.failing:
        print(f"original: first non-200 answer: {original.sample}")
    if recorded.get("ok", 0) != original.phase.ok or len(chosen) != len(original.ids):
        print(f"original: recorded {dict(recorded)} and selected {len(chosen)} for "
              f"{original.phase.ok} × 200 of {len(original.ids)} (MISMATCH)")
        healthy = False
    for run in runs:
        wrong = _mismatches(run.summary)
        same = run.phase.ok == original.phase.ok and run.phase.failing == original.phase.failing
        print(f"{run.phase.name}: {run.phase.ok} passing / {run.phase.failing} failing against "
              f"{original.phase.ok} / {original.phase.failing} originally "
              f"({'same' if same and not wrong else 'MISMATCH'})")
        if wrong:
            first = wrong[0]
            print(f"  {len(wrong)} replays disagree with their original, e.g. "
                  f"{first['request_id']}: original {first['original_status']}, replayed "
                  f"{first['status']} passed={first['passed']} error={first['error']!r} "
                  f"divergence={first['divergence']!r}")
        healthy = healthy and same and not wrong
    moved = charges[-1] != charges[0]
    print(f"provider charges: {charges[0]} before replay, {charges[1]} after --db tape, "
          f"{charges[2]} after --db live ({'MOVED' if moved else 'unchanged'})")
    want = [len(chosen), 2 * len(chosen)]
    print(f"replay records stored (trace_requests with replay_of): {stored[0]} after tape, "
          f"{stored[1]} after both (want {want[0]} and {want[1]}: "
          f"{'ok' if stored == want else 'MISMATCH'})")
    healthy = healthy and not moved and stored == want

    base = original.phase.rate
    ratio_tape = tape.phase.rate / base if base else 0.0
    ratio_live = live.phase.rate / base if base else 0.0
    print(f"rates: original {base:.1f} req/s, replay --db tape {tape.phase.rate:.1f} exec/s, "
          f"replay --db live {live.phase.rate:.1f} exec/s")
    print(f"replay/original: --db tape {ratio_tape:.3f}, --db live {ratio_live:.3f} "
          "(the headline ratio is --db tape rate / original serving rate)")
    if args.profile:
        print(f"profiles: {args.profile}/replay-tape.prof, {args.profile}/replay-live.prof "
              "(this run's rates are skewed)")
    print(f"ratio: {ratio_tape:.2f}")
    return 0 if healthy else 1


def _steady(run: Replay) -> float:
    span = run.last - run.first
    return (run.phase.executions - 1) / span if span > 0 else 0.0


def _charges_now(provider_url: str) -> int:
    return asyncio.run(_charges(provider_url))


if __name__ == "__main__":
    sys.exit(main())
