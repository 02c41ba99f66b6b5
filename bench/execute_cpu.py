"""The executor's own machinery per execution, without IO: CPU time of ``execute()``.

A no-IO handler (``return {"ok": 1}``) run through ``execute(..., persist=False)`` with
the loop turned once per execution, as in serving: the route match, ``Invocation``,
``Recorder``, ``Execution``, ``Context``, the IO watch, the function's deadline, its two
spans, the answer and the record built (not stored). What a request passes through that
is not IO; the whole-request harnesses (recording_cpu.py) swing by more than this moves.
Compare two versions on one machine by running it alternately with ``PYTHONPATH`` set to
a ``git archive`` of the other (its flux/ and sql/).

    .venv/bin/python bench/execute_cpu.py [--executions 3000] [--rounds 7] [--gateway]

``--gateway`` sends each execution as a real HTTP request over loopback through the
gateway (``make_app``: aiohttp's request handling, the route, the body, ``Invocation``, the
answer encoded and written), from a bare client in the same thread that sends one request
at a time on one keep-alive connection; the record is built but not stored (the runtime's
``store_record`` does nothing here). It then measures the whole per-request machinery,
client included (the same on both versions); ``--plain`` serves the same request from a
bare aiohttp handler (``json_response`` of the parsed body), the floor Flux's machinery
sits on.

The last line is ``execute: <min> µs min, <median> µs median`` (thread CPU per execution).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp import web

from flux._project import parse
from flux.runtime._executor import Invocation, execute
from flux.runtime._loader import load_all
from flux.runtime._runtime import Runtime

HANDLER = """from flux import function

@function
async def noop(ctx, input):
    return {"ok": 1}
"""


async def _plain(request: web.Request) -> web.Response:
    return web.json_response({"ok": 1, "got": await request.json()})


async def _gateway(runtime: Runtime, executions: int, rounds: int, plain: bool = False
                   ) -> list[float]:
    from flux.runtime._gateway import make_app

    async def nostore(record: object) -> None:  # the record built, not stored
        return None

    runtime.store_record = nostore  # type: ignore[method-assign]
    app = make_app(runtime)
    if plain:
        app = web.Application()
        app.router.add_post("/noop", _plain)
    app_runner = web.AppRunner(app, access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    port = app_runner.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"a": 1}'
    request = (b"POST /noop HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    async def one() -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"the bench request failed: {head!r}")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)

    results = []
    try:
        for _ in range(rounds):
            started = time.thread_time()
            for _ in range(executions):
                await one()
            results.append((time.thread_time() - started) / executions * 1e6)
    finally:
        writer.close()
        await app_runner.cleanup()
    return results


async def _main(executions: int, rounds: int, gateway: bool = False, plain: bool = False
                ) -> list[float]:
    root = Path(tempfile.mkdtemp(prefix="flux-execute-cpu-"))
    (root / "functions").mkdir()
    (root / "flux.toml").write_text('name = "execute_cpu"\n')
    (root / "functions" / "noop.py").write_text(HANDLER)
    runtime = Runtime(parse(root), lambda: "postgresql://unused/none", exports_spans=False)
    errors = load_all(runtime.functions_dir, runtime.registry)
    if errors:
        raise SystemExit(f"the bench function did not load: {errors}")
    runtime.refresh_code_version()
    if gateway:
        return await _gateway(runtime, executions, rounds, plain)
    headers = {"content-type": "application/json", "host": "127.0.0.1"}
    results = []
    for _ in range(rounds):
        started = time.thread_time()
        for i in range(executions):
            found = runtime.registry.match("POST", "noop")
            assert found is not None and found.spec is not None
            invocation = Invocation(request_id=f"0190a0b0-0000-7000-8000-{i:012d}",
                                    spec=found.spec, input={"a": 1}, route="noop",
                                    headers=headers, query={})
            await execute(runtime, invocation, persist=False)
            await asyncio.sleep(0)  # a turn of the loop, as between requests in serving
        results.append((time.thread_time() - started) / executions * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--gateway", action="store_true",
                        help="through the gateway, as HTTP requests over loopback")
    parser.add_argument("--plain", action="store_true",
                        help="with --gateway: a bare aiohttp handler instead (the floor)")
    args = parser.parse_args()
    results = asyncio.run(_main(args.executions, args.rounds, args.gateway, args.plain))
    print(f"execute: {min(results):.1f} µs min, {statistics.median(results):.1f} µs median")


if __name__ == "__main__":
    main()
