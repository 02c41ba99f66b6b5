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

-- name: records_state
-- WAL capture carries committed executions' records in the WAL until the consumer writes
-- them (flux/store/_pending.py). The slot's name and the consumer's advisory lock ("FLUX",
-- 8: pg_locks shows a bigint key as classid = its high half, objid = its low half) are
-- flux/capture/_consumer.py's SLOT and CONSUMER_LOCK.
SELECT coalesce(flux.setting('capture'), 'trigger') = 'wal' AS wal,
       pg_current_wal_lsn()::text AS target,
       EXISTS (SELECT 1 FROM pg_locks
               WHERE locktype = 'advisory' AND granted AND classid = 1179407704
                 AND objid = 8 AND objsubid = 1
                 AND database = (SELECT oid FROM pg_database
                                 WHERE datname = current_database())) AS consumer,
       (SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots
        WHERE slot_name = 'flux_capture' AND database = current_database())::bigint
           AS behind;

-- name: records_written
SELECT coalesce((SELECT confirmed_flush_lsn >= %(lsn)s::pg_lsn FROM pg_replication_slots
                 WHERE slot_name = 'flux_capture' AND database = current_database()), true);
