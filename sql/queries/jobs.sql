-- The queue worker, the cron scheduler and `flux queue` (flux/jobs/_worker.py, flux/jobs/_cron.py,
-- flux/jobs/_queue.py).

-- name: claim
-- Up to {limit} jobs for this worker, in one statement (autocommit: it is its own
-- transaction, one round trip): first jobs whose lease ran out (their worker died), then
-- the oldest due queued jobs. Both skip rows another worker holds, and the claims (running,
-- lease, attempt + 1, the attempt's request id — the n-th of %(request_ids)s) commit before
-- the jobs run. {limit} is the batch size as a literal (psycopg.sql, flux/jobs/_worker.py),
-- one text per batch size, so that PostgreSQL settles on a generic plan of each prepared
-- statement rather than planning it again at every claim (a LIMIT given as a parameter
-- makes the generic plan look dearer than it is). The same statement settles:
-- - %(done_ids)s / %(done_requests)s: this worker's jobs whose attempts recorded success
--   since its last claim (the worker marks them done here rather than in a round trip
--   each — flux/jobs/_worker.py);
-- - jobs whose lease ran out after their attempt recorded success (the worker died between
--   the execution's commit and marking the job): done, never run again. A success's
--   record commits with its data, so "done" is a fact in flux.trace_requests before it is
--   one in flux.jobs — that makes a job's effects exactly-once across a worker's crash.
WITH settled AS (
    UPDATE flux.jobs j
    SET status = 'done', locked_until = NULL, locked_by = NULL, last_error = NULL,
        updated_at = now()
    FROM unnest(%(done_ids)s::uuid[], %(done_requests)s::uuid[]) AS d (id, request_id)
    WHERE j.id = d.id AND j.last_request_id = d.request_id
), recorded AS (
    SELECT id FROM flux.jobs j
    WHERE status = 'running' AND locked_until < now()
      AND id <> ALL (%(done_ids)s::uuid[])
      AND EXISTS (SELECT FROM flux.trace_requests r
                  WHERE r.request_id = j.last_request_id AND r.status = 'ok')
    FOR UPDATE SKIP LOCKED
), finished AS (
    UPDATE flux.jobs j
    SET status = 'done', locked_until = NULL, locked_by = NULL, last_error = NULL,
        updated_at = now()
    FROM recorded
    WHERE j.id = recorded.id
), expired AS (
    SELECT id FROM flux.jobs j
    WHERE status = 'running' AND locked_until < now()
      AND id <> ALL (%(done_ids)s::uuid[])
      AND NOT EXISTS (SELECT FROM flux.trace_requests r
                      WHERE r.request_id = j.last_request_id AND r.status = 'ok')
    ORDER BY locked_until
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED
), ready AS (
    SELECT id FROM flux.jobs
    WHERE status = 'queued' AND run_at <= now()
    ORDER BY run_at
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED
), pick AS (
    SELECT id, row_number() OVER () AS n
    FROM ((SELECT id FROM expired) UNION ALL (SELECT id FROM ready) LIMIT {limit}) AS p
), claimed AS (
    UPDATE flux.jobs j
    SET status = 'running', attempts = j.attempts + 1,
        locked_until = now() + %(lease)s, locked_by = %(worker)s,
        last_request_id = (%(request_ids)s::uuid[])[pick.n], updated_at = now()
    FROM pick
    WHERE j.id = pick.id
    RETURNING j.id, j.function, j.payload, j.kind, j.attempts, j.max_attempts, j.parent_id,
              j.tenant, j.last_request_id
), attempt AS (
    INSERT INTO flux.job_attempts (job_id, attempt, request_id, worker)
    SELECT id, attempts, last_request_id, %(worker)s FROM claimed
)
SELECT id, function, payload, kind, attempts, max_attempts, parent_id, tenant,
       last_request_id AS request_id
FROM claimed;

-- name: settle_done
-- The successes of this worker not yet marked, when it stops (see claim).
UPDATE flux.jobs j
SET status = 'done', locked_until = NULL, locked_by = NULL, last_error = NULL,
    updated_at = now()
FROM unnest(%(done_ids)s::uuid[], %(done_requests)s::uuid[]) AS d (id, request_id)
WHERE j.id = d.id AND j.last_request_id = d.request_id;

-- name: release
-- Jobs a worker claimed ahead and will not run (it stops, or no slot came free in time):
-- queued again as they were, their unrun attempt given back. The attempt's row stays in
-- flux.job_attempts without an execution, as a crashed worker's does.
UPDATE flux.jobs j
SET status = 'queued', attempts = j.attempts - 1, locked_until = NULL, locked_by = NULL,
    updated_at = now()
FROM unnest(%(ids)s::uuid[], %(request_ids)s::uuid[]) AS r (id, request_id)
WHERE j.id = r.id AND j.last_request_id = r.request_id AND j.status = 'running';

-- name: mark_done
UPDATE flux.jobs
SET status = 'done', locked_until = NULL, locked_by = NULL, last_error = NULL,
    updated_at = now()
WHERE id = %(id)s AND last_request_id = %(request_id)s;

-- name: mark_retry
UPDATE flux.jobs
SET status = 'queued', run_at = now() + %(backoff)s, locked_until = NULL, locked_by = NULL,
    last_error = %(error)s, updated_at = now()
WHERE id = %(id)s AND last_request_id = %(request_id)s;

-- name: mark_dead
UPDATE flux.jobs
SET status = 'dead', locked_until = NULL, locked_by = NULL, last_error = %(error)s,
    updated_at = now()
WHERE id = %(id)s AND last_request_id = %(request_id)s;

-- name: insert_tick
-- The tick row and its job in one statement: only the process whose insert wins the
-- primary key gets a row back, and only it has enqueued the job.
WITH tick AS (
    INSERT INTO flux.cron_ticks (function, tick_at, job_id)
    VALUES (%(function)s, %(tick_at)s, %(job_id)s)
    ON CONFLICT (function, tick_at) DO NOTHING
    RETURNING job_id
)
INSERT INTO flux.jobs (id, function, payload, kind, max_attempts, run_at)
SELECT job_id, %(function)s, %(payload)s, 'cron', %(max_attempts)s, %(tick_at)s FROM tick
RETURNING id;

-- name: list_jobs
SELECT id, function, kind, status, attempts, max_attempts, run_at, locked_until, locked_by,
       idempotency_key, parent_id, last_request_id, last_error, created_at, updated_at
FROM flux.jobs
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(function)s::text IS NULL OR function = %(function)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: jobs_in_range
SELECT id FROM flux.jobs WHERE id BETWEEN %(low)s AND %(high)s ORDER BY id LIMIT 11;

-- name: job
SELECT id, function, kind, status, attempts, max_attempts, run_at, locked_until, locked_by,
       idempotency_key, parent_id, last_request_id, last_error, payload, created_at,
       updated_at
FROM flux.jobs
WHERE id = %(id)s;

-- name: job_attempts
-- Every attempt of a job with the execution it was recorded as; an attempt whose worker
-- died before recording anything has no execution (status is NULL).
SELECT a.attempt, a.request_id, a.worker, a.claimed_at, r.kind, r.status, r.http_status,
       r.started_at, r.duration_ms, r.error ->> 'message' AS error_message
FROM flux.job_attempts a
LEFT JOIN flux.trace_requests r ON r.request_id = a.request_id
WHERE a.job_id = %(id)s
ORDER BY a.claimed_at, a.request_id;

-- name: parent
SELECT request_id, kind, function, method, route, status, http_status, started_at
FROM flux.trace_requests
WHERE request_id = %(request_id)s;

-- name: retry_job
-- A dead job, or a failed one waiting for its next attempt, queued to run now afresh.
UPDATE flux.jobs
SET status = 'queued', attempts = 0, run_at = now(), locked_until = NULL, locked_by = NULL,
    updated_at = now()
WHERE id = %(id)s AND (status = 'dead' OR (status = 'queued' AND last_error IS NOT NULL))
RETURNING id;
