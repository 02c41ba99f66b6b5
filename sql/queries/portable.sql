-- Portable record files (flux/store/_portable.py).

-- name: mutations_of
SELECT table_schema, table_name, pk, op, old, new, changed_cols, rolled_back, span_id,
       committed_at, source
FROM flux.state_mutations
WHERE request_id = %(request_id)s
ORDER BY id;

-- name: narrow
-- The import's transaction narrowed to the operator's tenant ('' for none), as an
-- execution's is: the columns default to it and the policies check it (sql/0010).
SELECT set_config('flux.tenant', %(tenant)s, true);

-- name: mark_imported
-- An imported execution says so, and who imported it when (sql/0012).
UPDATE flux.trace_requests
SET imported = %(imported)s::jsonb
               || jsonb_build_object('at', now(), 'by', session_user::text)
WHERE request_id = %(request_id)s;

-- name: insert_mutation
-- An imported change: its own, tied to no row of this database (no record_id, no
-- table_oid), so history and blame of a local row never show it; `flux why` of the
-- imported execution lists it by request id.
INSERT INTO flux.state_mutations (
    record_id, table_oid, table_schema, table_name, pk, op, old, new, changed_cols,
    rolled_back, span_id, committed_at, source, request_id, tenant)
VALUES (NULL, NULL, %(table_schema)s, %(table_name)s, %(pk)s, %(op)s, %(old)s, %(new)s,
        %(changed_cols)s, %(rolled_back)s, %(span_id)s, %(committed_at)s, %(source)s,
        %(request_id)s, %(tenant)s);
