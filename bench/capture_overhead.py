"""What capturing row changes costs the write path: one pgbench workload against three
databases of one embedded PostgreSQL — no capture, trigger capture, WAL capture — in one run.

Each transaction is what a Flux execution sends: ``BEGIN``, the request GUC, an UPDATE of
``pgbench_accounts`` and an INSERT into ``pgbench_history`` (pgbench's own tables, scale
``--scale``), then ``flux.end_execution(…)`` (the WAL stamp, a no-op in the other modes)
and ``COMMIT``. The same script runs against every database:

- ``none``: the flux schema, no capture on the tables;
- ``trigger``: ``flux.install_capture_all()`` — the capture triggers write
  flux.state_mutations in the writing transaction (in C where the server can load it,
  flux/store/_native.py; ``FLUX_NATIVE_CAPTURE=0`` measures the PL/pgSQL trigger);
- ``wal``: ``flux capture switch wal`` — REPLICA IDENTITY FULL, the publication, the slot —
  with the consumer (flux/capture/_consumer.py) in a child process.

Rounds alternate none, trigger, wal, … so that machine noise hits all three alike; a mode's
figure is the median of its rounds' TPS (pgbench's "without initial connection time").

The headline is the writers' throughput with WAL capture against none. In production the
consumer runs on a core (or a host) of its own; on this shared machine it would take its CPU
from the writers, so it is paused (SIGSTOP) while the writers run and resumed after each
round, which it must then catch up with before the next round starts — its wait is shown,
and the summary gives WAL's TPS counting it too. Its server backends (the walsender that
decodes, the session that applies) are not paused: the walsender decodes what it can send
while the round runs. The consumer's CPU per transaction — its Python process and its
backends together, from the round's start to caught up — is reported beside the headline
(target ≤ 0.1 ms). ``--live-consumer`` runs it during the rounds instead, as a single
machine running everything would (the writers then pay for its CPU).

CPU per transaction, steadier than TPS on a shared machine: each round shows what pgbench
used, and what PostgreSQL used for everything but the consumer (``db``: the writers, the WAL
writer, checkpoints, autovacuum). After the last round the WAL database must hold exactly two
mutations per committed transaction (no-op updates excepted) — the run fails otherwise.

    .venv/bin/python bench/capture_overhead.py [--clients 8] [--seconds 8] [--rounds 3]

The last line is ``ratio: <wal TPS / none TPS>`` (target ≥ 0.95; trigger's ratio, target ≥
0.75, is printed above it). The exit status is 1 only when something was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import psycopg
from _children import Child, scratch_dir, spawn, stop
from _load import cpu_seconds

from flux.capture import _consumer as consumer
from flux.capture import _running
from flux.capture import _mode
from flux.store import _native
from flux.store._database import ensure_database
from flux.store._embedded import EmbeddedServer, install_dir
from flux.store._migrate import migrate

MODES = ("none", "trigger", "wal")
TARGETS = {"trigger": 0.75, "wal": 0.95}
CONSUMER_TARGET = 0.1  # ms of CPU per transaction, its Python and its backends
SCRIPT = """\
\\set aid random(1, 100000 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
SELECT set_config('flux.request_id', gen_random_uuid()::text, true);
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)
    VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);
SELECT flux.end_execution(current_setting('flux.request_id')::uuid,
    '[["s3", 1, ["pgbench_accounts"], "update"], ["s4", 1, ["pgbench_history"], "insert"]]');
END;
"""
TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
DONE = re.compile(r"number of transactions actually processed: (\d+)")


async def _consumer(role: str, options: dict[str, Any], pipe: Connection) -> None:
    """The WAL consumer, as `flux serve` runs it (a thread), in a child process."""
    halt = threading.Event()
    thread = threading.Thread(target=consumer.Consumer(options["conninfo"]).run, args=(halt,),
                              daemon=True)
    thread.start()
    pipe.send(("ready", 0))
    while thread.is_alive():
        await asyncio.sleep(0.5)


def _pgbench(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(install_dir() / "bin" / "pgbench"), *args],
                          capture_output=True, text=True, check=False)


def _prepare(conninfo: str, mode: str, scale: int) -> None:
    init = _pgbench(["-i", "-q", "-s", str(scale), conninfo])
    if init.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {init.stderr.strip()}")
    migrate(conninfo)
    if mode == "trigger":
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SELECT flux.install_capture_all()")
            # C where the server can load it (flux/store/_native.py), else PL/pgSQL.
            language = conn.execute("SELECT flux.capture_language()").fetchone()
            print(f"trigger capture runs in {language[0] if language else '?'} "
                  f"({_native.ENV}=0 keeps PL/pgSQL)", flush=True)
    elif mode == "wal":
        _mode.switch(conninfo, "wal")


def _round(conninfo: str, script: Path, args: argparse.Namespace
           ) -> tuple[float, int, float]:
    """One pgbench run: its TPS, the transactions it committed and its own CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = _pgbench(["-n", "-f", str(script), "-c", str(args.clients), "-j", "2",
                     "-T", str(args.seconds), "-s", str(args.scale), conninfo])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    tps, count = TPS.search(done.stdout), DONE.search(done.stdout)
    if done.returncode != 0 or tps is None or count is None:
        raise RuntimeError(f"pgbench failed: {done.stderr.strip() or done.stdout.strip()}")
    _backends_gone(conninfo)
    client = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return float(tps.group(1)), int(count.group(1)), client


