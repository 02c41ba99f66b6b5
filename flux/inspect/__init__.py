"""inspect: reading the record — why (classify, signature, shape), diff and compare,
trace, state history and blame, ls, and the static check of a project (check).

May import: store and the ground floor. Never capture (its sibling). Pure logic (classify,
shape, diff, signature) takes data and returns data."""
