-- 0019: what storing a record costs PostgreSQL, second round (issue 21).
--
-- The record's documents — request, response, error, spans, tape, logs — become json
-- instead of jsonb. A record is written on every execution's path and read rarely, whole,
-- by Flux's readers (psycopg reads json and jsonb alike, `->>` works on both). jsonb
-- parses each document into its binary form on insert, sorting and deduplicating keys:
-- measured at about a fifth of the record INSERT's server CPU (docs/decisions.md, "What
-- recording costs PostgreSQL"). json checks that the text is JSON and stores it as sent.
-- What changes for a reader in SQL: json keeps the keys in the order Flux wrote them, has
-- no equality and no jsonb operators (`@>`, `?`, jsonpath) — cast (`spans::jsonb`) for
-- those. `imported` (written once per import, updated with `||`) stays jsonb.
--
-- The views that read spans (state_history, state_blame) are saved, dropped and made
-- again as they were (a column a view reads cannot change type), with their options and
-- grants; flux.span_of gets a json overload so their definitions read the same.
--
-- Existing records are converted in place (every partition is rewritten once).

-- The span of a json list, as 0003's finds it in jsonb. Reading it parses the spans (about
-- what the insert no longer pays, once per change a state history shows; measured no
-- cheaper walked as json_array_elements).
CREATE FUNCTION flux.span_of(spans json, span_id text) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN flux.span_of(spans::jsonb, span_id);

-- One block: the views' definitions, options and grants are kept in variables while the
-- columns change.
DO $$
DECLARE
    v record;
    remake text[] := '{}';
BEGIN
    -- state_history first: the order 0009 made them in.
    FOR v IN SELECT c.oid::regclass::text AS name, pg_get_viewdef(c.oid) AS definition,
                    c.reloptions AS options, c.relacl AS acl, c.relowner AS owner
             FROM pg_class c
             WHERE c.relnamespace = 'flux'::regnamespace AND c.relkind = 'v'
               AND c.relname IN ('state_history', 'state_blame')
             ORDER BY c.relname = 'state_blame' LOOP
        remake := remake || format('CREATE VIEW %s AS %s', v.name, v.definition);
        IF v.options IS NOT NULL THEN
            remake := remake || format('ALTER VIEW %s SET (%s)', v.name,
                                       array_to_string(v.options, ', '));
        END IF;
        remake := remake || ARRAY(
            SELECT format('GRANT %s ON %s TO %s', a.privilege_type, v.name,
                          CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END)
            FROM aclexplode(v.acl) AS a WHERE a.grantee <> v.owner);
    END LOOP;
    DROP VIEW IF EXISTS flux.state_blame;
    DROP VIEW IF EXISTS flux.state_history;
    ALTER TABLE flux.trace_requests
        ALTER COLUMN request DROP DEFAULT,
        ALTER COLUMN spans DROP DEFAULT,
        ALTER COLUMN tape DROP DEFAULT,
        ALTER COLUMN logs DROP DEFAULT;
    ALTER TABLE flux.trace_requests
        ALTER COLUMN request TYPE json USING request::json,
        ALTER COLUMN response TYPE json USING response::json,
        ALTER COLUMN error TYPE json USING error::json,
        ALTER COLUMN spans TYPE json USING spans::json,
        ALTER COLUMN tape TYPE json USING tape::json,
        ALTER COLUMN logs TYPE json USING logs::json;
    ALTER TABLE flux.trace_requests
        ALTER COLUMN request SET DEFAULT '{}'::json,
        ALTER COLUMN spans SET DEFAULT '[]'::json,
        ALTER COLUMN tape SET DEFAULT '[]'::json,
        ALTER COLUMN logs SET DEFAULT '[]'::json;
    FOR i IN 1 .. coalesce(array_length(remake, 1), 0) LOOP
        EXECUTE remake[i];
    END LOOP;
END
$$;
