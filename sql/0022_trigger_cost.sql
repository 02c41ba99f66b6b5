-- 0022: the capture trigger in C where the server can load it (issue 21, trigger capture's
-- cost, third round).
--
-- flux.capture_row() stays the function every capture trigger runs (a trigger names its
-- function by oid, so replacing the function in place moves every captured table at once).
-- flux/store/_native.py compiles extension/flux_capture.c against the server's own headers
-- and, when the session may load C code (a superuser, the server's files on this machine),
-- calls flux.use_native_capture(<absolute path>): the same row, value for value, written
-- by one saved INSERT plan per row instead of PL/pgSQL. flux.use_native_capture(NULL) puts
-- the PL/pgSQL body back; it is kept here as flux.capture_row_plpgsql, a copy of 0020's.
--
-- Measured in one session (backend CPU per pgbench-shaped transaction, an UPDATE and an
-- INSERT, both captured; 2 000 transactions, median of five rounds, loaded machine): no
-- capture 35–45 µs; 0020's PL/pgSQL 370–460; the C trigger 260–320. Of the C trigger's
-- cost, the trigger call itself (queue, SECURITY DEFINER) is ~30 µs, its body (images,
-- key, hash, changed columns) ~50 and the INSERT through SPI ~200: two rows' executor
-- start-up, partition routing and index entries.

CREATE FUNCTION flux.capture_row_plpgsql() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, flux AS $$
DECLARE
    old_image jsonb;
    new_image jsonb;
    row_image jsonb;
    key_image jsonb;
    query_text text;
    span text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        new_image := to_jsonb(NEW);
    ELSIF TG_OP = 'DELETE' THEN
        old_image := to_jsonb(OLD);
    ELSE
        old_image := to_jsonb(OLD);
        new_image := to_jsonb(NEW);
    END IF;
    row_image := coalesce(new_image, old_image);
    IF TG_NARGS = 1 THEN
        key_image := jsonb_build_object(TG_ARGV[0], row_image -> TG_ARGV[0]);
    ELSIF TG_NARGS = 0 THEN
        key_image := row_image;
    ELSE
        key_image := (SELECT jsonb_object_agg(c, row_image -> c) FROM unnest(TG_ARGV) AS c);
    END IF;
    query_text := current_query();
    IF starts_with(query_text, '/*flux:') THEN
        span := nullif(split_part(substr(query_text, 8, 24), '*/', 1), '');
    ELSE
        span := nullif(current_setting('flux.span_id', true), '');
    END IF;
    INSERT INTO flux.state_mutations (
        record_id, table_oid, table_schema, table_name, pk, op, old, new, changed_cols,
        request_id, span_id, actor, application_name, txid, source)
    VALUES (
        md5(TG_RELID::text || ':' || key_image::text)::uuid, TG_RELID, TG_TABLE_SCHEMA,
        TG_TABLE_NAME, key_image, TG_OP, old_image, new_image,
        CASE WHEN old_image IS NULL OR new_image IS NULL
             THEN ARRAY(SELECT jsonb_object_keys(row_image) ORDER BY 1)
             ELSE ARRAY(SELECT k FROM jsonb_object_keys(new_image) AS k
                        WHERE new_image -> k IS DISTINCT FROM old_image -> k ORDER BY 1) END,
        nullif(current_setting('flux.request_id', true), '')::uuid, span,
        session_user, current_setting('application_name', true), txid_current(), 'trigger');
    RETURN NULL;
END
$$;

-- 'c' or 'plpgsql': what flux.capture_row() runs now.
CREATE FUNCTION flux.capture_language() RETURNS text
    LANGUAGE sql STABLE
    RETURN (SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
            WHERE p.oid = 'flux.capture_row()'::regprocedure);

-- Replace flux.capture_row() by the C function of `library` (an absolute path the server can
-- read), or by the PL/pgSQL body when `library` is NULL. Only a superuser may create a C
-- function; the PL/pgSQL way back needs only the schema's owner.
CREATE FUNCTION flux.use_native_capture(library text) RETURNS text
    LANGUAGE plpgsql SET search_path = pg_catalog, flux AS $$
BEGIN
    IF library IS NULL THEN
        IF flux.capture_language() <> 'plpgsql' THEN
            EXECUTE format('CREATE OR REPLACE FUNCTION flux.capture_row() RETURNS trigger '
                           'LANGUAGE plpgsql SECURITY DEFINER '
                           'SET search_path = pg_catalog, flux AS %L',
                           (SELECT prosrc FROM pg_proc
                            WHERE oid = 'flux.capture_row_plpgsql()'::regprocedure));
        END IF;
    ELSIF (SELECT p.probin FROM pg_proc p WHERE p.oid = 'flux.capture_row()'::regprocedure)
          IS DISTINCT FROM library THEN
        EXECUTE format('CREATE OR REPLACE FUNCTION flux.capture_row() RETURNS trigger '
                       'LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, flux '
                       'AS %L, %L', library, 'flux_capture_row');
    END IF;
    RETURN flux.capture_language();
END
$$;
REVOKE ALL ON FUNCTION flux.use_native_capture(text) FROM PUBLIC;
