-- 0012: the audit trail is append-only to the runtime; imported records are their own;
-- a job's attempts and cron ticks follow their job's tenant (issue 20, items 11-13).
--
-- flux_runtime (what every function's ctx.db, and so any SQL injection in an app, runs as)
-- may INSERT records and nothing else on them: no UPDATE or DELETE of flux.trace_requests,
-- no write at all to flux.state_mutations, and so no lock stronger than ROW EXCLUSIVE on
-- either (PostgreSQL allows ACCESS EXCLUSIVE only to a role that may UPDATE, DELETE,
-- TRUNCATE or MAINTAIN the table). What the runtime legitimately changes goes through the
-- SECURITY DEFINER functions below — owned by the schema's owner, with a fixed search_path
-- and narrow arguments:
--   capture_row / capture_truncate  the capture triggers (the runtime's own writes still
--                                   record their changes, stamped with session_user: in a
--                                   SECURITY DEFINER function current_user is the owner)
--   keep_rolled_back                an execution's rolled-back changes (a failure's, or a
--                                   replay's, whose data is never kept), stored after the
--                                   rollback: only as rolled back (blame never counts them),
--                                   only for a record written in the same transaction
--   lock_for_resume / mark_resumed  one resume at a time; resumed_by only once, only by the
--                                   successful resume of that execution
--   pin / unpin                     flux record pin: the pins row and the record's flag
-- flux.grant_roles() makes the roles and their grants (sql/0010 made them inline, and
-- `flux install` repeated that block); both now call it.

-- Imported records (flux record import) say so: NULL for an execution of this database,
-- else what the import knew ({"at", "by", "file_tenant", "links", "exported_at",
-- "flux_version"}). The file's links (parent_id, replay_of, resumed_from) are kept here and
-- never in the columns, where they would join local executions (a forged resumed_from would
-- make a local failure look resumed). Its changes are stored without record_id and
-- table_oid, so state history and blame of a local row never show them.
ALTER TABLE flux.trace_requests ADD COLUMN imported jsonb;

-- -- The capture triggers, as in sql/0007 with two changes: SECURITY DEFINER with a fixed
-- search_path, and the actor is session_user.
CREATE OR REPLACE FUNCTION flux.capture_row() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, flux AS $$
DECLARE
    old_image jsonb;
    new_image jsonb;
    key_image jsonb;
    changed   text[];
    pk_cols   text[] := TG_ARGV;
    query     text := current_query();
BEGIN
    -- Inline rather than through helper functions: this runs once per changed row.
    IF TG_OP = 'INSERT' THEN
        new_image := to_jsonb(NEW);
        changed := ARRAY(SELECT jsonb_object_keys(new_image) ORDER BY 1);
    ELSIF TG_OP = 'DELETE' THEN
        old_image := to_jsonb(OLD);
        changed := ARRAY(SELECT jsonb_object_keys(old_image) ORDER BY 1);
    ELSE
        old_image := to_jsonb(OLD);
        new_image := to_jsonb(NEW);
        changed := ARRAY(SELECT n.key FROM jsonb_each(new_image) AS n
                         JOIN jsonb_each(old_image) AS o USING (key)
                         WHERE n.value IS DISTINCT FROM o.value ORDER BY 1);
    END IF;
    IF cardinality(pk_cols) = 1 THEN
        -- TG_ARGV is indexed from 0
        key_image := jsonb_build_object(pk_cols[0], coalesce(new_image, old_image) -> pk_cols[0]);
    ELSIF cardinality(pk_cols) > 1 THEN
        SELECT jsonb_object_agg(c, coalesce(new_image, old_image) -> c)
          INTO key_image FROM unnest(pk_cols) AS c;
    ELSE
        -- No primary key: the whole row is its identity (as REPLICA IDENTITY FULL does).
        key_image := coalesce(new_image, old_image);
    END IF;
    INSERT INTO flux.state_mutations (
        record_id, table_oid, table_schema, table_name, pk, op, old, new, changed_cols,
        request_id, span_id, actor, application_name, txid, source)
    VALUES (
        md5(TG_RELID::text || ':' || key_image::text)::uuid, TG_RELID, TG_TABLE_SCHEMA,
        TG_TABLE_NAME, key_image, TG_OP, old_image, new_image, changed,
        nullif(current_setting('flux.request_id', true), '')::uuid,
        CASE WHEN starts_with(query, '/*flux:')
             THEN nullif(split_part(substr(query, 8, 24), '*/', 1), '')
             ELSE nullif(current_setting('flux.span_id', true), '') END,
        session_user, current_setting('application_name', true),
        txid_current(), 'trigger');
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

-- An attempted change kept after the rollback (a failed execution's; a replay's, whose data
-- is always rolled back). Only as rolled back (blame leaves those out) and only for the
-- record this transaction has just written, so the runtime can neither add a committed
-- change nor hang one on another execution.
CREATE FUNCTION flux.keep_rolled_back(
    record_id uuid, table_oid oid, table_schema text, table_name text, pk jsonb, op text,
    old jsonb, new jsonb, changed_cols text[], request_id uuid, span_id text, actor text,
    application_name text, txid bigint, committed_at timestamptz, tenant text)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, flux AS $$
BEGIN
    -- recorded_at (clock_timestamp()) from this transaction's start (now()) on: written
    -- by it, savepoints or not (an xmin test would miss a subtransaction's row).
    IF NOT EXISTS (SELECT 1 FROM flux.trace_requests t
                   WHERE t.request_id = keep_rolled_back.request_id
                     AND t.recorded_at >= now()) THEN
        RAISE EXCEPTION 'a rolled-back change belongs to the record written in the same '
                        'transaction' USING ERRCODE = '42501';
    END IF;
    INSERT INTO flux.state_mutations (
        record_id, table_oid, table_schema, table_name, pk, op, old, new, changed_cols,
        request_id, span_id, actor, application_name, txid, committed_at, source,
        rolled_back, tenant)
    VALUES (
        keep_rolled_back.record_id, keep_rolled_back.table_oid, keep_rolled_back.table_schema,
        keep_rolled_back.table_name, keep_rolled_back.pk, keep_rolled_back.op,
        keep_rolled_back.old, keep_rolled_back.new,
        coalesce(keep_rolled_back.changed_cols, '{}'), keep_rolled_back.request_id,
        keep_rolled_back.span_id, keep_rolled_back.actor, keep_rolled_back.application_name,
        keep_rolled_back.txid, keep_rolled_back.committed_at, 'executor', true,
        keep_rolled_back.tenant);
END
$$;

-- flux resume: the original's row locked (NOWAIT) for the whole resume.
CREATE FUNCTION flux.lock_for_resume(request_id uuid, OUT status text, OUT resumed_by text)
    RETURNS SETOF record
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, flux
    BEGIN ATOMIC
        SELECT t.status, t.resumed_by::text FROM flux.trace_requests t
        WHERE t.request_id = lock_for_resume.request_id
        FOR UPDATE NOWAIT;
    END;

-- Marked once, and only by a successful resume of that execution.
CREATE FUNCTION flux.mark_resumed(request_id uuid, resumed_by uuid) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, flux AS $$
BEGIN
    UPDATE flux.trace_requests t SET resumed_by = mark_resumed.resumed_by
    WHERE t.request_id = mark_resumed.request_id AND t.status = 'error'
      AND t.resumed_by IS NULL
      AND EXISTS (SELECT 1 FROM flux.trace_requests r
                  WHERE r.request_id = mark_resumed.resumed_by AND r.status = 'ok'
                    AND r.resumed_from = mark_resumed.request_id);
    RETURN FOUND;
END
$$;

-- flux record pin / unpin: the pins row first, then the record's flag (gc's lock order).
CREATE FUNCTION flux.pin(uuid, text)
    RETURNS TABLE (request_id text, pinned_at timestamptz, note text)
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, flux
    BEGIN ATOMIC
        WITH pin AS (
            INSERT INTO flux.pins AS p (request_id, note) VALUES ($1, $2)
            ON CONFLICT (request_id) DO UPDATE SET note = coalesce(excluded.note, p.note)
            RETURNING p.request_id, p.pinned_at, p.note
        ), flag AS (
            UPDATE flux.trace_requests t SET pinned = true WHERE t.request_id = $1
        )
        SELECT pin.request_id::text, pin.pinned_at, pin.note FROM pin;
    END;

CREATE FUNCTION flux.unpin(uuid) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, flux
    BEGIN ATOMIC
        WITH pin AS (
            DELETE FROM flux.pins p WHERE p.request_id = $1 RETURNING p.request_id
        ), flag AS (
            UPDATE flux.trace_requests t SET pinned = false WHERE t.request_id = $1
        )
        SELECT count(*) FROM pin;
    END;

-- flux.switch_capture (sql/0008) as it was, but for the order of the tables: by oid (the
-- order they were made in), not pg_class's physical order, which any catalog change (the
-- functions above) reshuffles. A switch takes each table's lock in turn while executions
-- write them; in an order that is not stable, a switch that took `entries` before
-- `accounts` deadlocked with transfers writing `accounts` and then `entries`.
CREATE OR REPLACE FUNCTION flux.switch_capture(mode text) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
    tables integer := 0;
