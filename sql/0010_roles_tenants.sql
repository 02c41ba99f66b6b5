-- 0010: database roles, tenants, and row-level security.
--
-- Two roles (cluster-wide, NOLOGIN; a login role is granted one of them):
--
--   flux_runtime  what `flux serve` connects as: reads and writes the flux tables it needs
--                 (records, mutations, jobs, capture progress), and reads and writes the
--                 application's tables in `public`. Nothing else: a schema it was not
--                 granted (a `vault` of secrets) stays closed to it, and so to every
--                 function's ctx.db. flux.grant_app_schema('app') opens another app schema.
--   flux_reader   SELECT on the flux schema's tables and views, and nothing else: no
--                 application table, no write.
--
-- Tenants. `tenant` is on every execution (trace_requests, 0001), every mutation, every
-- failure signature and every job. The executor sets the transaction-local GUC flux.tenant
-- with the request id, and the columns default to it, so the capture trigger, a queue push
-- and anything else written in an execution's transaction are stamped without being told;
-- the WAL consumer takes it from the execution's logical message.
--
-- Row-level security on those four tables (FORCEd, so the tables' owner — often the role
-- `flux serve` runs as — is held to the same rules) lets a row be read, updated or deleted
-- when
--   1. the session narrows itself to one tenant (SET flux.tenant = 'acme', or the executor
--      inside an execution) and the row is that tenant's, or it does not narrow itself; and
--   2. the role is bound to tenants in flux.tenant_roles (flux.grant_tenant('acme_bi',
--      'acme')) and the row is one of theirs, or the role is bound to none;
-- and inserted under rule 1. Binding is the boundary: it is decided for both session_user
-- and current_user, so a bound login role cannot shed it with SET ROLE flux_reader, and a
-- session cannot widen it with SET flux.tenant. Narrowing is a convenience, not a boundary
-- (whoever narrows can reset it). Rows without a tenant are visible only to unbound roles.
-- Views run with the invoker's rights (security_invoker), so history and blame apply the
-- same rules.

ALTER TABLE flux.state_mutations
    ADD COLUMN tenant text DEFAULT nullif(current_setting('flux.tenant', true), '');
ALTER TABLE flux.jobs
    ADD COLUMN tenant text DEFAULT nullif(current_setting('flux.tenant', true), '');
ALTER TABLE flux.failure_signatures
    ADD COLUMN tenant text DEFAULT nullif(current_setting('flux.tenant', true), '');

CREATE INDEX trace_requests_tenant_idx
    ON flux.trace_requests (tenant, started_at DESC) WHERE tenant IS NOT NULL;

-- Which roles read which tenant. Managed with flux.grant_tenant / flux.revoke_tenant.
CREATE TABLE flux.tenant_roles (
    role_name  text NOT NULL,
    tenant     text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role_name, tenant)
);

-- Whether `who` acts with `rel`'s privileges: inherits them (USAGE) or may SET ROLE to it.
-- PostgreSQL 16+ makes a role created by a CREATEROLE user a MEMBER of its creator with
-- neither, which must not bind the creator (often the owner of the flux schema). A
-- superuser "has" every role; a superuser session that SETs ROLE is judged as that role.
CREATE FUNCTION flux.acts_as(who name, rel oid) RETURNS boolean
    LANGUAGE sql STABLE
    RETURN NOT coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = who), false)
           AND CASE WHEN current_setting('server_version_num')::integer >= 160000
                    THEN pg_has_role(who, rel, 'USAGE, SET')
                    ELSE pg_has_role(who, rel, 'MEMBER') END;

-- A role sees only its own bindings (so a tenant's reader cannot list the other tenants).
ALTER TABLE flux.tenant_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_bindings ON flux.tenant_roles
    USING (EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = role_name
                   AND (flux.acts_as(session_user, r.oid) OR flux.acts_as(current_user, r.oid))));

-- The tenants the session is bound to; NULL when it is bound to none.
CREATE FUNCTION flux.bound_tenants() RETURNS text[]
    LANGUAGE sql STABLE
    RETURN (SELECT array_agg(DISTINCT g.tenant) FROM flux.tenant_roles g
            JOIN pg_roles r ON r.rolname = g.role_name
            WHERE flux.acts_as(session_user, r.oid) OR flux.acts_as(current_user, r.oid));

-- The tenant the session (or the running execution) narrowed itself to; NULL when none.
CREATE FUNCTION flux.session_tenant() RETURNS text
    LANGUAGE sql STABLE
    RETURN nullif(current_setting('flux.tenant', true), '');

