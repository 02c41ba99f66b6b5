-- 0020: what the capture trigger costs (issue 21, second round) — fewer executor nodes per
-- captured row.
--
-- Measured in one session (backend CPU per pgbench-shaped transaction, one UPDATE and one
-- INSERT, both captured; 2 000 transactions, median of five rounds, loaded machine): no
-- capture 55 µs; 0015's trigger 455; an empty trigger 90; one that inserts a constant row
-- 230. Of what the body adds over that constant insert, the changed columns took the most:
-- an update's came from a hash join of two jsonb_each scans (two function scans, each
-- materialised, a join and a sort for a handful of keys). Now one jsonb_object_keys scan
-- tests each key with `->`: 455 → 385 µs. Computing the span and the key with PL/pgSQL's
-- simple expressions instead of FROM current_query() and a LATERAL subquery gives the
-- INSERT a plain VALUES list (no function scan, no nested loop) — part of the same figure.
-- Measured and kept as it was: `SET search_path` on this SECURITY DEFINER function (no
-- difference beyond the noise, 385 with and without), and the indexes of
-- flux.state_mutations (all four together cost 60 µs of the 400: each serves a reader —
-- the record id history and blame, the request id why and export, the BRIN retention).
--
-- Only a table whose primary key has several columns computes its key in a statement of
-- its own (jsonb_object_agg over the key's columns); a one-column key, and the whole row of
-- a table with none, are simple expressions.

CREATE OR REPLACE FUNCTION flux.capture_row() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, flux AS $$
DECLARE
    old_image jsonb;
    new_image jsonb;
    row_image jsonb;
    key_image jsonb;
    query_text text;
    span text;
BEGIN
    -- Simple expressions wherever possible: PL/pgSQL evaluates those without starting the
    -- executor; each statement with a subquery or a function in FROM costs a run of it.
    IF TG_OP = 'INSERT' THEN
        new_image := to_jsonb(NEW);
    ELSIF TG_OP = 'DELETE' THEN
        old_image := to_jsonb(OLD);
    ELSE
        old_image := to_jsonb(OLD);
        new_image := to_jsonb(NEW);
    END IF;
    row_image := coalesce(new_image, old_image);
    -- TG_ARGV holds the primary key's columns (flux.install_capture), indexed from 0.
    IF TG_NARGS = 1 THEN
        key_image := jsonb_build_object(TG_ARGV[0], row_image -> TG_ARGV[0]);
    ELSIF TG_NARGS = 0 THEN
        key_image := row_image;  -- no primary key: the whole row (as REPLICA IDENTITY FULL)
    ELSE
        key_image := (SELECT jsonb_object_agg(c, row_image -> c) FROM unnest(TG_ARGV) AS c);
    END IF;
    -- The span: the statement's leading /*flux:<span>*/ comment (sql/0007), else the GUC.
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
        -- Both images of an update come from one row type: the same keys.
        CASE WHEN old_image IS NULL OR new_image IS NULL
             THEN ARRAY(SELECT jsonb_object_keys(row_image) ORDER BY 1)
             ELSE ARRAY(SELECT k FROM jsonb_object_keys(new_image) AS k
                        WHERE new_image -> k IS DISTINCT FROM old_image -> k ORDER BY 1) END,
        nullif(current_setting('flux.request_id', true), '')::uuid, span,
        session_user, current_setting('application_name', true), txid_current(), 'trigger');
    RETURN NULL;
END
$$;
