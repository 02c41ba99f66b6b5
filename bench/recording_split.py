"""Where the recorded server's Python goes beyond the lean one's, by subsystem.

Reads what ``recording_overhead.py --spy DIR`` wrote: py-spy's collapsed stacks of the lean
and the recorded servers over the measured rounds (idle excluded, so a sample is CPU
time), and each side's app CPU per request in that run (``cpu.json``). Each sample is
charged to the innermost frame that belongs to a subsystem (a C call such as orjson's is
charged to the Python function that made it); a subsystem's share of its side's samples
times that side's app CPU per request is its µs per request (averaged over the
directories given). ``--quiet MS`` scales the
figures by MS over this run's plain app CPU per request (a quiet machine's plain side is
about 1.4 ms), a rough estimate of the quiet-machine figure.

    .venv/bin/python bench/recording_split.py DIR [DIR ...] [--quiet 1.4]

The last line is ``flux over lean: <µs> per request``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

PSYCOPG = "psycopg + pool (libpq's sends included)"
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
    ("the handler's own code", r"(^|/)bench_handler\.py$|recording_overhead\.py"),
    ("lean: handler + its recording", r"_lean\.py"),
    (PSYCOPG, r"psycopg"),
    ("aiohttp (server, client), multidict, yarl", r"aiohttp|multidict|yarl"),
    ("asyncio", r"asyncio/"),
    ("json (stdlib)", r"json/"),
)]
OTHER = "other (stdlib, interpreter)"
FRAME = re.compile(r"^.*\((?P<file>[^():]*)(:(?P<line>\d+))?\)$")
# py-spy names a file relative to the sys.path entry it was imported from
ROOTS = (Path(__file__).resolve().parent.parent, Path(__file__).resolve().parent)
_LINES: dict[tuple[str, int], str] = {}


def _source(file: str, line: int) -> str:
    """The text of a frame's line (empty if the file is not found)."""
    if (file, line) not in _LINES:
        text = ""
        for root in ROOTS:
            if (root / file).is_file():
                lines = (root / file).read_text().splitlines()
                text = lines[line - 1] if 0 < line <= len(lines) else ""
                break
        _LINES[file, line] = text
    return _LINES[file, line]


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
        if match and match.group("line") and "pgconn." in _source(file, int(match.group("line"))):
            # libpq called directly (Flux's commit pipeline, lean's BEGIN and commit): its
            # sends are psycopg's work, as they are when psycopg makes them
            return PSYCOPG
        for name, pattern in SUBSYSTEMS:
            if pattern.search(file):
                return name
    return OTHER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, nargs="+",
                        help="one or more --spy directories (several: their figures averaged)")
    parser.add_argument("--quiet", type=float, metavar="MS",
                        help="scale to a quiet machine whose plain side costs MS app CPU")
    args = parser.parse_args(argv)
    per_request: dict[str, dict[str, float]] = {}
    plain_all = 0.0
    for directory in args.directory:
        cpu = json.loads((directory / "cpu.json").read_text())
        scale = args.quiet / cpu["plain"]["app_cpu_ms"] if args.quiet else 1.0
        plain_all += cpu["plain"]["app_cpu_ms"] * 1000 * scale / len(args.directory)
        for side in ("plain", "lean", "recorded"):
            # averaged over the directories that sampled the side
            runs = sum((d / f"{side}.txt").is_file() for d in args.directory)
            if not (directory / f"{side}.txt").is_file():
                continue
            counts, total = split(directory / f"{side}.txt")
            ms = cpu[side]["app_cpu_ms"]
            mine = per_request.setdefault(side, {})
            for name in counts:
                mine[name] = mine.get(name, 0.0) + counts[name] / total * ms * 1000 * scale / runs
            print(f"{directory.name} {side}: {total} samples, app cpu {ms:.3f} ms/request")
    names = [n for n, _ in SUBSYSTEMS] + [OTHER]
    label = "quiet-scaled µs/request" if args.quiet else "µs/request (this run)"
    plain = per_request.get("plain", {})
    print(f"\n{'subsystem':<48} {'plain':>6} {'lean':>6} {'flux':>6} {'lean-plain':>11} "
          f"{'flux-lean':>10}   ({label})")
    for name in names:
        row = [per_request[side].get(name, 0.0) for side in ("lean", "recorded")]
        base = plain.get(name, 0.0)
        if any(row) or base:
            print(f"{name:<48} {base if plain else float('nan'):>6.0f} {row[0]:>6.0f} "
                  f"{row[1]:>6.0f} {row[0] - base if plain else float('nan'):>+11.0f} "
                  f"{row[1] - row[0]:>+10.0f}")
    lean_all, flux_all = sum(per_request["lean"].values()), sum(per_request["recorded"].values())
    print(f"{'all (app cpu per request)':<48} {plain_all:>6.0f} {lean_all:>6.0f} {flux_all:>6.0f} "
          f"{lean_all - plain_all:>+11.0f} {flux_all - lean_all:>+10.0f}")
    print(f"flux over lean: {flux_all - lean_all:.0f} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
