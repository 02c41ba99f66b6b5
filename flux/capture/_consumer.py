"""WAL capture's consumer: reads the ``flux_capture`` slot and writes every change into
``flux.state_mutations`` (the switch between trigger and WAL capture is flux/capture/_mode.py).

The consumer streams the slot over a replication connection (flux/capture/_walstream.py): one
decoding session on the server reads each WAL record once and sends every committed
transaction. The consumer decodes them (flux/capture/_decoding.py: pgoutput's messages, or
the frames of Flux's own C decoder), each change stamped with the request, span and actor
the transaction's logical messages carry (sql/0008), inserts a batch of whole transactions
in one destination transaction keyed by (commit LSN, position) together with its progress,
commits, and only then tells the server — a standby status update — that the slot may
forget them. A crash before the commit leaves the slot
where it was, so the server sends the batch again; a crash after the commit but before the
update sends it again too, and the key makes the second insert a no-op. Nothing is lost,
nothing is doubled. Where the server refuses a replication connection (no walsender
free, a pooler in the way) the consumer reads the same slot through
``pg_logical_slot_peek_binary_changes`` and ``pg_replication_slot_advance`` instead, with
the same decoding and the same apply.

One consumer runs at a time per database: the one holding a session advisory lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from flux._errors import DatabaseError, FluxError
from flux.capture._decoding import Batch, Decoder, is_native
from flux.capture._mutations import Transaction
from flux.capture._pgoutput import Commit, DecodeError, Keepalive, format_lsn, frame, parse_lsn
from flux.capture._records import RecordWriter
from flux.capture._walstream import ReplicationUnavailable, WalStream
from flux.store._database import connect, first_line
from flux.store._queries import load

log = logging.getLogger("flux.capture")

SLOT = "flux_capture"
PUBLICATION = "flux_capture"
CONSUMER_LOCK = 0x464C5558_00000008  # "FLUX", 8: one consumer per database
APPLICATION_NAME = "flux capture"  # the consumer's sessions, as pg_stat_activity shows them
BATCH_CHANGES = 5000  # at most this many changes (whole transactions) per apply
APPLY_SECONDS = 0.2  # under load, one apply per this long: bigger batches, fewer commits
STREAM_WAIT = 0.5  # how long one wait for the stream lasts (how soon a stop is seen)
READ_SECONDS = 0.05  # between reads of the stream while little arrives
BUSY_FRAMES = 200  # a read that took this many frames: read again at once
STATUS_SECONDS = 10.0  # a standby status update at least this often
POLL_SECONDS = 0.2  # the SQL interface: between reads, once caught up
IDLE_SECONDS = 1.0


class CaptureError(FluxError):
    """WAL capture cannot go on as asked."""

    code = "capture"


@dataclass
class StepResult:
    transactions: int = 0
    applied: int = 0  # rows inserted into flux.state_mutations (a re-read batch: 0)
    records: int = 0  # records that travelled in the WAL, written into flux.trace_requests
    caught_up: bool = False
    finished: bool = False  # the switch back to triggers was applied: the slot is gone
    idle: bool = False  # no slot to read (trigger mode)

    def add(self, other: StepResult) -> None:
        """Count ``other`` in; its state (caught up, finished, idle) is the latest."""
        self.transactions += other.transactions
        self.applied += other.applied
        self.records += other.records
        self.caught_up = other.caught_up
        self.finished = self.finished or other.finished
        self.idle = other.idle


@dataclass
class _Progress:
    """One slot's bookkeeping (a row of flux.capture_state) as a session reads it at its
    start and the transactions it applies move it."""

    wal_from: int | None  # the switch to WAL: triggers captured what committed before it
    wal_until: int | None  # the switch back: triggers capture what commits after it
    generation: dt.datetime  # the row's created_at: a new switch to WAL resets the row
    confirmed: int  # the slot's confirmed position when the session started
    applied: int  # the end of the last transaction stored (0: none yet)


class _StateReset(Exception):
    """flux.capture_state was reset (a new switch to WAL) under a running session."""


class Consumer:
    """Reads the slot and stores its changes. ``session`` streams the slot over a
    replication connection; where the server refuses one, it reads through the SQL
    functions instead (``step``: peek → apply → advance). Both feed the same decoding and
    the same apply, and both move the slot only past changes whose apply has committed."""

    def __init__(self, conninfo: str | Callable[[], str], *, slot: str = SLOT,
                 publication: str = PUBLICATION, batch: int = BATCH_CHANGES,
                 stream: bool = True) -> None:
        self._conninfo = conninfo
        self.slot = slot
        self.publication = publication
        self.batch = batch
        self.stream = stream
        self.decoder = Decoder()  # the stream, into transactions (flux/capture/_decoding.py)
        self._last_progress = 0.0
        self._snapshot_at: float | None = 0.0  # the last running-xacts record; None: refused
        # Per connection (its identity and backend): may it COPY into flux.state_mutations,
        # and has it made its staging table.
        self._copy_for: tuple[tuple[int, int], bool] | None = None
        self._stage_for: tuple[int, int] | None = None
        self._records = RecordWriter()
        self.records_written = 0  # records that travelled in the WAL, over its life

    # -- a session -----------------------------------------------------------------------

    def session(self, conn: psycopg.Connection[Any], stop: threading.Event, *,
                until: int | None = None,
                on_step: Callable[[StepResult], None] | None = None) -> StepResult:
        """Store what the slot holds until ``stop`` is set — with ``until``, only until
        every change committed before that LSN is stored — as the elected consumer. Returns
        at once when there is no slot (trigger mode), and once the switch back to triggers
        is applied (the slot is then dropped)."""
        if self.stream:
            try:
                return self._stream(conn, stop, until, on_step)
            except ReplicationUnavailable as exc:
                log.warning("capture consumer: %s; reading the slot through SQL instead, "
                            "which decodes the WAL more than once", exc)
                self.stream = False
        return self._poll(conn, stop, until, on_step)

    def _stream(self, conn: psycopg.Connection[Any], stop: threading.Event, until: int | None,
                on_step: Callable[[StepResult], None] | None) -> StepResult:
        progress = self._progress(conn)
        if progress is None:
            return StepResult(caught_up=True, idle=True)  # trigger mode: nothing to read
        local_only = self._origin(conn)
        try:
            return self._follow(conn, stop, until, on_step, progress, local_only)
        finally:
            if local_only and not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(load("capture").origin_reset)

    def _follow(self, conn: psycopg.Connection[Any], stop: threading.Event, until: int | None,
                on_step: Callable[[StepResult], None] | None, progress: _Progress,
                local_only: bool) -> StepResult:
        """``_stream`` once the slot's progress is read (``local_only``: the session
        carries the replication origin, which the stream leaves out)."""
        total = StepResult()
        pending: list[tuple[Transaction, Commit]] = []
        changes = 0
        # Everything that commits before `received` has arrived; the server was told that
        # everything before `confirmed` is stored. A keepalive's position counts only
        # between transactions: the one being read commits after it.
        received = confirmed = progress.confirmed
        last_apply = last_status = last_read = 0.0
        frames: list[bytes] = []
        self.decoder.txn = None
        with WalStream.open(self.conninfo(), self.slot, self.publication,
                            application_name=APPLICATION_NAME, local_only=local_only) as stream:
            while not stop.is_set():
                # While little arrives, frames are taken in bulk rather than as each comes:
                # a server busy elsewhere sends a keepalive every time it has read up to
                # the end of the WAL, and waking for each costs both sides more than the
                # changes do. While much arrives (catching up), nothing waits.
                if stream.drained and len(frames) < BUSY_FRAMES:
                    stop.wait(last_read + READ_SECONDS - time.monotonic())
                due = last_apply + APPLY_SECONDS - time.monotonic()
                frames = stream.read_raw(max(0.0, due) if pending else STREAM_WAIT)
                last_read = time.monotonic()
                reply = False
                feed = self.decoder.feed_native if self.decoder.native else self.decoder.feed
                for data in frames:
                    if data[0] == 119 and len(data) > 25:  # w: XLogData, its payload at 25
                        done = feed(conn, data[25:])
                        if done is not None:
                            pending.append(done)
                            changes += len(done[0].changes) + done[0].line_count
                            received = max(received, done[1].end_lsn)
                        continue
                    f = frame(data)
                    if isinstance(f, Keepalive):
                        reply = reply or f.reply
                        if self.decoder.txn is None:
                            received = max(received, f.wal_end)
                    else:  # an empty XLogData
                        raise DecodeError("an XLogData frame without a message")
                now = time.monotonic()
                if pending and (changes >= self.batch
                                or (stream.drained and now - last_apply >= APPLY_SECONDS)):
                    result = self._apply(conn, progress, pending, caught_up=stream.drained)
                    pending, changes, last_apply = [], 0, now
                    total.add(result)
                    if on_step is not None:
                        on_step(result)
                elif not pending and stream.drained and now - self._last_progress > 5.0:
                    self._apply(conn, progress, [], caught_up=True)  # caught_up_at stays fresh
                # Only now, with the changes committed, may the slot forget them.
                if not pending and received > confirmed:
                    stream.confirm(received)
                    confirmed, last_status, reply = received, now, False
                if reply or now - last_status > STATUS_SECONDS:
                    stream.confirm(confirmed)
                    last_status = now
                if not pending and progress.wal_until is not None \
                        and received > progress.wal_until:
                    stream.end()  # the slot is free: drop it
                    self._drop_slot(conn)
                    done_result = StepResult(caught_up=True, finished=True)
                    total.add(done_result)
                    if on_step is not None:
                        on_step(done_result)
                    return total
                if until is not None:
                    if not pending and received >= until:
                        total.caught_up = True
                        return total
                    if not frames:
                        stream.confirm(confirmed, reply=True)  # where is the server?
        return total

    def _poll(self, conn: psycopg.Connection[Any], stop: threading.Event, until: int | None,
              on_step: Callable[[StepResult], None] | None) -> StepResult:
        total = StepResult()
        while not stop.is_set():
            result = self.step(conn)
            total.add(result)
            if on_step is not None:
                on_step(result)
            if result.idle or result.finished or (result.caught_up and until is not None):
                return total
            if result.caught_up:
                stop.wait(POLL_SECONDS)
        return total

    def step(self, conn: psycopg.Connection[Any]) -> StepResult:
        """One read of the slot through the SQL functions: peek whole transactions up to
        the current LSN, apply them, then advance the slot past them."""
        q = load("capture")
        progress = self._progress(conn)
        if progress is None:
            return StepResult(caught_up=True, idle=True)
        self._log_snapshot(conn)
        upto = conn.execute(q.current_lsn).fetchone()[0]  # type: ignore[index]
        rows = conn.execute(q.peek, {"slot": self.slot, "upto_lsn": upto,
                                     "upto_changes": self.batch,
                                     "publication": self.publication}).fetchall()
        self.decoder.txn = None  # each peek decodes from the slot's start again
        transactions = []
        end_lsn: int | None = None
        feed = self.decoder.feed_native if self.decoder.native else self.decoder.feed
        for row in rows:
            done = feed(conn, bytes(row[0]))
            if done is not None:
                transactions.append(done)
                end_lsn = done[1].end_lsn
        complete = len(rows) < self.batch  # else the peek stopped early: more to read
        result = self._apply(conn, progress, transactions, caught_up=complete)
        # Only now, with the changes committed, may the slot forget them.
        target = upto if complete else (format_lsn(end_lsn) if end_lsn else None)
        if target is not None:
            conn.execute(q.advance, {"slot": self.slot, "lsn": target})
        if progress.wal_until is not None and complete:
            self._drop_slot(conn)
            result.finished = True
        return result

    def _log_snapshot(self, conn: psycopg.Connection[Any]) -> None:
        """Each peek decodes from the slot's restart_lsn, which moves only at running-xacts
        records (every 15 s): logging one each second keeps it near the confirmed position,
        so a peek decodes little twice (measured: 0.35 → 0.19 ms of consumer CPU per
        transaction). PostgreSQL 16+, and only for a role allowed to; else as before."""
        now = time.monotonic()
        if self._snapshot_at is None or now - self._snapshot_at < 1.0:
            return
        try:
            conn.execute(load("capture").log_snapshot)
            self._snapshot_at = now
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction):
            self._snapshot_at = None

    def _progress(self, conn: psycopg.Connection[Any]) -> _Progress | None:
        """The slot's bookkeeping, or None when there is no slot (trigger mode)."""
        q = load("capture")
        state = conn.execute(q.state, {"slot": self.slot}).fetchone()
        slot = conn.execute(q.slot, {"slot": self.slot}).fetchone()
        if state is None or slot is None:
            return None
        decoder = self.decoder
        decoder.native = is_native(slot[1])
        if not decoder.types_loaded and not decoder.native:
            decoder.load_types(conn)
        return _Progress(wal_from=parse_lsn(state[0]) if state[0] else None,
                         wal_until=parse_lsn(state[1]) if state[1] else None,
                         generation=state[7],
                         confirmed=parse_lsn(slot[2]) if slot[2] else 0,
                         applied=parse_lsn(state[2]) if state[2] else 0)

    def _apply(self, conn: psycopg.Connection[Any], progress: _Progress,
               transactions: list[tuple[Transaction, Commit]], *, caught_up: bool
               ) -> StepResult:
        """Store the changes of whole transactions and the progress, in one transaction.

        A transaction the progress row says is stored (read again after a crash between
        the commit and the server's being told) is skipped: the row commits with the
        changes, so this is exact. The rows go to flux.state_mutations by COPY; those the
        server must finish (a key Python cannot render as jsonb does, changed columns only
        PostgreSQL can tell) and, where row-level security applies to the session (COPY
        cannot pass it), all of them go through a staging table and one INSERT … SELECT."""
        result = StepResult(transactions=len(transactions), caught_up=caught_up)
        batch = Batch()
        records: list[bytes] = []
        last_commit: dt.datetime | None = None
        end_lsn: int | None = None
        for txn, commit in transactions:
            if commit.end_lsn <= progress.applied:
                continue  # stored before a crash: the progress row committed with it
            lsn = commit.commit_lsn
            end_lsn = commit.end_lsn
            # A record in the WAL was sent only because its BEGIN read "wal" under the
            # switch's lock (flux/capture/_records.py): no trigger wrote it, whatever range
            # its changes fall in.
            records += txn.records
            if progress.wal_from is None:
                if txn.switch == "wal":
                    progress.wal_from = lsn  # before it, triggers captured every change
                continue
            if progress.wal_until is not None and lsn > progress.wal_until:
                continue  # after the switch back: triggers capture these
            if txn.switch == "trigger":
                progress.wal_until = lsn
            self.decoder.rows(conn, txn, lsn, batch)
            last_commit = commit.commit_time
        now = time.monotonic()
        if not (batch or end_lsn is not None or now - self._last_progress > 5.0):
            return result
        direct = self._copy_allowed(conn)
        for tolerant in (False, True):
            try:
                self._store(conn, progress, batch, records, direct, result,
                            tolerant=tolerant, applied_lsn=end_lsn,
                            applied_commit=last_commit, caught_up=caught_up)
                break
            except psycopg.errors.UniqueViolation:
                if tolerant or not records:
                    raise
                log.warning("capture consumer: a record in the WAL was already stored; "
                            "the batch is stored again, keeping the stored one")
        if end_lsn is not None:
            progress.applied = end_lsn
        self.records_written += result.records
        self._last_progress = now
        return result

    def _store(self, conn: psycopg.Connection[Any], progress: _Progress, batch: Batch,
               records: list[bytes], direct: bool, result: StepResult, *, tolerant: bool,
               applied_lsn: int | None, applied_commit: dt.datetime | None,
               caught_up: bool) -> None:
        """The apply's one transaction: the records that travelled in the WAL, the
        changes, the progress row."""
        q = load("capture")
        result.applied = 0
        with conn.transaction():
            result.records = self._records.write(conn, records, tolerant=tolerant)
            if batch.direct and direct:
                with conn.cursor().copy(q.copy_mutations) as copy:
                    copy.write(b"".join(batch.direct))
                result.applied += len(batch.direct) + batch.more
            staged = batch.staged if direct else batch.direct + batch.staged
            if staged:
                self._ensure_stage(conn)
                with conn.cursor().copy(q.copy_stage) as copy:
                    copy.write(b"".join(staged))
                result.applied += max(conn.execute(q.apply_stage).rowcount, 0)
            saved = conn.execute(q.save_progress, {
                "slot": self.slot, "generation": progress.generation,
                "wal_from": format_lsn(progress.wal_from)
                if progress.wal_from is not None else None,
                "wal_until": format_lsn(progress.wal_until)
                if progress.wal_until is not None else None,
                "applied_lsn": format_lsn(applied_lsn) if applied_lsn else None,
                "applied_commit": applied_commit, "changes": result.applied,
                "caught_up": caught_up})
            if saved.rowcount != 1:  # rolls the batch back: it belongs to a slot now gone
                raise _StateReset(f"flux.capture_state of {self.slot} was reset")

    def _origin(self, conn: psycopg.Connection[Any]) -> bool:
        """Stamp this session's transactions with the replication origin named after the
        slot, so that the stream may leave them out (sql/queries/capture.sql:
        origin_exists); ``session`` takes it off again (the connection may be the caller's).
        False where the server is older than 16, the role may not, or another session (a
        consumer not yet gone) holds the origin."""
        if conn.info.server_version < 160000:
            return False
        q = load("capture")
        try:
            row = conn.execute(q.origin_exists, {"origin": self.slot}).fetchone()
            if not (row and row[0]):
                with contextlib.suppress(psycopg.errors.UniqueViolation):
                    conn.execute(q.origin_create, {"origin": self.slot})
            conn.execute(q.origin_setup, {"origin": self.slot})
            return True
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse,
                psycopg.errors.ObjectNotInPrerequisiteState) as exc:
            log.info("capture consumer: no replication origin (%s); the server decodes the "
                     "consumer's own writes too", first_line(exc))
            return False

    def _copy_allowed(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether this session may COPY into flux.state_mutations: COPY FROM refuses a
        table whose row-level security applies to the session (FORCEd on it: every role
        but a superuser or one with BYPASSRLS)."""
        key = (id(conn), conn.info.backend_pid)
        if self._copy_for is None or self._copy_for[0] != key:
            row = conn.execute(load("capture").copy_allowed).fetchone()
            self._copy_for = (key, bool(row and row[0]))
        return self._copy_for[1]

    def _ensure_stage(self, conn: psycopg.Connection[Any]) -> None:
        key = (id(conn), conn.info.backend_pid)
        if self._stage_for != key:
            conn.execute(load("capture").create_stage)
            self._stage_for = key

    def _drop_slot(self, conn: psycopg.Connection[Any]) -> None:
        # A walsender that just ended may hold the slot for a moment longer.
        for attempt in range(50):
            try:
                conn.execute(load("capture").drop_slot, {"slot": self.slot})
                return
            except psycopg.errors.ObjectInUse:
                if attempt == 49:
                    raise
                time.sleep(0.1)

    @property
    def native(self) -> bool:
        """Whether the slot decodes with the C decoder (extension/flux_decode.c)."""
        return self.decoder.native

    def conninfo(self) -> str:
        return self._conninfo() if callable(self._conninfo) else self._conninfo

    # -- running -------------------------------------------------------------------------

    def run(self, stop: threading.Event, *,
            on_error: Callable[[BaseException], None] | None = None,
            on_step: Callable[[StepResult], None] | None = None) -> None:
        """Consume until ``stop`` is set, as the elected consumer (waiting for the election
        while another consumer runs); idle while the database is in trigger mode."""
        while not stop.is_set():
            try:
                with connect(self.conninfo(), autocommit=True,
                             application_name=APPLICATION_NAME) as conn:
                    if not elected(conn):
                        stop.wait(2.0)
                        continue
                    while not stop.is_set():
                        try:
                            result = self.session(conn, stop, on_step=on_step)
                        except _StateReset:
                            continue  # a new switch to WAL: start over on its slot
                        if result.idle:  # until a switch to WAL capture sets up the slot
                            if on_step is not None:
                                on_step(result)
                            stop.wait(IDLE_SECONDS)
            except CaptureError:
                raise
            except (psycopg.Error, OSError, DatabaseError) as exc:  # the server restarted
                if on_error is not None:
                    on_error(exc)
                log.warning("capture consumer: %s; retrying", first_line(exc))
                stop.wait(1.0)

    def drain(self, conn: psycopg.Connection[Any]) -> StepResult:
        """Apply everything written so far (the caller holds the election)."""
        until = parse_lsn(conn.execute(load("capture").current_lsn).fetchone()[0])  # type: ignore[index]
        return self.session(conn, threading.Event(), until=until)


def elected(conn: psycopg.Connection[Any]) -> bool:
    """Whether this session now holds the one-consumer-per-database lock."""
    row = conn.execute(load("capture").consumer_lock, {"key": CONSUMER_LOCK}).fetchone()
    return bool(row and row[0])


def mode(conn: psycopg.Connection[Any]) -> str:
    """The database's capture mode: ``trigger`` or ``wal``."""
    row = conn.execute(load("capture").mode).fetchone()
    return str(row[0]) if row else "trigger"
