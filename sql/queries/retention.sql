-- Partitions, retention and pins (flux/store/_retention.py); the functions are in sql/0009.

-- name: ensure_partitions
SELECT flux.ensure_partitions(%(ahead)s);

-- name: partitions
-- The partitions of the two big tables; day is NULL for the default partition (and for a
-- partition someone attached under another name: gc never drops those).
SELECT p.relname AS parent, c.relname AS name,
       CASE WHEN c.relname = p.relname || '_' || right(c.relname, 8)
                 AND right(c.relname, 8) ~ '^[0-9]{8}$'
            THEN to_date(right(c.relname, 8), 'YYYYMMDD') END AS day,
       c.relpartbound IS NOT NULL AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
           AS is_default,
       pg_total_relation_size(c.oid) AS bytes
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
JOIN pg_namespace n ON n.oid = p.relnamespace
WHERE n.nspname = 'flux' AND p.relname IN ('trace_requests', 'state_mutations')
ORDER BY p.relname, day NULLS FIRST;

-- name: cutoff
-- The moment before which retention drops, on the server's clock (which stamps changes),
-- and today's UTC day there.
SELECT now() - %(retention)s AS cutoff, (now() AT TIME ZONE 'UTC')::date AS today;

-- name: count_rows
SELECT count(*) FROM flux.{partition};

-- name: count_pinned
SELECT count(*) FROM flux.{partition} AS t
WHERE t.request_id IN (SELECT request_id FROM flux.pins);

-- name: lock_timeout
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: drop_partition
SELECT flux.drop_partition(%(parent)s, %(day)s);

-- name: expired_in_default_traces
-- Rows the default partition holds past retention (records of days already dropped,
-- imported or non-UUIDv7 ids), pinned executions left out.
SELECT count(*) FROM flux.trace_requests_default AS t
WHERE t.started_at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM flux.pins p WHERE p.request_id = t.request_id);

-- name: expired_in_default_mutations
SELECT count(*) FROM flux.state_mutations_default AS m
WHERE m.committed_at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM flux.pins p WHERE p.request_id = m.request_id);

-- name: delete_default_traces
DELETE FROM flux.trace_requests_default AS t
WHERE t.started_at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM flux.pins p WHERE p.request_id = t.request_id);

-- name: delete_default_mutations
DELETE FROM flux.state_mutations_default AS m
WHERE m.committed_at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM flux.pins p WHERE p.request_id = m.request_id);

-- name: expired_signatures
-- Failure signatures of executions past retention: "similar earlier failures" must not
-- name executions that are gone.
SELECT count(*) FROM flux.failure_signatures AS s
WHERE s.at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM flux.pins p WHERE p.request_id = s.request_id);

-- name: delete_signatures
DELETE FROM flux.failure_signatures AS s
WHERE s.at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM flux.pins p WHERE p.request_id = s.request_id);

-- name: pin
-- The pins row first, then the record's flag (sql/0012: a SECURITY DEFINER function, so
-- that a runtime role pins without being able to update records).
SELECT request_id, pinned_at, note FROM flux.pin(%(request_id)s, %(note)s);

-- name: unpin
SELECT flux.unpin(%(request_id)s);

-- name: try_lock
SELECT pg_try_advisory_lock(%(key)s);

-- name: unlock
SELECT pg_advisory_unlock(%(key)s);
