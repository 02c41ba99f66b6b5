-- 0005: what the inspect commands need beyond the views: typed primary keys from text,
-- and failure signatures for "similar earlier failures".

-- The primary key image of one row of ``rel`` from text values given in key order, typed
-- as the columns are (so '42' finds {"id": 42}); format(%L) quotes every value.
CREATE FUNCTION flux.pk_of(rel regclass, vals text[]) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    cols text[] := flux.primary_key_columns(rel);
    result jsonb := '{}'::jsonb;
    typed jsonb;
    i integer;
BEGIN
    IF cardinality(cols) = 0 THEN
        RAISE EXCEPTION 'table % has no primary key', rel USING ERRCODE = '42P10';
    END IF;
    IF cardinality(vals) <> cardinality(cols) THEN
        RAISE EXCEPTION 'table % has a primary key of % column(s) (%), % value(s) given',
            rel, cardinality(cols), array_to_string(cols, ', '), cardinality(vals)
            USING ERRCODE = '22023';
    END IF;
    FOR i IN 1 .. cardinality(cols) LOOP
        EXECUTE format('SELECT to_jsonb(%L::%s)', vals[i],
                       (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                        WHERE a.attrelid = rel AND a.attname = cols[i]))
            INTO typed;
        result := result || jsonb_build_object(cols[i], typed);
    END LOOP;
    RETURN result;
END
$$;

-- One row per failed execution: a signature of its failure (what makes two failures "the
-- same bug") and a vector of it. Nearest neighbours are found with pgvector's cosine
-- distance when the extension is there (vec::vector <=> …), in Python otherwise.
CREATE TABLE flux.failure_signatures (
    request_id uuid PRIMARY KEY,
    function   text,
    class      text NOT NULL,
    signature  text NOT NULL,
    vec        real[] NOT NULL,
    at         timestamptz NOT NULL
);
CREATE INDEX failure_signatures_function_at_idx
    ON flux.failure_signatures (function, at DESC);
CREATE INDEX failure_signatures_signature_idx
    ON flux.failure_signatures (signature);

-- pgvector for the similarity search, where it can be installed (the embedded server has
-- it; a managed server may not, and an extension script cannot create another extension).
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS vector;
EXCEPTION WHEN others THEN
    RAISE NOTICE 'flux: pgvector is not available (%); similar failures are found without it',
        SQLERRM;
END
$$;
