-- 0025: what a writer pays for WAL capture (docs/decisions.md, "walw … issue 21").
--
-- The statement trigger that stamps writes from outside Flux had a WHEN clause. PostgreSQL
-- keeps a trigger's WHEN only for the statement that evaluates it: every INSERT, UPDATE or
-- DELETE on a captured table read the clause back from its stored node text and compiled
-- it again — measured with callgrind at 35 000 instructions a statement, a sixth of a
-- pgbench-shaped transaction's whole backend cost. The test moves into the function, where
-- it is a PL/pgSQL simple expression; the message is sent by an assignment (also a simple
-- expression) rather than PERFORM (a query through the executor).

CREATE OR REPLACE FUNCTION flux.wal_actor() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    lsn pg_lsn;
BEGIN
    -- A Flux execution's end_execution message carries its actor: nothing to do.
    IF coalesce(current_setting('flux.request_id', true), '') = '' THEN
        lsn := pg_logical_emit_message(true, 'flux.actor', json_build_object(
            'actor', current_user,
            'application_name', current_setting('application_name', true),
            'tenant', flux.session_tenant())::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION flux.install_wal_capture(rel regclass) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = rel) = 'flux' THEN
        RAISE EXCEPTION 'flux does not capture its own tables (%)', rel;
    END IF;
    PERFORM flux.uninstall_capture(rel);
    PERFORM flux.drop_trigger_quietly(rel, 'flux_wal_actor');
    -- No WHEN: flux.wal_actor() itself returns at once inside a Flux execution (0025).
    EXECUTE format(
        'CREATE TRIGGER flux_wal_actor BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION flux.wal_actor()', rel);
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

-- Tables already in WAL mode get the trigger without its WHEN.
DO $$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN SELECT t.tgrelid::regclass FROM pg_trigger t
               WHERE t.tgname = 'flux_wal_actor' AND t.tgqual IS NOT NULL LOOP
        EXECUTE format('DROP TRIGGER flux_wal_actor ON %s', rel);
        EXECUTE format(
            'CREATE TRIGGER flux_wal_actor BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
            'FOR EACH STATEMENT EXECUTE FUNCTION flux.wal_actor()', rel);
    END LOOP;
END
$$;
