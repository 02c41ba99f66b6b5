"""The project Flux runs in: found from the current directory, configured by flux.toml.

A project is the nearest directory upward that holds a ``flux.toml``. Its private state
(the embedded server's data, sockets, passwords) lives in ``<project>/.flux/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flux._errors import ConfigError

CONFIG_NAME = "flux.toml"


@dataclass(frozen=True)
class DatabaseConfig:
    """``[database]`` in flux.toml."""

    name: str = "flux"
    port: int | None = None  # TCP port of the embedded server; None = choose a free one
    pool_size: int = 20  # connections of a serving process's pool
    pool_timeout: float = 5.0  # seconds an execution waits for a pooled connection
    statement_timeout: float | None = None  # seconds; PostgreSQL cancels a longer statement


@dataclass(frozen=True)
class ServerConfig:
    """``[server]`` in flux.toml."""

    max_inflight: int | None = None  # executions at once per process; None = 5 × pool_size
    # Seconds a request's body may take to arrive, from its headers on. A client that
    # trickles its body (a slowloris) is answered 408 then; it never holds an execution slot.
    body_timeout: float = 10.0


@dataclass(frozen=True)
class OtelConfig:
    """``[otel]`` in flux.toml: send every execution's spans over OTLP/HTTP. Without an
    ``endpoint`` here, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (the OpenTelemetry variables) decide; with none of them nothing is sent, and
    ``endpoint = ""`` turns export off whatever the environment says."""

    endpoint: str | None = None  # the full URL, e.g. http://localhost:4318/v1/traces
    headers: dict[str, str] = field(default_factory=dict)  # e.g. a collector's API key
    service_name: str | None = None  # default: the project's name
    schedule_delay_ms: int = 1000  # how long finished spans wait to be sent in one batch
    timeout_s: float = 5.0  # one export attempt, retries included


@dataclass(frozen=True)
class RecordConfig:
    """``[record]`` in flux.toml, the parts that decide what is kept and for how long
    (redaction and body caps are read by flux/runtime/_redact.py)."""

    retention: dt.timedelta | None = None  # None: records are kept until deleted by hand
    sample_rate: float = 1.0  # share of successful executions recorded in full
    import_max_bytes: int = 64 * 1024 * 1024  # the largest file flux record import reads


@dataclass(frozen=True)
class AiConfig:
    """``[ai]`` in flux.toml: the OpenAI-compatible chat endpoint ``flux why --ai`` asks
    (flux/inspect/_ai.py). Off unless both ``base_url`` and ``model`` are set. The API key is never
    written here: ``api_key_secret`` names it like ``ctx.secrets.get`` does (a ``[secrets]``
    name, or an environment variable)."""

    base_url: str | None = None  # e.g. http://localhost:11434/v1 (Ollama), …/v1 of vLLM
    model: str | None = None
    api_key_secret: str | None = None  # None: no Authorization header (a local model)
    timeout_s: float = 60.0  # the whole exchange, streaming included
    max_prompt_chars: int = 24_000  # what is sent is cut to this size
    max_tokens: int = 1024  # asked of the model for its answer
    stream: bool = True  # ask for server-sent events and print them as they arrive

    @property
    def enabled(self) -> bool:
        return bool(self.base_url and self.model)


@dataclass(frozen=True)
class AsgiConfig:
    """``[asgi]`` in flux.toml: an existing ASGI application (FastAPI, Starlette) served
    inside Flux, each request it handles one recorded execution (flux/runtime/_asgi.py).
    ``flux serve --asgi module:app`` sets ``app`` for one run."""

    app: str | None = None  # "shop.api:app": a module importable from the project root
    name: str = "asgi"  # the function name its executions are recorded under
    lifespan: str = "auto"  # auto: run it if the app supports it; on: it must; off: never
    timeout: float = 30.0  # seconds one request may take, as @function(timeout=)
    max_response_bytes: int = 10 * 1024 * 1024  # a response is collected whole, up to this


@dataclass(frozen=True)
class Project:
    """A Flux project: its root directory and its parsed configuration."""

    root: Path
    name: str = "app"
    port: int = 4000
    capture: str = "trigger"
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    otel: OtelConfig = field(default_factory=OtelConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    ai: AiConfig = field(default_factory=AiConfig)
    asgi: AsgiConfig = field(default_factory=AsgiConfig)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def state_dir(self) -> Path:
        return self.root / ".flux"

    @property
    def functions_dir(self) -> Path:
        return self.root / "functions"

    @property
    def schema_dir(self) -> Path:
        return self.root / "schema"

    @property
    def replay_stubs(self) -> dict[str, Any]:
        """``[replay.stubs]``: URL pattern → canned answer for calls that are never sent."""
        stubs = self.raw.get("replay", {}).get("stubs", {})
        return stubs if isinstance(stubs, dict) else {}


def find_root(start: Path | None = None) -> Path | None:
    """The nearest directory from ``start`` upward holding a flux.toml, or None."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return None


