-- flux install (flux/_install.py): what an existing database has of Flux, and the steps
-- that put the rest on it. Every query here only reads, except those named as actions.

-- name: server
SELECT current_setting('server_version_num')::int AS version_num,
       current_setting('server_version') AS version,
       current_database() AS database, current_user AS role,
       r.rolsuper AS superuser, r.rolcreaterole AS createrole,
       has_database_privilege(current_database(), 'CREATE') AS may_create_schema,
       current_setting('wal_level') AS wal_level,
       to_regnamespace('flux') IS NOT NULL AS has_flux_schema,
       to_regclass('flux.migrations') IS NOT NULL AS has_migrations
FROM pg_roles r WHERE r.rolname = current_user;

-- name: tables
-- The application's tables, as flux.capturable (sql/0004) sees them, with what Flux needs
-- of each: a primary key (row history), capture, and the runtime role's rights.
SELECT n.nspname AS schema, c.relname AS name, c.reltuples::bigint AS rows,  -- -1: never analysed
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p')
           AS has_pk,
       EXISTS (SELECT 1 FROM pg_trigger t
               WHERE t.tgrelid = c.oid AND t.tgname = 'flux_capture_ins_del') AS captured,
       c.relreplident = 'f' AS replica_full,
       has_table_privilege(c.oid, 'TRIGGER') AS may_capture
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('flux', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
ORDER BY n.nspname, c.relname;

-- name: roles
SELECT rolname FROM pg_roles WHERE rolname IN ('flux_runtime', 'flux_reader') ORDER BY 1;

-- name: schema_grants
-- Per application schema: whether flux_runtime may use it, and every table and sequence.
SELECT n.nspname AS schema,
       has_schema_privilege('flux_runtime', n.oid, 'USAGE')
       AND coalesce(bool_and(CASE WHEN c.relkind IN ('r', 'p') THEN
               has_table_privilege('flux_runtime', c.oid, 'SELECT')
               AND has_table_privilege('flux_runtime', c.oid, 'INSERT')
               AND has_table_privilege('flux_runtime', c.oid, 'UPDATE')
               AND has_table_privilege('flux_runtime', c.oid, 'DELETE')
           ELSE has_sequence_privilege('flux_runtime', c.oid, 'USAGE') END), true) AS granted
FROM pg_namespace n
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'S')
    AND NOT c.relispartition
WHERE n.nspname = ANY(%(schemas)s)
GROUP BY n.oid, n.nspname
ORDER BY n.nspname;

-- name: event_trigger
SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'flux_capture_new_tables');

-- name: create_event_trigger
-- Action. As sql/0004 does for a superuser.
CREATE EVENT TRIGGER flux_capture_new_tables ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
    EXECUTE FUNCTION flux.on_ddl_end();

-- name: grant_app_schema
-- Action.
SELECT flux.grant_app_schema(%(schema)s);

-- name: create_roles
-- Action. The roles and their rights on the flux schema (flux.grant_roles, sql/0012), as a
-- migration makes them when the migrating role may create roles — for a database migrated
-- by one that could not.
SELECT flux.grant_roles();
