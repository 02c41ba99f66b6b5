"""capture: every committed row change into flux.state_mutations — the WAL consumer and
its stream (walstream, pgoutput, pgjson, mutations), the switch between trigger and WAL
capture (mode), and capture on the application's tables (schema).

May import: store and the ground floor. Never inspect (its sibling)."""