BEGIN
    IF mode NOT IN ('trigger', 'wal') THEN
        RAISE EXCEPTION 'capture mode must be trigger or wal, not %', mode;
    END IF;
    IF mode = 'wal' AND NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'flux_capture') THEN
        CREATE PUBLICATION flux_capture;
    END IF;
    INSERT INTO flux.settings (key, value) VALUES ('capture', mode)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value;
    FOR rel IN SELECT c.oid::regclass FROM pg_class c WHERE flux.capturable(c.oid)
               ORDER BY c.oid LOOP
        IF mode = 'wal' THEN
            PERFORM flux.install_wal_capture(rel);
        ELSE
            PERFORM flux.uninstall_wal_capture(rel);
            PERFORM flux.install_capture(rel);
        END IF;
        tables := tables + 1;
    END LOOP;
    PERFORM pg_logical_emit_message(true, 'flux.switch', mode);
    RETURN tables;
END
$$;

-- Row-level security on a job's attempts and on cron ticks: visible to whoever sees their
-- job (flux.jobs carries the tenant, sql/0010), as a pin is to whoever sees its execution.
-- Writes are the runtime's and the owner's, held by the grants.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['job_attempts', 'cron_ticks'] LOOP
        EXECUTE format('ALTER TABLE flux.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE flux.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY job_read ON flux.%1$I FOR SELECT USING (EXISTS '
                       '(SELECT 1 FROM flux.jobs j WHERE j.id = %1$I.job_id))', t);
        EXECUTE format('CREATE POLICY job_insert ON flux.%I FOR INSERT WITH CHECK (true)', t);
        EXECUTE format('CREATE POLICY job_update ON flux.%I FOR UPDATE USING (true)', t);
        EXECUTE format('CREATE POLICY job_delete ON flux.%I FOR DELETE USING (true)', t);
    END LOOP;
