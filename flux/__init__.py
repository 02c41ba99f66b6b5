"""Flux: a backend runtime that records every execution into PostgreSQL.

The public face is deliberately small; everything else lives in private ``_name`` modules.
"""

from flux._errors import (
    AmbiguousId,
    ConfigError,
    DatabaseError,
    EmbeddedServerError,
    FluxError,
    MigrationError,
    NotFound,
)

__version__ = "0.1.0"

__all__ = [
    "AmbiguousId",
    "ConfigError",
    "DatabaseError",
    "EmbeddedServerError",
    "FluxError",
    "MigrationError",
    "NotFound",
    "__version__",
]
