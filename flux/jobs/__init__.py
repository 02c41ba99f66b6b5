"""jobs: work after the request — the queue worker, cron, and the queue's admin commands.

May import: runtime, inspect, capture, store and the ground floor. Never replay (its sibling)
or server."""
