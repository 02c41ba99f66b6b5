"""Where the recorded server's Python goes beyond the lean one's, by subsystem.

Reads what ``recording_overhead.py --spy DIR`` wrote: py-spy's collapsed stacks of the lean
and the recorded servers over the measured rounds (idle excluded, so a sample is CPU
time), and each side's app CPU per request in that run (``cpu.json``). Each sample is
charged to the innermost frame that belongs to a subsystem (a C call such as orjson's is
charged to the Python function that made it); a subsystem's share of its side's samples
times that side's app CPU per request is its µs per request. ``--quiet MS`` scales the
figures by MS over this run's plain app CPU per request (a quiet machine's plain side is
about 1.4 ms), a rough estimate of the quiet-machine figure.

    .venv/bin/python bench/recording_split.py DIR [--quiet 1.4]

The last line is ``flux over lean: <µs> per request``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

# (subsystem, pattern of a frame's file), the first that matches a frame wins; frames are
# read from the innermost out.
SUBSYSTEMS: list[tuple[str, re.Pattern[str]]] = [(name, re.compile(pattern)) for name, pattern in (
    ("record build + encode + commit (store/_record)", r"flux/store/_record\.py"),
    ("recorder: spans, tape, call sites", r"flux/runtime/_recorder\.py"),
    ("redaction, call keys, encode", r"flux/runtime/_(redact|callkey)\.py|flux/_jsoncodec\.py"
     r"|flux/store/_statement\.py"),
    ("ctx.http + capture", r"flux/runtime/_(ctx_http|intercept)\.py"),
    ("ctx.db wrapper", r"flux/runtime/_ctx_db\.py"),
    ("executor + context objects", r"flux/runtime/_(executor|execution|context|iowatch|"
     r"deadline|step|sampling|sealed|response|otel)\.py|flux/_function\.py"),
    ("gateway (flux side)", r"flux/runtime/_(gateway|request|body|access|tenants|loader|asgi)"
     r"\.py|flux/_tracecontext\.py|flux/_ids\.py"),
    ("runtime: pool, begin", r"flux/runtime/_runtime\.py|flux/store/"),
    ("other flux", r"flux/"),
    ("the handler's own code", r"functions/|recording_overhead\.py"),
    ("lean: handler + its recording", r"_lean\.py"),
    ("psycopg + pool", r"psycopg"),
    ("aiohttp (server, client), multidict, yarl", r"aiohttp|multidict|yarl"),
    ("asyncio", r"asyncio/"),
    ("json (stdlib)", r"json/"),
)]
OTHER = "other (stdlib, interpreter)"
FRAME = re.compile(r"^.*\((?P<file>[^():]*)(:\d+)?\)$")


def split(path: Path) -> tuple[Counter[str], int]:
    """Samples per subsystem, and all samples, from one py-spy raw file."""
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        total += samples
        counts[_subsystem(stack.split(";"))] += samples
    return counts, total


def _subsystem(frames: list[str]) -> str:
    for frame in reversed(frames):
        match = FRAME.match(frame)
        file = match.group("file") if match else frame
        for name, pattern in SUBSYSTEMS:
            if pattern.search(file):
                return name
    return OTHER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--quiet", type=float, metavar="MS",
                        help="scale to a quiet machine whose plain side costs MS app CPU")
    args = parser.parse_args(argv)
    cpu = json.loads((args.directory / "cpu.json").read_text())
    scale = args.quiet / cpu["plain"]["app_cpu_ms"] if args.quiet else 1.0
    per_request: dict[str, dict[str, float]] = {}
    for side in ("lean", "recorded"):
        counts, total = split(args.directory / f"{side}.txt")
        ms = cpu[side]["app_cpu_ms"]
        per_request[side] = {name: counts[name] / total * ms * 1000 * scale for name in counts}
        print(f"{side}: {total} samples, app cpu {ms:.3f} ms/request")
    names = [n for n, _ in SUBSYSTEMS] + [OTHER]
    label = "quiet-scaled µs/request" if args.quiet else "µs/request (this run)"
    print(f"\n{'subsystem':<48} {'lean':>7} {'flux':>7} {'flux-lean':>10}   ({label})")
    for name in names:
        lean, flux = per_request["lean"].get(name, 0.0), per_request["recorded"].get(name, 0.0)
        if lean or flux:
            print(f"{name:<48} {lean:>7.0f} {flux:>7.0f} {flux - lean:>+10.0f}")
    lean_all, flux_all = sum(per_request["lean"].values()), sum(per_request["recorded"].values())
    plain = cpu["plain"]["app_cpu_ms"] * 1000 * scale
    print(f"{'all (app cpu per request)':<48} {lean_all:>7.0f} {flux_all:>7.0f} "
          f"{flux_all - lean_all:>+10.0f}   plain {plain:.0f}")
    print(f"flux over lean: {flux_all - lean_all:.0f} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
