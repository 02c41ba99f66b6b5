"""The switch between trigger and WAL capture, and the capture status ``flux db status``
shows. Switching never loses or doubles a change: back to triggers, what the slot still
holds is applied (here, or by the running consumer) before the slot is dropped."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from flux.capture._consumer import CONSUMER_LOCK, SLOT, CaptureError, Consumer, elected, mode
from flux.store import _native as native
from flux.store._database import connect, first_line
from flux.store._queries import load

log = logging.getLogger("flux.capture")

LAG_WARN_BYTES = 256 * 1024 * 1024
LAG_WARN_SECONDS = 60.0


@dataclass(frozen=True)
class CaptureStatus:
    mode: str
    slot: dict[str, Any] | None
    lag_bytes: int | None
    lag_seconds: float | None
    applied_changes: int
    warnings: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "slot": self.slot, "lag_bytes": self.lag_bytes,
                "lag_seconds": self.lag_seconds, "applied_changes": self.applied_changes,
                "warnings": self.warnings}


def status(conn: psycopg.Connection[Any]) -> CaptureStatus:
    q = load("capture")
    current = mode(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        slot = cur.execute(q.slot, {"slot": SLOT}).fetchone()
        state = cur.execute(q.state, {"slot": SLOT}).fetchone()
    warnings: list[str] = []
    lag_bytes = int(slot["lag_bytes"]) if slot and slot["lag_bytes"] is not None else None
    lag_seconds: float | None = None
    if state is not None and slot is not None:
        if lag_bytes is not None and lag_bytes > 1024 * 1024 and state["caught_up_at"]:
            lag_seconds = (state["now"] - state["caught_up_at"]).total_seconds()
        else:
            lag_seconds = 0.0
    if current == "wal":
        if slot is None:
            warnings.append("capture is \"wal\" but the slot flux_capture is missing: changes "
                            "are not being captured; run `flux capture switch wal`")
        elif slot["wal_status"] == "lost":
            warnings.append("the slot flux_capture was invalidated (the consumer was down "
                            "longer than max_slot_wal_keep_size allows): changes since are "
                            "lost to history; run `flux capture switch trigger` then "
                            "`flux capture switch wal` to start again")
        else:
            if lag_bytes is not None and lag_bytes > LAG_WARN_BYTES:
                warnings.append(f"the consumer is {lag_bytes / 1048576:.0f} MiB behind: is "
                                "`flux serve` (or `flux capture run`) running?")
            if lag_seconds is not None and lag_seconds > LAG_WARN_SECONDS:
                warnings.append(f"the consumer last caught up {lag_seconds:.0f} s ago")
            if slot["safe_wal_size"] is None:
                warnings.append("max_slot_wal_keep_size is unlimited: if the consumer stays "
                                "down, the server keeps WAL until its disk is full")
    slot_info = None
    if slot is not None:
        slot_info = {"name": slot["slot_name"], "confirmed_lsn": slot["confirmed_lsn"],
                     "wal_status": slot["wal_status"], "active": slot["active"],
                     "safe_wal_size": slot["safe_wal_size"]}
    return CaptureStatus(current, slot_info, lag_bytes, lag_seconds,
                         int(state["applied_changes"]) if state else 0, warnings)


@dataclass(frozen=True)
class SwitchResult:
    previous: str
    mode: str
    tables: int
    applied: int  # changes the switch back applied from the slot before dropping it


def switch(conninfo: str, to: str, *, wait: float = 60.0) -> SwitchResult:
    """Move between trigger and WAL capture without losing or doubling a change."""
    if to not in ("trigger", "wal"):
        raise CaptureError(f'capture mode must be "trigger" or "wal", not {to!r}')
    q = load("capture")
    with connect(conninfo, autocommit=True) as conn:
        previous = mode(conn)
        if previous == to:
            return SwitchResult(previous, to, 0, 0)
        if to == "wal":
            level = conn.execute(q.wal_level).fetchone()
            if level is None or level[0] != "logical":
                raise CaptureError(
                    f"WAL capture needs wal_level = logical; this server has {level and level[0]}",
                    hint="set wal_level = logical in postgresql.conf and restart the server")
            # A leftover of an interrupted switch, which a consumer may be streaming.
            conn.execute(q.release_slot, {"slot": SLOT})
            conn.execute(q.drop_slot, {"slot": SLOT})
            # The state first: a running consumer must never see the new slot beside the
            # previous switch's bookkeeping (it would apply that switch's end to this slot).
            conn.execute(q.reset_state, {"slot": SLOT})
            _create_slot(conn)
            try:
                tables = _switch_locked(conn, "wal", wait)
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(q.drop_slot, {"slot": SLOT})
                raise
            return SwitchResult(previous, to, tables, 0)
        tables = _switch_locked(conn, "trigger", wait)
        applied = _finish_wal(conn, conninfo, wait)
        return SwitchResult(previous, to, tables, applied)


def _create_slot(conn: psycopg.Connection[Any]) -> str:
    """Create the slot with the C decoder where the server can load it (its plugin is
    chosen here, once: a slot keeps it until it is dropped), else with pgoutput. Returns
    the plugin."""
    q = load("capture")
    plugin, reason = native.decoder_plugin(conn)
    if plugin is not None:
        try:
            conn.execute(q.create_slot, {"slot": SLOT, "plugin": plugin})
            return plugin
        except psycopg.Error as exc:
            reason = f"the server refused the C decoder: {first_line(exc)}"
    log.info("WAL capture decodes with pgoutput: %s", reason)
    conn.execute(q.create_slot, {"slot": SLOT, "plugin": "pgoutput"})
    return "pgoutput"


def _switch_locked(conn: psycopg.Connection[Any], to: str, wait: float) -> int:
    """Switch in one transaction that first holds the executions' mode lock exclusively
    (sql/queries/capture.sql: switch_lock), so that every execution runs under the one mode
    its BEGIN read. Each attempt waits at most a second for the executions in flight (new
    ones wait behind it meanwhile), then lets them through and tries again."""
    q = load("capture")
    deadline = time.monotonic() + wait
    while True:
        try:
            with conn.transaction():
                conn.execute(q.switch_lock, {"timeout": "1s"})
                return int(conn.execute(q.switch, {"mode": to}).fetchone()[0])  # type: ignore[index]
        except psycopg.errors.LockNotAvailable as exc:
            if time.monotonic() > deadline:
                raise CaptureError(
                    f"executions kept the capture mode in use for {wait:g}s: not switched",
                    hint="try again when the long-running requests have finished") from exc


def _finish_wal(conn: psycopg.Connection[Any], conninfo: str, wait: float) -> int:
    """After the switch back to triggers: apply what the slot holds up to the switch, then
    drop it — here if no consumer runs, else wait for the running one to do it."""
    q = load("capture")
    if conn.execute(q.slot, {"slot": SLOT}).fetchone() is None:
        return 0
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if elected(conn):
            try:
                return Consumer(conninfo).drain(conn).applied
            finally:
                conn.execute(q.consumer_unlock, {"key": CONSUMER_LOCK})
        if conn.execute(q.slot, {"slot": SLOT}).fetchone() is None:
            return 0  # the running consumer applied it and dropped the slot
        time.sleep(0.2)
    raise CaptureError("the running capture consumer did not finish the switch in time",
                       hint="check `flux db status`; the switch completes when it catches up")


def ensure_mode(conninfo: str, wanted: str) -> SwitchResult | None:
    """Bring the database to the project's capture mode (flux.toml) at start."""
    with connect(conninfo, autocommit=True) as conn:
        current = mode(conn)
        slot = conn.execute(load("capture").slot, {"slot": SLOT}).fetchone()
    if current == wanted and (wanted == "trigger" or slot is not None):
        return None
    if current == wanted:  # "wal" without its slot: set it up again
        with connect(conninfo, autocommit=True) as conn, conn.transaction():
            conn.execute(load("capture").switch, {"mode": "trigger"})
    return switch(conninfo, wanted)
