"""A decoder of PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1),
and of the replication stream's frames around them.

Each message is one ``bytea`` row of ``pg_logical_slot_peek_binary_changes`` or the payload
of one XLogData frame of a replication stream (``START_REPLICATION … LOGICAL``, read by
flux/capture/_walstream.py); ``frame`` splits the stream's CopyData messages into XLogData and
primary keepalives, ``standby_status`` writes the client's answer. The formats are
PostgreSQL's "Logical Replication Message Formats" and "Streaming Replication Protocol":
Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate and (with
``messages 'true'``) Message. Column values arrive in text format; an unchanged TOASTed
value of an update's new row arrives as ``UNCHANGED`` and is filled from the old row
(REPLICA IDENTITY FULL sends it whole) by the consumer.

Pure: no IO, so it is tested on real server output and on generated messages alike.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass
from typing import Final

PG_EPOCH: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


class DecodeError(ValueError):
    """A message that is not valid pgoutput protocol 1."""


class _Unchanged:
    """An unchanged TOASTed column: the value was not sent."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
Value = bytes | None | _Unchanged
Row = tuple[Value, ...]


@dataclass(slots=True)
class Begin:
    final_lsn: int  # the LSN of the transaction's commit record
    commit_time: dt.datetime
    xid: int


@dataclass(slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # just past the commit record: where a slot may be advanced to
    commit_time: dt.datetime


@dataclass(frozen=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    type_mod: int
    key: bool  # part of the replica identity


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str  # "" stands for pg_catalog in the protocol; returned as sent
    name: str
    replica_identity: str  # d(efault) n(othing) f(ull) i(ndex)
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Type:
    oid: int
    namespace: str
    name: str


@dataclass(slots=True)
class Insert:
    relation_oid: int
    new: Row


@dataclass(slots=True)
class Update:
    relation_oid: int
    old: Row | None  # the old row (REPLICA IDENTITY FULL) or its key; None if not sent
    old_is_key: bool
    new: Row


@dataclass(slots=True)
class Delete:
    relation_oid: int
    old: Row
    old_is_key: bool


@dataclass(frozen=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(slots=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Decoded = (Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate
           | Message)

_I8 = struct.Struct("!b")
_U8 = struct.Struct("!B")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 1  # past the message type byte

    def _take(self, fmt: struct.Struct) -> int:
        try:
            (value,) = fmt.unpack_from(self.buf, self.pos)
        except struct.error as exc:
            raise DecodeError(f"message ends early at byte {self.pos}") from exc
        self.pos += fmt.size
        return int(value)

    def u8(self) -> int:
        return self._take(_U8)

    def i8(self) -> int:
        return self._take(_I8)

    def i16(self) -> int:
        return self._take(_I16)

    def i32(self) -> int:
        return self._take(_I32)

    def u32(self) -> int:
        return self._take(_U32)

    def u64(self) -> int:
        return self._take(_U64)

    def time(self) -> dt.datetime:
        return _time(self._take(_I64))

    def string(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise DecodeError(f"unterminated string at byte {self.pos}")
        raw = self.buf[self.pos:end]
        self.pos = end + 1
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"string at byte {self.pos} is not UTF-8") from exc

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise DecodeError(f"a value of {n} bytes at byte {self.pos} overruns the message")
        value = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return value

    def byte(self) -> str:
        return chr(self.u8())

    def row(self) -> Row:
        count = self.i16()
        values: list[Value] = []
        for _ in range(count):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind in ("t", "b"):
                values.append(self.raw(self.i32()))
            else:
                raise DecodeError(f"unknown column kind {kind!r} at byte {self.pos - 1}")
        return tuple(values)

    def end(self, message: Decoded) -> Decoded:
        if self.pos != len(self.buf):
            raise DecodeError(f"{len(self.buf) - self.pos} unexpected bytes after "
                              f"{type(message).__name__}")
        return message


def _fast_row(buf: bytes, pos: int) -> tuple[Row, int]:
    """A TupleData at ``pos`` (the hot path: one per change), and the position after it."""
    (count,) = _I16.unpack_from(buf, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    length = _I32.unpack_from
    for _ in range(count):
        kind = buf[pos]
        if kind == 116 or kind == 98:  # t(ext), b(inary)
            (n,) = length(buf, pos + 1)
            start = pos + 5
            pos = start + n
            if n < 0 or pos > len(buf):
                raise DecodeError(f"a value of {n} bytes at byte {start} overruns the message")
            append(buf[start:pos])
        elif kind == 110:  # n(ull)
            append(None)
            pos += 1
        elif kind == 117:  # u(nchanged TOAST)
            append(UNCHANGED)
            pos += 1
        else:
            raise DecodeError(f"unknown column kind {chr(kind)!r} at byte {pos}")
    return tuple(values), pos


def _fast_change(buf: bytes) -> Decoded:
    """Insert, Update and Delete without the general reader."""
    kind = buf[0]
    (oid,) = _U32.unpack_from(buf, 1)
    tag = buf[5]
    if kind == 73:  # I
        if tag != 78:
            raise DecodeError("Insert without its new row")
        new, pos = _fast_row(buf, 6)
        message: Decoded = Insert(oid, new)
    elif kind == 85:  # U
        old: Row | None = None
        old_is_key = False
        pos = 6
        if tag in (75, 79):  # K, O
            old, pos = _fast_row(buf, 6)
            old_is_key = tag == 75
            tag = buf[pos]
            pos += 1
        if tag != 78:
            raise DecodeError("Update without its new row")
        new, pos = _fast_row(buf, pos)
        message = Update(oid, old, old_is_key, new)
    else:  # D
        if tag not in (75, 79):
            raise DecodeError("Delete without its old row or key")
        old_row, pos = _fast_row(buf, 6)
        message = Delete(oid, old_row, tag == 75)
    if pos != len(buf):
        raise DecodeError(f"{len(buf) - pos} unexpected bytes after {type(message).__name__}")
    return message


# The consumer's hot path: Insert, Update and Delete, straight to their decoder (errors
# other than DecodeError are decode's to translate: call it again on those).
decode_change = _fast_change

_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_MESSAGE = struct.Struct("!BQ")


def _time(micros: int) -> dt.datetime:
    try:
        return PG_EPOCH + dt.timedelta(microseconds=micros)
    except OverflowError as exc:
        raise DecodeError(f"timestamp out of range: {micros}") from exc


def timestamp(micros: int) -> dt.datetime:
    """A protocol timestamp (microseconds since 2000-01-01 UTC)."""
    return _time(micros)


def _fast_frame(buf: bytes) -> Decoded:
    """Begin, Commit and Message — one of each per captured transaction — without the
    general reader."""
    kind = buf[0]
    if kind == 66:  # B
        if len(buf) != 21:
            raise DecodeError(f"Begin of {len(buf)} bytes, not 21")
        final_lsn, micros, xid = _BEGIN.unpack_from(buf, 1)
        return Begin(final_lsn, _time(micros), xid)
    if kind == 67:  # C
        if len(buf) != 26:
            raise DecodeError(f"Commit of {len(buf)} bytes, not 26")
        flags, commit_lsn, end_lsn, micros = _COMMIT.unpack_from(buf, 1)
        return Commit(flags, commit_lsn, end_lsn, _time(micros))
    flags, lsn = _MESSAGE.unpack_from(buf, 1)  # M
    end = buf.find(b"\0", 10)
    if end < 0:
        raise DecodeError("unterminated string at byte 10")
    try:
        prefix = buf[10:end].decode()
    except UnicodeDecodeError as exc:
        raise DecodeError("string at byte 10 is not UTF-8") from exc
    (size,) = _I32.unpack_from(buf, end + 1)
    start = end + 5
    if size < 0 or start + size != len(buf):
        raise DecodeError(f"a Message content of {size} bytes does not end the message")
    return Message(bool(flags & 1), lsn, prefix, buf[start:])


def decode(data: bytes | memoryview) -> Decoded:
    """One pgoutput message."""
    buf = bytes(data)
    if not buf:
        raise DecodeError("empty message")
    try:
        kind = buf[0]
        if kind == 73 or kind == 85 or kind == 68:  # I U D: the changes, most of the stream
            return _fast_change(buf)
        if kind == 66 or kind == 67 or kind == 77:  # B C M: one each per transaction
            return _fast_frame(buf)
        return _decode(buf)
    except (struct.error, IndexError) as exc:
        raise DecodeError(f"{chr(buf[0])!r} message ends early") from exc


def _decode(buf: bytes) -> Decoded:
    r = _Reader(buf)
    kind = chr(buf[0])
    if kind == "B":
        return r.end(Begin(final_lsn=r.u64(), commit_time=r.time(), xid=r.u32()))
    if kind == "C":
        return r.end(Commit(flags=r.u8(), commit_lsn=r.u64(), end_lsn=r.u64(),
                            commit_time=r.time()))
    if kind == "O":
        return r.end(Origin(lsn=r.u64(), name=r.string()))
    if kind == "R":
        oid, namespace, name = r.u32(), r.string(), r.string()
        identity = r.byte()
        columns = []
        for _ in range(r.i16()):
            flags = r.u8()
            columns.append(Column(name=r.string(), type_oid=r.u32(), type_mod=r.i32(),
                                  key=bool(flags & 1)))
        return r.end(Relation(oid, namespace, name, identity, tuple(columns)))
    if kind == "Y":
        return r.end(Type(oid=r.u32(), namespace=r.string(), name=r.string()))
    if kind == "I":
        oid = r.u32()
        if r.byte() != "N":
            raise DecodeError("Insert without its new row")
        return r.end(Insert(oid, r.row()))
    if kind == "U":
        oid = r.u32()
        tag = r.byte()
        old: Row | None = None
        old_is_key = False
        if tag in ("K", "O"):
            old, old_is_key = r.row(), tag == "K"
            tag = r.byte()
        if tag != "N":
            raise DecodeError("Update without its new row")
        return r.end(Update(oid, old, old_is_key, r.row()))
    if kind == "D":
        oid = r.u32()
        tag = r.byte()
        if tag not in ("K", "O"):
            raise DecodeError("Delete without its old row or key")
        return r.end(Delete(oid, r.row(), tag == "K"))
    if kind == "T":
        count = r.i32()
        options = r.i8()
        oids = tuple(r.u32() for _ in range(count))
        return r.end(Truncate(oids, bool(options & 1), bool(options & 2)))
    if kind == "M":
        flags = r.u8()
        lsn = r.u64()
        prefix = r.string()
        content = r.raw(r.i32())
        return r.end(Message(bool(flags & 1), lsn, prefix, content))
    raise DecodeError(f"unknown message type {kind!r}")


# -- the replication stream's frames --------------------------------------------------------


@dataclass(slots=True)
class XLogData:
    """A frame of WAL data: ``payload`` is one pgoutput message."""

    start: int  # the WAL position of the data
    wal_end: int  # the server's end of WAL when it sent the frame
    payload: bytes


@dataclass(slots=True)
class Keepalive:
    """The server's heartbeat: ``wal_end`` is how far it has read (and sent) the WAL."""

    wal_end: int
    reply: bool  # the server asks for a standby status update now


_XLOG = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!Qq?")
_STATUS = struct.Struct("!cQQQq?")


def frame(data: bytes | memoryview) -> XLogData | Keepalive:
    """One CopyData message of a logical replication stream."""
    buf = bytes(data)
    try:
        if buf[0] == 119:  # w
            start, wal_end, _ = _XLOG.unpack_from(buf, 1)
            return XLogData(start, wal_end, buf[25:])
        if buf[0] == 107:  # k
            if len(buf) != 18:
                raise DecodeError(f"primary keepalive of {len(buf)} bytes, not 18")
            wal_end, _, reply = _KEEPALIVE.unpack_from(buf, 1)
            return Keepalive(wal_end, reply)
    except (struct.error, IndexError) as exc:
        raise DecodeError("replication frame ends early") from exc
    raise DecodeError(f"unknown replication frame {buf[:1]!r}")


def standby_status(flushed: int, now: dt.datetime, *, reply: bool = False) -> bytes:
    """The standby status update that tells the server everything before ``flushed`` is
    stored for good (written, flushed and applied alike: the consumer commits before it
    says so), so the slot may forget it."""
    micros = (now - PG_EPOCH) // dt.timedelta(microseconds=1)
    return _STATUS.pack(b"r", flushed, flushed, flushed, micros, reply)


def format_lsn(lsn: int) -> str:
    """``0/16B3748``, as PostgreSQL writes a pg_lsn."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
