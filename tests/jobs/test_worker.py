"""The queue worker: retries with backoff, the dead state, transactional pushes,
idempotency keys, the visibility timeout, and many workers sharing one table."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import psycopg
import pytest

from flux.jobs import _worker as worker_module
from flux.jobs._queue import show_job
from flux.jobs._worker import Background, Worker, backoff
from tests.fixtures.projects import run_flux
from tests.jobs.conftest import FAST, next_attempt, query, runtime_for


def test_backoff_doubles_with_bounded_jitter() -> None:
    assert backoff(1, 1.0, 600, rand=lambda: 0.5) == 1.0
    assert backoff(3, 1.0, 600, rand=lambda: 0.5) == 4.0
    assert backoff(30, 1.0, 600, rand=lambda: 0.5) == 600
    low = backoff(1, 1.0, 600, rand=lambda: 0.0)
    high = backoff(1, 1.0, 600, rand=lambda: 0.999)
    assert 0.75 <= low <= high <= 1.25


def _executions(db: str, parent: str) -> list[dict]:
    return query(db, "SELECT request_id, kind, function, status, started_at, duration_ms "
                     "FROM flux.trace_requests WHERE parent_id = %s ORDER BY request_id",
                 [parent])


async def test_job_that_fails_twice_succeeds_on_third_attempt_with_backoff(shop) -> None:
    worker = Worker(shop.runtime, FAST)
    shop.provider.mode = "error"
    status, _, request_id = await shop.post("signup", {"email": "ada@example.com"})
    assert status == 200
    assert await next_attempt(worker) == "queued"
    assert await next_attempt(worker) == "queued"
    shop.provider.mode = "ok"
    assert await next_attempt(worker) == "done"

    runs = _executions(shop.db, request_id)
    assert [(r["kind"], r["function"], r["status"]) for r in runs] == [
        ("job", "send_welcome_email", "error"), ("job", "send_welcome_email", "error"),
        ("job", "send_welcome_email", "ok")]
    [job] = query(shop.db, "SELECT * FROM flux.jobs WHERE parent_id = %s", [request_id])
    assert (job["status"], job["attempts"], job["max_attempts"]) == ("done", 3, 4)
    assert job["last_request_id"] == runs[-1]["request_id"]
    claims = query(shop.db, "SELECT attempt, request_id, claimed_at FROM flux.job_attempts "
                            "WHERE job_id = %s ORDER BY attempt", [job["id"]])
    assert [c["request_id"] for c in claims] == [r["request_id"] for r in runs]
    # Each attempt waits its backoff after the previous one ended: 0.2 s then 0.4 s, ±25 %.
    for expected, previous, claim in zip((0.2, 0.4), runs[:2], claims[1:], strict=True):
        ended = previous["started_at"] + dt.timedelta(milliseconds=previous["duration_ms"])
        gap = (claim["claimed_at"] - ended).total_seconds()
        assert expected * 0.75 - 0.02 <= gap <= expected * 1.25 + 1.0, (expected, gap)


async def test_job_that_always_fails_ends_dead_and_why_leads_to_the_request(shop) -> None:
    worker = Worker(shop.runtime, FAST)
    shop.provider.mode = "error"
    _, _, request_id = await shop.post("signup", {"email": "bob@example.com"})
    statuses = [await next_attempt(worker) for _ in range(4)]  # retries=3: four attempts
    assert statuses == ["queued", "queued", "queued", "dead"]
    [job] = query(shop.db, "SELECT * FROM flux.jobs WHERE parent_id = %s", [request_id])
    assert job["status"] == "dead" and job["last_error"]["message"]
    last = str(job["last_request_id"])
    env = {"DATABASE_URL": shop.db}

    why = run_flux(["why", "--json", last], shop.root, env=env)
    assert why.returncode == 0, why.stderr
    document = json.loads(why.stdout)
    assert document["parent_id"] == request_id
    assert document["status"] == "error"

    show = run_flux(["queue", "show", "--json", str(job["id"])[:20]], shop.root, env=env)
    assert show.returncode == 0, show.stderr
    shown = json.loads(show.stdout)
    assert shown["parent"]["request_id"] == request_id
    assert [e["status"] for e in shown["executions"]] == ["error"] * 4
    assert shown["executions"][-1]["request_id"] == last

    dead = run_flux(["queue", "dead", "--json"], shop.root, env=env)
    assert [j["id"] for j in json.loads(dead.stdout)["jobs"]] == [str(job["id"])]
    retry = run_flux(["queue", "retry", "--json", str(job["id"])], shop.root, env=env)
    assert retry.returncode == 0, retry.stderr
    assert (json.loads(retry.stdout)["status"], json.loads(retry.stdout)["attempts"]) == \
        ("queued", 0)
    shop.provider.mode = "ok"
    assert await next_attempt(worker) == "done"
    again = run_flux(["queue", "retry", str(job["id"])], shop.root, env=env)
    assert again.returncode == 1 and "only a dead or failed job" in again.stderr


async def test_a_failing_request_leaves_no_job_and_a_committed_one_does(jobs_app) -> None:
    status, _, failed = await jobs_app.post("enqueue", {"payload": {"n": 1}, "fail": True})
    assert status == 500
    assert jobs_app.record(failed)["status"] == "error"
    assert query(jobs_app.db, "SELECT id FROM flux.jobs") == []
    assert query(jobs_app.db, "SELECT id FROM notes") == []
    status, body, ok = await jobs_app.post("enqueue", {"payload": {"n": 2}})
    assert status == 200
    [job] = query(jobs_app.db, "SELECT id, parent_id, payload FROM flux.jobs")
    assert (str(job["id"]), str(job["parent_id"]), job["payload"]) == (body["job_id"], ok, {"n": 2})


async def test_a_second_push_with_the_same_idempotency_key_is_a_no_op(jobs_app) -> None:
    _, first, _ = await jobs_app.post("enqueue", {"payload": {"n": 1}, "key": "k1"})
    _, second, _ = await jobs_app.post("enqueue", {"payload": {"n": 2}, "key": "k1"})
    assert first["job_id"] == second["job_id"]
    assert [r["payload"] for r in query(jobs_app.db, "SELECT payload FROM flux.jobs")] == \
        [{"n": 1}]


async def test_a_delayed_job_waits_for_its_time(jobs_app) -> None:
    worker = Worker(jobs_app.runtime, FAST)
    await jobs_app.post("enqueue", {"payload": {}, "delay": "0.5s"})
    assert await worker.claim() is None
    assert await next_attempt(worker) == "done"


async def test_a_job_held_by_a_crashed_worker_runs_again_after_its_lease(jobs_app) -> None:
    worker = Worker(jobs_app.runtime, FAST)
    _, body, request_id = await jobs_app.post("enqueue", {"payload": {"n": 1}})
    job_id = body["job_id"]
    lost = str(uuid.uuid4())
    # A worker claimed it, then died: running, one attempt spent, lease still valid.
    query(jobs_app.db, "UPDATE flux.jobs SET status = 'running', attempts = 1, "
                       "locked_by = 'crashed', locked_until = now() + interval '1 hour', "
                       "last_request_id = %s WHERE id = %s", [lost, job_id])
    query(jobs_app.db, "INSERT INTO flux.job_attempts (job_id, attempt, request_id, worker) "
                       "VALUES (%s, 1, %s, 'crashed')", [job_id, lost])
    assert await worker.claim() is None  # the lease holds
    query(jobs_app.db, "UPDATE flux.jobs SET locked_until = now() - interval '1 second' "
                       "WHERE id = %s", [job_id])
    assert await next_attempt(worker) == "done"
    [job] = query(jobs_app.db, "SELECT status, attempts FROM flux.jobs WHERE id = %s", [job_id])
    assert (job["status"], job["attempts"]) == ("done", 2)
    runs = _executions(jobs_app.db, request_id)
    assert [(r["kind"], r["status"]) for r in runs] == [("job", "ok")]
    with psycopg.connect(jobs_app.db, autocommit=True) as conn:
        shown = show_job(conn, job_id)
    assert [(e["attempt"], e["status"]) for e in shown["executions"]] == [(1, None), (2, "ok")]


async def test_a_job_of_an_unknown_function_is_dead_at_once(jobs_app) -> None:
    worker = Worker(jobs_app.runtime, FAST)
    query(jobs_app.db, "INSERT INTO flux.jobs (id, function, max_attempts) "
                       "VALUES (%s, 'nowhere', 3)", [str(uuid.uuid4())])
    assert await next_attempt(worker) == "dead"
    [job] = query(jobs_app.db, "SELECT last_error FROM flux.jobs")
    assert "no function named 'nowhere'" in job["last_error"]["message"]


def noop_jobs(db: str, n: int) -> None:
    """``n`` due no-op jobs, payloads ``{"i": 1…n}``."""
    query(db, "INSERT INTO flux.jobs (id, function, payload) "
              "SELECT gen_random_uuid(), 'noop', jsonb_build_object('i', i) "
              "FROM generate_series(1, %s) AS i", [n])


async def run_until_done(worker: Worker, db: str, n: int) -> None:
    """Run ``worker`` until ``n`` jobs are done, then stop it."""
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(20):
        while query(db, "SELECT count(*) AS n FROM flux.jobs "
                        "WHERE status = 'done'")[0]["n"] < n:
            await asyncio.sleep(0.02)
    worker.stop()
    await task


async def test_two_workers_on_one_database_run_each_job_exactly_once(jobs_app) -> None:
    n = 200
    noop_jobs(jobs_app.db, n)
    async with runtime_for(jobs_app.root, jobs_app.db) as other:
        workers = [Worker(jobs_app.runtime, FAST, name="a"), Worker(other, FAST, name="b")]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            async with asyncio.timeout(40):
                while query(jobs_app.db, "SELECT count(*) AS n FROM flux.jobs "
                                         "WHERE status = 'done'")[0]["n"] < n:
                    await asyncio.sleep(0.1)
        finally:
            for w in workers:
                w.stop()
            await asyncio.gather(*tasks)
    per_job = query(jobs_app.db, """
        SELECT j.id, count(r.request_id) AS runs, min(a.worker) AS worker
        FROM flux.jobs j
        JOIN flux.job_attempts a ON a.job_id = j.id
        LEFT JOIN flux.trace_requests r ON r.request_id = a.request_id AND r.kind = 'job'
        GROUP BY j.id""")
    assert len(per_job) == n
    assert all(r["runs"] == 1 for r in per_job)
    assert query(jobs_app.db, "SELECT count(*) AS n FROM flux.trace_requests "
                              "WHERE kind = 'job'")[0]["n"] == n
    assert {r["worker"] for r in per_job} == {"a", "b"}  # both took a share


async def test_the_background_worker_of_a_serving_process_runs_pushed_jobs(jobs_app) -> None:
    jobs = Background(jobs_app.runtime, FAST).start()
    try:
        await jobs_app.post("enqueue", {"payload": {"n": 1}})
        async with asyncio.timeout(10):
            while query(jobs_app.db, "SELECT status FROM flux.jobs")[0]["status"] != "done":
                await asyncio.sleep(0.05)
    finally:
        await jobs.stop()


async def test_trace_and_why_show_the_hand_off_both_ways(shop) -> None:
    """The request lists the jobs it enqueued and their fate; a job names its parent."""
    import json

    import psycopg

    from flux.jobs._worker import Worker
    from tests.fixtures.projects import run_flux

    _, _, signup = await shop.post("signup", {"email": "handoff@example.com"})
    shop.provider.mode = "error"
    await Worker(shop.runtime).drain()
    with psycopg.connect(shop.db) as conn:
        (job_run,) = conn.execute("SELECT request_id::text FROM flux.trace_requests "
                                  "WHERE kind = 'job'").fetchone()
    env = {"DATABASE_URL": shop.db}
    trace = json.loads(run_flux(["trace", signup[:18], "--json"], shop.root, env=env).stdout)
    [job] = trace["jobs"]
    assert job["function"] == "send_welcome_email" and job["last_request_id"] == job_run
    assert job["status"] == "queued" and job["attempts"] == 1  # it will be retried
    why = json.loads(run_flux(["why", job_run[:18], "--json"], shop.root, env=env).stdout)
    assert why["parent_id"] == signup
    assert why["handoff"]["parent"]["function"] == "signup"
    text = run_flux(["why", job_run[:18]], shop.root, env=env).stdout
    assert f"Enqueued by {signup[:18]}" in text


async def test_a_job_execution_replays_from_its_tape(shop) -> None:
    import json

    import psycopg

    from flux.jobs._worker import Worker
    from tests.fixtures.projects import run_flux

    await shop.post("signup", {"email": "replayjob@example.com"})
    await Worker(shop.runtime).drain()
    with psycopg.connect(shop.db) as conn:
        (job_run,) = conn.execute("SELECT request_id::text FROM flux.trace_requests "
                                  "WHERE kind = 'job'").fetchone()
    emails = shop.provider.emails
    result = run_flux(["replay", job_run[:18], "--expect", "same", "--json"], shop.root,
                      env={"DATABASE_URL": shop.db})
    assert result.returncode == 0, result.stdout + result.stderr
    facts = json.loads(result.stdout)
    assert facts["passed"] and facts["replayed"]["output"] == {
        "sent_to": "replayjob@example.com"}
    assert shop.provider.emails == emails  # the email was not sent again


async def test_one_claim_takes_a_batch_and_marks_the_previous_successes_done(jobs_app) -> None:
    query(jobs_app.db, "INSERT INTO flux.jobs (id, function, payload) "
                       "SELECT gen_random_uuid(), 'noop', jsonb_build_object('i', i) "
                       "FROM generate_series(1, 5) AS i")
    worker = Worker(jobs_app.runtime, FAST, name="batch")
    first = await worker.claim_many(3)
    assert len(first) == 3 and len({j.request_id for j in first}) == 3
    for job in first:  # as the run loop does: successes wait for the next claim
        assert await worker.run_job(job, defer_done=True) == "done"
    statuses = query(jobs_app.db, "SELECT status, count(*) AS n FROM flux.jobs GROUP BY 1")
    assert {r["status"]: r["n"] for r in statuses} == {"running": 3, "queued": 2}
    second = await worker.claim_many(3)  # the two left, and the three successes marked
    assert len(second) == 2
    statuses = query(jobs_app.db, "SELECT status, count(*) AS n FROM flux.jobs GROUP BY 1")
    assert {r["status"]: r["n"] for r in statuses} == {"done": 3, "running": 2}
    attempts = query(jobs_app.db, "SELECT a.request_id, j.last_request_id FROM "
                                  "flux.job_attempts a JOIN flux.jobs j ON j.id = a.job_id")
    assert sorted(str(a["request_id"]) for a in attempts) == \
        sorted(j.request_id for j in first + second)
    assert all(a["request_id"] == a["last_request_id"] for a in attempts)


async def test_a_success_not_yet_marked_when_its_worker_died_is_done_not_run_again(
        jobs_app) -> None:
    _, _, request_id = await jobs_app.post("enqueue", {"payload": {"n": 1}})
    worker = Worker(jobs_app.runtime, FAST)
    job = await worker.claim()
    assert job is not None and await worker.run_job(job, defer_done=True) == "done"
    # The worker dies here: its execution committed (record ok), the job is still running.
    assert query(jobs_app.db, "SELECT status FROM flux.jobs")[0]["status"] == "running"
    query(jobs_app.db, "UPDATE flux.jobs SET locked_until = now() - interval '1 second'")
    other = Worker(jobs_app.runtime, FAST, name="after")
    assert await other.claim() is None  # nothing to run: the lost success is marked
    [row] = query(jobs_app.db, "SELECT status, attempts, last_request_id FROM flux.jobs")
    assert (row["status"], row["attempts"], str(row["last_request_id"])) == \
        ("done", 1, job.request_id)
    assert [(r["kind"], r["status"]) for r in _executions(jobs_app.db, request_id)] == \
        [("job", "ok")]


async def test_a_stopping_worker_marks_its_last_successes_done(jobs_app) -> None:
    query(jobs_app.db, "INSERT INTO flux.jobs (id, function) "
                       "SELECT gen_random_uuid(), 'noop' FROM generate_series(1, 3)")
    worker = Worker(jobs_app.runtime, FAST)
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(20):
        while query(jobs_app.db, "SELECT count(*) AS n FROM flux.trace_requests "
                                 "WHERE kind = 'job' AND status = 'ok'")[0]["n"] < 3:
            await asyncio.sleep(0.02)
    worker.stop()
    await task
    assert query(jobs_app.db, "SELECT count(*) AS n FROM flux.jobs "
                              "WHERE status = 'done'")[0]["n"] == 3


async def test_records_of_jobs_that_wrote_nothing_commit_with_their_done_marks(
        jobs_app) -> None:
    noop_jobs(jobs_app.db, 6)
    await run_until_done(Worker(jobs_app.runtime, FAST), jobs_app.db, 6)
    rows = query(jobs_app.db, """
        SELECT j.xmin::text AS marked, r.xmin::text AS recorded, r.status, r.kind,
               r.response -> 'body' AS output, j.payload
        FROM flux.jobs j LEFT JOIN flux.trace_requests r ON r.request_id = j.last_request_id""")
    assert len(rows) == 6
    assert all((r["status"], r["kind"], r["output"]) == ("ok", "job", r["payload"])
               for r in rows)
    # Each record committed in the transaction that marked its job done, several at a time.
    assert all(r["marked"] == r["recorded"] for r in rows)
    assert len({r["recorded"] for r in rows}) < 6


async def test_a_success_whose_record_died_with_its_worker_runs_again(jobs_app) -> None:
    _, _, request_id = await jobs_app.post("enqueue", {"payload": {"n": 1}})
    worker = Worker(jobs_app.runtime, FAST)
    job = await worker.claim()
    assert job is not None
    assert await worker.run_job(job, defer_done=True, keep_record=True) == "done"
    # The worker dies here, its record kept for its next claim: nothing was written.
    assert _executions(jobs_app.db, request_id) == []
    query(jobs_app.db, "UPDATE flux.jobs SET locked_until = now() - interval '1 second'")
    other = Worker(jobs_app.runtime, FAST, name="after")
    assert await next_attempt(other) == "done"
    [row] = query(jobs_app.db, "SELECT id, status, attempts FROM flux.jobs")
    assert (row["status"], row["attempts"]) == ("done", 2)
    assert [(r["kind"], r["status"]) for r in _executions(jobs_app.db, request_id)] == \
        [("job", "ok")]
    with psycopg.connect(jobs_app.db, autocommit=True) as conn:
        shown = show_job(conn, str(row["id"]))
    assert [(e["attempt"], e["status"]) for e in shown["executions"]] == [(1, None), (2, "ok")]


async def test_a_job_that_called_out_stores_its_record_at_once_and_never_runs_again(
        jobs_app) -> None:
    """A record is kept for the next claim's batch only if its job reached nothing outside:
    one that sent an e-mail is stored before the done-mark, so a worker dying in between
    leaves an ok record — the job is marked done, not run (and sent) again."""
    await jobs_app.post("enqueue", {"function": "notify", "payload": {
        "url": jobs_app.provider.url, "to": "ada@example.com"}})
    worker = Worker(jobs_app.runtime, FAST)
    job = await worker.claim()
    assert job is not None and job.function == "notify"
    assert await worker.run_job(job, defer_done=True, keep_record=True) == "done"
    # The worker dies here, before any claim carried its done-mark.
    [stored] = query(jobs_app.db, "SELECT status FROM flux.trace_requests "
                                  "WHERE request_id = %s", [job.request_id])
    assert stored["status"] == "ok" and jobs_app.provider.emails == 1
    query(jobs_app.db, "UPDATE flux.jobs SET locked_until = now() - interval '1 second'")
    other = Worker(jobs_app.runtime, FAST, name="after")
    assert await other.claim_many(4) == []
    [row] = query(jobs_app.db, "SELECT status, attempts FROM flux.jobs WHERE id = %s",
                  [job.id])
    assert (row["status"], row["attempts"]) == ("done", 1)
    assert jobs_app.provider.emails == 1


async def test_a_record_the_batch_refuses_is_stored_apart_and_the_others_go_on(
        jobs_app) -> None:
    query(jobs_app.db, "INSERT INTO flux.jobs (id, function, payload) "
                       "SELECT gen_random_uuid(), 'noop', jsonb_build_object('i', i) "
                       "FROM generate_series(1, 2) AS i")
    worker = Worker(jobs_app.runtime, FAST)
    refused, kept = await worker.claim_many(2)
    for job in (refused, kept):
        assert await worker.run_job(job, defer_done=True, keep_record=True) == "done"
    query(jobs_app.db, "ALTER TABLE flux.trace_requests ADD CONSTRAINT refuse_one "
                       f"CHECK (request_id <> '{refused.request_id}')")
    with pytest.raises(psycopg.errors.CheckViolation):
        await worker.claim_many(2)  # the batch fails whole: no mark, no record
    assert await worker.claim_many(2) == []  # the stored record's job is marked now
    rows = query(jobs_app.db, "SELECT j.status, r.status AS recorded FROM flux.jobs j "
                              "LEFT JOIN flux.trace_requests r "
                              "ON r.request_id = j.last_request_id WHERE j.id = %s", [kept.id])
    assert [(r["status"], r["recorded"]) for r in rows] == [("done", "ok")]
    # The refused one stays running without a record: it runs again after its lease.
    [row] = query(jobs_app.db, "SELECT status FROM flux.jobs WHERE id = %s", [refused.id])
    assert row["status"] == "running"


async def test_quick_jobs_are_claimed_ahead_and_those_not_started_in_time_are_given_back(
        jobs_app, monkeypatch) -> None:
    monkeypatch.setattr(worker_module, "QUICK", 3600.0)  # every attempt counts as quick
    noop_jobs(jobs_app.db, 24)
    worker = Worker(jobs_app.runtime, FAST)
    await run_until_done(worker, jobs_app.db, 24)
    batches = query(jobs_app.db, "SELECT count(*) AS n FROM flux.job_attempts "
                                 "GROUP BY claimed_at")
    assert max(b["n"] for b in batches) > FAST.concurrency  # claimed ahead of free slots

    # A job claimed ahead that found no free slot in time is queued again, unrun.
    query(jobs_app.db, "INSERT INTO flux.jobs (id, function) VALUES (gen_random_uuid(), 'noop')")
    [job] = await worker.claim_many(1)
    worker._ready.append((asyncio.get_running_loop().time() - worker_module.AHEAD_WAIT - 1,
                          job))
    await worker._start_ready(FAST.concurrency)
    assert not worker._ready and not worker._running
    [row] = query(jobs_app.db, "SELECT status, attempts FROM flux.jobs WHERE id = %s", [job.id])
    assert (row["status"], row["attempts"]) == ("queued", 0)
    assert await next_attempt(worker) == "done"
    with psycopg.connect(jobs_app.db, autocommit=True) as conn:
        shown = show_job(conn, job.id)
    assert [(e["attempt"], e["status"]) for e in shown["executions"]] == [(1, None), (1, "ok")]


async def test_a_stopping_worker_gives_back_the_jobs_it_claimed_ahead(jobs_app) -> None:
    query(jobs_app.db, "INSERT INTO flux.jobs (id, function) "
                       "SELECT gen_random_uuid(), 'noop' FROM generate_series(1, 2)")
    worker = Worker(jobs_app.runtime, FAST)
    claimed = await worker.claim_many(2)
    worker._ready.extend((asyncio.get_running_loop().time(), job) for job in claimed)
    worker.stop()
    await worker.run()
    rows = query(jobs_app.db, "SELECT status, attempts, locked_by FROM flux.jobs")
    assert [(r["status"], r["attempts"], r["locked_by"]) for r in rows] == \
        [("queued", 0, None)] * 2
    assert query(jobs_app.db, "SELECT count(*) AS n FROM flux.trace_requests "
                              "WHERE kind = 'job'")[0]["n"] == 0