def load(start: Path | None = None) -> Project:
    """Find and parse the project around ``start`` (default: the current directory)."""
    root = find_root(start)
    if root is None:
        raise ConfigError(
            f"no {CONFIG_NAME} in {start or Path.cwd()} or any parent directory",
            hint="run `flux init NAME` to create a project, or cd into one",
        )
    return parse(root)


def parse(root: Path) -> Project:
    """Parse ``root/flux.toml`` into a Project, with one clear sentence for each mistake."""
    path = root / CONFIG_NAME
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc

    project = raw.get("project", {})
    db = raw.get("database", {})
    server = raw.get("server", {})
    if not isinstance(db, dict) or not isinstance(server, dict):
        raise ConfigError(f"{path}: [database] and [server] must be tables")
    capture = raw.get("capture", "trigger")
    if capture not in ("trigger", "wal"):
        raise ConfigError(f'{path}: capture must be "trigger" or "wal", not {capture!r}')
    port = _int_option(path, "port", raw.get("port", project.get("port", 4000)))
    db_port = db.get("port")
    if db_port is not None:
        db_port = _int_option(path, "database.port", db_port)
    db_name = str(db.get("name", "flux"))
    if not db_name.replace("_", "").isalnum():
        raise ConfigError(f"{path}: database.name must be letters, digits and _, not {db_name!r}")
    max_inflight = server.get("max_inflight")
    return Project(
        root=root,
        name=str(raw.get("name", project.get("name", root.name))),
        port=port,
        capture=capture,
        database=DatabaseConfig(
            name=db_name, port=db_port,
            pool_size=_count_option(path, "database.pool_size", db.get("pool_size", 20)),
            pool_timeout=_seconds_option(path, "database.pool_timeout",
                                         db.get("pool_timeout")) or DatabaseConfig.pool_timeout,
            statement_timeout=_seconds_option(path, "database.statement_timeout",
                                              db.get("statement_timeout"))),
        server=ServerConfig(
            max_inflight=None if max_inflight is None else
            _count_option(path, "server.max_inflight", max_inflight),
            body_timeout=_seconds_option(path, "server.body_timeout",
                                         server.get("body_timeout")) or
            ServerConfig.body_timeout),
        otel=_otel(path, raw.get("otel", {})),
        record=_record_config(path, raw),
        ai=_ai_config(path, raw.get("ai", {})),
        asgi=asgi_config(raw.get("asgi", {}), str(path)),
        raw=raw,
    )


def _otel(path: Path, section: Any) -> OtelConfig:
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [otel] must be a table")
    endpoint = section.get("endpoint")
    if endpoint is not None and endpoint != "" and (
            not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))):
        raise ConfigError(f"{path}: otel.endpoint must be an http:// or https:// URL such as "
                          f'"http://localhost:4318/v1/traces", not {endpoint!r}')
    headers = section.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ConfigError(f"{path}: otel.headers must be a table of strings")
    service = section.get("service_name")
    if service is not None and not (isinstance(service, str) and service):
        raise ConfigError(f"{path}: otel.service_name must be a non-empty string")
    delay = section.get("schedule_delay_ms", 1000)
    if isinstance(delay, bool) or not isinstance(delay, int) or delay <= 0:
        raise ConfigError(f"{path}: otel.schedule_delay_ms must be a positive number of "
                          f"milliseconds, not {delay!r}")
    timeout = section.get("timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"{path}: otel.timeout must be a positive number of seconds, "
                          f"not {timeout!r}")
    return OtelConfig(endpoint=endpoint, headers={str(k): v for k, v in headers.items()},
                      service_name=service, schedule_delay_ms=delay, timeout_s=float(timeout))


