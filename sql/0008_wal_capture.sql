-- 0008: WAL capture — row changes read from a logical replication slot instead of triggers.
--
-- In WAL mode a captured table has REPLICA IDENTITY FULL (so updates and deletes carry the
-- whole old row), belongs to the publication flux_capture, and has no row trigger: the
-- write path pays only for the bigger WAL. The consumer (flux/_capture.py) reads the slot
-- flux_capture with pgoutput and writes flux.state_mutations (source 'wal'), keyed by
-- (commit LSN, position in the transaction) so a replayed batch changes nothing.
--
-- Who made a change travels in the WAL as transactional logical messages:
--   prefix 'flux'        — emitted by the executor before each commit: the request id and
--                          the statements that wrote, in order (span id, row count, tables);
--   prefix 'flux.actor'  — emitted by a statement-level trigger for writes from outside
--                          Flux (psql, migrations, other apps): current_user and
--                          application_name (the WAL does not carry them);
--   prefix 'flux.switch' — emitted by the transaction that switches the capture mode, so
--                          the consumer knows exactly which transactions triggers captured.

-- Dropping a trigger only if it is there: DROP TRIGGER IF EXISTS would greet whoever ran
-- CREATE TABLE in psql with a NOTICE per missing trigger.
CREATE FUNCTION flux.drop_trigger_quietly(rel regclass, name text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = name) THEN
        EXECUTE format('DROP TRIGGER %I ON %s', name, rel);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION flux.uninstall_capture(rel regclass) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flux.drop_trigger_quietly(rel, 'flux_capture_ins_del');
    PERFORM flux.drop_trigger_quietly(rel, 'flux_capture_upd');
    PERFORM flux.drop_trigger_quietly(rel, 'flux_capture_truncate');
END
$$;

-- As in 0002, without the notices; still idempotent (re-running picks up a changed key).
CREATE OR REPLACE FUNCTION flux.install_capture(rel regclass) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    pk_args text := (
        SELECT coalesce(string_agg(quote_literal(c), ', '), '')
        FROM unnest(flux.primary_key_columns(rel)) AS c);
BEGIN
    IF (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = rel) = 'flux' THEN
        RAISE EXCEPTION 'flux does not capture its own tables (%)', rel;
    END IF;
    PERFORM flux.uninstall_capture(rel);
    EXECUTE format(
        'CREATE TRIGGER flux_capture_ins_del AFTER INSERT OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION flux.capture_row(%s)', rel, pk_args);
    EXECUTE format(
        'CREATE TRIGGER flux_capture_upd AFTER UPDATE ON %s FOR EACH ROW '
        'WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION flux.capture_row(%s)',
        rel, pk_args);
    EXECUTE format(
        'CREATE TRIGGER flux_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION flux.capture_truncate()', rel);
END
$$;

-- The consumer's bookkeeping: one row per slot.
CREATE TABLE flux.capture_state (
    slot            text PRIMARY KEY,
    -- commit LSN of the switch to WAL capture: transactions up to it were captured by
    -- triggers; NULL until the consumer has read the switch.
    wal_from        pg_lsn,
    -- commit LSN of the switch back to triggers: the consumer applies up to it, then stops.
    wal_until       pg_lsn,
    applied_lsn     pg_lsn,
    applied_commit  timestamptz,  -- commit time of the last transaction applied
    applied_changes bigint NOT NULL DEFAULT 0,
    caught_up_at    timestamptz,  -- last time the consumer had read everything
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Writes from outside Flux say who made them (statement level: nothing per row).
CREATE FUNCTION flux.wal_actor() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_logical_emit_message(true, 'flux.actor', json_build_object(
        'actor', current_user,
        'application_name', current_setting('application_name', true))::text);
    RETURN NULL;
END
$$;

CREATE FUNCTION flux.install_wal_capture(rel regclass) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = rel) = 'flux' THEN
        RAISE EXCEPTION 'flux does not capture its own tables (%)', rel;
    END IF;
    PERFORM flux.uninstall_capture(rel);
    PERFORM flux.drop_trigger_quietly(rel, 'flux_wal_actor');
    -- Only for sessions that are not a Flux execution: the WHEN costs Flux's writes one
    -- current_setting() per statement and no PL/pgSQL.
    EXECUTE format(
        'CREATE TRIGGER flux_wal_actor BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
        'FOR EACH STATEMENT WHEN (coalesce(current_setting(''flux.request_id'', true), '''') = '''') '
        'EXECUTE FUNCTION flux.wal_actor()', rel);
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                   WHERE p.pubname = 'flux_capture' AND pr.prrelid = rel) THEN
        EXECUTE format('ALTER PUBLICATION flux_capture ADD TABLE %s', rel);
    END IF;
    -- Last: this ALTER TABLE fires the event trigger, which finds the table done.
    IF (SELECT relreplident FROM pg_class WHERE oid = rel) <> 'f' THEN
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
    END IF;
