"""WAL capture's decoding: the slot's stream, one message or frame at a time, into whole
transactions whose changes are COPY lines for ``flux.state_mutations``
(flux/capture/_consumer.py stores them).

Two decoders feed the same lines: pgoutput's messages (flux/capture/_pgoutput.py; most
changes go straight from their bytes to COPY text: flux/capture/_mutations.py,
render_change), and the frames of Flux's own output plugin (extension/flux_decode.c), whose
changes arrive already rendered. Each change is stamped with the request, span and actor the
transaction's logical messages carry (sql/0008); a record that travelled in the WAL rides on
its transaction (flux/capture/_records.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from flux.capture._mutations import (
    NULL,
    Change,
    FastShape,
    NativeRelation,
    Shape,
    Transaction,
    array_literal,
    assign_spans_to,
    changed_columns,
    copy_json,
    copy_text,
    fast_shape,
    image,
    key_plan,
    key_text,
    md5,
    render_change,
)
from flux.capture._pgjson import TypeCatalog
from flux.capture._pgoutput import (
    Begin,
    Commit,
    DecodeError,
    Delete,
    Insert,
    Message,
    Relation,
    Row,
    Truncate,
    Type,
    Update,
    decode,
    decode_change,
    format_lsn,
    timestamp,
)
from flux.capture._records import PREFIX as RECORD_PREFIX
from flux.capture._records import take_record
from flux.store._queries import load

_CHANGES = (Insert, Update, Delete)
_CHANGE_TAGS = frozenset(b"IUD")
_OID = struct.Struct("!I").unpack_from
_U32 = _OID
_BEGIN = struct.Struct("!QqI").unpack_from
_COMMIT = struct.Struct("!BQQq").unpack_from
_MESSAGE_LSN = struct.Struct("!Q").unpack_from
NATIVE_FORMAT = 2  # the C decoder's frames (extension/flux_decode.c: FORMAT_VERSION)
_NATIVE_FORMATS = frozenset((1, NATIVE_FORMAT))  # 1: the same records, without 'L'
_NATIVE_OPS = {73: "INSERT", 85: "UPDATE", 68: "DELETE", 84: "TRUNCATE"}


@dataclass
class Batch:
    """COPY lines of one apply: ``direct`` into flux.state_mutations, ``staged`` for the
    server to finish (sql/queries/capture.sql: apply_stage)."""

    direct: list[bytes] = field(default_factory=list)
    staged: list[bytes] = field(default_factory=list)
    more: int = 0  # rows in ``direct`` beyond one per piece (a transaction's lines in one)

    def __bool__(self) -> bool:
        return bool(self.direct or self.staged)


class Decoder:
    """What one consumer knows of the stream it reads: the relations and types it has
    been sent, the transaction being read, and per relation the plans that render its
    changes. ``native``: the slot's plugin is the C decoder, whose frames ``feed_native``
    reads (named relations in ``_native``); else pgoutput's messages go to ``feed``."""

    def __init__(self) -> None:
        self.types = TypeCatalog()
        self.relations: dict[int, Relation] = {}
        self.txn: Transaction | None = None  # the transaction being read
        self._keys: dict[int, list[str]] = {}
        self._shapes: dict[int, Shape] = {}
        self._fast: dict[int, FastShape | None] = {}  # relations the hot path renders
        self.native = False
        self._native: dict[int, NativeRelation] = {}
        self.whole = 0  # transactions whose rows the C decoder sent whole ('L')

    @property
    def types_loaded(self) -> bool:
        return 16 in self.types

    def load_types(self, conn: psycopg.Connection[Any]) -> None:
        with conn.cursor(row_factory=dict_row) as cur:
            self.types.load(list(cur.execute(load("capture").types)))

    # -- decoding ------------------------------------------------------------------------

    def feed(self, conn: psycopg.Connection[Any], data: bytes
              ) -> tuple[Transaction, Commit] | None:
        """One pgoutput message; the transaction and its commit when it completes one."""
        # Inserts, updates and deletes are most of the stream: straight to their COPY
        # text where the relation allows (flux/capture/_mutations.py: render_change), else
        # to their decoder.
        txn = self.txn
        kind = data[0]
        # A transaction's Begin and Commit, read in place (the general decoder below says
        # what is wrong with one that is not as expected).
        if kind == 66 and len(data) == 21:  # B
            final_lsn, micros, xid = _BEGIN(data, 1)
            self.txn = Transaction(Begin(final_lsn, timestamp(micros), xid))
            return None
        if kind == 67 and len(data) == 26:  # C
            self.txn = None
            if txn is None:
                return None
            flags, commit_lsn, end_lsn, micros = _COMMIT(data, 1)
            return txn, Commit(flags, commit_lsn, end_lsn, timestamp(micros))
        if kind in _CHANGE_TAGS and txn is not None:
            try:
                (oid,) = _OID(data, 1)
                fs = self._fast[oid] if oid in self._fast else self._fast_shape(conn, oid)
                rendered = render_change(fs, data) if fs is not None else None
            except (struct.error, IndexError):
                rendered = None
            if rendered is not None and fs is not None:
                txn.changes.append((fs.table, rendered[0], rendered[1], txn.actor, fs))
                return None
        try:
            m = decode_change(data) if data[0] in _CHANGE_TAGS else decode(data)
        except (struct.error, IndexError):
            m = decode(data)  # raises the DecodeError that says what is wrong
        cls = m.__class__
        if cls is Begin:  # one each per transaction, before the rarer messages
            self.txn = Transaction(m)  # type: ignore[arg-type]
        elif cls is Commit:
            self.txn = None
            if txn is not None:
                return txn, m  # type: ignore[return-value]
        elif cls is Message:
            self._message(txn, m)  # type: ignore[arg-type]
        elif isinstance(m, _CHANGES):
            assert txn is not None, "a change outside a transaction"
            relation = self.relations[m.relation_oid]
            if isinstance(m, Insert):
                txn.changes.append(Change(relation, "INSERT", None, m.new, txn.actor))
            elif isinstance(m, Update):
                txn.changes.append(Change(relation, "UPDATE", m.old, m.new, txn.actor))
            else:
                txn.changes.append(Change(relation, "DELETE", m.old, None, txn.actor))
        elif isinstance(m, Relation):
            if self.relations.get(m.oid) != m:
                self._fast.pop(m.oid, None)
            self.relations[m.oid] = m
            self._keys.pop(m.oid, None)
            if any(c.type_oid not in self.types for c in m.columns):
                self.load_types(conn)
        elif isinstance(m, Type):
            if m.oid not in self.types:
                self.load_types(conn)
        elif isinstance(m, Truncate):
            assert txn is not None, "a change outside a transaction"
            for oid in m.relation_oids:
                txn.changes.append(Change(self.relations[oid], "TRUNCATE", None, None,
                                           txn.actor))
        return None

    def feed_native(self, conn: psycopg.Connection[Any], data: bytes
                     ) -> tuple[Transaction, Commit] | None:
        """One frame of the C decoder (extension/flux_decode.c): its records in order; the
        transaction and its commit when the frame completes one. Each change arrives as
        its row's first six COPY columns, as ``render_change`` writes them."""
        if not data or data[0] not in _NATIVE_FORMATS:
            raise DecodeError(
                f"the slot's decoder writes format {data[0] if data else None}, this consumer "
                f"reads {NATIVE_FORMAT}: switch capture to trigger and back to WAL to "
                "re-create the slot")
        txn = self.txn
        done: tuple[Transaction, Commit] | None = None
        pos, end = 1, len(data)
        try:
            while pos < end:
                tag = data[pos]
                (length,) = _U32(data, pos + 1)
                start = pos + 5
                pos = start + length
                if pos > end:
                    raise DecodeError("a record of the C decoder runs past its frame")
                op = _NATIVE_OPS.get(tag)
                if op is not None:
                    if txn is None:
                        raise DecodeError("a change outside a transaction")
                    rel = self._native[_U32(data, start)[0]]
                    txn.changes.append((rel.table, op, data[start + 4:pos] or None,
                                        txn.actor, rel))
                elif tag == 66:  # B
                    final_lsn, micros, xid = _BEGIN(data, start)
                    txn = self.txn = Transaction(Begin(final_lsn, timestamp(micros), xid))
                elif tag == 67:  # C
                    flags, commit_lsn, end_lsn, micros = _COMMIT(data, start)
                    if txn is not None:
                        done = txn, Commit(flags, commit_lsn, end_lsn, timestamp(micros))
                    txn = self.txn = None
                elif tag == 77:  # M
                    nul = data.index(0, start + 9, pos)
                    self._message(txn, Message(data[start] == 1, _MESSAGE_LSN(data, start + 1)[0],
                                               data[start + 9:nul].decode(),
                                               data[nul + 1:pos]))
                elif tag == 76:  # L: the transaction's rows, whole
                    if txn is None:
                        raise DecodeError("rows outside a transaction")
                    txn.lines.append(data[start + 4:pos])
                    txn.line_count += _U32(data, start)[0]
                    self.whole += 1
                elif tag == 82:  # R
                    (oid,) = _U32(data, start)
                    nul = data.index(0, start + 4, pos)
                    self._native[oid] = NativeRelation(oid, data[start + 4:nul].decode(),
                                                       data[nul + 1:pos].decode())
                else:
                    raise DecodeError(f"the C decoder sent an unknown record {tag!r}")
        except (struct.error, KeyError, ValueError) as exc:
            if isinstance(exc, DecodeError):
                raise
            raise DecodeError(f"a malformed frame of the C decoder: {exc}") from exc
        return done

    def _fast_shape(self, conn: psycopg.Connection[Any], oid: int) -> FastShape | None:
        """The hot path's plan for a relation (None: its changes take the general one)."""
        rel = self.relations.get(oid)
        if rel is None:
            return None  # the general path says what is wrong
        shape = self._shape(conn, rel)
        self._plan(conn, shape)
        fs = self._fast[oid] = fast_shape(shape, self.types, shape.key_plan or [])
        return fs

    @staticmethod
    def _message(txn: Transaction | None, m: Message) -> None:
        if txn is None or not m.transactional:
            return
        if m.prefix == "flux":
            txn.request = orjson.loads(m.content)
        elif m.prefix == "flux.actor":
            txn.actor = orjson.loads(m.content)
        elif m.prefix == "flux.switch":
            txn.switch = m.content.decode()
        elif m.prefix == RECORD_PREFIX:  # the record travelled in the WAL
            take_record(txn, m.content)

    def rows(self, conn: psycopg.Connection[Any], txn: Transaction, commit_lsn: int,
              batch: Batch) -> None:
        """A transaction's changes as COPY lines (sql/queries/capture.sql: copy_mutations
        names the columns in this order). The C decoder sends most transactions' rows
        whole; most others arrive rendered up to their span (``feed``); the rest are
        rendered here."""
        if txn.lines:
            batch.direct += txn.lines
            batch.more += txn.line_count - len(txn.lines)
        changes = txn.changes
        if not changes:
            return
        request = txn.request or {}
        spans = assign_spans_to(
            [(c[0], c[1]) if c.__class__ is tuple else  # type: ignore[index]
             (c.relation.name.lower(), c.op) for c in changes],  # type: ignore[union-attr]
            request.get("statements") or [])
        # What every row of the transaction shares, rendered once (per writer: changes
        # from outside Flux each carry the actor of the statement that made them).
        tails: dict[int, bytes] = {}
        tail_of = (f"\t{request.get('request_id') or NULL}\t{{}}\t{txn.begin.xid}\t"
                   f"{txn.begin.commit_time.isoformat()}\twal\t{format_lsn(commit_lsn)}\n")
        span_text: dict[str | None, bytes] = {}
        direct = batch.direct
        for seq, (change, span_id) in enumerate(zip(changes, spans, strict=True), 1):
            if change.__class__ is tuple:
                _, _, body, actor, fs = change  # type: ignore[misc]
                if body is None:
                    continue  # a no-op update: the trigger's WHEN skips it too
                lines = direct
                copy_relation = fs.copy_relation
            else:
                actor = change.actor  # type: ignore[union-attr]
                general = self._body(conn, change, batch)  # type: ignore[arg-type]
                if general is None:
                    continue
                body, lines, copy_relation = general
            who = request if txn.request is not None else (actor or {})
            tail = tails.get(id(who))
            if tail is None:
                tail = tails[id(who)] = tail_of.format(
                    f"{copy_text(who.get('actor'))}\t{copy_text(who.get('application_name'))}\t"
                    f"{copy_text(who.get('tenant'))}").encode()
            span = span_text.get(span_id)
            if span is None:
                span = span_text[span_id] = copy_text(span_id).encode()
            lines.append(b"%b%b\t%d\t%b%b" % (body, span, seq, copy_relation, tail))

    def _body(self, conn: psycopg.Connection[Any], change: Change, batch: Batch
              ) -> tuple[bytes, list[bytes], bytes] | None:
        """The general path: a change's first six COPY columns (as render_change writes
        them), which list of the batch they go to and its relation's columns; None for a
        no-op update."""
        shape = self._shape(conn, change.relation)
        op = change.op
        if op == "TRUNCATE":
            return b"\\N\t\\N\tTRUNCATE\t\\N\t\\N\t{}\t", batch.direct, \
                shape.copy_relation.encode()
        old_row, new_row = change.old, change.new
        changed: str | None = shape.all_literal
        if op == "UPDATE":
            if old_row is None:
                changed = None
            else:
                columns = changed_columns(shape, old_row, new_row)  # type: ignore[arg-type]
                if columns == []:
                    return None  # a no-op update: the trigger's WHEN skips it too
                changed = None if columns is None else array_literal(columns)
        old = image(shape, old_row) if old_row is not None else None
        new = image(shape, new_row, old) if new_row is not None else None
        row = new_row if new is not None else old_row
        key = self._key_text(conn, shape, new or old or {}, row)  # type: ignore[arg-type]
        if key is None:  # the server renders it
            record_id = NULL
            key = copy_json(self._key(conn, shape.relation, new or old or {}))
            lines = batch.staged
        else:
            record_id = md5(f"{shape.relation.oid}:{key}".encode()).hexdigest()
            key = copy_text(key)
            lines = batch.direct if changed is not None else batch.staged
        body = (f"{record_id}\t{key}\t{op}\t"
                f"{NULL if old is None else copy_json(old)}\t"
                f"{NULL if new is None else copy_json(new)}\t"
                f"{NULL if changed is None else changed}\t")
        return body.encode(), lines, shape.copy_relation.encode()

    def _plan(self, conn: psycopg.Connection[Any], shape: Shape) -> None:
        if shape.key_plan is None:
            columns = self._keys.get(shape.relation.oid)
            if columns is None:
                columns = self._primary_key(conn, shape.relation)
                self._keys[shape.relation.oid] = columns
            shape.key_plan = key_plan(shape, columns)

    def _key_text(self, conn: psycopg.Connection[Any], shape: Shape, image: dict[str, Any],
                  row: Row) -> str | None:
        """The row's key as jsonb's text output writes it, or None where only PostgreSQL
        can say."""
        self._plan(conn, shape)
        return key_text(shape.key_plan or [], image, row)

    def _shape(self, conn: psycopg.Connection[Any], rel: Relation) -> Shape:
        shape = self._shapes.get(rel.oid)
        # The SQL interface resends each Relation with every read: equal is the same.
        if shape is None or (shape.relation is not rel and shape.relation != rel):
            names = [c.name for c in rel.columns]
            order = conn.execute(load("capture").column_order, {"names": names}).fetchone()
            shape = Shape(rel, self.types, list(order[0] or []) if order else sorted(names))
            self._shapes[rel.oid] = shape
        return shape

    def _key(self, conn: psycopg.Connection[Any], rel: Relation, image: dict[str, Any]
             ) -> dict[str, Any]:
        columns = self._keys.get(rel.oid)
        if columns is None:
            columns = self._primary_key(conn, rel)
            self._keys[rel.oid] = columns
        if not columns:
            return image  # no primary key: the whole row is its identity, as with triggers
        return {c: image.get(c) for c in columns}

    @staticmethod
    def _primary_key(conn: psycopg.Connection[Any], rel: Relation) -> list[str]:
        try:
            row = conn.execute(load("capture").primary_key, {"oid": rel.oid}).fetchone()
        except psycopg.errors.UndefinedTable:  # the table is gone since: its key is unknowable
            return []
        return list(row[0] or []) if row else []


def is_native(plugin: str | None) -> bool:
    """Whether a slot's output plugin is the C decoder (flux/store/_native.py:
    decoder_plugin names it), not pgoutput."""
    return bool(plugin) and "flux_decode" in str(plugin)