END
$$;

-- The roles and their rights on the flux schema. Creates a role only when it is missing
-- (roles belong to the cluster); run by a migration, and by `flux install` for a database
-- migrated by a role that could not create roles.
CREATE FUNCTION flux.grant_roles() RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'flux_runtime') THEN
        CREATE ROLE flux_runtime NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'flux_reader') THEN
        CREATE ROLE flux_reader NOLOGIN;
    END IF;
    GRANT USAGE ON SCHEMA flux TO flux_runtime, flux_reader;
    -- Every table and view of flux, read only, but never a partition: row-level security
    -- is its parent's, and read directly a partition would show every tenant's rows. No
    -- default privileges either, for the same reason (flux serve makes a partition a day):
    -- a table added later is granted by its migration.
    FOR rel IN SELECT c.oid::regclass FROM pg_class c
               WHERE c.relnamespace = 'flux'::regnamespace AND c.relkind IN ('r', 'p', 'v')
                 AND NOT c.relispartition LOOP
        EXECUTE format('GRANT SELECT ON %s TO flux_runtime, flux_reader', rel);
    END LOOP;
    -- Records are append-only to the runtime; mutations and pins it writes only through
    -- the functions above. REVOKE first: a database migrated before 0012 granted more.
    REVOKE ALL ON flux.trace_requests, flux.state_mutations, flux.pins FROM flux_runtime;
    GRANT SELECT ON flux.trace_requests, flux.state_mutations, flux.pins TO flux_runtime;
    GRANT INSERT ON flux.trace_requests, flux.failure_signatures, flux.job_attempts,
        flux.cron_ticks TO flux_runtime;
    GRANT INSERT, UPDATE ON flux.jobs, flux.capture_state TO flux_runtime;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA flux TO flux_runtime;
    -- PostgreSQL grants EXECUTE to PUBLIC on new functions; the writers are the runtime's.
    REVOKE ALL ON FUNCTION flux.keep_rolled_back(uuid, oid, text, text, jsonb, text, jsonb,
        jsonb, text[], uuid, text, text, text, bigint, timestamptz, text),
        flux.lock_for_resume(uuid), flux.mark_resumed(uuid, uuid), flux.pin(uuid, text),
        flux.unpin(uuid) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION flux.keep_rolled_back(uuid, oid, text, text, jsonb, text, jsonb,
        jsonb, text[], uuid, text, text, text, bigint, timestamptz, text),
        flux.lock_for_resume(uuid), flux.mark_resumed(uuid, uuid), flux.pin(uuid, text),
        flux.unpin(uuid) TO flux_runtime;
END
$$;

-- Only the owner (and whoever it lets) writes through these; the roles get EXECUTE from
-- grant_roles. A server where we may not create roles gets the functions without them.
REVOKE ALL ON FUNCTION flux.keep_rolled_back(uuid, oid, text, text, jsonb, text, jsonb,
    jsonb, text[], uuid, text, text, text, bigint, timestamptz, text),
    flux.lock_for_resume(uuid), flux.mark_resumed(uuid, uuid), flux.pin(uuid, text),
    flux.unpin(uuid) FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'flux_runtime')
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'flux_reader') THEN
        PERFORM flux.grant_roles();
    END IF;
END
$$;
