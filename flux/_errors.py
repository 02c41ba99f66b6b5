"""The exceptions Flux raises, one root and a small tree.

    FluxError                     code        every error Flux raises on purpose
    ├── ConfigError               config      flux.toml missing or invalid, bad option values
    ├── NotFound                  not_found   no execution / table / row with that id
    ├── AmbiguousId               ambiguous   an id prefix matches several executions
    └── DatabaseError             database    PostgreSQL is unreachable or refused something
        ├── EmbeddedServerError   embedded    the embedded server cannot start, stop or be reached
        └── MigrationError        migration   a migration failed or the schema is ahead of Flux

Each class carries a stable machine ``code`` that ``--json`` output and the admin API report.
The CLI turns any FluxError into its message on one line and a non-zero exit; only a bug
shows a traceback.
"""

from __future__ import annotations


class FluxError(Exception):
    """Root of every error Flux raises on purpose. ``str(err)`` is one clear sentence."""

    code = "flux_error"
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_json(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class ConfigError(FluxError):
    code = "config"
    exit_code = 2


class NotFound(FluxError):
    code = "not_found"


class AmbiguousId(FluxError):
    code = "ambiguous"

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        shown = ", ".join(candidates[:10]) + (" …" if len(candidates) > 10 else "")
        super().__init__(
            f"id prefix {prefix!r} matches {len(candidates)} executions: {shown}",
            hint="give more characters of the id",
        )
        self.candidates = candidates


class DatabaseError(FluxError):
    code = "database"


class EmbeddedServerError(DatabaseError):
    code = "embedded"


class MigrationError(DatabaseError):
    code = "migration"
