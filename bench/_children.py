"""What every benchmark needs around its measurement: a scratch directory that is removed
even after Ctrl-C or SIGTERM, and server processes — each side in a child of its own, so the
load generator in the parent never competes with it for the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

READY_TIMEOUT = 60.0

# The body of a child: an async function that serves and sends ("ready", port) on the pipe.
ChildWork = Callable[[str, dict[str, Any], Connection], Coroutine[Any, Any, None]]


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up, as Ctrl-C does


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory under /tmp, removed on the way out — also after SIGTERM."""
    signal.signal(signal.SIGTERM, _terminated)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    tmp.chmod(0o755)  # as root, the embedded server's unprivileged user must reach it
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _child(work: ChildWork, role: str, options: dict[str, Any], pipe: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops us
    try:
        asyncio.run(work(role, options, pipe))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


@dataclass
class Child:
    role: str
    process: multiprocessing.process.BaseProcess
    port: int


def spawn(work: ChildWork, role: str, options: dict[str, Any]) -> Child:
    """Run ``work(role, options, pipe)`` in a spawned process; wait for it to send
    ``("ready", port)`` (or ``("error", message)``)."""
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(work, role, options, child_end),
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


def stop_all(children: list[Child], server: Any) -> None:
    """Stop the children, last started first, then the embedded server (if it started)."""
    for child in reversed(children):
        stop(child)
    if server is not None:
        with contextlib.suppress(Exception):
            server.stop()
