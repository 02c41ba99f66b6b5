"""Where a recorded request's PostgreSQL CPU goes, statement by statement.

``recording_overhead.py`` reads what PostgreSQL spends per request in all; this harness
says where it goes. It records one real request of that bench's handler (through
``make_app``, so the record is the bench's own), then replays the statements a recorded
request sends — the very texts, built by the executor's own functions — on one connection
per variant, and reads that connection's backend CPU (``/proc/<pid>/schedstat``) per block
of transactions. Each variant leaves one part out or sends it another way; blocks of the
variants alternate so machine noise hits all alike; the figure is the median over blocks,
in µs per transaction. What the other PostgreSQL processes spent meanwhile (WAL writer,
checkpointer, autovacuum) is reported beside, per block of all variants.

    .venv/bin/python bench/recording_db.py [--transactions 50] [--blocks 20] [--only a,b]

The variants (``flux`` is what a recorded request sent before its record was prepared,
``prepared-record`` what it sent before sql/0026, ``asked-record`` what it sends now in
trigger mode — the BEGIN reading the mode under the switch's lock, no end_execution —,
``plain`` what the plain app of ``recording_overhead.py`` sends):

With ``--capture wal`` the Flux database captures by WAL (no consumer runs: what is
measured is the request's own backend), and two more variants compare the record's ways in
WAL mode, both prepared as the executor sends them: ``wal-insert`` (the BEGIN without the
mode lock, end_execution's message, the record INSERT, COMMIT — before the record travelled
in the WAL) and ``wal-record`` (the BEGIN reading the mode under its lock, the record as one
logical message, COMMIT — now); ``wal-record-plpgsql`` is ``wal-record`` with the mode read
in PL/pgSQL (``flux.record_in_wal_plpgsql``, what ran before sql/0026), ``wal-record-unlocked``
without the mode read at all.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg
from _children import Child, scratch_dir, spawn, stop_all
from aiohttp import web
from psycopg.rows import dict_row
from recording_overhead import (
    COUNT_BELOW,
    INSERT_SQL,
    REQUEST_BODY,
    ROUTE,
    SELECT_SQL,
    _prepare_databases,
    _recorded_app,
    _serve,
    _write_project,
)

from flux._ids import new_request_id_text
from flux.capture import _mode
from flux.runtime._ctx_db import tagged
from flux.runtime._execution import begin_statement
from flux.store._embedded import EmbeddedServer
from flux.store._queries import load
from flux.store._record import (
    ExecutionRecord,
    _jsonb,
    bind,
    simple_query,
    store_and_commit,
    wal_payload,
)

Step = Callable[[psycopg.Connection[Any], str], None]


def _backend_cpu(pid: int) -> float:
    """Seconds on CPU of one process (schedstat: nanoseconds first)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


async def _one_record(project: str, conninfo: str) -> None:
    """Serve the bench's handler through Flux in this process and send it one request."""
    app, cleanup = await _recorded_app({"conninfo": conninfo, "project": project})
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/{ROUTE}"
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=REQUEST_BODY, headers={"Content-Type": "application/json"}) as r,
        ):
            if r.status != 200:
                raise RuntimeError(f"the recorded request answered {r.status}")
    finally:
        await runner.cleanup()
        await cleanup()


def _record(conninfo: str) -> ExecutionRecord:
    names = {f.name for f in fields(ExecutionRecord)} - {"mutations", "signature"}
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT * FROM flux.trace_requests WHERE function = %s", [ROUTE]
        ).fetchone()
    if row is None:
        raise RuntimeError("no record of the bench's request")
    return ExecutionRecord(**{k: v for k, v in row.items() if k in names})


class Flux:
    """The statements of one recorded request, in parts a variant can swap."""

    def __init__(self, record: ExecutionRecord) -> None:
        self.record = record
        self.q = load("execution")

    def first(self, rid: str, *, guc: bool = True, table: str = "items", ask: bool = False
              ) -> bytes:
        """BEGIN, the request GUC and the SELECT, as _first_statement sends them (``ask``:
        with the mode read under the switch's lock, as every execution's since sql/0026)."""
        begin = begin_statement(rid, ask=ask) if guc else b"BEGIN"
        select = SELECT_SQL.replace("%s", str(COUNT_BELOW))
        return b"/*flux:s2*/ " + begin + b"; " + select.encode()

    def commit_execute(self, rid: str) -> bytes:
        self.record.request_id = rid
        params = {**self.record.params(), "statements": _jsonb([["s3", 1, ["items"], "insert"]])}
        _, names = _numbered(self.q.insert_record)
        execute = "EXECUTE flux_record(" + ", ".join(f"%({n})s" for n in names) + ")"
        return bind("; ".join([self.q.end_execution, execute, self.q.commit]), params)

    def commit(self, rid: str, *, end: bool = True, record: bool = True) -> bytes:
        self.record.request_id = rid
        params = {**self.record.params(), "statements": _jsonb([["s3", 1, ["items"], "insert"]])}
        parts = (
            ([self.q.end_execution] if end else [])
            + ([self.q.insert_record] if record else [])
            + [self.q.commit]
        )
        return bind("; ".join(parts), params)


