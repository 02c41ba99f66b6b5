"""Server processes for the benchmarks: each side runs in a child of its own, so the load
generator in the parent never competes with it for the event loop."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

READY_TIMEOUT = 60.0

ChildMain = Callable[[str, dict[str, Any], Connection], None]


@dataclass
class Child:
    role: str
    process: multiprocessing.process.BaseProcess
    port: int


def spawn(main: ChildMain, role: str, options: dict[str, Any]) -> Child:
    """Start ``main(role, options, pipe)`` in a spawned process; wait for it to send
    ``("ready", port)`` (or ``("error", message)``)."""
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    process = ctx.Process(target=main, args=(role, options, child_end),
                          name=f"bench-{role}", daemon=True)
    process.start()
    child_end.close()
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if parent_end.poll(0.1):
            try:
                kind, value = parent_end.recv()
            except EOFError:
                break
            if kind == "ready":
                return Child(role, process, int(value))
            stop(Child(role, process, 0))
            raise RuntimeError(f"the {role} failed to start: {value}")
        if not process.is_alive():
            break
    stop(Child(role, process, 0))
    raise RuntimeError(f"the {role} did not start (exit code {process.exitcode})")


def stop(child: Child) -> None:
    """SIGTERM (the child closes its pool and sessions), then SIGKILL if it lingers."""
    process = child.process
    if process.is_alive():
        process.terminate()
        process.join(15)
    if process.is_alive():
        process.kill()
        process.join(5)