_AI_KEYS = frozenset({"base_url", "model", "api_key_secret", "timeout", "max_prompt_chars",
                      "max_tokens", "stream"})
MIN_AI_PROMPT_CHARS = 2000
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _ai_config(path: Path, section: Any) -> AiConfig:
    """``[ai]``: checked here, so a typo is one sentence before anything is sent."""
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [ai] must be a table")
    if "api_key" in section:
        raise ConfigError(f"{path}: [ai] takes no api_key: keep the key in an environment "
                          'variable and name it, as in api_key_secret = "OPENAI_API_KEY"')
    unknown = sorted(set(section) - _AI_KEYS)
    if unknown:
        raise ConfigError(f"{path}: [ai] has no option {unknown[0]!r}",
                          hint="the options are " + ", ".join(sorted(_AI_KEYS)))
    base_url, model = section.get("base_url"), section.get("model")
    if base_url is not None and (not isinstance(base_url, str)
                                 or not base_url.startswith(("http://", "https://"))):
        raise ConfigError(f"{path}: ai.base_url must be an http:// or https:// URL such as "
                          f'"http://localhost:11434/v1", not {base_url!r}')
    if model is not None and not (isinstance(model, str) and model.strip()):
        raise ConfigError(f"{path}: ai.model must be a model name, not {model!r}")
    if (base_url is None) != (model is None):
        raise ConfigError(f"{path}: [ai] needs both base_url and model (or neither, to "
                          "leave it off)")
    secret = section.get("api_key_secret")
    if secret is not None and not (isinstance(secret, str) and _ENV_NAME.match(secret)):
        raise ConfigError(f"{path}: ai.api_key_secret names the secret that holds the key "
                          "(a [secrets] name or an environment variable, letters, digits "
                          "and _), not the key itself")
    cap = _count_option(path, "ai.max_prompt_chars", section.get("max_prompt_chars", 24_000))
    if cap < MIN_AI_PROMPT_CHARS:
        raise ConfigError(f"{path}: ai.max_prompt_chars must be at least "
                          f"{MIN_AI_PROMPT_CHARS} (the instructions alone take ~1000), "
                          f"not {cap}")
    stream = section.get("stream", True)
    if not isinstance(stream, bool):
        raise ConfigError(f"{path}: ai.stream must be true or false, not {stream!r}")
    return AiConfig(
        base_url=base_url, model=model.strip() if model else None, api_key_secret=secret,
        timeout_s=_seconds_option(path, "ai.timeout", section.get("timeout"))
        or AiConfig.timeout_s,
        max_prompt_chars=cap,
        max_tokens=_count_option(path, "ai.max_tokens", section.get("max_tokens", 1024)),
        stream=stream)


_ASGI_KEYS = frozenset({"app", "name", "lifespan", "timeout", "max_response_bytes"})
_APP_SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
                       r":[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def check_app_spec(spec: Any, where: str) -> str:
    """``module:attribute`` (``shop.api:app``), or one sentence saying how to spell it."""
    if not isinstance(spec, str) or not _APP_SPEC.match(spec.strip()):
        raise ConfigError(f"{where} must name an ASGI application as module:attribute, such "
                          f'as "shop.api:app", not {spec!r}')
    return spec.strip()


def with_asgi(project: Project, spec: str | None) -> Project:
    """``project`` serving the ASGI app ``spec`` (``--asgi shop.api:app``) instead of the one
    flux.toml names, if any."""
    if spec is None:
        return project
    app = check_app_spec(spec, "--asgi")
    return dataclasses.replace(project, asgi=dataclasses.replace(project.asgi, app=app))


