-- 0004: the application's own schema files, the capture setting, and capture that follows
-- the application's tables: installed on every existing table by flux.install_capture_all()
-- and on every table created later by an event trigger.

-- schema/*.sql files of the project that `flux dev` / `flux serve` applied, by checksum.
CREATE TABLE flux.app_schema (
    file       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Settings that the database itself must know (the event trigger reads them).
CREATE TABLE flux.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO flux.settings (key, value) VALUES ('capture', 'trigger');

CREATE FUNCTION flux.setting(name text) RETURNS text
    LANGUAGE sql STABLE
    RETURN (SELECT value FROM flux.settings WHERE key = name);

-- Tables Flux captures: ordinary and partitioned tables outside flux and the system schemas
-- (partitions inherit their parent's row triggers).
CREATE FUNCTION flux.capturable(rel regclass) RETURNS boolean
    LANGUAGE sql STABLE
    RETURN EXISTS (
        SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = rel AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relpersistence = 'p'
          AND n.nspname NOT IN ('flux', 'information_schema') AND n.nspname NOT LIKE 'pg\_%');

-- Install capture on every capturable table that lacks it; returns how many were new.
CREATE FUNCTION flux.install_capture_all() RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
    installed integer := 0;
BEGIN
    FOR rel IN
        SELECT c.oid::regclass FROM pg_class c
        WHERE flux.capturable(c.oid)
          AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                          WHERE t.tgrelid = c.oid AND t.tgname = 'flux_capture_ins_del')
    LOOP
        PERFORM flux.install_capture(rel);
        installed := installed + 1;
    END LOOP;
    RETURN installed;
END
$$;

-- New tables, and tables whose primary key changed, get (fresh) capture at once.
CREATE FUNCTION flux.on_ddl_end() RETURNS event_trigger
    LANGUAGE plpgsql AS $$
DECLARE
    command record;
BEGIN
    IF coalesce(flux.setting('capture'), 'off') <> 'trigger' THEN
        RETURN;
    END IF;
    FOR command IN
        SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
        WHERE object_type IN ('table', 'table column') AND classid = 'pg_class'::regclass
    LOOP
        IF flux.capturable(command.objid::regclass) THEN
            PERFORM flux.install_capture(command.objid::regclass);
        END IF;
    END LOOP;
END
$$;

-- Event triggers need a superuser; on a managed server without one, `flux dev` / `flux
-- serve` still install capture on start (flux.install_capture_all), just not on the fly.
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        CREATE EVENT TRIGGER flux_capture_new_tables ON ddl_command_end
            WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
            EXECUTE FUNCTION flux.on_ddl_end();
    ELSE
        RAISE NOTICE 'flux: not a superuser, so new tables get capture at the next start';
    END IF;
END
$$;
