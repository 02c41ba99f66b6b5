-- 0001: the flux schema — execution records, row mutations, jobs.
--
-- Applied by `flux db migrate` inside one transaction; the runner records the version in
-- flux.migrations. Everything Flux stores lives in this schema.

CREATE SCHEMA IF NOT EXISTS flux;

-- One row per execution: an HTTP request, a job attempt, a cron tick, a replay or a resume.
-- request_id is a UUIDv7, so its order is the order in time.
CREATE TABLE flux.trace_requests (
    request_id    uuid PRIMARY KEY,
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
    -- {method, route, headers (redacted), query, body}
    request       jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- {status, body}
    response      jsonb,
    -- {type, message, sqlstate, http_code, file, line, function, stack}
    error         jsonb,
    -- flat list of spans: {id, parent_id, name, kind, start_ms, duration_ms, status, file, line, attrs}
    spans         jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- ordered outside values: {seq, kind, key, value, file, line, span_id}
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
    recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX trace_requests_function_started_idx
    ON flux.trace_requests (function, started_at DESC);
CREATE INDEX trace_requests_failures_idx
    ON flux.trace_requests (started_at DESC) WHERE status = 'error';
CREATE INDEX trace_requests_parent_idx
    ON flux.trace_requests (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX trace_requests_started_brin
    ON flux.trace_requests USING brin (started_at);

-- One row per row change, from the capture triggers, the WAL consumer, or the executor
-- (rolled-back attempts, which never reach a trigger's surviving transaction or the WAL).
CREATE TABLE flux.state_mutations (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- md5(table oid, primary key) as a uuid: "history of one row" is one index range scan.
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
    rolled_back      boolean NOT NULL DEFAULT false
);

CREATE INDEX state_mutations_record_idx
    ON flux.state_mutations (record_id, committed_at DESC, id DESC);
CREATE INDEX state_mutations_request_idx
    ON flux.state_mutations (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX state_mutations_committed_brin
    ON flux.state_mutations USING brin (committed_at);
-- The WAL consumer's idempotent apply: a change replayed after a crash hits this key.
CREATE UNIQUE INDEX state_mutations_wal_key
    ON flux.state_mutations (lsn, lsn_seq) WHERE source = 'wal';

-- The built-in queue. A job exists only if the execution that pushed it committed.
CREATE TABLE flux.jobs (
    id               uuid PRIMARY KEY,
    function         text NOT NULL,
    payload          jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'done', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    run_at           timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz,
    locked_by        text,
    idempotency_key  text,
    parent_id        uuid,
    last_request_id  uuid,
    last_error       jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX jobs_idempotency_key
    ON flux.jobs (function, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_claim_idx
    ON flux.jobs (run_at) WHERE status = 'queued';
CREATE INDEX jobs_parent_idx
    ON flux.jobs (parent_id) WHERE parent_id IS NOT NULL;
