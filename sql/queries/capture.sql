-- WAL capture (flux/_capture.py): the slot, the switch between modes, and the consumer.

-- name: mode
SELECT coalesce(flux.setting('capture'), 'trigger');

-- name: slot
SELECT slot_name, plugin, confirmed_flush_lsn::text AS confirmed_lsn, wal_status,
       safe_wal_size, active,
       (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint AS lag_bytes
FROM pg_replication_slots WHERE slot_name = %(slot)s AND database = current_database();

-- name: wal_level
SHOW wal_level;

-- name: create_slot
-- The plugin: pgoutput, or the C decoder (flux/store/_native.py: decoder_plugin).
SELECT lsn::text FROM pg_create_logical_replication_slot(%(slot)s, %(plugin)s);

-- name: release_slot
-- Ends the session that streams the slot (a consumer still finishing an interrupted
-- switch), waiting up to 5 s for it to exit, so that the slot can be dropped.
SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots
WHERE slot_name = %(slot)s AND database = current_database() AND active_pid IS NOT NULL;

-- name: drop_slot
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
WHERE slot_name = %(slot)s AND database = current_database();

-- name: reset_state
INSERT INTO flux.capture_state (slot) VALUES (%(slot)s)
ON CONFLICT (slot) DO UPDATE SET wal_from = NULL, wal_until = NULL, applied_lsn = NULL,
    applied_commit = NULL, applied_changes = 0, caught_up_at = NULL, created_at = now();

-- name: state
SELECT wal_from::text, wal_until::text, applied_lsn::text, applied_commit, applied_changes,
       caught_up_at, now() AS now, created_at
FROM flux.capture_state WHERE slot = %(slot)s;

-- name: switch
SELECT flux.switch_capture(%(mode)s);

-- name: switch_lock
-- First in the switch's transaction: waits until no execution that read the mode is open
-- (each BEGIN that asks holds this lock shared: sql/0023, flux.record_in_wal), and keeps new
-- ones from reading it until the switch commits. An execution that read "wal" sends its
-- record as a logical message, so it must commit before the switch back to triggers does:
-- the consumer writes what commits before that switch and nothing after. Bounded by
-- lock_timeout: a long execution must not hold every new one behind the switch; the
-- switch tries again (flux/capture/_mode.py).
SELECT set_config('lock_timeout', %(timeout)s, true),
       pg_advisory_xact_lock(5065517517330448405),
       set_config('lock_timeout', '0', true);

-- name: consumer_lock
SELECT pg_try_advisory_lock(%(key)s);

-- name: consumer_unlock
SELECT pg_advisory_unlock(%(key)s);

-- name: current_lsn
SELECT pg_current_wal_lsn()::text;

-- name: peek
SELECT data FROM pg_logical_slot_peek_binary_changes(
    %(slot)s, %(upto_lsn)s::pg_lsn, %(upto_changes)s,
    'proto_version', '1', 'publication_names', %(publication)s, 'messages', 'true');

-- name: log_snapshot
-- A running-xacts record: where a slot read through SQL may move its restart_lsn to.
SELECT pg_log_standby_snapshot();

-- name: advance
SELECT pg_replication_slot_advance(%(slot)s, %(lsn)s::pg_lsn);

-- name: types
-- What flux/capture/_pgjson.py needs to turn a column's text into to_jsonb's JSON.
SELECT t.oid, t.typtype, t.typcategory, t.typelem, t.typdelim, t.typbasetype, t.typlen,
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
        WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) AS field_names,
       (SELECT array_agg(a.atttypid::bigint ORDER BY a.attnum) FROM pg_attribute a
        WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) AS field_types
FROM pg_type t;

-- name: column_order
-- A relation's columns in the database's collation order, the order in which
-- flux.changed_columns lists them.
SELECT array_agg(c ORDER BY c) FROM unnest(%(names)s::text[]) AS c;

-- name: primary_key
SELECT flux.primary_key_columns(%(oid)s::oid::regclass);

-- name: copy_allowed
-- COPY FROM refuses a table whose row-level security applies to the session.
SELECT NOT row_security_active('flux.state_mutations'::regclass);

-- name: copy_mutations
-- One batch of decoded changes (flux/capture/_consumer.py writes the lines in this order).
-- Exactly once: the consumer skips what flux.capture_state says is stored, and that row
-- commits with the batch.
COPY flux.state_mutations (
    record_id, pk, op, old, new, changed_cols, span_id, lsn_seq, table_oid, table_schema,
    table_name, request_id, actor, application_name, tenant, txid, committed_at, source, lsn)
FROM STDIN

-- name: create_stage
-- The rows the server finishes (apply_stage), and every row where COPY may not write
-- flux.state_mutations; emptied at each commit.
CREATE TEMP TABLE IF NOT EXISTS flux_capture_stage (
    record_id uuid, pk jsonb, op text, old jsonb, new jsonb, changed_cols text[],
    span_id text, lsn_seq integer, table_oid oid, table_schema text, table_name text,
    request_id uuid, actor text, application_name text, tenant text, txid bigint,
    committed_at timestamptz, source text, lsn pg_lsn) ON COMMIT DELETE ROWS;

-- name: copy_stage
COPY pg_temp.flux_capture_stage (
    record_id, pk, op, old, new, changed_cols, span_id, lsn_seq, table_oid, table_schema,
    table_name, request_id, actor, application_name, tenant, txid, committed_at, source, lsn)
