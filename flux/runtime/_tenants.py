"""Which tenant a request belongs to, from ``[tenants]`` in flux.toml.

    [tenants]
    header = "x-tenant-id"          # the tenant is this header's value
    # from = "tenancy:tenant_of"    # or what tenant_of(request) in <project>/tenancy.py says
    required = false                # true: a request without a tenant is refused (400)

The tenant is stamped on the execution's record and, through the transaction-local GUC
``flux.tenant`` the executor sets, on every row change, job and failure signature the
execution makes; row-level security (sql/0010) lets a tenant's reader see only its own.
A job, a replay and a resume carry the tenant of the execution they come from.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux._errors import ConfigError

MAX_LENGTH = 200
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")
_TARGET = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_]\w*)$")

TenantFunction = Callable[[Any], Any]


class TenantRefused(Exception):
    """A request whose tenant cannot be taken: ``status`` 400 for the client's mistake,
    500 when the project's tenant function failed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class TenantPolicy:
    """How the gateway finds a request's tenant; no header and no function: no tenants."""

    header: str | None = None
    function: TenantFunction | None = None
    target: str | None = None  # "module:function", for messages
    required: bool = False

    @property
    def enabled(self) -> bool:
        return self.header is not None or self.function is not None

    def resolve(self, request: Any) -> str | None:
        """The tenant of an aiohttp request (None without tenants, or when the request names
        none and none is required)."""
        if not self.enabled:
            return None
        if self.function is not None:
            try:
                value = self.function(request)
            except Exception as exc:
                raise TenantRefused(f"the tenant function {self.target} failed: "
                                    f"{type(exc).__name__}: {exc}", 500) from exc
            if value is not None and not isinstance(value, str):
                raise TenantRefused(f"the tenant function {self.target} returned "
                                    f"{type(value).__name__}, not a text or None", 500)
        else:
            value = request.headers.get(self.header)
        if value is None or value == "":
            if self.required:
                where = f"the {self.header} header" if self.header else \
                    f"the tenant function {self.target}"
                raise TenantRefused(f"this server needs a tenant, and {where} gave none")
            return None
        return check(value)


def check(value: str) -> str:
    """A tenant as it may be stored: printable text of at most MAX_LENGTH characters."""
    if len(value) > MAX_LENGTH:
        raise TenantRefused(f"a tenant is at most {MAX_LENGTH} characters, not {len(value)}")
    if not _PRINTABLE.match(value):
        raise TenantRefused("a tenant is printable text, without control characters")
    return value


def load_tenants(root: Path, config: Mapping[str, Any]) -> TenantPolicy:
    """``[tenants]`` of flux.toml, checked; the function (if any) imported from the project."""
    section = config.get("tenants", {})
    if not isinstance(section, Mapping):
        raise ConfigError("flux.toml: [tenants] must be a table")
    unknown = set(section) - {"header", "from", "required"}
    if unknown:
        raise ConfigError(f"flux.toml: [tenants] has no option {sorted(unknown)[0]!r}",
                          hint="the options are header, from and required")
    header, target = section.get("header"), section.get("from")
    required = section.get("required", False)
    if header is not None and target is not None:
        raise ConfigError("flux.toml: [tenants] takes header or from, not both")
    if header is not None and (not isinstance(header, str) or not header.strip()):
        raise ConfigError(f"flux.toml: tenants.header must be a header name, not {header!r}")
    if not isinstance(required, bool):
        raise ConfigError(f"flux.toml: tenants.required must be true or false, not "
                          f"{required!r}")
    if required and header is None and target is None:
        raise ConfigError("flux.toml: tenants.required needs tenants.header or tenants.from")
    function = _import_target(root, target) if target is not None else None
    return TenantPolicy(header=header.strip().lower() if header else None, function=function,
                        target=target, required=required)


def _import_target(root: Path, target: Any) -> TenantFunction:
    match = _TARGET.match(target) if isinstance(target, str) else None
    if match is None:
        raise ConfigError(f'flux.toml: tenants.from must be "module:function", not {target!r}')
    module_name, attr = match[1], match[2]
    base = root.joinpath(*module_name.split("."))
    path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    if not path.is_file():
        raise ConfigError(f"flux.toml: tenants.from names {module_name}, but there is no "
                          f"{base.with_suffix('.py').relative_to(root)} in the project")
    name = f"flux_tenants_{module_name.replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"flux.toml: tenants.from: importing {path.relative_to(root)} "
                          f"failed: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(f"flux.toml: tenants.from: {path.relative_to(root)} has no function "
                          f"{attr}")
    return function