-- The policies, per table and command. Reading, updating and deleting apply both rules;
-- inserting only the first: only roles granted INSERT (the runtime, the owner) insert, and
-- checking bindings there would cost a catalog query for every captured row (the capture
-- trigger inserts row by row; measured ten times the trigger's own cost). The functions sit
-- in scalar subqueries so that PostgreSQL evaluates them once per statement (an InitPlan),
-- not once per row.
DO $$
DECLARE
    t text;
    narrowed text := '((SELECT flux.session_tenant()) IS NULL '
                     'OR tenant = (SELECT flux.session_tenant()))';
    visible text := narrowed || ' AND ((SELECT flux.bound_tenants()) IS NULL '
                     'OR tenant = ANY ((SELECT flux.bound_tenants())::text[]))';
BEGIN
    FOREACH t IN ARRAY ARRAY['trace_requests', 'state_mutations', 'failure_signatures',
                             'jobs'] LOOP
        EXECUTE format('ALTER TABLE flux.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE flux.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_read ON flux.%I FOR SELECT USING (%s)',
                       t, visible);
        EXECUTE format('CREATE POLICY tenant_insert ON flux.%I FOR INSERT WITH CHECK (%s)',
                       t, narrowed);
        EXECUTE format('CREATE POLICY tenant_update ON flux.%I FOR UPDATE USING (%s) '
                       'WITH CHECK (%s)', t, visible, narrowed);
        EXECUTE format('CREATE POLICY tenant_delete ON flux.%I FOR DELETE USING (%s)',
                       t, visible);
    END LOOP;
END
$$;

-- A pin (0009) shows only to those who see its execution: its note may say why.
ALTER TABLE flux.pins ENABLE ROW LEVEL SECURITY;
CREATE POLICY pins_read ON flux.pins FOR SELECT
    USING (EXISTS (SELECT 1 FROM flux.trace_requests t WHERE t.request_id = pins.request_id));
CREATE POLICY pins_insert ON flux.pins FOR INSERT WITH CHECK (true);
CREATE POLICY pins_update ON flux.pins FOR UPDATE USING (true);
CREATE POLICY pins_delete ON flux.pins FOR DELETE USING (true);

-- Views run with the rights of whoever queries them, so the policies above apply through
-- state_history and state_blame too (a view otherwise reads with its owner's rights). A
-- test checks that every view of the schema says so.
DO $$
DECLARE
    v regclass;
BEGIN
    FOR v IN SELECT c.oid::regclass FROM pg_class c
             WHERE c.relnamespace = 'flux'::regnamespace AND c.relkind = 'v' LOOP
        EXECUTE format('ALTER VIEW %s SET (security_invoker = true)', v);
    END LOOP;
END
$$;

-- WAL capture stamps the tenant from the execution's logical message (and, for writes from
-- outside Flux, from the writer's own flux.tenant), as the column default does for triggers.
CREATE OR REPLACE FUNCTION flux.end_execution(request_id uuid, statements jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF flux.setting('capture') = 'wal' THEN
        PERFORM pg_logical_emit_message(true, 'flux', json_build_object(
            'request_id', request_id, 'statements', statements, 'actor', current_user,
            'application_name', current_setting('application_name', true),
            'tenant', flux.session_tenant())::text);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION flux.wal_actor() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_logical_emit_message(true, 'flux.actor', json_build_object(
        'actor', current_user,
        'application_name', current_setting('application_name', true),
        'tenant', flux.session_tenant())::text);
    RETURN NULL;
END
$$;

-- Bind a role to a tenant: it becomes a flux_reader that sees only that tenant's rows
-- (call again for more tenants). Run by whoever administers roles.
CREATE FUNCTION flux.grant_tenant(role_name text, tenant text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF tenant IS NULL OR tenant = '' THEN
        RAISE EXCEPTION 'a tenant is a non-empty text' USING ERRCODE = '22023';
    END IF;
    INSERT INTO flux.tenant_roles (role_name, tenant) VALUES (role_name, tenant)
    ON CONFLICT DO NOTHING;
    EXECUTE format('GRANT flux_reader TO %I', role_name);
END
$$;

CREATE FUNCTION flux.revoke_tenant(role_name text, tenant text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM flux.tenant_roles t WHERE t.role_name = revoke_tenant.role_name
                                      AND t.tenant = revoke_tenant.tenant;
END
$$;

-- Open another application schema to the runtime (public is open from the start).
CREATE FUNCTION flux.grant_app_schema(schema_name text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF schema_name = 'flux' THEN
        RAISE EXCEPTION 'the flux schema is not an application schema' USING ERRCODE = '22023';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO flux_runtime', schema_name);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I '
                   'TO flux_runtime', schema_name);
    EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA %I TO flux_runtime',
                   schema_name);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, '
                   'DELETE ON TABLES TO flux_runtime', schema_name);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT, UPDATE ON '
                   'SEQUENCES TO flux_runtime', schema_name);
END
$$;

-- The roles and their grants. Roles belong to the cluster, so they may exist already (a
-- second database); a server where we may not create roles gets the tenants and policies
-- without them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'flux_runtime') THEN
        CREATE ROLE flux_runtime NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'flux_reader') THEN
        CREATE ROLE flux_reader NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'flux: not allowed to create the roles flux_runtime and flux_reader (%)',
        SQLERRM;
END
$$;

DO $$
DECLARE
    rel regclass;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'flux_runtime')
       OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'flux_reader') THEN
        RETURN;
    END IF;
    GRANT USAGE ON SCHEMA flux TO flux_runtime, flux_reader;
    -- Every table and view of flux, read only, but never a partition: row-level security
    -- is its parent's, and read directly a partition would show every tenant's rows. No
    -- default privileges either, for the same reason (flux serve makes a partition a day):
    -- a table added later is granted by its migration.
    FOR rel IN SELECT c.oid::regclass FROM pg_class c
               WHERE c.relnamespace = 'flux'::regnamespace AND c.relkind IN ('r', 'p', 'v')
                 AND NOT c.relispartition LOOP
        EXECUTE format('GRANT SELECT ON %s TO flux_runtime, flux_reader', rel);
    END LOOP;
    -- The runtime writes records, mutations, signatures, jobs, capture progress and pins.
    GRANT INSERT, UPDATE ON flux.trace_requests, flux.jobs, flux.capture_state, flux.pins
        TO flux_runtime;
    GRANT INSERT ON flux.state_mutations, flux.failure_signatures, flux.job_attempts,
        flux.cron_ticks TO flux_runtime;
    GRANT DELETE ON flux.pins TO flux_runtime;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA flux TO flux_runtime;
    -- The application's tables in public, now and later (schema/*.sql runs after this).
    PERFORM flux.grant_app_schema('public');
END
$$;
