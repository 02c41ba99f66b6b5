-- 0014: what storing a record costs PostgreSQL.
--
-- A record is a few KB of jsonb (a typical request's: 2–4 KB). Past 2 KB (the default
-- toast_tuple_target) every INSERT first compresses the row's largest columns with pglz —
-- measured as a sixth to a third of the record INSERT's server CPU, on the request path of
-- every execution. Records are written once and read rarely, so they are stored as they
-- come, uncompressed, up to a page (8160 bytes is the largest target PostgreSQL accepts);
-- larger records are still compressed and moved out of line as before. The cost is disk:
-- a record takes about 1.6 times the space it took compressed (docs/recording-cost.md).
--
-- toast_tuple_target is a storage parameter of each partition (a partitioned table takes
-- none), so it is set on the partitions there are, and ensure_partition (0009) sets it on
-- each new day's.

DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent = 'flux.trace_requests'::regclass LOOP
        EXECUTE format('ALTER TABLE %s SET (toast_tuple_target = 8160)', part);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION flux.ensure_partition(parent text, day date) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    part text := parent || '_' || to_char(day, 'YYYYMMDD');
    b record;
BEGIN
    SELECT * INTO b FROM flux.day_bounds(parent, day);
    -- One maintainer at a time ("FLUX", 9): two processes starting together make it once.
    PERFORM pg_advisory_xact_lock(x'464C555800000009'::bigint);
    IF to_regclass(format('flux.%I', part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE flux.%I (LIKE flux.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)%s',
                   part, parent,
                   CASE WHEN parent = 'trace_requests'
                        THEN ' WITH (toast_tuple_target = 8160)' ELSE '' END);
    EXECUTE format('WITH moved AS (DELETE FROM flux.%I WHERE %I >= %s AND %I < %s RETURNING *) '
                   'INSERT INTO flux.%I SELECT * FROM moved',
                   parent || '_default', b.key, b.low, b.key, b.high, part);
    EXECUTE format('ALTER TABLE flux.%I ATTACH PARTITION flux.%I FOR VALUES FROM (%s) TO (%s)',
                   parent, part, b.low, b.high);
    RETURN true;
END
$$;
