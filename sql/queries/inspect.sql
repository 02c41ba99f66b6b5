-- Queries of the inspect commands (flux/store/_lookup.py, _why.py, _trace.py, _state.py, _ls.py).

-- name: ids_in_range
-- Request ids starting with a prefix: a range scan of the primary key, not a LIKE.
SELECT request_id::text FROM flux.trace_requests
WHERE request_id BETWEEN %(low)s AND %(high)s
ORDER BY request_id
LIMIT 11;

-- name: record
SELECT * FROM flux.trace_requests WHERE request_id = %(request_id)s;

-- name: mutations_of
SELECT id, table_schema, table_name, pk, op, changes, rolled_back, span_id, at, file, line
FROM flux.state_history
WHERE request_id = %(request_id)s
ORDER BY id;

-- name: last_success
-- Outlines of sampled-out executions (sampled = false) have no tape to compare with. With
-- same_tenant (flux why --ai), only executions of the failed one's tenant are candidates.
-- Imported records (sql/0012) are never this database's baseline: a file could plant one.
SELECT * FROM flux.trace_requests
WHERE function = %(function)s AND status = 'ok' AND sampled AND started_at < %(before)s
  AND imported IS NULL
  AND (NOT %(same_tenant)s OR tenant IS NOT DISTINCT FROM %(tenant)s::text)
ORDER BY started_at DESC
LIMIT 1;

-- name: recent_success_tapes
SELECT tape FROM flux.trace_requests
WHERE function = %(function)s AND status = 'ok' AND sampled AND started_at < %(before)s
  AND imported IS NULL
  AND (NOT %(same_tenant)s OR tenant IS NOT DISTINCT FROM %(tenant)s::text)
ORDER BY started_at DESC
LIMIT %(limit)s;

-- name: has_pgvector
SELECT to_regtype('vector') IS NOT NULL;

-- name: similar_pgvector
-- Earlier failures nearest to this one, by cosine distance of their signature vectors.
SELECT request_id::text, function, class, signature, at,
       (vec::vector <=> %(vec)s::real[]::vector) AS distance
FROM flux.failure_signatures
WHERE request_id <> %(request_id)s AND at <= %(at)s
  AND (NOT %(same_tenant)s OR tenant IS NOT DISTINCT FROM %(tenant)s::text)
ORDER BY vec::vector <=> %(vec)s::real[]::vector, at DESC
LIMIT %(limit)s;

-- name: similar_candidates
-- Without pgvector: the recent failures, ranked in Python.
SELECT request_id::text, function, class, signature, at, vec
FROM flux.failure_signatures
WHERE request_id <> %(request_id)s AND at <= %(at)s
  AND (NOT %(same_tenant)s OR tenant IS NOT DISTINCT FROM %(tenant)s::text)
ORDER BY at DESC
LIMIT 5000;

-- name: signature_stats
SELECT count(*) AS count, min(at) AS first_seen, max(at) AS last_seen
FROM flux.failure_signatures
WHERE signature = %(signature)s AND at <= %(at)s
  AND (NOT %(same_tenant)s OR tenant IS NOT DISTINCT FROM %(tenant)s::text);

-- name: insert_signature
INSERT INTO flux.failure_signatures (request_id, function, class, signature, vec, at, tenant)
VALUES (%(request_id)s, %(function)s, %(class)s, %(signature)s, %(vec)s, %(at)s, %(tenant)s)
ON CONFLICT (request_id) DO NOTHING;

-- name: signature_of
SELECT signature, vec FROM flux.failure_signatures WHERE request_id = %(request_id)s;

-- name: list_executions
SELECT request_id::text, kind, function, method, route, status, http_status, started_at,
       duration_ms, error ->> 'type' AS error_type, error ->> 'message' AS error_message,
       parent_id::text, replay_of::text, resumed_from::text, resumed_by::text,
       imported IS NOT NULL AS imported
FROM flux.trace_requests
WHERE (%(function)s::text IS NULL OR function = %(function)s)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(http_min)s::int IS NULL OR http_status BETWEEN %(http_min)s AND %(http_max)s)
  AND (%(since)s::timestamptz IS NULL OR started_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR started_at < %(until)s)
ORDER BY started_at DESC
LIMIT %(limit)s;

