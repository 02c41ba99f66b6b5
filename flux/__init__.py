"""Flux: a backend runtime that records every execution into PostgreSQL.

The public face is deliberately small; everything else lives in private ``_name`` modules.
"""

from flux._context import Context, current
from flux._errors import (
    AmbiguousId,
    ConfigError,
    DatabaseError,
    EmbeddedServerError,
    FluxError,
    FunctionError,
    HttpConnectionError,
    HttpError,
    HttpStatusError,
    HttpTimeout,
    MigrationError,
    NotFound,
    Overloaded,
)
from flux._function import function

__version__ = "0.1.0"

__all__ = [
    "AmbiguousId",
    "ConfigError",
    "Context",
    "DatabaseError",
    "EmbeddedServerError",
    "FluxError",
    "FunctionError",
    "HttpConnectionError",
    "HttpError",
    "HttpStatusError",
    "HttpTimeout",
    "MigrationError",
    "NotFound",
    "Overloaded",
    "__version__",
    "current",
    "function",
]
