"""Where a writer's PostgreSQL CPU goes with WAL capture: the write path alone.

``capture_overhead.py`` runs pgbench against whole databases; this harness takes one
connection per variant, sends ``capture_overhead.py``'s transaction (BEGIN, the request GUC,
an UPDATE of ``pgbench_accounts``, an INSERT into ``pgbench_history``,
``flux.end_execution(…)``, COMMIT — one simple query) and reads that connection's backend
CPU (``/proc/<pid>/schedstat``) per block of transactions, and the WAL it wrote. Each
variant is a database of one embedded server with WAL capture switched on and one part of
it taken away (or done another way); blocks of the variants alternate so that machine
noise hits all alike; the figure is the median over blocks, in µs per transaction. No slot
is streamed: the walsender's decoding is the consumer's cost, measured by
``capture_overhead.py``.

    .venv/bin/python bench/capture_writers.py [--transactions 200] [--blocks 15]

The variants:

- ``none``: no capture (``flux.end_execution`` is still called, as Flux calls it);
- ``wal``: WAL capture as ``flux capture switch wal`` sets it up;
- ``wal-no-actor``: without the statement trigger that stamps writes from outside Flux;
- ``wal-default-identity``: REPLICA IDENTITY DEFAULT (no old row images in the WAL);
- ``wal-no-stamp``: ``flux.end_execution`` writes no logical message.

The last line is ``ratio: <none µs / wal µs>`` (the writers' backend CPU).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from _children import scratch_dir
from capture_overhead import _pgbench

from flux.store._database import ensure_database
from flux.store._embedded import EmbeddedServer
from flux.store._migrate import migrate

STATEMENTS = '[["s3", 1, ["pgbench_accounts"], "update"], ["s4", 1, ["pgbench_history"], "insert"]]'
TABLES = ("pgbench_accounts", "pgbench_history")

Setup = Callable[[psycopg.Connection[Any]], None]


def _wal(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT flux.switch_capture('wal')")


def _no_actor(conn: psycopg.Connection[Any]) -> None:
    _wal(conn)
    for table in TABLES:
        conn.execute(f"DROP TRIGGER flux_wal_actor ON {table}")


def _default_identity(conn: psycopg.Connection[Any]) -> None:
    _wal(conn)
    for table in TABLES:
        conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY DEFAULT")


def _no_stamp(conn: psycopg.Connection[Any]) -> None:
    _wal(conn)
    conn.execute("""
        CREATE OR REPLACE FUNCTION flux.end_execution(request_id uuid, statements jsonb)
        RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            IF flux.setting('capture') = 'wal' THEN
                PERFORM 1;
            END IF;
        END
        $$""")


VARIANTS: dict[str, Setup | None] = {
    "none": None,
    "wal": _wal,
    "wal-no-actor": _no_actor,
    "wal-default-identity": _default_identity,
    "wal-no-stamp": _no_stamp,
}


def _transaction(scale: int) -> bytes:
    rid = uuid.uuid4()
    aid = random.randint(1, 100000 * scale)
    delta = random.randint(-5000, 5000)
    return (
        f"BEGIN; SELECT set_config('flux.request_id', '{rid}', true); "
        f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}; "
        f"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
        f"VALUES (1, 1, {aid}, {delta}, CURRENT_TIMESTAMP); "
        f"SELECT flux.end_execution('{rid}'::uuid, '{STATEMENTS}'); COMMIT"
    ).encode()


def _drain(conn: psycopg.Connection[Any]) -> None:
    while (result := conn.pgconn.get_result()) is not None:
        if result.error_message:
            raise RuntimeError(result.error_message.decode())


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=200, help="Per block.")
    parser.add_argument("--blocks", type=int, default=15, help="Blocks per variant.")
    parser.add_argument("--scale", type=int, default=2, help="pgbench scale factor.")
    parser.add_argument(
        "--warm-up", type=int, default=500, help="Transactions per variant first, uncounted."
    )
    parser.add_argument("--only", default="", help="Comma-separated variants.")
    args = parser.parse_args(argv)
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    with scratch_dir("flux-bench-writers-") as tmp:
        server = EmbeddedServer(tmp / ".flux")
        try:
            info, _ = server.start()
            with psycopg.connect(info.conninfo("postgres"), autocommit=True) as admin:
                # No checkpoint inside the measurement: after one, each page's first change
                # writes its full image, which would swamp what is measured here.
                admin.execute("ALTER SYSTEM SET checkpoint_timeout = '1h'")
                admin.execute("ALTER SYSTEM SET max_wal_size = '20GB'")
                admin.execute("SELECT pg_reload_conf()")
            conns: dict[str, psycopg.Connection[Any]] = {}
            pids: dict[str, int] = {}
            for number, name in enumerate(names):
                db = f"writers_{number}"
                ensure_database(info.conninfo("postgres"), db)
                conninfo = info.conninfo(db)
                init = _pgbench(["-i", "-q", "-s", str(args.scale), conninfo])
                if init.returncode != 0:
                    raise RuntimeError(f"pgbench -i failed: {init.stderr.strip()}")
                migrate(conninfo)
                conn = psycopg.connect(conninfo, autocommit=True)
                setup = VARIANTS[name]
                if setup is not None:
                    setup(conn)
                conns[name] = conn
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
                pids[name] = int(row[0]) if row else 0
            next(iter(conns.values())).execute("CHECKPOINT")
            for conn in conns.values():
                # Every page changed once (its full image written) before measuring.
                conn.execute("UPDATE pgbench_accounts SET abalance = abalance")
                conn.execute("VACUUM ANALYZE")
            cpu: dict[str, list[float]] = {n: [] for n in names}
            wal: dict[str, list[float]] = {n: [] for n in names}
            for block in range(args.blocks + 1):  # the first block warms up, uncounted
                count = args.warm_up if block == 0 else args.transactions
                order = names if block % 2 == 0 else list(reversed(names))
                for name in order:
                    conn = conns[name]
                    lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
                    before = _cpu(pids[name])
                    for _ in range(count):
                        conn.pgconn.send_query(_transaction(args.scale))
                        _drain(conn)
                    spent = _cpu(pids[name]) - before
                    written = conn.execute(
                        "SELECT pg_current_wal_lsn() - %s::pg_lsn", [lsn]
                    ).fetchone()[0]  # type: ignore[index]
                    if block:
                        cpu[name].append(spent / args.transactions * 1e6)
                        wal[name].append(float(written) / args.transactions)
            for conn in conns.values():
                conn.close()
        finally:
            server.stop()
    print(
        f"{args.blocks} blocks of {args.transactions} transactions per variant, alternating; "
        "median µs of the writer's backend CPU per transaction (spread), WAL bytes"
    )
    base = statistics.median(cpu["none"]) if "none" in cpu else None
    for name in names:
        median = statistics.median(cpu[name])
        extra = f"  {median - base:+7.1f} vs none" if base is not None else ""
        print(
            f"{name:<22}{median:8.1f} µs ({min(cpu[name]):.0f}–{max(cpu[name]):.0f})"
            f"{statistics.median(wal[name]):9.0f} B{extra}"
        )
    if base is not None and "wal" in cpu:
        print(f"ratio: {base / statistics.median(cpu['wal']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
