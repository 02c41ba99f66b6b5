-- Portable record files (flux/_portable.py).

-- name: mutations_of
SELECT table_schema, table_name, pk, op, old, new, changed_cols, rolled_back, span_id,
       committed_at, source
FROM flux.state_mutations
WHERE request_id = %(request_id)s
ORDER BY id;

-- name: insert_record
INSERT INTO flux.trace_requests (
    request_id, kind, function, runtime, method, route, status, http_status, started_at,
    duration_ms, request, response, error, spans, tape, logs, code_sha, code_dirty, tenant,
    parent_id, replay_of, resumed_from)
VALUES (
    %(request_id)s, %(kind)s, %(function)s, %(runtime)s, %(method)s, %(route)s, %(status)s,
    %(http_status)s, %(started_at)s, %(duration_ms)s, %(request)s, %(response)s, %(error)s,
    %(spans)s, %(tape)s, %(logs)s, %(code_sha)s, %(code_dirty)s, %(tenant)s, %(parent_id)s,
    %(replay_of)s, %(resumed_from)s)
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id;

-- name: insert_mutation
-- An imported change, tied to this database's table of the same name if there is one.
INSERT INTO flux.state_mutations (
    record_id, table_oid, table_schema, table_name, pk, op, old, new, changed_cols,
    rolled_back, span_id, committed_at, source, request_id)
SELECT CASE WHEN t.oid IS NOT NULL AND %(pk)s::jsonb IS NOT NULL
            THEN flux.record_id(t.oid, %(pk)s::jsonb) END,
       t.oid, %(table_schema)s, %(table_name)s, %(pk)s, %(op)s, %(old)s, %(new)s,
       %(changed_cols)s, %(rolled_back)s, %(span_id)s, %(committed_at)s, %(source)s,
       %(request_id)s
FROM (SELECT to_regclass(quote_ident(%(table_schema)s) || '.' || quote_ident(%(table_name)s))
             AS oid) AS t;