FROM STDIN

-- name: apply_stage
-- The key's record id where the consumer could not render the key as jsonb does; the
-- changed columns where only the values' jsonb can tell (json, arrays, composites).
INSERT INTO flux.state_mutations (
    record_id, table_oid, table_schema, table_name, pk, op, old, new, changed_cols,
    request_id, span_id, actor, application_name, txid, committed_at, source, lsn, lsn_seq,
    tenant)
SELECT CASE WHEN c.pk IS NULL THEN NULL
            ELSE coalesce(c.record_id, md5(c.table_oid::text || ':' || c.pk::text)::uuid) END,
       c.table_oid, c.table_schema, c.table_name, c.pk, c.op, c.old, c.new,
       CASE WHEN c.op = 'TRUNCATE' THEN '{}'
            ELSE coalesce(c.changed_cols, flux.changed_columns(c.old, c.new)) END,
       c.request_id, c.span_id, c.actor, c.application_name, c.txid, c.committed_at, 'wal',
       c.lsn, c.lsn_seq, c.tenant
FROM pg_temp.flux_capture_stage AS c
-- A no-op UPDATE: the trigger's WHEN (OLD.* IS DISTINCT FROM NEW.*) skips it too (the
-- consumer leaves out those it could tell).
WHERE NOT (c.op = 'UPDATE' AND c.changed_cols IS NULL AND c.old = c.new)
ORDER BY c.lsn, c.lsn_seq;

-- name: save_progress
-- Only into the row the consumer read at its start (created_at): a switch to WAL that
-- reset the row since has a new slot, and the old slot's progress must not leak into it.
UPDATE flux.capture_state
SET wal_from = coalesce(%(wal_from)s::pg_lsn, wal_from),
    wal_until = coalesce(%(wal_until)s::pg_lsn, wal_until),
    applied_lsn = coalesce(%(applied_lsn)s::pg_lsn, applied_lsn),
    applied_commit = coalesce(%(applied_commit)s, applied_commit),
    applied_changes = applied_changes + %(changes)s,
    caught_up_at = CASE WHEN %(caught_up)s THEN now() ELSE caught_up_at END
WHERE slot = %(slot)s AND created_at = %(generation)s;

-- name: caught_up
SELECT coalesce((SELECT confirmed_flush_lsn >= %(lsn)s::pg_lsn FROM pg_replication_slots
                 WHERE slot_name = %(slot)s AND database = current_database()), true);

-- name: start_replication
-- On a replication connection (flux/capture/_walstream.py): stream the slot from {lsn} — 0/0 for
-- its confirmed position — with the same options the SQL functions take.
START_REPLICATION SLOT {slot} LOGICAL {lsn}
    (proto_version '1', publication_names {publication}, messages 'true'{origin})

-- name: origin_exists
-- The consumer's apply session stamps its transactions with a replication origin, so that
-- a walsender asked for `origin 'none'` skips them as it decodes (PostgreSQL 16+) instead
-- of queueing each stored row only for pgoutput to drop it. Superuser, or a role granted
-- the pg_replication_origin_* functions; else the consumer goes on without one.
SELECT pg_replication_origin_oid(%(origin)s) IS NOT NULL;

-- name: origin_create
SELECT pg_replication_origin_create(%(origin)s);

-- name: origin_setup
SELECT pg_replication_origin_session_setup(%(origin)s);

-- name: origin_reset
SELECT pg_replication_origin_session_reset();

-- name: record_copy_allowed
-- The records that travelled in the WAL (flux/capture/_records.py): COPY FROM refuses a
-- table whose row-level security applies to the session.
SELECT NOT row_security_active('flux.trace_requests'::regclass);

-- name: copy_records
-- One batch of records, each a line the executor wrote (flux/store/_record.py:
-- RECORD_COLUMNS, in this order), in the same apply transaction as their transactions'
-- changes and the progress row: exactly once.
COPY flux.trace_requests (
    request_id, kind, function, runtime, method, route, status, http_status, started_at,
    duration_ms, request, response, error, spans, tape, logs, code_sha, code_dirty, tenant,
    parent_id, replay_of, resumed_from, sampled, recorded_at)
FROM STDIN

-- name: create_record_stage
CREATE TEMP TABLE IF NOT EXISTS flux_record_stage
    (LIKE flux.trace_requests INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;

-- name: copy_record_stage
COPY pg_temp.flux_record_stage (
    request_id, kind, function, runtime, method, route, status, http_status, started_at,
    duration_ms, request, response, error, spans, tape, logs, code_sha, code_dirty, tenant,
    parent_id, replay_of, resumed_from, sampled, recorded_at)
FROM STDIN

-- name: apply_record_stage
INSERT INTO flux.trace_requests (
    request_id, kind, function, runtime, method, route, status, http_status, started_at,
    duration_ms, request, response, error, spans, tape, logs, code_sha, code_dirty, tenant,
    parent_id, replay_of, resumed_from, sampled, recorded_at)
SELECT request_id, kind, function, runtime, method, route, status, http_status, started_at,
       duration_ms, request, response, error, spans, tape, logs, code_sha, code_dirty, tenant,
       parent_id, replay_of, resumed_from, sampled, recorded_at
FROM pg_temp.flux_record_stage
ON CONFLICT (request_id) DO NOTHING;
