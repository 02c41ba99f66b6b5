-- 0011: the second hardening round (issue 20): tenant bindings that fail closed.
--
-- Bindings follow the role's oid, not its name: `ALTER ROLE acme_bi RENAME TO x` keeps x
-- bound to acme (a name would leave x unbound, and so reading every tenant). A role once
-- bound to a tenant stays a tenant role (flux.tenant_scoped): revoking its last binding
-- leaves it bound to nothing, and so seeing no tenant's rows, never every tenant's.

DROP POLICY own_bindings ON flux.tenant_roles;
ALTER TABLE flux.tenant_roles ADD COLUMN role_oid oid;
UPDATE flux.tenant_roles t SET role_oid = r.oid FROM pg_roles r WHERE r.rolname = t.role_name;
DELETE FROM flux.tenant_roles WHERE role_oid IS NULL;  -- a binding of a dropped role

-- Roles ever bound to a tenant. Bound to none of them now, such a role sees no tenant.
CREATE TABLE flux.tenant_scoped (
    role_oid  oid PRIMARY KEY,
    scoped_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO flux.tenant_scoped (role_oid) SELECT DISTINCT r.oid FROM flux.tenant_roles t
    JOIN pg_roles r ON r.rolname = t.role_name;

-- The tenants the session is bound to: NULL when it acts as no tenant role (it sees every
-- tenant), an empty array when its tenant roles are bound to nothing (it sees none).
CREATE OR REPLACE FUNCTION flux.bound_tenants() RETURNS text[]
    LANGUAGE sql STABLE
    RETURN CASE
        WHEN EXISTS (SELECT 1 FROM flux.tenant_scoped s
                     WHERE flux.acts_as(session_user, s.role_oid)
                        OR flux.acts_as(current_user, s.role_oid))
        THEN coalesce((SELECT array_agg(DISTINCT g.tenant) FROM flux.tenant_roles g
                       WHERE flux.acts_as(session_user, g.role_oid)
                          OR flux.acts_as(current_user, g.role_oid)), '{}'::text[])
    END;

ALTER TABLE flux.tenant_roles DROP CONSTRAINT tenant_roles_pkey;
ALTER TABLE flux.tenant_roles DROP COLUMN role_name;
ALTER TABLE flux.tenant_roles ALTER COLUMN role_oid SET NOT NULL;
ALTER TABLE flux.tenant_roles ADD PRIMARY KEY (role_oid, tenant);

CREATE POLICY own_bindings ON flux.tenant_roles
    USING (flux.acts_as(session_user, role_oid) OR flux.acts_as(current_user, role_oid));
ALTER TABLE flux.tenant_scoped ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_scope ON flux.tenant_scoped
    USING (flux.acts_as(session_user, role_oid) OR flux.acts_as(current_user, role_oid));

CREATE OR REPLACE FUNCTION flux.grant_tenant(role_name text, tenant text) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    role oid := (SELECT r.oid FROM pg_roles r WHERE r.rolname = grant_tenant.role_name);
BEGIN
    IF tenant IS NULL OR tenant = '' THEN
        RAISE EXCEPTION 'a tenant is a non-empty text' USING ERRCODE = '22023';
    END IF;
    IF role IS NULL THEN
        RAISE EXCEPTION 'there is no role named %', role_name USING ERRCODE = '42704';
    END IF;
    INSERT INTO flux.tenant_scoped (role_oid) VALUES (role) ON CONFLICT DO NOTHING;
    INSERT INTO flux.tenant_roles (role_oid, tenant) VALUES (role, tenant)
    ON CONFLICT DO NOTHING;
    EXECUTE format('GRANT flux_reader TO %I', role_name);
END
$$;

-- Revoking a binding never widens what the role sees: it stays a tenant role.
CREATE OR REPLACE FUNCTION flux.revoke_tenant(role_name text, tenant text) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    role oid := (SELECT r.oid FROM pg_roles r WHERE r.rolname = revoke_tenant.role_name);
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'there is no role named %', role_name USING ERRCODE = '42704';
    END IF;
    INSERT INTO flux.tenant_scoped (role_oid) VALUES (role) ON CONFLICT DO NOTHING;
    DELETE FROM flux.tenant_roles t WHERE t.role_oid = role AND t.tenant = revoke_tenant.tenant;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'flux_reader') THEN
        GRANT SELECT ON flux.tenant_scoped TO flux_runtime, flux_reader;
    END IF;
END
$$;
