-- Queries of the migration runner (flux/store/_migrate.py).

-- name: bootstrap
CREATE SCHEMA IF NOT EXISTS flux;
CREATE TABLE IF NOT EXISTS flux.migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: lock
SELECT pg_advisory_lock(%(key)s);

-- name: unlock
SELECT pg_advisory_unlock(%(key)s);

-- name: applied
SELECT version, checksum FROM flux.migrations ORDER BY version;

-- name: record
INSERT INTO flux.migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: schema_exists
SELECT to_regclass('flux.migrations') IS NOT NULL;
