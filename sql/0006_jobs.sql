-- 0006: the queue worker and cron — attempts of each job, and one row per cron tick.
--
-- A job's attempts are kept so that `flux queue show` lists every execution of a job in
-- order, including an attempt whose worker crashed before it recorded anything.

-- 'job' for ctx.queue.push, 'cron' for a tick: the kind its executions are recorded as.
ALTER TABLE flux.jobs ADD COLUMN kind text NOT NULL DEFAULT 'job'
    CHECK (kind IN ('job', 'cron'));

-- Leases that ran out: a job whose worker died runs again (the visibility timeout).
CREATE INDEX jobs_lease_idx ON flux.jobs (locked_until) WHERE status = 'running';

-- One row per claim of a job; request_id is the execution that attempt is recorded as
-- (a UUIDv7, so the attempts of a job sort in time; `flux queue retry` restarts attempt at 1).
CREATE TABLE flux.job_attempts (
    job_id      uuid NOT NULL REFERENCES flux.jobs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    request_id  uuid NOT NULL,
    worker      text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, request_id)
);

-- Each cron tick runs once across every Flux process: the process whose insert wins the
-- primary key enqueues the tick's job (in the same statement); the others do nothing.
CREATE TABLE flux.cron_ticks (
    function    text NOT NULL,
    tick_at     timestamptz NOT NULL,
    job_id      uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (function, tick_at)
);
