"""A slowloris beside ordinary traffic: how much of a Flux server's service survives
connections that trickle their requests one byte at a time.

Setup as in ``soak.py``: one embedded PostgreSQL in a temporary directory under ``/tmp``, a
stub for the outbound call and the recorded handler of ``recording_overhead.py`` each in a
child process, all removed at the end; loopback only. First a closed loop of ordinary
requests alone (``--seconds``), then the same loop while ``--bodies`` connections send a
POST's headers and then its body one byte a second, and ``--headers`` connections send
their request line and headers one byte a second. A connection the server closes (the body
deadline, ``[server] body_timeout``) is opened again, as an attacker would. Everything is
bounded: the attack ends with its measured window, each attacker stops at its end.

    .venv/bin/python bench/slowloris.py [--seconds 10] [--bodies 200] [--headers 200]

The share of ordinary requests answered 200 during the attack must be at least 95% (exit
status 1 otherwise). The last line is ``ratio: <served during attack / served without>``,
the ordinary requests served per second, with the attack over without.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
from _children import Child, scratch_dir, spawn, stop_all
from _load import Round, closed_loop
from recording_overhead import REQUEST_BODY, ROUTE, _serve, _write_project

from flux._project import parse
from flux.capture._schema import apply_schema
from flux.store._database import ensure_database
from flux.store._embedded import EmbeddedServer
from flux.store._migrate import migrate

DB = "bench_slowloris"
MIN_SHARE = 0.95
SETTLE = 2.0  # seconds the attackers get to open their connections before measuring
BODY_HEAD = (f"POST /{ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
             f"\r\nContent-Length: 4096\r\n\r\n").encode()
HEADER_TRICKLE = (f"POST /{ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  + "".join(f"X-Slow-{n}: {'a' * 40}\r\n" for n in range(200))).encode()


class Attack:
    """Slow clients against ``port`` until ``stop`` is set; counts what the server did."""

    def __init__(self, port: int, stop: asyncio.Event) -> None:
        self.port, self.stop = port, stop
        self.opened = 0
        self.closed_by_server = 0
        self.refused = 0

    async def slow_client(self, head: bytes, trickle: bytes) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.refused += 1
                await asyncio.sleep(1.0)
                continue
            self.opened += 1
            try:
                writer.write(head)
                await writer.drain()
                for n in range(len(trickle)):
                    if self.stop.is_set():
                        return
                    writer.write(trickle[n:n + 1])
                    await writer.drain()
                    try:  # one byte a second; an answer or a close ends this connection
                        await asyncio.wait_for(reader.read(1024), 1.0)
                        self.closed_by_server += 1
                        break
                    except TimeoutError:
                        continue
            except OSError:
                self.closed_by_server += 1
            finally:
                writer.close()

    def run(self, bodies: int, headers: int) -> list[asyncio.Task[None]]:
        body = b"{" + b" " * 4094 + b"}"
        return ([asyncio.create_task(self.slow_client(BODY_HEAD, body)) for _ in range(bodies)]
                + [asyncio.create_task(self.slow_client(b"", HEADER_TRICKLE))
                   for _ in range(headers)])


async def _measure(port: int, args: argparse.Namespace) -> tuple[Round, Round, Attack]:
    url = f"http://127.0.0.1:{port}/{ROUTE}"
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await closed_loop(session, "warm-up", url, REQUEST_BODY, args.concurrency, 2.0)
        alone = await closed_loop(session, "alone", url, REQUEST_BODY, args.concurrency,
                                  args.seconds)
        print(f"alone     {alone.summary()}", flush=True)
        stop = asyncio.Event()
        attack = Attack(port, stop)
        tasks = attack.run(args.bodies, args.headers)
        await asyncio.sleep(SETTLE)
        print(f"attack    {attack.opened} slow connections open "
              f"({args.bodies} slow bodies, {args.headers} slow headers)", flush=True)
        during = await closed_loop(session, "attacked", url, REQUEST_BODY, args.concurrency,
                                   args.seconds)
        print(f"attacked  {during.summary()}", flush=True)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    return alone, during, attack


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ordinary requests served beside slow-body and slow-header connections.")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of each measured window (default: 10)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="ordinary requests in flight at once (default: 8)")
    parser.add_argument("--bodies", type=int, default=200,
                        help="connections trickling their body (default: 200)")
    parser.add_argument("--headers", type=int, default=200,
                        help="connections trickling their headers (default: 200)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.bodies < 0 or args.headers < 0:
        parser.error("--seconds must be positive, --concurrency at least 1, counts >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    with scratch_dir("flux-slowloris-") as tmp:
        server: EmbeddedServer | None = None
        children: list[Child] = []
        try:
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
            started = time.monotonic()
            alone, during, attack = asyncio.run(_measure(flux.port, args))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            stop_all(children, server)
    sent = during.answered + during.failures
    share = during.ok / sent if sent else 0.0
    print()
    print(f"slow connections opened {attack.opened}, ended by the server "
          f"{attack.closed_by_server}, refused {attack.refused} "
          f"({time.monotonic() - started:.0f} s in all)")
    if during.sample:
        print(f"first bad answer during the attack: {during.sample}")
    print(f"answered normally during the attack: {during.ok} of {sent} ({share:.1%}; "
          f"at least {MIN_SHARE:.0%} needed)")
    ratio = during.throughput / alone.throughput if alone.throughput else 0.0
    print(f"ratio: {ratio:.2f}")
    return 0 if share >= MIN_SHARE else 1


if __name__ == "__main__":
    sys.exit(main())
