-- Queries about the server itself (flux/store/_database.py, flux/_dbstatus.py).

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %(name)s;

-- name: server_facts
SELECT current_setting('server_version') AS version,
       current_setting('wal_level') AS wal_level,
       pg_database_size(current_database()) AS database_size,
       current_database() AS database,
       current_user AS "user";

-- name: create_database
CREATE DATABASE {name};
-- name: read_only
SET default_transaction_read_only = on;
