"""Flux: a backend runtime that records every execution into PostgreSQL.

The public face is deliberately small; everything else lives in private ``_name`` modules.
Names are imported on first use (PEP 562), so ``flux why`` does not pay for the web server
and ``from flux import function`` does not pay for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flux._version import __version__

_EXPORTS = {
    "AmbiguousId": "flux._errors",
    "ConfigError": "flux._errors",
    "Context": "flux.runtime._context",
    "DatabaseError": "flux._errors",
    "EmbeddedServerError": "flux._errors",
    "FluxError": "flux._errors",
    "FunctionError": "flux._errors",
    "HttpConnectionError": "flux._errors",
    "HttpError": "flux._errors",
    "HttpStatusError": "flux._errors",
    "HttpTimeout": "flux._errors",
    "MigrationError": "flux._errors",
    "NotFound": "flux._errors",
    "Overloaded": "flux._errors",
    "Response": "flux.runtime._response",
    "context": "flux.runtime._context",
    "current": "flux.runtime._context",
    "function": "flux._function",
}

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
    "Response",
    "__version__",
    "context",
    "current",
    "function",
]

if TYPE_CHECKING:
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
    from flux.runtime._context import Context, context, current
    from flux.runtime._response import Response


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flux' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
