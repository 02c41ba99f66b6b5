-- 0026: the BEGIN's mode read in C (docs/decisions.md, "dbconv … issue 21").
--
-- Every execution of a project that captures by WAL calls flux.record_in_wal() in its
-- BEGIN (0023): the shared advisory lock a capture switch takes exclusively, then the mode
-- read with a snapshot taken after the lock. As PL/pgSQL that is a call, a PERFORM and a
-- query through the executor per request. Every execution's BEGIN now asks (not only a WAL
-- project's): a commit whose BEGIN read another mode than WAL sends no end_execution. extension/flux_wal.c now has it in C beside
-- end_execution and wal_actor (the same lock, the same fresh snapshot under READ
-- COMMITTED, false under any other isolation level); flux.use_native_wal puts the three in
-- place together, and the PL/pgSQL body stays as flux.record_in_wal_plpgsql, which
-- use_native_wal(NULL) puts back. Callers name the function by oid: nothing else changes.

CREATE FUNCTION flux.record_in_wal_plpgsql() RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(5065517517330448405);
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN NULL;
    END IF;
    RETURN coalesce((SELECT s.value = 'wal' FROM flux.settings s WHERE s.key = 'capture'),
                    false);
END
$$;

-- Unknown (NULL) rather than false under another isolation level than READ COMMITTED: the
-- answer is now read by every execution's BEGIN (sql/queries/execution.sql: begin_mode),
-- and a false one spares its commit end_execution, which is right only when the mode was
-- read after the lock. Replaced in place whatever its language: C is put back below by
-- flux.use_native_wal when the migration's installer runs.
CREATE OR REPLACE FUNCTION flux.record_in_wal() RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(5065517517330448405);
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN NULL;
    END IF;
    RETURN coalesce((SELECT s.value = 'wal' FROM flux.settings s WHERE s.key = 'capture'),
                    false);
END
$$;

CREATE OR REPLACE FUNCTION flux.use_native_wal(library text) RETURNS text
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
        IF (SELECT prolang FROM pg_proc WHERE oid = 'flux.record_in_wal()'::regprocedure)
           <> (SELECT oid FROM pg_language WHERE lanname = 'plpgsql') THEN
            EXECUTE format('CREATE OR REPLACE FUNCTION flux.record_in_wal() RETURNS boolean '
                           'LANGUAGE plpgsql VOLATILE AS %L',
                           (SELECT prosrc FROM pg_proc WHERE oid =
                            'flux.record_in_wal_plpgsql()'::regprocedure));
        END IF;
    ELSIF (SELECT p.probin FROM pg_proc p
           WHERE p.oid = 'flux.end_execution(uuid, jsonb)'::regprocedure)
          IS DISTINCT FROM library
       OR (SELECT p.probin FROM pg_proc p WHERE p.oid = 'flux.record_in_wal()'::regprocedure)
          IS DISTINCT FROM library THEN
        EXECUTE format('CREATE OR REPLACE FUNCTION flux.end_execution(request_id uuid, '
                       'statements jsonb) RETURNS void LANGUAGE c AS %L, %L',
                       library, 'flux_end_execution');
        EXECUTE format('CREATE OR REPLACE FUNCTION flux.wal_actor() RETURNS trigger '
                       'LANGUAGE c AS %L, %L', library, 'flux_wal_actor');
        EXECUTE format('CREATE OR REPLACE FUNCTION flux.record_in_wal() RETURNS boolean '
                       'LANGUAGE c VOLATILE AS %L, %L', library, 'flux_record_in_wal');
    END IF;
    RETURN flux.wal_language();
END
$$;
REVOKE ALL ON FUNCTION flux.use_native_wal(text) FROM PUBLIC;
