-- Portable record files (flux/store/_portable.py).

-- name: mutations_of
SELECT table_schema, table_name, pk, op, old, new, changed_cols, rolled_back, span_id,
       committed_at, source
FROM flux.state_mutations
WHERE request_id = %(request_id)s
ORDER BY id;

-- name: insert_mutation
-- An imported change, tied to this database's table of the same name if there is one.
INSERT INTO flux.state_mutations (
    record_id, table_oid, table_schema, table_name, pk, op, old, new, changed_cols,
    rolled_back, span_id, committed_at, source, request_id, tenant)
SELECT CASE WHEN t.oid IS NOT NULL AND %(pk)s::jsonb IS NOT NULL
            THEN flux.record_id(t.oid, %(pk)s::jsonb) END,
       t.oid, %(table_schema)s, %(table_name)s, %(pk)s, %(op)s, %(old)s, %(new)s,
       %(changed_cols)s, %(rolled_back)s, %(span_id)s, %(committed_at)s, %(source)s,
       %(request_id)s, %(tenant)s
FROM (SELECT to_regclass(quote_ident(%(table_schema)s) || '.' || quote_ident(%(table_name)s))
             AS oid) AS t;
