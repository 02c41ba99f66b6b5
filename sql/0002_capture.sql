-- 0002: trigger capture — every row change of a captured table becomes a flux.state_mutations row.
--
-- The executor sets the transaction-local GUCs flux.request_id and flux.span_id, so a change
-- made by a Flux execution carries its request; any other writer (psql, a migration, another
-- app) is recorded with its current_user and application_name and no request id.

-- A row's stable identity: the table's oid plus its primary key (supa_audit's record_id).
CREATE FUNCTION flux.record_id(table_oid oid, pk jsonb) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN md5(table_oid::text || ':' || pk::text)::uuid;

-- Primary key columns of a table, in key order.
CREATE FUNCTION flux.primary_key_columns(rel regclass) RETURNS text[]
    LANGUAGE sql STABLE
    RETURN (
        SELECT coalesce(array_agg(a.attname::text ORDER BY k.ord), '{}')
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = rel AND i.indisprimary
    );

-- Keys whose values differ between two row images (a NULL image counts as all-NULL).
CREATE FUNCTION flux.changed_columns(old jsonb, new jsonb) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (
        SELECT coalesce(array_agg(key ORDER BY key), '{}')
        FROM (
            SELECT key FROM jsonb_object_keys(coalesce(new, '{}'::jsonb)) AS key
            UNION
            SELECT key FROM jsonb_object_keys(coalesce(old, '{}'::jsonb)) AS key
        ) AS keys
        WHERE old -> key IS DISTINCT FROM new -> key
    );

-- The request and span of the running Flux execution, NULL outside one.
CREATE FUNCTION flux.current_request_id() RETURNS uuid
    LANGUAGE sql STABLE
    RETURN nullif(current_setting('flux.request_id', true), '')::uuid;

-- Row-level capture. TG_ARGV holds the primary key column names (set by flux.install_capture),
-- so the trigger never looks up the catalog on the write path.
CREATE FUNCTION flux.capture_row() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    old_image jsonb;
    new_image jsonb;
    key_image jsonb;
    changed   text[];
    pk_cols   text[] := TG_ARGV;
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
        nullif(current_setting('flux.span_id', true), ''),
        current_user, current_setting('application_name', true),
        txid_current(), 'trigger');
    RETURN NULL;
END
$$;

-- TRUNCATE has no rows: one mutation for the whole table.
CREATE FUNCTION flux.capture_truncate() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO flux.state_mutations (
        table_oid, table_schema, table_name, op, request_id, span_id, actor,
        application_name, txid, source)
    VALUES (
        TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, 'TRUNCATE', flux.current_request_id(),
        nullif(current_setting('flux.span_id', true), ''), current_user,
        current_setting('application_name', true), txid_current(), 'trigger');
    RETURN NULL;
END
$$;

-- Install (or refresh) capture on one table. Idempotent: re-running picks up a changed
-- primary key. No-op updates are skipped by the WHEN clause, before any PL/pgSQL runs.
CREATE FUNCTION flux.install_capture(rel regclass) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    pk_args text := (
        SELECT coalesce(string_agg(quote_literal(c), ', '), '')
        FROM unnest(flux.primary_key_columns(rel)) AS c);
BEGIN
    IF (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = rel) = 'flux' THEN
        RAISE EXCEPTION 'flux does not capture its own tables (%)', rel;
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS flux_capture_ins_del ON %s', rel);
    EXECUTE format('DROP TRIGGER IF EXISTS flux_capture_upd ON %s', rel);
    EXECUTE format('DROP TRIGGER IF EXISTS flux_capture_truncate ON %s', rel);
    EXECUTE format(
        'CREATE TRIGGER flux_capture_ins_del AFTER INSERT OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION flux.capture_row(%s)', rel, pk_args);
    EXECUTE format(
        'CREATE TRIGGER flux_capture_upd AFTER UPDATE ON %s FOR EACH ROW '
        'WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION flux.capture_row(%s)',
        rel, pk_args);
    EXECUTE format(
        'CREATE TRIGGER flux_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION flux.capture_truncate()', rel);
END
$$;

CREATE FUNCTION flux.uninstall_capture(rel regclass) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS flux_capture_ins_del ON %s', rel);
    EXECUTE format('DROP TRIGGER IF EXISTS flux_capture_upd ON %s', rel);
    EXECUTE format('DROP TRIGGER IF EXISTS flux_capture_truncate ON %s', rel);
END
$$;