def _numbered(query: str) -> tuple[str, list[str]]:
    """A %(name)s query as $n placeholders, and the names in order."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, query), names


def variants(flux: Flux) -> dict[str, tuple[str, Step]]:
    """name: (database, one transaction)."""
    insert = tagged(INSERT_SQL, "s3")

    def wal_way(record_in_wal: bool, *, locked: bool | None = None, record: bool = True,
                plpgsql: bool = False) -> Step:
        locked = record_in_wal if locked is None else locked

        def run(conn: psycopg.Connection[Any], rid: str) -> None:
            begin = begin_statement(rid, ask=locked)
            if plpgsql:  # the mode read as it was before 0026
                begin = begin.replace(b"flux.record_in_wal()", b"flux.record_in_wal_plpgsql()")
            select = SELECT_SQL.replace("%s", str(COUNT_BELOW))
            conn.pgconn.send_query(b"/*flux:s2*/ " + begin + b"; " + select.encode())
            _drain(conn)
            conn.execute(insert, ["bench"]).fetchone()
            flux.record.request_id = rid
            statements = [["s3", 1, ["items"], "insert"]]
            if not record:
                conn.execute(b"COMMIT")
                return
            with conn.pipeline():
                if record_in_wal:
                    conn.execute(flux.q.emit_record,
                                 {"payload": (wal_payload(flux.record, statements)
                                              or b"").decode()}, prepare=True)
                else:
                    params = {**flux.record.params(), "statements": _jsonb(statements)}
                    conn.execute(flux.q.end_execution, params, prepare=True)
                    conn.execute(flux.q.insert_record, params, prepare=True)
                conn.execute(b"COMMIT")

        return run

    def plain_on(table: str) -> Step:
        def plain(conn: psycopg.Connection[Any], rid: str) -> None:
            with conn.transaction():
                conn.execute(SELECT_SQL.replace("items", table), [COUNT_BELOW]).fetchone()
                conn.execute(INSERT_SQL.replace("items", table), ["bench"]).fetchone()

        return plain

    def make(
        *,
        guc: bool = True,
        prepared_select: bool = False,
        table: str = "items",
        end: bool = True,
        record: bool = True,
        prepared_record: bool = False,
        execute_record: bool = False,
        record_table: str | None = None,
        ask: bool = False,
    ) -> Step:
        ins = insert.replace("items", table)
        insert_record = flux.q.insert_record if record_table is None else \
            flux.q.insert_record.replace("flux.trace_requests", record_table)

        def run(conn: psycopg.Connection[Any], rid: str) -> None:
            if prepared_select:  # BEGIN + GUC, then the SELECT prepared: one more round trip
                conn.pgconn.send_query(begin_statement(rid, ask=False) if guc else b"BEGIN")
                _drain(conn)
                conn.execute(tagged(SELECT_SQL, "s2"), [COUNT_BELOW]).fetchone()
            else:
                conn.pgconn.send_query(flux.first(rid, guc=guc, table=table, ask=ask))
                _drain(conn)
            conn.execute(ins, ["bench"]).fetchone()
            if prepared_record:  # extended protocol, prepared, one round trip (a pipeline)
                flux.record.request_id = rid
                params = {
                    **flux.record.params(),
                    "statements": _jsonb([["s3", 1, ["items"], "insert"]]),
                }
                with conn.pipeline():
                    if end:
                        conn.execute(flux.q.end_execution, params, prepare=True)
                    conn.execute(insert_record, params, prepare=True)
                    conn.execute(b"COMMIT")
                return
            if execute_record:  # the INSERT PREPAREd once per connection, then EXECUTEd
                if not getattr(conn, "_flux_prepared", False):
                    conn.pgconn.send_query(
                        f"PREPARE flux_record AS {_numbered(flux.q.insert_record)[0]}".encode()
                    )
                    _drain(conn)
                    conn._flux_prepared = True  # type: ignore[attr-defined]
                conn.pgconn.send_query(flux.commit_execute(rid))
                _drain(conn)
                return
            conn.pgconn.send_query(flux.commit(rid, end=end, record=record))
            _drain(conn)

        return run

    return {
        "plain": ("plain", plain_on("items")),
        "flux": ("flux", make()),
        "no-guc": ("flux", make(guc=False)),
        "prepared-select": ("flux", make(prepared_select=True)),
        "no-trigger": ("flux", make(table="items_nocapture")),
        "no-end": ("flux", make(end=False)),
        "prepared-record": ("flux", make(prepared_record=True)),
        "prepared-record-no-end": ("flux", make(prepared_record=True, end=False)),
        # what a recorded request sends in trigger mode since sql/0026: the BEGIN reads the
        # mode under the switch's lock, the commit sends no end_execution
        "asked-record": ("flux", make(prepared_record=True, end=False, ask=True)),
        "execute-record": ("flux", make(execute_record=True)),
        # the record's INSERT into copies of today's partition (main makes them): what the
        # partition routing, the indexes and the CHECK constraints cost
        **{f"record-{t}": ("flux", make(prepared_record=True, end=False,
                                        record_table=f"flux.record_{t.replace('-', '_')}"))
           for t in ("flat", "flat-pk", "flat-nocheck", "flat-bare")},
        "no-record": ("flux", make(record=False)),
        "no-end-no-record": ("flux", make(end=False, record=False)),
        "wal-insert": ("flux", wal_way(False)),
        "wal-record": ("flux", wal_way(True)),
        "wal-record-unlocked": ("flux", wal_way(True, locked=False)),
        "wal-record-plpgsql": ("flux", wal_way(True, plpgsql=True)),
        "wal-no-record": ("flux", wal_way(False, record=False)),
        "wal-no-record-locked": ("flux", wal_way(False, locked=True, record=False)),
        "bare": (
            "flux",
            make(guc=False, prepared_select=True, table="items_nocapture", end=False, record=False),
        ),
    }


def _record_copies(conninfo: str) -> None:
    """Copies of today's partition of flux.trace_requests, not partitioned: with all its
    indexes (flat), its primary key only (flat_pk), all indexes and no CHECK constraints
    (flat_nocheck), neither (flat_bare)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        part = conn.execute(
            "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'flux.trace_requests'::regclass"
            " AND c.relname <> 'trace_requests_default' ORDER BY c.relname DESC LIMIT 1"
        ).fetchone()
        assert part is not None
        opts = " WITH (toast_tuple_target = 8160)"
        for name, like in (("flat", "INCLUDING ALL"), ("flat_nocheck", "INCLUDING DEFAULTS"
                                                       " INCLUDING INDEXES"),
                           ("flat_pk", "INCLUDING DEFAULTS INCLUDING CONSTRAINTS"),
                           ("flat_bare", "INCLUDING DEFAULTS")):
            conn.execute(f"CREATE TABLE flux.record_{name} (LIKE {part[0]} {like}){opts}")
        for name in ("flat_pk", "flat_bare"):
            conn.execute(f"ALTER TABLE flux.record_{name} ADD PRIMARY KEY (request_id)")


