"""The WAL consumer running: in the foreground until a signal (``flux capture run``), in a
thread of a serving process (``flux dev``/``flux serve``), and waited for until it has
stored what was committed (flux/capture/_consumer.py is the consumer itself)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from flux.capture._consumer import SLOT, CaptureError, Consumer, StepResult, log, mode
from flux.store._database import connect
from flux.store._queries import load


def wait_caught_up(conninfo: str, timeout: float = 30.0) -> None:
    """Return once the consumer has stored every change committed before this call."""
    q = load("capture")
    with connect(conninfo, autocommit=True) as conn:
        target = conn.execute(q.current_lsn).fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute(q.caught_up, {"lsn": target, "slot": SLOT}).fetchone()
            if row and row[0]:
                return
            if time.monotonic() > deadline:
                raise CaptureError(f"the capture consumer did not catch up within {timeout:g}s")
            time.sleep(0.05)



def run_until_signal(conninfo: str, on_step: Callable[[StepResult], None],
                     on_error: Callable[[BaseException], None],
                     on_ready: Callable[[], None] = lambda: None) -> None:
    """``flux capture run``: the consumer in the foreground until SIGINT/SIGTERM. The
    handlers are in place before ``on_ready`` is called: from then on a signal stops it
    cleanly."""

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with connect(conninfo, autocommit=True) as conn:
        if mode(conn) != "wal":
            raise CaptureError('capture is "trigger" in this database: there is no slot to '
                               "consume", hint="switch with `flux capture switch wal`")
    on_ready()
    Consumer(conninfo).run(stop, on_step=on_step, on_error=on_error)


class Background:
    """The consumer in a thread of a serving process (flux dev / flux serve)."""

    def __init__(self, conninfo: str | Callable[[], str]) -> None:
        self._stop = threading.Event()
        self._consumer = Consumer(conninfo)
        self._thread = threading.Thread(target=self._run, name="flux-capture", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Background:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._consumer.run(self._stop)
        except CaptureError as exc:
            self.error = exc
            log.error("capture consumer stopped: %s", exc)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
