"""replay: running a record again — the tape, replay, resume, incident replay, bisect,
generated regression tests, explain (a dry run) and debug.

May import: runtime, inspect, capture, store and the ground floor. Never jobs (its sibling) or
server."""
