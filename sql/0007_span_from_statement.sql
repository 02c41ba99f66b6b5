-- 0007: the span of a change comes from the statement that made it.
--
-- The executor prefixes every ctx.db statement with a comment naming its span,
-- `/*flux:s4*/ INSERT …` (span ids are positional, so one code path sends one text and
-- prepared statements still apply). current_query() is that text for the statement and for
-- every trigger it sets off, so a change is stamped with its span without a set_config
-- round trip before each write. Statements without the comment (psql, migrations, older
-- executors) fall back to the flux.span_id GUC, as before.

CREATE FUNCTION flux.statement_span_id() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE
        WHEN starts_with(current_query(), '/*flux:')
            THEN nullif(split_part(substr(current_query(), 8, 24), '*/', 1), '')
        ELSE nullif(current_setting('flux.span_id', true), '')
    END;

CREATE OR REPLACE FUNCTION flux.capture_row() RETURNS trigger
    LANGUAGE plpgsql AS $$
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
        current_user, current_setting('application_name', true),
        txid_current(), 'trigger');
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION flux.capture_truncate() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO flux.state_mutations (
        table_oid, table_schema, table_name, op, request_id, span_id, actor,
        application_name, txid, source)
    VALUES (
        TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, 'TRUNCATE', flux.current_request_id(),
        flux.statement_span_id(), current_user,
        current_setting('application_name', true), txid_current(), 'trigger');
    RETURN NULL;
END
$$;
