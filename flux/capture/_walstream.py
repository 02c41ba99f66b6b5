"""The logical replication stream of a slot, read over psycopg 3's libpq connection.

``START_REPLICATION SLOT … LOGICAL`` on a replication connection (``replication=database``)
starts one decoding session on the server that reads each WAL record once and sends every
committed transaction as XLogData frames, in commit order, from the slot's confirmed
position on. The client says how far it has stored the changes with standby status
updates; the server moves the slot's confirmed position to that and never sends anything
before it again. Nothing moves the slot but ``confirm``, so a consumer that confirms only
what it has committed loses nothing on a crash: the server sends the rest again.

psycopg 3 has no replication API, but its ``PGconn`` speaks libpq's COPY BOTH mode, which is
all the protocol needs: CopyData in (``frame`` in flux/capture/_pgoutput.py splits it), CopyData
out (``standby_status``). This module is that IO and nothing else.

The connection needs what the SQL functions need (``REPLICATION`` or superuser) and a free
walsender (``max_wal_senders``). pg_hba.conf needs nothing more: a logical replication
connection names its database and matches the lines a plain connection to it matches (the
``replication`` keyword is for physical replication). ``ReplicationUnavailable`` says when
the server refuses one anyway (no walsender left, a pooler in the way).
"""

from __future__ import annotations

import datetime as dt
import select
import time
from types import TracebackType
from typing import Any

import psycopg
from psycopg import pq, sql

from flux._errors import DatabaseError
from flux.capture._pgoutput import Keepalive, XLogData, format_lsn, frame, standby_status
from flux.store._database import first_line, redact_url
from flux.store._queries import load

END_TIMEOUT = 5.0


class ReplicationUnavailable(DatabaseError):
    """The server refused a replication connection (no walsender free, a pooler, a role
    without REPLICATION)."""

    code = "replication_unavailable"


class WalStream:
    """One replication session on a slot: ``read`` frames, ``confirm`` what is stored."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._pgconn = conn.pgconn
        self.drained = True  # the last read took everything the connection had

    @classmethod
    def open(cls, conninfo: str, slot: str, publication: str, *, application_name: str,
             start: int = 0, local_only: bool = False) -> WalStream:
        """Connect and start streaming ``slot`` from ``start`` (0: its confirmed position);
        ``local_only``: leave out the transactions stamped with a replication origin (the
        consumer's own, PostgreSQL 16+), which the server then skips as it decodes."""
        try:
            conn = psycopg.connect(conninfo, autocommit=True, replication="database",
                                   application_name=application_name, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise ReplicationUnavailable(
                f"the server at {redact_url(conninfo)} refused a replication connection: "
                f"{first_line(exc)}",
                hint="the role needs the REPLICATION attribute and the server a free "
                     "walsender (max_wal_senders); a pooler must pass replication "
                     "connections through") from exc
        # The walsender's grammar knows no comments: the query's own are left out.
        text = "\n".join(line for line in load("capture").start_replication.splitlines()
                         if not line.lstrip().startswith("--"))
        command = sql.SQL(text).format(
            slot=sql.Identifier(slot), lsn=sql.SQL(format_lsn(start)),
            publication=sql.Literal(publication),
            origin=sql.SQL(", origin 'none'" if local_only else "")).as_bytes(conn)
        stream = cls(conn)
        try:
            stream._start(command)
        except BaseException:
            conn.close()
            raise
        return stream

    def _start(self, command: bytes) -> None:
        pg = self._pgconn
        pg.send_query(command)
        self._flush()
        while True:
            while pg.is_busy():
                self._wait(10.0)
                pg.consume_input()
            result = pg.get_result()
            if result is None:
                raise psycopg.OperationalError("START_REPLICATION ended without a result")
            if result.status == pq.ExecStatus.COPY_BOTH:
                return
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise psycopg.errors.error_from_result(result, encoding=self._conn.info.encoding)

    # -- reading -------------------------------------------------------------------------

    def read(self, timeout: float, limit: int = 2000) -> list[XLogData | Keepalive]:
        """The frames that have arrived, waiting up to ``timeout`` seconds for the first;
        at most ``limit`` (``drained`` says whether that was all there was)."""
        return [frame(data) for data in self.read_raw(timeout, limit)]

    def read_raw(self, timeout: float, limit: int = 2000) -> list[bytes]:
        """``read``, each frame as its CopyData bytes (``frame`` splits one): the
        consumer's hot path looks at the XLogData payload in place."""
        pg = self._pgconn
        frames: list[bytes] = []
        pulled = waited = False
        while len(frames) < limit:
            size, data = pg.get_copy_data(1)
            if size > 0:
                frames.append(data if data.__class__ is bytes else bytes(data))
                pulled = False
                continue
            if size == 0:  # nothing complete in libpq's buffer
                if not pulled:  # take what the socket holds, without blocking
                    pg.consume_input()
                    pulled = True
                    continue
                if frames or waited or timeout <= 0:
                    self.drained = True
                    return frames
                waited = True
                self._wait(timeout)
                pg.consume_input()
                continue
            # -1: the server ended the stream (it is shutting down, or the slot went away)
            self._raise_end()
        self.drained = False
        return frames

    def _raise_end(self) -> None:
        pg = self._pgconn
        while (result := pg.get_result()) is not None:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise psycopg.errors.error_from_result(result, encoding=self._conn.info.encoding)
        raise psycopg.OperationalError("the server ended the replication stream")

    # -- writing -------------------------------------------------------------------------

    def confirm(self, flushed: int, *, reply: bool = False) -> None:
        """Tell the server that every change before ``flushed`` is stored for good."""
        self._pgconn.put_copy_data(standby_status(flushed, dt.datetime.now(dt.UTC),
                                                  reply=reply))
        self._flush()

    def end(self) -> None:
        """Stop streaming cleanly: once this returns the slot is free (to drop, say)."""
        pg = self._pgconn
        deadline = time.monotonic() + END_TIMEOUT
        pg.put_copy_end()
        self._flush()
        while time.monotonic() < deadline:
            size, _ = pg.get_copy_data(1)
            if size > 0:
                continue  # what the server sent before it saw our CopyDone
            if size == 0:
                self._wait(deadline - time.monotonic())
                pg.consume_input()
                continue
            while pg.is_busy() and time.monotonic() < deadline:
                self._wait(deadline - time.monotonic())
                pg.consume_input()
            while pg.get_result() is not None:
                pass
            break
        self.close()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> WalStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- waiting -------------------------------------------------------------------------

    def _flush(self) -> None:
        while self._pgconn.flush() == 1:
            select.select([], [self._pgconn.socket], [], 10.0)

    def _wait(self, timeout: float) -> None:
        select.select([self._pgconn.socket], [], [], max(timeout, 0.0))
