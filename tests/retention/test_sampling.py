"""Sampling ([record] sample_rate): failures are always recorded in full; a sampled-out
success that changed data leaves an outline (sampled = false) so that no committed change
lacks its record; one that changed nothing leaves no record."""

from __future__ import annotations

import json

import psycopg
import pytest

from flux import ConfigError
from flux._project import parse
from flux.runtime._sampling import keeps
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import Shop


def orphans(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT count(*) FROM flux.state_mutations m WHERE m.request_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM flux.trace_requests t "
            "WHERE t.request_id = m.request_id)").fetchone()
    return int(row[0]) if row else -1


@pytest.mark.parametrize("capture_mode", ["trigger", "wal"])
@pytest.mark.parametrize("sample_rate", [0.0])
async def test_rate_zero_records_every_failure_and_outlines_writes(ledger: Shop) -> None:
    writes, reads, failures = [], [], []
    for i in range(25):
        status, _, rid = await ledger.post("post_entry", {"account": f"a{i}", "cents": 3})
        assert status == 200
        writes.append(rid)
        status, _, rid = await ledger.post("balance", {"account": f"a{i}"})
        assert status == 200
        reads.append(rid)
    for i in range(10):
        body = {"account": f"a{i}", "cents": 0} if i % 2 else {"account": i}
        status, _, rid = await ledger.post("post_entry", body)
        assert status == (500 if i % 2 else 400)
        failures.append(rid)

    with psycopg.connect(ledger.db) as conn:
        conn.row_factory = psycopg.rows.dict_row
        records = {str(r["request_id"]): r for r in conn.execute(
            "SELECT request_id, status, sampled, request, response, tape, spans, logs "
            "FROM flux.trace_requests")}
        changes = {str(r["request_id"]): r["n"] for r in conn.execute(
            "SELECT request_id, count(*) AS n FROM flux.state_mutations "
            "WHERE NOT rolled_back GROUP BY 1")}
    # Every failure, in full.
    for rid in failures:
        assert records[rid]["status"] == "error" and records[rid]["sampled"] is True
        assert "body" in records[rid]["request"]
    assert all(records[rid]["tape"] for rid in failures[1::2])  # the 500s reached the db
    # Successes that wrote: outlines, their changes all there.
    for rid in writes:
        outline = records[rid]
        assert outline["sampled"] is False and outline["status"] == "ok"
        assert outline["tape"] == [] and outline["logs"] == []
        assert outline["request"] == {"method": "POST", "route": "post_entry"}
        assert outline["response"] == {"status": 200}
        assert all("attrs" not in s and s["file"] for s in outline["spans"]
                   if s["kind"] == "db")
        assert changes[rid] == 2
    # Successes that only read: nothing.
    assert not set(reads) & set(records)
    assert len(records) == 35
    assert orphans(ledger.db) == 0

    # An outline still says where each change came from, and cannot be replayed.
    env = {"DATABASE_URL": ledger.db}
    history = run_flux(["state", "history", "entries", "--id", "1", "--json"], ledger.root,
                       env=env)
    assert history.returncode == 0, history.stderr
    [row] = json.loads(history.stdout)["rows"]
    assert row["request_id"] == writes[0] and row["file"] == "functions/post_entry.py"
    trace = run_flux(["trace", writes[0][:18], "--json"], ledger.root, env=env)
    assert trace.returncode == 0, trace.stderr
    replay = run_flux(["replay", writes[0][:18]], ledger.root, env=env)
    assert replay.returncode != 0
    assert "was sampled out" in replay.stderr and "Traceback" not in replay.stderr


@pytest.mark.parametrize("sample_rate", [0.5])
async def test_the_decision_is_a_function_of_the_request_id(ledger: Shop) -> None:
    ids = []
    for i in range(30):
        status, _, rid = await ledger.post("post_entry", {"account": f"h{i}"})
        assert status == 200
        ids.append(rid)
    with psycopg.connect(ledger.db) as conn:
        sampled = dict(conn.execute(
            "SELECT request_id::text, sampled FROM flux.trace_requests").fetchall())
    # This process, knowing only the ids, agrees with the server on every one.
    assert sampled == {rid: keeps(rid, 0.5) for rid in ids}
    assert 0 < sum(sampled.values()) < 30
    assert orphans(ledger.db) == 0


@pytest.mark.parametrize("sample_rate", [0.0])
async def test_a_sampled_out_job_attempt_keeps_its_outline(ledger: Shop) -> None:
    """`flux queue show` reads an attempt without a record as one whose worker died."""
    from flux.jobs._worker import Worker

    with psycopg.connect(ledger.db, autocommit=True) as conn:
        job = conn.execute("INSERT INTO flux.jobs (id, function, payload) VALUES "
                           "(gen_random_uuid(), 'balance', '{\"account\": \"a\"}') "
                           "RETURNING id").fetchone()[0]
    assert await Worker(ledger.runtime).drain() == 1
    with psycopg.connect(ledger.db) as conn:
        row = conn.execute("SELECT j.status, t.kind, t.sampled, t.tape FROM flux.jobs j "
                           "JOIN flux.trace_requests t ON t.request_id = j.last_request_id "
                           "WHERE j.id = %s", [job]).fetchone()
    assert row == ("done", "job", False, [])


def test_keeps_is_deterministic_and_follows_the_rate() -> None:
    ids = [f"01a1fd3d-4e21-7281-93a0-{i:012x}" for i in range(4000)]
    assert all(keeps(rid, 1.0) for rid in ids) and not any(keeps(rid, 0.0) for rid in ids)
    kept = [rid for rid in ids if keeps(rid, 0.1)]
    assert 300 < len(kept) < 500
    assert kept == [rid for rid in ids if keeps(rid, 0.1)]
    assert set(kept) <= {rid for rid in ids if keeps(rid, 0.5)}  # a higher rate keeps more


@pytest.mark.parametrize("toml", ["[record]\nsample_rate = 2\n",
                                  '[record]\nsample_rate = "half"\n',
                                  "[record]\nsample_rate = true\n",
                                  "record_sample_rate = -0.1\n"])
def test_bad_sample_rate_is_one_sentence(make_project, flux_cli, toml: str) -> None:
    root = make_project(toml)
    with pytest.raises(ConfigError, match=r"sample_rate must be a number from 0 to 1"):
        parse(root)
    result = flux_cli(["ls"], root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sample_rate_spellings(make_project) -> None:
    assert parse(make_project("[record]\nsample_rate = 0.1\n")).record.sample_rate == 0.1
    assert parse(make_project("record_sample_rate = 0.25\n")).record.sample_rate == 0.25
    assert parse(make_project('name = "x"\n')).record.sample_rate == 1.0
    with pytest.raises(ConfigError, match="set the sample rate once"):
        parse(make_project("record_sample_rate = 0.2\n[record]\nsample_rate = 0.1\n"))
