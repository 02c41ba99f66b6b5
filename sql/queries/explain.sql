-- Queries of flux explain (flux/replay/_explain.py).

-- name: policies
-- Row-level security on one table (named from parsed SQL, passed as a parameter).
SELECT c.relrowsecurity, p.polname, CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT'
       WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END
             FROM unnest(p.polroles) AS r),
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
FROM pg_class c
LEFT JOIN pg_policy p ON p.polrelid = c.oid
WHERE c.oid = to_regclass(%(table)s)
  AND (c.relrowsecurity OR p.polname IS NOT NULL);
