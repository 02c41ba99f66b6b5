"""``ctx.db``'s first statement (flux/runtime/_ctx_db.py): sent with the BEGIN and the
execution's GUCs as one text, its parameters bound on their own."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import psycopg
import pytest

from flux._ids import new_request_id_text
from flux.runtime._ctx_db import _first_statement
from flux.runtime._execution import begin_statement

GUCS = "SELECT current_setting('flux.request_id'), current_setting('flux.tenant', true)"


async def test_the_first_statement_binds_its_own_percents_and_begins(db: str) -> None:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        for tenant, wal in ((None, False), ("50%'off\\", False), (None, True), ("t", True)):
            # a tenant's literal with a % is not a placeholder; "wal": the BEGIN asks the mode
            for query, params, want in [
                ("SELECT %s::text || '%%' AS v", ["a%b"], "a%b%"),
                ("SELECT %(x)s::int + 1 AS v", {"x": 41}, 42),
                ("SELECT '100%' AS v", None, "100%"),  # no parameters: no % is special
            ]:
                rid = new_request_id_text()
                ex = SimpleNamespace(request_id=rid, tenant=tenant, wal_record=None,
                                     wal_project=wal, stamp=None)
                cur = await _first_statement(conn, ex, query, params, "s3")  # type: ignore[arg-type]
                assert (await cur.fetchone()) == (want,)  # rows as tuples: _live names them
                assert ex.wal_record is False  # a database in trigger mode: inserted
                assert ex.stamp is False  # … read under the switch's lock: no end_execution
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
                row = await (await conn.execute(GUCS)).fetchone()
                assert row is not None and uuid.UUID(row[0]) == uuid.UUID(rid)
                if tenant is not None:
                    assert row[1] == tenant
                await conn.rollback()
        # In WAL mode the BEGIN reads "wal": a WAL project's record travels in the WAL, and
        # any other record is inserted with end_execution's stamp.
        await conn.execute("SELECT flux.switch_capture('wal')")
        for wal in (False, True):
            ex = SimpleNamespace(request_id=new_request_id_text(), tenant=None,
                                 wal_record=None, wal_project=wal, stamp=None)
            await _first_statement(conn, ex, "SELECT 1", None, "s3")  # type: ignore[arg-type]
            assert (ex.wal_record, ex.stamp) == (wal, True)
            await conn.rollback()


def test_the_begin_takes_any_spelling_of_a_uuid_and_nothing_else() -> None:
    rid = new_request_id_text()  # Flux's canonical text: checked by a pattern, not parsed
    canonical = begin_statement(rid)
    assert rid.encode() in canonical
    for spelled in (rid.upper(), "{" + rid + "}", rid.replace("-", "")):
        assert begin_statement(spelled) == canonical  # parsed: the same literal
    for hostile in (rid + "'; DROP TABLE x; --", "not-a-uuid", rid[:-1] + "g"):
        with pytest.raises(ValueError):
            begin_statement(hostile)
