-- The capture trigger in C (flux/store/_native.py, sql/0022).

-- name: facts
SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
           AS superuser,
       current_setting('server_version_num')::integer / 10000 AS server_major,
       CASE WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
            THEN current_setting('data_directory') END AS data_directory;

-- name: language
-- NULL when the schema predates 0022 (no flux.use_native_capture yet).
SELECT CASE WHEN to_regprocedure('flux.use_native_capture(text)') IS NOT NULL
            THEN (SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                  WHERE p.oid = to_regprocedure('flux.capture_row()')) END;

-- name: use
SELECT flux.use_native_capture(%(library)s);

-- name: wal_language
-- WAL capture's writer-side functions (sql/0025); NULL when the schema predates 0025.
SELECT CASE WHEN to_regprocedure('flux.use_native_wal(text)') IS NOT NULL
            THEN (SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                  WHERE p.oid = to_regprocedure('flux.end_execution(uuid, jsonb)')) END;

-- name: use_wal
SELECT flux.use_native_wal(%(library)s);

-- name: plugin_libraries
-- The output plugins the server trusts (PostgreSQL 14.24, 15.19, 16.15, 17.11, 18.6 and
-- later minors; NULL before them, when any library may be one).
SELECT current_setting('output_plugin_libraries', true);

-- name: allow_plugins
-- {libraries}: the list (one literal each) with the C decoder added (flux/store/_native.py: decoder_plugin).
ALTER SYSTEM SET output_plugin_libraries = {libraries}

-- name: reload
SELECT pg_reload_conf();
