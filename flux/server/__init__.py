"""server: the composition root — `flux serve` / `flux dev` (serve), the admin API and its
OpenAPI description, the inspector (local or remote), `flux db` (db) and `flux init`
(scaffold).

May import: every package below it and the ground floor. Only cli/ imports it."""
