"""Records still in the WAL: with capture mode "wal" a committed execution's record travels
in its transaction's WAL and the capture consumer writes it into flux.trace_requests a
moment later (flux/capture/_records.py). Readers wait for it here before they read, so
``flux why`` finds a request right after its answer; when no consumer runs, they say which
records are missing and what writes them instead of "not found"."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from flux.store._queries import load

RECORD_WAIT_SECONDS = 10.0  # how long a reader waits for a running consumer to catch up
# A consumer that stops (killed, restarted) is replaced by a standby one — flux serve's —
# which tries the election every 2 s (flux/capture/_consumer.py, Consumer.run): a reader
# that finds none running gives one that long to appear before it says none runs.
ELECTION_SECONDS = 3.0
_POLL_SECONDS = 0.02

NO_CONSUMER = ('capture is "wal" and no capture consumer is running: the records of '
               "requests committed since it last ran are still in the WAL, not yet in "
               "flux.trace_requests; `flux capture run` (or `flux serve`) writes them")
BEHIND = ('capture is "wal" and the capture consumer has not yet written the records of '
          "the latest requests (it is {behind} bytes behind); try again in a moment")


def wait_for_records(conn: psycopg.Connection[Any], timeout: float = RECORD_WAIT_SECONDS
                     ) -> str | None:
    """In WAL mode, wait (at most ``timeout``) until the consumer has written every record
    committed before this call. None once they are written (or in trigger mode); otherwise
    the sentence that says why some may be missing. When no consumer runs, a standby one
    is given ``ELECTION_SECONDS`` to take over first (a reader right after a consumer's
    crash would otherwise list requests without their records). A session that may not
    read the capture state (a tenant's reader) reads without waiting."""
    q = load("database")
    try:
        state = conn.execute(q.records_state).fetchone()
        if state is None or not state[0] or not state[3] or state[3] <= 0:
            return None
        deadline = time.monotonic() + timeout
        elected_by = time.monotonic() + min(timeout, ELECTION_SECONDS)
        while not state[2]:
            if time.monotonic() >= elected_by:
                return NO_CONSUMER
            time.sleep(_POLL_SECONDS * 5)
            state = conn.execute(q.records_state).fetchone()
            if state is None or not state[0] or not state[3] or state[3] <= 0:
                return None
        while True:
            row = conn.execute(q.records_written, {"lsn": state[1]}).fetchone()
            if row is None or row[0]:
                return None
            if time.monotonic() > deadline:
                return BEHIND.format(behind=state[3])
            time.sleep(_POLL_SECONDS)
    except psycopg.errors.InsufficientPrivilege:
        return None


def unwritten(conn: psycopg.Connection[Any]) -> str | None:
    """Why a record may be missing though its request committed (for a "not found"), or
    None: in WAL mode with records not yet written."""
    return wait_for_records(conn, timeout=0.0)
