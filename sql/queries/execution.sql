-- The executor's statements around each execution (flux/runtime/_ctx_db.py, flux/runtime/_execution.py).

-- name: begin
-- Sent as a simple query: {request_id} is replaced by a UUID the executor generated. The
-- executor sends begin_mode (below); this form, without the mode read, is the benches'.
BEGIN; SELECT set_config('flux.request_id', '{request_id}', true);

-- name: begin_tenant
-- The same for an execution of a tenant: {tenant} is replaced by the tenant as a literal
-- quoted by psycopg (sql.Literal). The columns `tenant` default to this GUC (sql/0010).
BEGIN; SELECT set_config('flux.request_id', '{request_id}', true),
              set_config('flux.tenant', {tenant}, true);

-- name: begin_mode
-- The BEGIN of every execution: its first column reads the capture mode under the lock a
-- capture switch takes (sql/0023, sql/0026: flux.record_in_wal, held to the end of the
-- transaction): true in WAL mode, false in another (the commit then sends no
-- end_execution: no switch to WAL can commit before this transaction does), NULL when the
-- isolation level leaves it unknown. Only a project that captures by WAL (flux.toml:
-- capture = "wal") sends its record in the WAL on a true; any other answer inserts it.
BEGIN; SELECT flux.record_in_wal(), set_config('flux.request_id', '{request_id}', true);

-- name: begin_mode_tenant
BEGIN; SELECT flux.record_in_wal(), set_config('flux.request_id', '{request_id}', true),
              set_config('flux.tenant', {tenant}, true);

-- name: savepoint
-- Guards a statement once the execution has written something (flux/runtime/_ctx_db.py).
SAVEPOINT flux_stmt;

-- name: savepoint_next
-- The previous statement's savepoint is released only now, in the same round trip as the
-- next one (COMMIT releases the last).
RELEASE SAVEPOINT flux_stmt; SAVEPOINT flux_stmt;

-- name: rollback_to
ROLLBACK TO SAVEPOINT flux_stmt;

-- name: attempted_mutations
-- The changes a failing execution made before it fails, read inside its transaction
-- just before the rollback, to be stored again marked rolled_back.
SELECT record_id, table_oid, table_schema, table_name, pk, op, old, new, changed_cols,
       request_id, span_id, actor, application_name, txid, committed_at, tenant
FROM flux.state_mutations
-- committed_at: every change this transaction's triggers made carries its start (now()),
-- which names the one partition to read (sql/0009).
WHERE request_id = %(request_id)s AND committed_at = now()
ORDER BY id;

-- name: insert_rolled_back
-- Through flux.keep_rolled_back (sql/0012): the runtime may not write mutations itself.
SELECT flux.keep_rolled_back(
    %(record_id)s, %(table_oid)s, %(table_schema)s, %(table_name)s, %(pk)s, %(op)s, %(old)s,
    %(new)s, %(changed_cols)s, %(request_id)s, %(span_id)s, %(actor)s, %(application_name)s,
    %(txid)s, %(committed_at)s, %(tenant)s);

-- name: insert_record
INSERT INTO flux.trace_requests (
    request_id, kind, function, runtime, method, route, status, http_status, started_at,
    duration_ms, request, response, error, spans, tape, logs, code_sha, code_dirty, tenant,
    parent_id, replay_of, resumed_from, sampled)
VALUES (
    %(request_id)s, %(kind)s, %(function)s, %(runtime)s, %(method)s, %(route)s, %(status)s,
    %(http_status)s, %(started_at)s, %(duration_ms)s, %(request)s, %(response)s, %(error)s,
    %(spans)s, %(tape)s, %(logs)s, %(code_sha)s, %(code_dirty)s, %(tenant)s, %(parent_id)s,
    %(replay_of)s, %(resumed_from)s, %(sampled)s);

-- name: insert_outline
-- A successful execution that sampling left out ([record] sample_rate): its outline is
-- stored only if its transaction wrote something — then PostgreSQL has given it a
-- transaction id — so every committed change keeps its record, and a read-only execution
-- leaves none. Sent before end_execution, whose WAL message would itself take an id.
INSERT INTO flux.trace_requests (
    request_id, kind, function, runtime, method, route, status, http_status, started_at,
    duration_ms, request, response, error, spans, tape, logs, code_sha, code_dirty, tenant,
    parent_id, replay_of, resumed_from, sampled)
SELECT
    %(request_id)s, %(kind)s, %(function)s, %(runtime)s, %(method)s, %(route)s, %(status)s,
    %(http_status)s, %(started_at)s, %(duration_ms)s, %(request)s, %(response)s, %(error)s,
    %(spans)s, %(tape)s, %(logs)s, %(code_sha)s, %(code_dirty)s, %(tenant)s, %(parent_id)s,
    %(replay_of)s, %(resumed_from)s, false
WHERE pg_current_xact_id_if_assigned() IS NOT NULL;

-- name: end_execution
-- First in the commit round trip: in WAL capture mode, tells the consumer which request and
-- which statements made this transaction's changes (sql/0008). Not sent when the BEGIN read
-- another mode under the switch's lock (begin_mode).
SELECT flux.end_execution(%(request_id)s, %(statements)s);

-- name: emit_record
-- WAL capture (the BEGIN read "wal"): the record travels in the transaction's WAL as one
-- transactional logical message, which commits if and only if the transaction commits; the
-- WAL consumer writes it into flux.trace_requests in the same apply transaction as the
-- transaction's changes (flux/capture/_consumer.py). What end_execution's message carried
-- rides in it: the first line is the session's actor (as end_execution wrote it), the
-- rest is the executor's (flux/store/_record.py: wal_payload): the request id and the
-- statements, then the record as one line of COPY text (capture.sql: copy_records).
SELECT pg_logical_emit_message(true, 'flux.record', json_build_object(
    'actor', current_user, 'application_name', current_setting('application_name', true),
    'tenant', flux.session_tenant())::text || E'\n' || %(payload)s::text);

-- name: commit
-- Sent after insert_record in the same simple query (flux/store/_record.py store_and_commit): a
-- committing execution's record and its COMMIT cost one round trip.
COMMIT;

-- name: push_job
INSERT INTO flux.jobs (id, function, payload, max_attempts, run_at, idempotency_key, parent_id)
VALUES (%(id)s, %(function)s, %(payload)s, %(max_attempts)s, now() + %(delay)s,
        %(idempotency_key)s, %(parent_id)s)
ON CONFLICT (function, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id;

-- name: existing_job
SELECT id FROM flux.jobs WHERE function = %(function)s AND idempotency_key = %(idempotency_key)s;


-- name: capture_mode
SELECT coalesce(flux.setting('capture'), 'trigger');