def _drain(conn: psycopg.Connection[Any]) -> None:
    """Read every result of a simple query; raise the first error."""
    while (result := conn.pgconn.get_result()) is not None:
        if result.status == psycopg.pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result)


def measure(
    conninfos: dict[str, str],
    steps: dict[str, tuple[str, Step]],
    args: argparse.Namespace,
    postmaster: int,
) -> dict[str, list[float]]:
    conns = {
        name: psycopg.connect(conninfos[db], autocommit=False) for name, (db, _) in steps.items()
    }
    pids = {name: c.info.backend_pid for name, c in conns.items()}
    figures: dict[str, list[float]] = {name: [] for name in steps}
    others: list[float] = []
    try:
        for name, (_, step) in steps.items():  # warm-up: caches, prepared statements
            for _ in range(20):
                step(conns[name], new_request_id_text())
        order = list(steps)
        for block in range(args.blocks):
            background = _others(postmaster, set(pids.values()))
            for name in order if block % 2 == 0 else reversed(order):
                conn, step = conns[name], steps[name][1]
                before = _backend_cpu(pids[name])
                for _ in range(args.transactions):
                    step(conn, new_request_id_text())
                figures[name].append((_backend_cpu(pids[name]) - before) / args.transactions * 1e6)
            after = _others(postmaster, set(pids.values()))
            others.append(
                sum(t - background.get(p, 0.0) for p, t in after.items())
                / (args.transactions * len(steps))
                * 1e6
            )
            print(
                f"block {block + 1}: " + "  ".join(f"{n} {figures[n][-1]:.0f}" for n in order),
                flush=True,
            )
    finally:
        for c in conns.values():
            c.close()
    figures["(other processes, per transaction of any variant)"] = others
    return figures