def asgi_config(section: Any, where: str) -> AsgiConfig:
    """``[asgi]``: checked here, so a typo is one sentence before anything is served."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: [asgi] must be a table")
    unknown = sorted(set(section) - _ASGI_KEYS)
    if unknown:
        raise ConfigError(f"{where}: [asgi] has no option {unknown[0]!r}",
                          hint="the options are " + ", ".join(sorted(_ASGI_KEYS)))
    app = section.get("app")
    if app is not None:
        app = check_app_spec(app, f"{where}: asgi.app")
    name = section.get("name", AsgiConfig.name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: asgi.name must be a function name (letters, digits, _ . "
                          f"-), not {name!r}")
    lifespan = section.get("lifespan", "auto")
    if lifespan not in ("auto", "on", "off"):
        raise ConfigError(f'{where}: asgi.lifespan must be "auto", "on" or "off", '
                          f"not {lifespan!r}")
    return AsgiConfig(
        app=app, name=name, lifespan=lifespan,
        timeout=_seconds_option(Path(where), "asgi.timeout", section.get("timeout"))
        or AsgiConfig.timeout,
        max_response_bytes=_count_option(Path(where), "asgi.max_response_bytes",
                                         section.get("max_response_bytes",
                                                     AsgiConfig.max_response_bytes)))


def _int_option(path: Path, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ConfigError(f"{path}: {key} must be a port number between 1 and 65535, not {value!r}")
    return value


def _count_option(path: Path, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{path}: {key} must be a whole number of at least 1, not {value!r}")
    return value


def _seconds_option(path: Path, key: str, value: Any) -> float | None:
    """A duration: a number of seconds or ``"500ms"``, ``"30s"``, ``"2m"``; None if unset."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ConfigError(f'{path}: {key} must be a duration such as "500ms", "30s" or '
                              f"a number of seconds, not {value!r}")
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    if not seconds > 0:
        raise ConfigError(f"{path}: {key} must be more than zero, not {value!r}")
    return seconds


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_RETENTION = re.compile(r"^\s*(\d+)\s*(h|d|w)\s*$")
_RETENTION_UNITS = {"h": dt.timedelta(hours=1), "d": dt.timedelta(days=1),
                   "w": dt.timedelta(weeks=1)}


def parse_retention(value: Any, where: str = "retention") -> dt.timedelta:
    """``"14d"``, ``"36h"``, ``"2w"`` → a timedelta of at least an hour, or one sentence."""
    match = _RETENTION.match(value) if isinstance(value, str) else None
    if match is None or int(match[1]) == 0:
        raise ConfigError(f'{where} must be a number of hours, days or weeks such as "14d", '
                          f'"36h" or "2w", not {value!r}')
    return int(match[1]) * _RETENTION_UNITS[match[2]]


def _record_config(path: Path, raw: dict[str, Any]) -> RecordConfig:
    """``[record] retention`` and ``[record] sample_rate`` (also spelled
    ``record_sample_rate`` at the top level, as the issue that asked for it did)."""
    record = raw.get("record", {})
    if not isinstance(record, dict):
        raise ConfigError(f"{path}: [record] must be a table")
    retention = record.get("retention")
    if retention is not None:
        retention = parse_retention(retention, f"{path}: [record] retention")
    if "sample_rate" in record and "record_sample_rate" in raw:
        raise ConfigError(f"{path}: set the sample rate once, as [record] sample_rate, not "
                          "also as record_sample_rate")
    rate = record.get("sample_rate", raw.get("record_sample_rate", 1.0))
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ConfigError(f"{path}: [record] sample_rate must be a number from 0 to 1 (the "
                          f"share of successful executions recorded in full), not {rate!r}")
    cap = record.get("import_max_bytes", RecordConfig.import_max_bytes)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"{path}: [record] import_max_bytes must be a positive number of "
                          f"bytes (the largest file flux record import reads), not {cap!r}")
    return RecordConfig(retention=retention, sample_rate=float(rate), import_max_bytes=cap)


def database_url_from_env() -> str | None:
    """``DATABASE_URL`` if set: Flux then uses that server and never starts one."""
    url = os.environ.get("DATABASE_URL", "").strip()
    return url or None
