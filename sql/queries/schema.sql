-- Applying the application's schema/*.sql (flux/capture/_schema.py).

-- name: applied
SELECT file, checksum FROM flux.app_schema;

-- name: record
INSERT INTO flux.app_schema (file, checksum) VALUES (%(file)s, %(checksum)s)
ON CONFLICT (file) DO UPDATE SET checksum = excluded.checksum, applied_at = now();

-- name: install_capture_all
SELECT flux.install_capture_all();

-- name: lock
SELECT pg_advisory_xact_lock(%(key)s);