END
$$;

CREATE FUNCTION flux.uninstall_wal_capture(rel regclass) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flux.drop_trigger_quietly(rel, 'flux_wal_actor');
    IF EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
               WHERE p.pubname = 'flux_capture' AND pr.prrelid = rel) THEN
        EXECUTE format('ALTER PUBLICATION flux_capture DROP TABLE %s', rel);
    END IF;
    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY DEFAULT', rel);
END
$$;

-- Install the current mode's capture on every capturable table that lacks it.
CREATE OR REPLACE FUNCTION flux.install_capture_all() RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
    installed integer := 0;
    wal boolean := flux.setting('capture') = 'wal';
BEGIN
    FOR rel IN
        SELECT c.oid::regclass FROM pg_class c
        WHERE flux.capturable(c.oid)
          AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid
                          AND t.tgname = CASE WHEN wal THEN 'flux_wal_actor'
                                              ELSE 'flux_capture_ins_del' END)
    LOOP
        IF wal THEN
            PERFORM flux.install_wal_capture(rel);
        ELSE
            PERFORM flux.install_capture(rel);
        END IF;
        installed := installed + 1;
    END LOOP;
    RETURN installed;
END
$$;

CREATE OR REPLACE FUNCTION flux.on_ddl_end() RETURNS event_trigger
    LANGUAGE plpgsql AS $$
DECLARE
    command record;
    mode text := coalesce(flux.setting('capture'), 'off');
BEGIN
    IF mode NOT IN ('trigger', 'wal') THEN
        RETURN;
    END IF;
    FOR command IN
        SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
        WHERE object_type IN ('table', 'table column') AND classid = 'pg_class'::regclass
    LOOP
        IF flux.capturable(command.objid::regclass) THEN
            IF mode = 'wal' THEN
                -- ALTER TABLE … REPLICA IDENTITY inside fires this again: only when needed.
                IF (SELECT relreplident FROM pg_class WHERE oid = command.objid) <> 'f'
                   OR NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = command.objid
                                  AND t.tgname = 'flux_wal_actor') THEN
                    PERFORM flux.install_wal_capture(command.objid::regclass);
                END IF;
            ELSE
                PERFORM flux.install_capture(command.objid::regclass);
            END IF;
        END IF;
    END LOOP;
END
$$;

-- The switch between modes, in one transaction. DROP/CREATE TRIGGER take each table's
-- lock, so every writer transaction commits wholly before the switch (captured by the old
-- mode) or after it (by the new one); the 'flux.switch' message marks the cut in the WAL.
-- The slot must exist before switching to WAL (it cannot be created in this transaction).
CREATE FUNCTION flux.switch_capture(mode text) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
    tables integer := 0;
BEGIN
    IF mode NOT IN ('trigger', 'wal') THEN
        RAISE EXCEPTION 'capture mode must be trigger or wal, not %', mode;
    END IF;
    IF mode = 'wal' AND NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'flux_capture') THEN
        CREATE PUBLICATION flux_capture;
    END IF;
    INSERT INTO flux.settings (key, value) VALUES ('capture', mode)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value;
    FOR rel IN SELECT c.oid::regclass FROM pg_class c WHERE flux.capturable(c.oid) LOOP
        IF mode = 'wal' THEN
            PERFORM flux.install_wal_capture(rel);
        ELSE
            PERFORM flux.uninstall_wal_capture(rel);
            PERFORM flux.install_capture(rel);
        END IF;
        tables := tables + 1;
    END LOOP;
    PERFORM pg_logical_emit_message(true, 'flux.switch', mode);
    RETURN tables;
END
$$;

-- Called by the executor in its commit round trip: in WAL mode, the request id and the
-- statements that wrote (span id, row count, tables) go into the WAL with the changes. The
-- mode is read here, at commit, not cached by the server: a switch commits before any
-- transaction that writes after it (it holds the tables' locks), so each transaction is
-- stamped by exactly the mode that captured it.
CREATE FUNCTION flux.end_execution(request_id uuid, statements jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF flux.setting('capture') = 'wal' THEN
        PERFORM pg_logical_emit_message(true, 'flux', json_build_object(
            'request_id', request_id, 'statements', statements, 'actor', current_user,
            'application_name', current_setting('application_name', true))::text);
    END IF;
END
$$;
