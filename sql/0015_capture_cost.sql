-- 0015: what capture costs (issue 21) — the trigger runs one statement per row, and WAL
-- capture's exactly-once storing no longer needs a unique index on every mutation.
--
-- The row trigger ran up to three SQL statements per changed row (the changed columns, the
-- key of a composite primary key, the INSERT), each with its own executor start, snapshot
-- and plan-cache check; now the changed columns are computed inside the one INSERT. It is
-- SECURITY DEFINER with a fixed search_path, its actor session_user (as sql/0012 makes it:
-- the runtime may then be refused INSERT on flux.state_mutations and still be captured).
--
-- The WAL consumer stored its batches with INSERT … ON CONFLICT on
-- state_mutations_wal_key (lsn, lsn_seq, committed_at), so that a batch read again after a
-- crash inserted nothing. It now skips every transaction whose commit its progress row
-- (flux.capture_state.applied_lsn, written in the same transaction as the batch) says is
-- stored, which is exact by construction, and writes its batches with COPY; the index cost
-- every captured row — trigger rows included, which had to test its predicate — a btree
-- insert or a check for nothing.

DROP INDEX IF EXISTS flux.state_mutations_wal_key;

CREATE OR REPLACE FUNCTION flux.capture_row() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, flux AS $$
DECLARE
    old_image jsonb;
    new_image jsonb;
    key_image jsonb;
BEGIN
    -- Simple expressions only before the INSERT: PL/pgSQL evaluates those without the
    -- executor; every statement with a subquery would cost one executor run per row.
    IF TG_OP = 'INSERT' THEN
        new_image := to_jsonb(NEW);
    ELSIF TG_OP = 'DELETE' THEN
        old_image := to_jsonb(OLD);
    ELSE
        old_image := to_jsonb(OLD);
        new_image := to_jsonb(NEW);
    END IF;
    -- TG_ARGV holds the primary key's columns (flux.install_capture), indexed from 0.
    IF TG_NARGS = 1 THEN
        key_image := jsonb_build_object(TG_ARGV[0], coalesce(new_image, old_image) -> TG_ARGV[0]);
    ELSIF TG_NARGS = 0 THEN
        -- No primary key: the whole row is its identity (as REPLICA IDENTITY FULL does).
        key_image := coalesce(new_image, old_image);
    END IF;
    INSERT INTO flux.state_mutations (
        record_id, table_oid, table_schema, table_name, pk, op, old, new, changed_cols,
        request_id, span_id, actor, application_name, txid, source)
    SELECT md5(TG_RELID::text || ':' || k.image::text)::uuid, TG_RELID, TG_TABLE_SCHEMA,
           TG_TABLE_NAME, k.image, TG_OP, old_image, new_image,
           CASE WHEN old_image IS NULL OR new_image IS NULL
                THEN ARRAY(SELECT jsonb_object_keys(coalesce(new_image, old_image)) ORDER BY 1)
                ELSE ARRAY(SELECT n.key FROM jsonb_each(new_image) AS n
                           JOIN jsonb_each(old_image) AS o USING (key)
                           WHERE n.value IS DISTINCT FROM o.value ORDER BY 1) END,
           nullif(current_setting('flux.request_id', true), '')::uuid,
           CASE WHEN starts_with(q.query, '/*flux:')
                THEN nullif(split_part(substr(q.query, 8, 24), '*/', 1), '')
                ELSE nullif(current_setting('flux.span_id', true), '') END,
           session_user, current_setting('application_name', true), txid_current(),
           'trigger'
    FROM current_query() AS q(query),
         LATERAL (SELECT coalesce(key_image,
                                  (SELECT jsonb_object_agg(c, coalesce(new_image, old_image) -> c)
                                   FROM unnest(TG_ARGV) AS c)) AS image) AS k;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION flux.capture_truncate() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, flux AS $$
BEGIN
    INSERT INTO flux.state_mutations (
        table_oid, table_schema, table_name, op, request_id, span_id, actor,
        application_name, txid, source)
    VALUES (
        TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, 'TRUNCATE', flux.current_request_id(),
        flux.statement_span_id(), session_user,
        current_setting('application_name', true), txid_current(), 'trigger');
    RETURN NULL;
END
$$;
