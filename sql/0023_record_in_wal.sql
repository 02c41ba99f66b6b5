-- 0023: the record travels in the WAL (capture mode "wal"; docs/decisions.md, "walrec").
--
-- A committing execution whose BEGIN called this function and got true sends its record
-- as one transactional logical message (sql/queries/execution.sql: emit_record) instead of
-- inserting it; the WAL consumer writes it with the transaction's changes. That is safe
-- only if the mode cannot change under the execution: the function takes a shared advisory
-- lock ("FLUX", 21) held until the transaction ends, which `flux capture switch` takes
-- exclusively (sql/queries/capture.sql: switch_lock), so no switch commits while an
-- execution that read the old mode is open — the consumer writes what commits before the
-- switch back to triggers, and nothing after it. PL/pgSQL, VOLATILE: its mode read takes
-- a snapshot of its own after the lock is granted (under READ COMMITTED), so it sees a
-- switch that committed while it waited; under REPEATABLE READ or SERIALIZABLE the
-- snapshot may be older than the lock, so the answer is false there (the record is
-- inserted, as in trigger mode). Its plans are cached per session, which a statement in
-- the BEGIN's simple query would parse and plan every time.
CREATE FUNCTION flux.record_in_wal() RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(5065517517330448405);
    RETURN coalesce((SELECT s.value = 'wal' FROM flux.settings s WHERE s.key = 'capture'),
                    false)
        AND current_setting('transaction_isolation') = 'read committed';
END
$$;