-- name: table_info
-- A table named on the command line, resolved without ever splicing its name into SQL.
SELECT c.oid::regclass::text AS name, c.oid AS oid, flux.primary_key_columns(c.oid) AS pk
FROM pg_class c
WHERE c.oid = to_regclass(%(table)s) AND c.relkind IN ('r', 'p');

-- name: record_id_of
SELECT flux.record_id(%(oid)s::oid::regclass, flux.pk_of(%(oid)s::oid::regclass, %(vals)s));

-- name: history
SELECT at, request_id::text, op, changes, rolled_back, actor, function, code_sha, file, line,
       span_id, pk, source
FROM flux.state_history
WHERE record_id = %(record_id)s
ORDER BY at, id;

-- name: blame_row
SELECT column_name, value, request_id::text, function, code_sha, file, line, at, op, actor, pk
FROM flux.state_blame
WHERE record_id = %(record_id)s
ORDER BY column_name;

-- name: blame_table
-- Blame of every row of a table that has history, newest rows first, up to a limit.
SELECT b.column_name, b.value, b.request_id::text, b.function, b.code_sha, b.file, b.line,
       b.at, b.op, b.actor, b.pk, b.record_id::text
FROM (
    SELECT DISTINCT record_id FROM flux.state_mutations
    WHERE table_oid = %(oid)s AND NOT rolled_back AND record_id IS NOT NULL
    ORDER BY record_id
    LIMIT %(limit)s
) AS r
JOIN LATERAL (SELECT * FROM flux.state_blame WHERE record_id = r.record_id) AS b ON true
ORDER BY b.record_id, b.column_name;

-- name: raw_mutations_of
SELECT table_schema, table_name, pk, op, old, new, changed_cols, rolled_back, span_id
FROM flux.state_mutations
WHERE request_id = %(request_id)s
ORDER BY id;

-- name: incident
-- The original executions (not replays or resumes) an incident replay re-runs, oldest first;
-- outlines of sampled-out successes have no tape to replay.
SELECT request_id::text FROM flux.trace_requests
WHERE kind NOT IN ('replay', 'resume')
  AND function IS NOT NULL
  AND sampled
  AND (%(ids)s::uuid[] IS NULL OR request_id = ANY(%(ids)s::uuid[]))
  AND (%(function)s::text IS NULL OR function = %(function)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(http_min)s::int IS NULL OR http_status BETWEEN %(http_min)s AND %(http_max)s)
  AND (%(since)s::timestamptz IS NULL OR started_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR started_at < %(until)s)
ORDER BY started_at
LIMIT %(limit)s;

-- name: lock_for_resume
-- Held for the whole resume: a second resume, even from another process, is refused.
-- Through SECURITY DEFINER functions (sql/0012): the runtime may not update records.
SELECT status, resumed_by FROM flux.lock_for_resume(%(request_id)s);

-- name: mark_resumed
SELECT flux.mark_resumed(%(request_id)s, %(resumed_by)s);

-- name: last_good_code
-- bisect's default good commit: the code a function last ran successfully before a time.
-- Replays are left out: they ran local code on recorded IO, not a real execution;
-- imported records are not this code's history.
SELECT request_id::text, code_sha, code_dirty FROM flux.trace_requests
WHERE function = %(function)s AND status = 'ok' AND kind <> 'replay'
  AND imported IS NULL
  AND started_at < %(before)s
ORDER BY started_at DESC
LIMIT 1;

-- name: jobs_enqueued
-- The jobs an execution pushed, and what became of them.
SELECT id::text, function, status, attempts, max_attempts, last_request_id::text,
       last_error ->> 'message' AS last_error, run_at
FROM flux.jobs
WHERE parent_id = %(request_id)s
ORDER BY created_at, id;

-- name: parent
SELECT request_id::text, kind, function, method, route, status, http_status, started_at
FROM flux.trace_requests
WHERE request_id = %(request_id)s;

-- name: server_timezone
SELECT current_setting('TimeZone');

-- name: derived
-- The replays and resumes of an execution: ids are time-ordered and the partitions are
-- ranges of them, so only partitions from the original's on are read.
SELECT request_id::text, kind, status, http_status, started_at
FROM flux.trace_requests
WHERE request_id > %(request_id)s
  AND (replay_of = %(request_id)s OR resumed_from = %(request_id)s)
ORDER BY request_id
LIMIT 50;
