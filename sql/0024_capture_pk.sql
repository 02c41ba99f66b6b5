-- 0024: one index fewer written per captured row (issue 21, trigger capture, fourth round).
--
-- flux.state_mutations' primary key (id, committed_at) serves no reader: history and blame
-- read by record id, why and export by request id, retention by the BRIN of committed_at
-- and by partition. It was kept (0020) at ~15 µs a row; with the C trigger's executor state
-- kept across rows (extension/flux_capture.c) the key's btree entry is one of the few
-- things left per captured row. `id` stays an identity column: every row still gets its
-- own, from the sequence, and ORDER BY id keeps its meaning.
--
-- Measured in one session (backend CPU per pgbench-shaped transaction, an UPDATE and an
-- INSERT captured; 2 000 transactions per round, nine rounds alternating, median; loaded
-- machine): no capture 75 µs, the C trigger with the key 235, without it 225.

ALTER TABLE flux.state_mutations DROP CONSTRAINT IF EXISTS state_mutations_pkey;