def _others(postmaster: int, exclude: set[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in (psutil.Process(postmaster), *psutil.Process(postmaster).children(recursive=True)):
        if p.pid not in exclude:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
    return out


async def commit_paths(
    conninfo: str, record: ExecutionRecord, args: argparse.Namespace
) -> dict[str, list[tuple[float, float]]]:
    """The record's commit round trip as the executor sends it (``store_and_commit``'s
    prepared pipeline) against one simple query with the values inlined by ``bind`` (what
    it sent before): client thread CPU and backend CPU per commit, µs. Each transaction is
    BEGIN and one INSERT into a table without capture, then the commit."""
    q = load("execution")
    statements = [["s3", 1, ["items_nocapture"], "insert"]]
    conns = {name: await psycopg.AsyncConnection.connect(conninfo) for name in ("bind", "prepared")}
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in conns}

    async def one(name: str, conn: psycopg.AsyncConnection[Any]) -> tuple[float, float]:
        await conn.execute(b"BEGIN")
        await conn.execute(tagged(INSERT_SQL, "s3").replace("items", "items_nocapture"), ["bench"])
        record.request_id = new_request_id_text()
        cpu, backend = time.thread_time(), _backend_cpu(conn.info.backend_pid)
        if name == "prepared":
            await store_and_commit(conn, record, statements)
        else:
            params = {**record.params(), "statements": _jsonb(statements)}
            text = f"{q.end_execution}; {q.insert_record}; {q.commit}"
            await simple_query(conn, bind(text, params, conn.info.encoding))
        return time.thread_time() - cpu, _backend_cpu(conn.info.backend_pid) - backend

    try:
        for name, conn in conns.items():
            for _ in range(20):
                await one(name, conn)
        for block in range(args.blocks):
            for name in conns if block % 2 == 0 else reversed(list(conns)):
                spent = [await one(name, conns[name]) for _ in range(args.transactions)]
                out[name].append(
                    (
                        sum(c for c, _ in spent) / len(spent) * 1e6,
                        sum(b for _, b in spent) / len(spent) * 1e6,
                    )
                )
    finally:
        for conn in conns.values():
            await conn.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=50, help="per block")
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--only", help="comma-separated variants (default: all)")
    parser.add_argument("--capture", choices=("trigger", "wal"), default="trigger",
                        help="the Flux database's capture mode (wal: no consumer runs)")
    parser.add_argument(
        "--commit-path",
        action="store_true",
        help="measure the record's commit round trip only, client and backend",
    )
    args = parser.parse_args(argv)
    with scratch_dir("flux-bench-") as tmp:
        server: EmbeddedServer | None = None
        children: list[Child] = []
        try:
            stub = spawn(_serve, "stub", {})
            children.append(stub)
            project = _write_project(tmp / "project", f"http://127.0.0.1:{stub.port}/stub")
            server = EmbeddedServer(project / ".flux")
            info, _ = server.start()
            flux_db, plain_db = _prepare_databases(info, project)
            with psycopg.connect(flux_db, autocommit=True) as conn:
                # no capture trigger: the event trigger that installs it fires in origin mode
                conn.execute("SET session_replication_role = replica")
                conn.execute("CREATE TABLE items_nocapture (LIKE items INCLUDING ALL)")
                if conn.execute(
                    "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"
                    " AND tgrelid = 'items_nocapture'::regclass"
                ).fetchone() != (0,):
                    raise RuntimeError("items_nocapture has a trigger")
            asyncio.run(_one_record(str(project), flux_db))
            _record_copies(flux_db)
            if args.capture == "wal":  # after the record: the bench's record is inserted
                _mode.switch(flux_db, "wal")
            if args.commit_path:
                paths = asyncio.run(commit_paths(flux_db, _record(flux_db), args))
                print("the record's commit round trip, µs per commit (median of blocks)")
                for name, values in paths.items():
                    print(
                        f"  {name:<9} client {statistics.median(c for c, _ in values):5.0f}"
                        f"  backend {statistics.median(b for _, b in values):5.0f}"
                    )
                return 0
            steps = variants(Flux(_record(flux_db)))
            if args.only:
                steps = {k: v for k, v in steps.items() if k in args.only.split(",")}
            figures = measure({"flux": flux_db, "plain": plain_db}, steps, args, info.pid)
        finally:
            stop_all(children, server)
    print("median backend CPU per transaction, µs (spread: quartiles)")
    for name, values in figures.items():
        q = statistics.quantiles(values, n=4)
        print(f"  {name:<20} {statistics.median(values):7.0f}   ({q[0]:.0f}–{q[2]:.0f})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
