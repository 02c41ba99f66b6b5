-- 0009: the two big tables partitioned by day, so that retention is a partition drop; pins
-- that keep an execution past retention; sampled-out executions recorded as outlines.
--
--   flux.trace_requests   RANGE (request_id): a request id is a UUIDv7, whose first 48 bits
--                         are its millisecond, so one day of executions is one range of ids.
--                         The primary key stays (request_id) alone, and every lookup by id
--                         or id prefix reads one partition.
--   flux.state_mutations  RANGE (committed_at): the transaction's start (triggers) or its
--                         commit (WAL). An execution's changes come right after its id was
--                         made, so they land in the same day as its record but for the
--                         executions that straddle midnight.
--
-- Partitions are named <table>_YYYYMMDD (UTC days). A DEFAULT partition catches every row
-- no day partition covers, so an insert never fails for want of a partition: rows written
-- before the maintenance ran (moved out when their day's partition is made), rows of days
-- already dropped (pinned executions kept by gc, imported records), ids that are not
-- UUIDv7. `flux serve`, `flux dev` and `flux gc` create today's partition and the next two
-- (flux.ensure_partition) and drop the days older than `[record] retention`
-- (flux.drop_partition), copying pinned executions' rows into the default partition first.
--
-- Existing rows are kept: each table is rebuilt partitioned, with a day partition for every
-- day that holds rows, and the rows copied in; indexes and the views are made again.

DROP VIEW flux.state_blame;
DROP VIEW flux.state_history;

ALTER TABLE flux.trace_requests RENAME TO trace_requests_0008;
ALTER TABLE flux.state_mutations RENAME TO state_mutations_0008;
ALTER SEQUENCE flux.state_mutations_id_seq RENAME TO state_mutations_0008_id_seq;

-- As in 0001, plus `sampled` (false: an outline of a successful execution that sampling
-- left out, kept because it changed data; see `[record] sample_rate`).
CREATE TABLE flux.trace_requests (
    request_id    uuid NOT NULL,
    kind          text NOT NULL DEFAULT 'http'
                  CHECK (kind IN ('http', 'job', 'cron', 'replay', 'resume', 'invoke')),
    function      text,
    runtime       text NOT NULL DEFAULT 'python' CHECK (runtime IN ('python', 'wasm')),
    method        text,
    route         text,
    status        text NOT NULL CHECK (status IN ('ok', 'error')),
    http_status   integer,
    started_at    timestamptz NOT NULL,
    duration_ms   double precision NOT NULL DEFAULT 0,
    request       jsonb NOT NULL DEFAULT '{}'::jsonb,
    response      jsonb,
    error         jsonb,
    spans         jsonb NOT NULL DEFAULT '[]'::jsonb,
    tape          jsonb NOT NULL DEFAULT '[]'::jsonb,
    logs          jsonb NOT NULL DEFAULT '[]'::jsonb,
    code_sha      text,
    code_dirty    boolean NOT NULL DEFAULT false,
    tenant        text,
    parent_id     uuid,
    replay_of     uuid,
    resumed_from  uuid,
    resumed_by    uuid,
    pinned        boolean NOT NULL DEFAULT false,
    recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    sampled       boolean NOT NULL DEFAULT true
) PARTITION BY RANGE (request_id);

CREATE TABLE flux.trace_requests_default PARTITION OF flux.trace_requests DEFAULT;

-- As in 0001, plus `retained` (true: kept past its day's drop because its execution is
-- pinned; such a change no longer says who wrote a value last, so blame leaves it out).
CREATE TABLE flux.state_mutations (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    record_id        uuid,
    table_oid        oid,
    table_schema     text NOT NULL,
    table_name       text NOT NULL,
    pk               jsonb,
    op               text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    old              jsonb,
    new              jsonb,
    changed_cols     text[] NOT NULL DEFAULT '{}',
    request_id       uuid,
    span_id          text,
    actor            text,
    application_name text,
    txid             bigint,
    committed_at     timestamptz NOT NULL DEFAULT now(),
    source           text NOT NULL DEFAULT 'trigger' CHECK (source IN ('trigger', 'wal', 'executor')),
    lsn              pg_lsn,
    lsn_seq          integer,
    rolled_back      boolean NOT NULL DEFAULT false,
    retained         boolean NOT NULL DEFAULT false
) PARTITION BY RANGE (committed_at);

CREATE TABLE flux.state_mutations_default PARTITION OF flux.state_mutations DEFAULT;

-- Executions kept past retention (`flux record pin`), whatever partition holds them.
CREATE TABLE flux.pins (
    request_id uuid PRIMARY KEY,
    pinned_at  timestamptz NOT NULL DEFAULT now(),
    note       text
);

-- The smallest UUIDv7 of a moment: its millisecond in the first 48 bits, zeros after.
CREATE FUNCTION flux.uuid7_floor(at timestamptz) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (lpad(to_hex(floor(extract(epoch FROM at) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid;

-- The moment a UUIDv7 was made (nonsense for other uuids).
CREATE FUNCTION flux.uuid7_time(id uuid) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN to_timestamp(('x' || lpad(left(replace(id::text, '-', ''), 12), 16, '0'))::bit(64)::bigint
                        / 1000.0);

-- One UTC day of a partitioned table: the column its partitions bound, and the bounds as
-- SQL literals (ISO text with an explicit offset: read the same under any DateStyle).
CREATE FUNCTION flux.day_bounds(parent text, day date, OUT key text, OUT low text,
                                OUT high text)
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    first text := to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00';
    next text := to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00';
BEGIN
    IF parent = 'trace_requests' THEN
        key := 'request_id';
        low := quote_literal(flux.uuid7_floor(first::timestamptz)::text);
        high := quote_literal(flux.uuid7_floor(next::timestamptz)::text);
    ELSIF parent = 'state_mutations' THEN
        key := 'committed_at';
        low := quote_literal(first);
        high := quote_literal(next);
    ELSE
        RAISE EXCEPTION 'flux partitions trace_requests and state_mutations by day, not %',
            parent USING ERRCODE = '22023';
    END IF;
END
$$;

-- Make one day's partition unless it exists; true if it was made. The table is created
-- apart and then attached, rather than CREATE TABLE … PARTITION OF: ATTACH takes a lock
-- (SHARE UPDATE EXCLUSIVE) that lets executions go on writing, where PARTITION OF would
-- stop them. Rows the default partition caught for that day move into it first.
CREATE FUNCTION flux.ensure_partition(parent text, day date) RETURNS boolean
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
    EXECUTE format('CREATE TABLE flux.%I (LIKE flux.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   part, parent);
    EXECUTE format('WITH moved AS (DELETE FROM flux.%I WHERE %I >= %s AND %I < %s RETURNING *) '
                   'INSERT INTO flux.%I SELECT * FROM moved',
                   parent || '_default', b.key, b.low, b.key, b.high, part);
    EXECUTE format('ALTER TABLE flux.%I ATTACH PARTITION flux.%I FOR VALUES FROM (%s) TO (%s)',
                   parent, part, b.low, b.high);
    RETURN true;
END
$$;

-- Today's partition of both tables and the next ``ahead`` days'; how many were made.
CREATE FUNCTION flux.ensure_partitions(ahead integer DEFAULT 2) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    made integer := 0;
    d integer;
BEGIN
    FOR d IN 0 .. greatest(ahead, 0) LOOP
        made := made + flux.ensure_partition('trace_requests', today + d)::integer
                     + flux.ensure_partition('state_mutations', today + d)::integer;
    END LOOP;
    RETURN made;
END
$$;

-- Drop one day's partition; returns how many rows of pinned executions it kept (NULL if
-- there was no such partition). Those rows are copied out, the partition dropped, and the
-- rows inserted again: no partition covers their day any more, so the default partition
-- takes them. Dropping a partition takes the parent's ACCESS EXCLUSIVE lock: gc sets a
-- short lock_timeout and tries again later rather than hold up the executions' writes.
-- Dropping a day of records also drops the changes those executions made just after
-- midnight (in the next day's partition), so no change outlives its record.
CREATE FUNCTION flux.drop_partition(parent text, day date) RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    part text := parent || '_' || to_char(day, 'YYYYMMDD');
    b record;
    kept bigint;
BEGIN
    SELECT * INTO b FROM flux.day_bounds(parent, day);
    PERFORM pg_advisory_xact_lock(x'464C555800000009'::bigint);
    IF to_regclass(format('flux.%I', part)) IS NULL THEN
        RETURN NULL;
    END IF;
    -- A pin made meanwhile waits for this transaction: it cannot pin a row being dropped.
    LOCK TABLE flux.pins IN SHARE MODE;
    EXECUTE format('LOCK TABLE flux.%I IN ACCESS EXCLUSIVE MODE', parent);
    EXECUTE format('CREATE TEMP TABLE flux_gc_kept ON COMMIT DROP AS SELECT * FROM flux.%I '
                   'WHERE %I >= %s AND %I < %s '
                   'AND request_id IN (SELECT request_id FROM flux.pins)',
                   parent, b.key, b.low, b.key, b.high);
    GET DIAGNOSTICS kept = ROW_COUNT;
    EXECUTE format('DROP TABLE flux.%I', part);
    IF kept > 0 THEN
        IF parent = 'state_mutations' THEN
            UPDATE flux_gc_kept SET retained = true;
            INSERT INTO flux.state_mutations OVERRIDING SYSTEM VALUE SELECT * FROM flux_gc_kept;
        ELSE
            INSERT INTO flux.trace_requests SELECT * FROM flux_gc_kept;
        END IF;
    END IF;
    DROP TABLE flux_gc_kept;
    IF parent = 'trace_requests' THEN
        DELETE FROM flux.state_mutations m
        WHERE m.committed_at >= (day + 1)::timestamp AT TIME ZONE 'UTC'
          AND m.committed_at < (day + 2)::timestamp AT TIME ZONE 'UTC'
          AND m.request_id >= flux.uuid7_floor(day::timestamp AT TIME ZONE 'UTC')
          AND m.request_id < flux.uuid7_floor((day + 1)::timestamp AT TIME ZONE 'UTC')
          AND NOT EXISTS (SELECT 1 FROM flux.pins p WHERE p.request_id = m.request_id);
    END IF;
    RETURN kept;
END
$$;

-- The existing rows: a partition for each day that holds some, then the rows. Records
-- whose id is not a UUIDv7 of about their start time stay in the default partition.
DO $$
DECLARE
    d date;
BEGIN
    FOR d IN
        SELECT DISTINCT (flux.uuid7_time(request_id) AT TIME ZONE 'UTC')::date
        FROM flux.trace_requests_0008
        WHERE flux.uuid7_time(request_id)
              BETWEEN started_at - interval '1 day' AND started_at + interval '1 day'
    LOOP
        PERFORM flux.ensure_partition('trace_requests', d);
    END LOOP;
    FOR d IN SELECT DISTINCT (committed_at AT TIME ZONE 'UTC')::date FROM flux.state_mutations_0008
    LOOP
        PERFORM flux.ensure_partition('state_mutations', d);
    END LOOP;
END
$$;

INSERT INTO flux.trace_requests SELECT * FROM flux.trace_requests_0008;
INSERT INTO flux.state_mutations OVERRIDING SYSTEM VALUE SELECT * FROM flux.state_mutations_0008;
SELECT setval(pg_get_serial_sequence('flux.state_mutations', 'id'), s.last_value, s.is_called)
FROM flux.state_mutations_0008_id_seq AS s;
INSERT INTO flux.pins (request_id, pinned_at)
SELECT request_id, recorded_at FROM flux.trace_requests_0008 WHERE pinned;

DROP TABLE flux.trace_requests_0008;
DROP TABLE flux.state_mutations_0008;

-- The indexes of 0001, built once the rows are in. A partitioned table's unique keys must
-- hold its partition key: trace_requests' is request_id itself; state_mutations' primary
-- key becomes (id, committed_at) — id still comes from one sequence — and the WAL
-- consumer's idempotent apply key becomes (lsn, lsn_seq, committed_at): the commit time
-- is read from the same WAL record on every replay of a transaction, so a change read
-- again after a crash still hits the key (and lands in the same partition).
ALTER TABLE flux.trace_requests ADD PRIMARY KEY (request_id);
CREATE INDEX trace_requests_function_started_idx
    ON flux.trace_requests (function, started_at DESC);
CREATE INDEX trace_requests_failures_idx
    ON flux.trace_requests (started_at DESC) WHERE status = 'error';
CREATE INDEX trace_requests_parent_idx
    ON flux.trace_requests (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX trace_requests_started_brin
    ON flux.trace_requests USING brin (started_at);

ALTER TABLE flux.state_mutations ADD PRIMARY KEY (id, committed_at);
CREATE INDEX state_mutations_record_idx
    ON flux.state_mutations (record_id, committed_at DESC, id DESC);
CREATE INDEX state_mutations_request_idx
    ON flux.state_mutations (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX state_mutations_committed_brin
    ON flux.state_mutations USING brin (committed_at);
CREATE UNIQUE INDEX state_mutations_wal_key
    ON flux.state_mutations (lsn, lsn_seq, committed_at) WHERE source = 'wal';

-- The views of 0003, over the new tables; blame leaves out changes kept only by a pin.
CREATE VIEW flux.state_history AS
SELECT
    m.id,
    m.record_id,
    m.table_oid,
    m.table_schema,
    m.table_name,
    m.pk,
    m.committed_at AS at,
    m.request_id,
    m.span_id,
    m.op,
    coalesce((
        SELECT jsonb_object_agg(c, jsonb_build_array(m.old -> c, m.new -> c))
        FROM unnest(m.changed_cols) AS c), '{}'::jsonb) AS changes,
    m.rolled_back,
    CASE WHEN m.request_id IS NULL
         THEN concat_ws(' ', m.actor, '(' || nullif(m.application_name, '') || ')')
         ELSE coalesce(t.function, 'flux')
    END AS actor,
    t.function,
    t.code_sha,
    s.span ->> 'file' AS file,
    (s.span ->> 'line')::integer AS line,
    m.source
FROM flux.state_mutations AS m
LEFT JOIN flux.trace_requests AS t ON t.request_id = m.request_id
LEFT JOIN LATERAL (SELECT flux.span_of(t.spans, m.span_id) AS span) AS s ON true;

CREATE VIEW flux.state_blame AS
SELECT
    b.record_id,
    b.table_oid,
    b.table_schema,
    b.table_name,
    b.pk,
    b.column_name,
    b.value,
    b.op,
    b.request_id,
    t.function,
    t.code_sha,
    s.span ->> 'file' AS file,
    (s.span ->> 'line')::integer AS line,
    b.at,
    CASE WHEN b.request_id IS NULL
         THEN concat_ws(' ', b.actor, '(' || nullif(b.application_name, '') || ')')
         ELSE coalesce(t.function, 'flux')
    END AS actor
FROM (
    SELECT DISTINCT ON (m.record_id, c.col)
        m.record_id, m.table_oid, m.table_schema, m.table_name, m.pk,
        c.col AS column_name, m.new -> c.col AS value, m.op, m.request_id, m.span_id,
        m.committed_at AS at, m.actor, m.application_name
    FROM flux.state_mutations AS m
    CROSS JOIN LATERAL unnest(m.changed_cols) AS c(col)
    WHERE NOT m.rolled_back AND NOT m.retained AND m.op <> 'TRUNCATE'
    ORDER BY m.record_id, c.col, m.committed_at DESC, m.id DESC
) AS b
LEFT JOIN flux.trace_requests AS t ON t.request_id = b.request_id
LEFT JOIN LATERAL (SELECT flux.span_of(t.spans, b.span_id) AS span) AS s ON true;