def _backends_gone(conninfo: str) -> None:
    """Wait until pgbench's backends have exited and the postmaster has reaped them, so
    that their CPU is charged to this round and not the next."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for _ in range(100):
            row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                               "WHERE application_name = 'pgbench'").fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(0.05)
    time.sleep(0.2)


def _lag(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint "
                           "FROM pg_replication_slots WHERE slot_name = 'flux_capture' "
                           "AND database = current_database()").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


class CpuMeter:
    """CPU seconds used so far by PostgreSQL but the consumer's backends, by the consumer's
    process and by the consumer's backends — each backend's last reading is kept, so a
    backend that ends (a reconnect) still counts."""

    def __init__(self, postmaster: int, conninfo: str) -> None:
        self.postmaster = psutil.Process(postmaster)
        self.conninfo = conninfo
        self.consumer: psutil.Process | None = None
        self.backends: dict[int, float] = {}

    def watch(self, pid: int) -> None:
        self.consumer = psutil.Process(pid)

    def sample(self) -> dict[str, float]:
        # pgbench's backends end with each round: the postmaster has reaped them by then,
        # and their CPU is in its children's times.
        times = self.postmaster.cpu_times()
        db = times.user + times.system + times.children_user + times.children_system
        for process in self.postmaster.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                db += cpu_seconds(process)
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            pids = [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                [consumer.APPLICATION_NAME])]
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.backends[pid] = cpu_seconds(psutil.Process(pid))
        app = 0.0
        if self.consumer is not None:
            with contextlib.suppress(psutil.Error):
                app = cpu_seconds(self.consumer)
        backend = sum(self.backends.values())
        return {"db": db - backend, "app": app, "backend": backend}


def _per_txn(before: dict[str, float], after: dict[str, float], key: str, count: int) -> float:
    return (after[key] - before[key]) / count * 1000 if count else float("nan")


def _pause(child: Child | None, paused: bool) -> None:
    if child is not None:
        os.kill(child.process.pid, signal.SIGSTOP if paused else signal.SIGCONT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="pgbench clients.")
    parser.add_argument("--seconds", type=int, default=8, help="Each round's length.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds per mode.")
    parser.add_argument("--scale", type=int, default=2, help="pgbench scale factor.")
    parser.add_argument("--live-consumer", action="store_true",
                        help="Run the consumer during the rounds (the writers pay its CPU).")
    args = parser.parse_args(argv)
    live = args.live_consumer
    with scratch_dir("flux-bench-capture-") as tmp:
        server = EmbeddedServer(tmp / ".flux")
        child: Child | None = None
        try:
            info, _ = server.start()
            script = tmp / "flux_txn.sql"
            script.write_text(SCRIPT)
            conninfo = {}
            for mode in MODES:
                ensure_database(info.conninfo("postgres"), f"bench_{mode}")
                conninfo[mode] = info.conninfo(f"bench_{mode}")
                _prepare(conninfo[mode], mode, args.scale)
            meter = CpuMeter(info.pid, conninfo["wal"])
            child = spawn(_consumer, "consumer", {"conninfo": conninfo["wal"]})
            meter.watch(child.process.pid)
            _running.wait_caught_up(conninfo["wal"], timeout=300)
            print(f"pgbench: {args.clients} clients, scale {args.scale}, {args.rounds} round(s) "
                  f"of {args.seconds} s per mode; the WAL consumer runs in a child process, "
                  + ("during the rounds" if live else "paused during the rounds"), flush=True)
            tps: dict[str, list[float]] = {m: [] for m in MODES}
            committed = {m: 0 for m in MODES}
            db_cpu: dict[str, list[float]] = {m: [] for m in MODES}
            writers_cpu: dict[str, list[float]] = {m: [] for m in MODES}
            with_catch_up: list[float] = []
            waits: list[float] = []
            app_ms = backend_ms = 0.0  # the consumer's CPU seconds over the WAL rounds
            for number in range(1, args.rounds + 1):
                for mode in MODES:
                    _pause(child, not live)
                    before = meter.sample()
                    value, count, client = _round(conninfo[mode], script, args)
                    after = meter.sample()
                    tps[mode].append(value)
                    committed[mode] += count
                    db_cpu[mode].append(_per_txn(before, after, "db", count))
                    writers_cpu[mode].append(client / count * 1000 + db_cpu[mode][-1])
                    line = (f"round {number}  {mode:<8} {value:9.1f} tps  {count:7d} txns  "
                            f"cpu/txn pgbench {client / count * 1000:.3f} ms "
                            f"db {db_cpu[mode][-1]:.3f} ms")
                    lag = _lag(conninfo["wal"])
                    _pause(child, False)
                    # Every round's changes are stored before the next round starts, so
                    # that no round pays for another's: the wait is this round's.
                    waited = time.monotonic()
                    _running.wait_caught_up(conninfo["wal"], timeout=300)
                    waited = time.monotonic() - waited
                    stored = meter.sample()
                    if mode == "wal":
                        app = _per_txn(before, stored, "app", count)
                        backend = _per_txn(before, stored, "backend", count)
                        app_ms += app * count
                        backend_ms += backend * count
                        waits.append(waited)
                        with_catch_up.append(count / (count / value + waited))
                        line += (f"  consumer {app:.3f} ms its backends {backend:.3f} ms; "
                                 f"lag {lag / 1024:.0f} KiB, caught up in {waited:.1f} s")
                    print(line, flush=True)
            with psycopg.connect(conninfo["wal"]) as conn:
                stored_rows = conn.execute(
                    "SELECT count(*) FROM flux.state_mutations "
                    "WHERE source = 'wal'").fetchone()[0]  # type: ignore[index]
                # One INSERT per transaction, one UPDATE unless its delta was 0 (a no-op
                # update, which neither capture stores).
                expected = conn.execute(
                    "SELECT count(*) + count(*) FILTER (WHERE delta <> 0) "
                    "FROM pgbench_history").fetchone()[0]  # type: ignore[index]
        finally:
            if child is not None:
                with contextlib.suppress(ProcessLookupError):
                    _pause(child, False)
                stop(child)
            server.stop()
    medians = {m: statistics.median(v) for m, v in tps.items()}
    cpu = {m: statistics.median(v) for m, v in writers_cpu.items()}
    print()
    print(f"{'mode':<9}{'median tps':>12}{'vs none':>10}{'target':>9}       "
          f"writers' cpu/txn  vs none")
    for mode in MODES:
        ratio = medians[mode] / medians["none"]
        target = f"≥ {TARGETS[mode]:g}" if mode in TARGETS else ""
        verdict = "" if mode not in TARGETS else (" PASS" if ratio >= TARGETS[mode]
                                                  else " FAIL")
        print(f"{mode:<9}{medians[mode]:12.1f}{ratio:10.2f}{target:>9}{verdict:5}"
              f"  {cpu[mode]:12.3f} ms {cpu['none'] / cpu[mode]:8.2f}")
    transactions = committed["wal"]
    app, backend = app_ms / transactions, backend_ms / transactions
    verdict = "PASS" if app + backend <= CONSUMER_TARGET else "FAIL"
    print(f"WAL consumer cpu/txn ({transactions} txns, each round's start to caught up): "
          f"python {app:.3f} ms + its backends {backend:.3f} ms = {app + backend:.3f} ms "
          f"(target ≤ {CONSUMER_TARGET:g}) {verdict}")
    print(f"WAL consumer catch-up after each round: {min(waits):.1f}–{max(waits):.1f} s; "
          f"wal counting it: {statistics.median(with_catch_up):.1f} tps = "
          f"{statistics.median(with_catch_up) / medians['none']:.2f} of none")
    ok = stored_rows == expected
    print(f"WAL consumer stored {stored_rows} mutations for {transactions} transactions "
          f"(expected {expected}, no-op updates excluded: {'ok' if ok else 'MISMATCH'})")
    print(f"trigger/none: {medians['trigger'] / medians['none']:.2f}")
    print(f"ratio: {medians['wal'] / medians['none']:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
