"""The executor's own machinery per execution, without IO: CPU time of ``execute()``.

A no-IO handler (``return {"ok": 1}``) run through ``execute(..., persist=False)`` with
the loop turned once per execution, as in serving: the route match, ``Invocation``,
``Recorder``, ``Execution``, ``Context``, the IO watch, the function's deadline, its two
spans, the answer and the record built (not stored). What a request passes through that
is not IO; the whole-request harnesses (recording_cpu.py) swing by more than this moves.
Compare two versions on one machine by running it alternately with ``PYTHONPATH`` set to
a ``git archive`` of the other (its flux/ and sql/).

    .venv/bin/python bench/execute_cpu.py [--executions 3000] [--rounds 7]

The last line is ``execute: <min> µs min, <median> µs median`` (thread CPU per execution).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from flux._project import parse
from flux.runtime._executor import Invocation, execute
from flux.runtime._loader import load_all
from flux.runtime._runtime import Runtime

HANDLER = """from flux import function

@function
async def noop(ctx, input):
    return {"ok": 1}
"""


async def _main(executions: int, rounds: int) -> list[float]:
    root = Path(tempfile.mkdtemp(prefix="flux-execute-cpu-"))
    (root / "functions").mkdir()
    (root / "flux.toml").write_text('name = "execute_cpu"\n')
    (root / "functions" / "noop.py").write_text(HANDLER)
    runtime = Runtime(parse(root), lambda: "postgresql://unused/none", exports_spans=False)
    errors = load_all(runtime.functions_dir, runtime.registry)
    if errors:
        raise SystemExit(f"the bench function did not load: {errors}")
    runtime.refresh_code_version()
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
    args = parser.parse_args()
    results = asyncio.run(_main(args.executions, args.rounds))
    print(f"execute: {min(results):.1f} µs min, {statistics.median(results):.1f} µs median")


if __name__ == "__main__":
    main()
