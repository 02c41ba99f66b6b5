"""store: PostgreSQL — where the database is (embedded or DATABASE_URL), connecting, the
migrations of sql/, the named queries, the embedded server, the extension build, retention and
partitions, the record row and its writes, looking executions up by id, and records exported
to and imported from files.

May import: the ground floor (flux/_*.py) only. Everything above reads and writes the database
through here."""
