-- Queries of scripts/docs.py, which generates parts of docs/ (the runtime never runs them).

-- name: relations
SELECT c.oid::regclass::text AS name,
       CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END AS kind
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = 'flux' AND c.relkind IN ('r', 'p', 'v') AND NOT c.relispartition
ORDER BY c.relname;

-- name: columns
SELECT a.attname AS name,
       format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AS not_null,
       CASE WHEN a.attidentity <> '' THEN 'identity'
            ELSE pg_get_expr(d.adbin, d.adrelid) END AS "default"
FROM pg_attribute AS a
LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %(relation)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: constraints
SELECT pg_get_constraintdef(oid) AS definition
FROM pg_constraint
WHERE conrelid = %(relation)s::regclass AND contype IN ('p', 'u', 'c', 'f')
ORDER BY contype = 'p' DESC, conname;

-- name: indexes
SELECT regexp_replace(pg_get_indexdef(i.indexrelid),
                      '^CREATE (UNIQUE )?INDEX \S+ ON (ONLY )?\S+ ', '\1') AS definition
FROM pg_index AS i
WHERE i.indrelid = %(relation)s::regclass AND NOT i.indisprimary
ORDER BY i.indexrelid::regclass::text;

-- Examples for psql users (docs/schema.md), run with `flux db psql -c`.

-- name: example_failures
SELECT left(request_id::text, 18) AS id, function, http_status, error->>'type' AS error FROM flux.trace_requests WHERE status = 'error' AND kind = 'http' ORDER BY request_id

-- name: example_history
SELECT op, changes->'plan' AS plan, function, file, line, rolled_back FROM flux.state_history WHERE table_name = 'users' AND pk = '{"id": 1}' ORDER BY at, id

-- name: example_blame
SELECT column_name, value, function, file, line FROM flux.state_blame WHERE record_id = flux.record_id('orders'::regclass, '{"id": 1}') AND column_name NOT IN ('created_at', 'updated_at') ORDER BY column_name

-- name: example_request_changes
SELECT table_name, pk, op, changed_cols, rolled_back FROM flux.state_mutations WHERE request_id::text LIKE %(request)s ORDER BY id

-- name: example_jobs
SELECT function, status, attempts, max_attempts, left(parent_id::text, 18) AS pushed_by FROM flux.jobs ORDER BY created_at
