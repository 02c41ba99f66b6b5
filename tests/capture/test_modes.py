"""The same changes captured by triggers and by the WAL consumer: identical rows."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import psycopg

from flux import _capture
from tests.fixtures.shop import FakeProvider, Shop, serve_app

LEDGER = Path(__file__).resolve().parents[1] / "fixtures" / "apps" / "ledger"
COMPARED = ("request_id", "span_id", "table_schema", "table_name", "record_id", "pk", "op",
            "old", "new", "changed_cols", "actor", "application_name", "rolled_back")


@contextlib.asynccontextmanager
async def ledger(tmp_path: Path, db: str, provider: FakeProvider, *, both: bool = False
                 ) -> AsyncIterator[Shop]:
    root = tmp_path / "ledger"
    shutil.copytree(LEDGER, root)
    (root / "flux.toml").write_text('name = "ledger"\ncapture = "wal"\n')
    async with serve_app(root, db, provider) as app:
        if both:  # triggers back on every table, beside the slot: two captures of one write
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute("SELECT flux.install_capture(c.oid::regclass) FROM pg_class c "
                             "WHERE flux.capturable(c.oid)")
        yield app


def rows(db: str, source: str) -> Counter[bytes]:
    with psycopg.connect(db) as conn:
        conn.row_factory = psycopg.rows.dict_row
        found = conn.execute(
            f"SELECT {', '.join(COMPARED)} FROM flux.state_mutations WHERE source = %s "
            "OR (source = 'executor' AND %s = 'trigger')", [source, source]).fetchall()
    return Counter(orjson.dumps(r, default=str, option=orjson.OPT_SORT_KEYS) for r in found)


async def test_trigger_and_wal_store_identical_rows(tmp_path: Path, db: str,
                                                    provider: FakeProvider) -> None:
    async with ledger(tmp_path, db, provider, both=True) as app:
        for i in range(1, 101):
            status, body, _ = await app.post("open_account", {"id": i, "owner": f"o{i}"})
            assert status == 200, body

        async def transfer(n: int) -> None:
            status, body, _ = await app.post("transfer", {
                "from": n % 100 + 1, "to": (n * 7 + 1) % 100 + 1, "amount": 1.25, "seq": n,
                "fail": n % 50 == 0})
            assert status == (500 if n % 50 == 0 else 200), body

        for start in range(0, 1000, 50):
            await asyncio.gather(*(transfer(n) for n in range(start, start + 50)))
        for k in range(60):
            status, body, _ = await app.post("bulk", {"upto": 100, "tag": f"t{k}"})
            assert status == 200 and body["rows"] == 100, body
        for i in range(1, 11):
            status, _, _ = await app.post("close_account", {"id": i})
            assert status == 200
        with psycopg.connect(db, autocommit=True) as conn:  # a write from outside Flux
            conn.execute("SET application_name = 'psql'")
            conn.execute("UPDATE accounts SET notes = repeat(md5(id::text), 400) WHERE id = 50")
            conn.execute("UPDATE accounts SET owner = 'renamed' WHERE id = 50")  # TOAST kept
            conn.execute("TRUNCATE events")
        _capture.wait_caught_up(db)
        by_trigger, by_wal = rows(db, "trigger"), rows(db, "wal")
    wal_total = sum(by_wal.values())
    assert wal_total >= 10_000
    # Rolled-back attempts never reach the WAL: the executor stores them in both modes.
    rolled_back = sum(n for r, n in by_trigger.items() if b'"rolled_back":true' in r)
    assert rolled_back == 20 * 4
    assert by_trigger - by_wal == Counter({r: n for r, n in by_trigger.items()
                                          if b'"rolled_back":true' in r})
    assert by_wal - by_trigger == Counter()
