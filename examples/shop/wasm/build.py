"""Build the shop's C functions into Wasm modules: ``wasm/<name>.c`` → ``functions/<name>.wasm``.

The compiler is zig's C compiler from the ``ziglang`` wheel (``pip install ziglang``, in the
``test`` extra), so nothing outside the package registries is needed. The modules are
build output, never committed (``.gitignore``); tests and ``bench/wasm_overhead.py`` run
this script. Usage::

    python examples/shop/wasm/build.py                 # every wasm/*.c into functions/
    python examples/shop/wasm/build.py --out DIR quote # one module into DIR
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FUNCTIONS = HERE.parent / "functions"

# Freestanding wasm32: no libc, no WASI — the module may import only from "flux".
FLAGS = [
    "--target=wasm32-freestanding", "-O2", "-nostdlib", "-fno-builtin",
    "-Wall", "-Wextra", "-Werror",
    "-Wl,--no-entry",  # a library of exports, no _start
]


def sources() -> list[Path]:
    return sorted(HERE.glob("*.c"))


def build(source: Path, out_dir: Path) -> Path:
    """Compile one C file; returns the module's path. Raises CalledProcessError."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.wasm"
    partial = target.with_suffix(".wasm.part")  # a reloading server never sees half a file
    subprocess.run([sys.executable, "-m", "ziglang", "cc", *FLAGS, "-o", str(partial),
                    str(source)], check=True, capture_output=True, text=True)
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="which wasm/<name>.c (default: all)")
    parser.add_argument("--out", type=Path, default=FUNCTIONS, help="output directory")
    args = parser.parse_args(argv)
    chosen = [s for s in sources() if not args.names or s.stem in args.names]
    if not chosen:
        print(f"no C source named {', '.join(args.names)} in {HERE}", file=sys.stderr)
        return 2
    for source in chosen:
        try:
            target = build(source, args.out)
        except subprocess.CalledProcessError as exc:
            print(f"{source.name}: the build failed\n{exc.stderr}", file=sys.stderr)
            return 1
        print(f"built {target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
