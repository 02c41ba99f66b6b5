-- 0025: what a writer pays for WAL capture (docs/decisions.md, "walw … issue 21").
--
-- The statement trigger that stamps writes from outside Flux had a WHEN clause. PostgreSQL
-- keeps a trigger's WHEN only for the statement that evaluates it: every INSERT, UPDATE or
-- DELETE on a captured table read the clause back from its stored node text and compiled
-- it again — measured with callgrind at 35 000 instructions a statement, a sixth of a
-- pgbench-shaped transaction's whole backend cost. The test moves into the function, where
-- it is a PL/pgSQL simple expression; the message is sent by an assignment (also a simple
-- expression) rather than PERFORM (a query through the executor).

CREATE OR REPLACE FUNCTION flux.wal_actor() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    lsn pg_lsn;
BEGIN
    -- A Flux execution's end_execution message carries its actor: nothing to do.
    IF coalesce(current_setting('flux.request_id', true), '') = '' THEN
        lsn := pg_logical_emit_message(true, 'flux.actor', json_build_object(
            'actor', current_user,
            'application_name', current_setting('application_name', true),
            'tenant', flux.session_tenant())::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION flux.install_wal_capture(rel regclass) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = rel) = 'flux' THEN
        RAISE EXCEPTION 'flux does not capture its own tables (%)', rel;
    END IF;
    PERFORM flux.uninstall_capture(rel);
    PERFORM flux.drop_trigger_quietly(rel, 'flux_wal_actor');
    -- No WHEN: flux.wal_actor() itself returns at once inside a Flux execution (0025).
    EXECUTE format(
        'CREATE TRIGGER flux_wal_actor BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION flux.wal_actor()', rel);
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                   WHERE p.pubname = 'flux_capture' AND pr.prrelid = rel) THEN
        EXECUTE format('ALTER PUBLICATION flux_capture ADD TABLE %s', rel);
    END IF;
    -- Last: this ALTER TABLE fires the event trigger, which finds the table done.
    IF (SELECT relreplident FROM pg_class WHERE oid = rel) <> 'f' THEN
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
    END IF;
END
$$;

-- Tables already in WAL mode get the trigger without its WHEN.
DO $$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN SELECT t.tgrelid::regclass FROM pg_trigger t
               WHERE t.tgname = 'flux_wal_actor' AND t.tgqual IS NOT NULL LOOP
        EXECUTE format('DROP TRIGGER flux_wal_actor ON %s', rel);
        EXECUTE format(
            'CREATE TRIGGER flux_wal_actor BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
            'FOR EACH STATEMENT EXECUTE FUNCTION flux.wal_actor()', rel);
    END LOOP;
END
$$;

-- Both writer-side functions in C where the server can load it (extension/flux_wal.c, built
-- and installed by flux/store/_native.py as 0022's trigger is): measured with callgrind,
-- the PL/pgSQL end_execution costs a transaction ~40 000 instructions more in WAL mode than
-- in any other, the PL/pgSQL actor trigger ~12 000 a statement even when it returns at once.
-- The PL/pgSQL bodies stay as the *_plpgsql copies below, which flux.use_native_wal(NULL)
-- puts back; callers and triggers name the functions by oid, so nothing else changes.
CREATE FUNCTION flux.wal_actor_plpgsql() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    lsn pg_lsn;
BEGIN
    -- A Flux execution's end_execution message carries its actor: nothing to do.
    IF coalesce(current_setting('flux.request_id', true), '') = '' THEN
        lsn := pg_logical_emit_message(true, 'flux.actor', json_build_object(
            'actor', current_user,
            'application_name', current_setting('application_name', true),
            'tenant', flux.session_tenant())::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION flux.end_execution_plpgsql(request_id uuid, statements jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF flux.setting('capture') = 'wal' THEN
        PERFORM pg_logical_emit_message(true, 'flux', json_build_object(
            'request_id', request_id, 'statements', statements, 'actor', current_user,
            'application_name', current_setting('application_name', true),
            'tenant', flux.session_tenant())::text);
    END IF;
END
$$;

-- What flux.end_execution and flux.wal_actor run in: 'c' or 'plpgsql'.
CREATE FUNCTION flux.wal_language() RETURNS text
    LANGUAGE sql STABLE
    RETURN (SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
            WHERE p.oid = 'flux.end_execution(uuid, jsonb)'::regprocedure);

-- Replace both by the C functions of `library` (an absolute path the server can read), or
-- by the PL/pgSQL bodies when `library` is NULL. Only a superuser may create a C function.
CREATE FUNCTION flux.use_native_wal(library text) RETURNS text
    LANGUAGE plpgsql SET search_path = pg_catalog, flux AS $$
BEGIN
    IF library IS NULL THEN
        IF flux.wal_language() <> 'plpgsql' THEN
            EXECUTE format('CREATE OR REPLACE FUNCTION flux.end_execution(request_id uuid, '
                           'statements jsonb) RETURNS void LANGUAGE plpgsql AS %L',
                           (SELECT prosrc FROM pg_proc WHERE oid =
                            'flux.end_execution_plpgsql(uuid, jsonb)'::regprocedure));
            EXECUTE format('CREATE OR REPLACE FUNCTION flux.wal_actor() RETURNS trigger '
                           'LANGUAGE plpgsql AS %L',
                           (SELECT prosrc FROM pg_proc WHERE oid =
                            'flux.wal_actor_plpgsql()'::regprocedure));
        END IF;
    ELSIF (SELECT p.probin FROM pg_proc p
           WHERE p.oid = 'flux.end_execution(uuid, jsonb)'::regprocedure)
          IS DISTINCT FROM library THEN
        EXECUTE format('CREATE OR REPLACE FUNCTION flux.end_execution(request_id uuid, '
                       'statements jsonb) RETURNS void LANGUAGE c AS %L, %L',
                       library, 'flux_end_execution');
        EXECUTE format('CREATE OR REPLACE FUNCTION flux.wal_actor() RETURNS trigger '
                       'LANGUAGE c AS %L, %L', library, 'flux_wal_actor');
    END IF;
    RETURN flux.wal_language();
END
$$;
REVOKE ALL ON FUNCTION flux.use_native_wal(text) FROM PUBLIC;
