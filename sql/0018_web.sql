-- 0018: the web view (issue 22) links an execution to its replays and resumes, which
-- point back at it through replay_of and resumed_from. Few rows have either: partial
-- indexes keep "what replayed or resumed this one" an index lookup on any partition.

CREATE INDEX trace_requests_replay_of_idx
    ON flux.trace_requests (replay_of) WHERE replay_of IS NOT NULL;
CREATE INDEX trace_requests_resumed_from_idx
    ON flux.trace_requests (resumed_from) WHERE resumed_from IS NOT NULL;
