-- 0003: history and blame, as views usable straight from psql.
--
--   SELECT * FROM flux.state_history WHERE table_name = 'users' AND pk = '{"id": 42}';
--   SELECT * FROM flux.state_blame   WHERE table_name = 'users' AND pk = '{"id": 42}';
--
-- Filter on record_id (flux.record_id('users'::regclass, '{"id": 42}')) to use the index.

-- The span an execution recorded under a span id: its call site and function.
CREATE FUNCTION flux.span_of(spans jsonb, span_id text) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN jsonb_path_query_first(spans, '$[*] ? (@.id == $sid)', jsonb_build_object('sid', span_id));

CREATE VIEW flux.state_history AS
SELECT
    m.id,
    m.record_id,
    m.table_oid,
    m.table_schema,
    m.table_name,
    m.pk,
    m.committed_at AS at,
    m.request_id,
    m.span_id,
    m.op,
    coalesce((
        SELECT jsonb_object_agg(c, jsonb_build_array(m.old -> c, m.new -> c))
        FROM unnest(m.changed_cols) AS c), '{}'::jsonb) AS changes,
    m.rolled_back,
    CASE WHEN m.request_id IS NULL
         THEN concat_ws(' ', m.actor, '(' || nullif(m.application_name, '') || ')')
         ELSE coalesce(t.function, 'flux')
    END AS actor,
    t.function,
    t.code_sha,
    s.span ->> 'file' AS file,
    (s.span ->> 'line')::integer AS line,
    m.source
FROM flux.state_mutations AS m
LEFT JOIN flux.trace_requests AS t ON t.request_id = m.request_id
LEFT JOIN LATERAL (SELECT flux.span_of(t.spans, m.span_id) AS span) AS s ON true;

-- Each column's current value, attributed to the last committed change that wrote it.
-- Rolled-back attempts never count. The newest change per column is picked first and only
-- those few are joined to their executions, so a row with thousands of changes stays fast.
CREATE VIEW flux.state_blame AS
SELECT
    b.record_id,
    b.table_oid,
    b.table_schema,
    b.table_name,
    b.pk,
    b.column_name,
    b.value,
    b.op,
    b.request_id,
    t.function,
    t.code_sha,
    s.span ->> 'file' AS file,
    (s.span ->> 'line')::integer AS line,
    b.at,
    CASE WHEN b.request_id IS NULL
         THEN concat_ws(' ', b.actor, '(' || nullif(b.application_name, '') || ')')
         ELSE coalesce(t.function, 'flux')
    END AS actor
FROM (
    SELECT DISTINCT ON (m.record_id, c.col)
        m.record_id, m.table_oid, m.table_schema, m.table_name, m.pk,
        c.col AS column_name, m.new -> c.col AS value, m.op, m.request_id, m.span_id,
        m.committed_at AS at, m.actor, m.application_name
    FROM flux.state_mutations AS m
    CROSS JOIN LATERAL unnest(m.changed_cols) AS c(col)
    WHERE NOT m.rolled_back AND m.op <> 'TRUNCATE'
    ORDER BY m.record_id, c.col, m.committed_at DESC, m.id DESC
) AS b
LEFT JOIN flux.trace_requests AS t ON t.request_id = b.request_id
LEFT JOIN LATERAL (SELECT flux.span_of(t.spans, b.span_id) AS span) AS s ON true;
