"""OpenTelemetry export: every stored execution's span tree, sent over OTLP/HTTP.

With ``[otel] endpoint`` in flux.toml (or the OpenTelemetry environment variables), each
execution's spans — gateway → function → each ctx call, as the recorder kept them — become
OpenTelemetry spans with their real start and end times, their file:line, status, SQL and
HTTP facts, in the trace the request came with (see ``flux/_tracecontext.py``). They are
handed to the SDK's ``BatchSpanProcessor``, whose thread batches and sends them: a request
only appends to its queue. A collector that is down costs dropped spans and one log line,
never a failed or slower request.

The conversion (``spans_of``) is pure: record in, span data out. The SDK is imported only
when an ``Exporter`` is made, so a project without ``[otel]`` never loads it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flux._tracecontext import of_record as trace_of
from flux._tracecontext import span_id
from flux._version import __version__

if TYPE_CHECKING:
    from flux._project import Project
    from flux.store._record import ExecutionRecord

log = logging.getLogger("flux.otel")

TRACES_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"  # the full URL
BASE_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"  # a base URL: /v1/traces is appended
SCOPE = "flux"
# The attribute names below are those of this semantic-conventions version.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.24.0"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_INT64 = 2**63
# The SDK's loggers whose lines (each retry, each failed batch) our one line replaces.
_SDK_LOGGERS = ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                "opentelemetry.sdk._shared_internal")

Attr = str | bool | int | float | list[str]


@dataclass(frozen=True)
class SpanData:
    """One span as OpenTelemetry will see it (ids in hex, times in ns since the epoch)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    remote_parent: bool  # the parent is the caller's span, in another process
    kind: str  # server | client | producer | consumer | internal
    start_ns: int
    end_ns: int
    attributes: dict[str, Attr]
    error: str | None = None  # the status description of a failed span; None if it is ok
    events: list[tuple[str, int, dict[str, Attr]]] = field(default_factory=list)


def endpoint_of(project: Project) -> str | None:
    """Where spans go: ``[otel] endpoint``, else the OpenTelemetry environment variables;
    None (nothing is sent) without any, or with ``endpoint = ""``."""
    configured = project.otel.endpoint
    if configured is not None:
        return configured or None
    if url := os.environ.get(TRACES_ENV, "").strip():
        return url
    if base := os.environ.get(BASE_ENV, "").strip():
        return base.rstrip("/") + "/v1/traces"
    return None


def exporter_for(project: Project) -> Exporter | None:
    """The project's exporter, or None when no endpoint is configured. A broken SDK
    install costs the export (one log line), never the server."""
    endpoint = endpoint_of(project)
    if endpoint is None:
        return None
    try:
        return Exporter(endpoint, project.otel.service_name or project.name,
                        headers=project.otel.headers,
                        schedule_delay_ms=project.otel.schedule_delay_ms,
                        timeout_s=project.otel.timeout_s)
    except Exception as exc:  # ImportError, or an SDK refusing its arguments
        log.warning("OpenTelemetry export to %s is off: %s", endpoint, exc)
        return None


# -- the record → spans conversion (pure) ------------------------------------------------


def spans_of(record: Mapping[str, Any]) -> list[SpanData]:
    """The record's span tree as OpenTelemetry spans: the root (gateway) span's parent is
    the caller's span, every other span's parent its parent in the tree."""
    rid = str(record["request_id"])
    trace = trace_of(record)
    t0 = _ns(record["started_at"])
    spans = list(record.get("spans") or [])
    ids = {str(s["id"]): span_id(rid, str(s["id"])) for s in spans}
    logs: dict[str, list[dict[str, Any]]] = {}
    for line in record.get("logs") or []:
        logs.setdefault(str(line.get("span_id")), []).append(line)
    out = []
    for span in spans:
        local = str(span["id"])
        parent = ids.get(str(span.get("parent_id")))
        remote = parent is None and trace.parent_span_id is not None
        start = t0 + round(float(span.get("start_ms") or 0.0) * 1e6)
        end = start + round(float(span.get("duration_ms") or 0.0) * 1e6)
        error = _error_text(span) if span.get("status") == "error" else None
        events = [(str(line.get("message")), t0 + round(float(line.get("t_ms") or 0) * 1e6),
                   {"log.level": str(line.get("level")), **_flat(line.get("fields"))})
                  for line in logs.get(local, [])]
        if error is not None:
            events.append(("exception", end, _exception(span, record)))
        out.append(SpanData(
            name=str(span.get("name")), trace_id=trace.trace_id, span_id=ids[local],
            parent_span_id=parent if parent is not None else trace.parent_span_id,
            remote_parent=remote, kind=_kind(span, record), start_ns=start,
            end_ns=max(end, start), attributes=_attributes(span, record, rid), error=error,
            events=events))
    return out


def _ns(value: Any) -> int:
    """Nanoseconds since the epoch, exactly (a float would lose the microseconds)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _kind(span: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    kind = span.get("kind")
    if kind == "gateway":
        return {"http": "server", "job": "consumer", "cron": "consumer"}.get(
            str(record.get("kind")), "internal")
    return {"db": "client", "http": "client", "queue": "producer"}.get(str(kind), "internal")


def _attributes(span: Mapping[str, Any], record: Mapping[str, Any], rid: str
                ) -> dict[str, Attr]:
    kind = span.get("kind")
    attrs = span.get("attrs") or {}
    out: dict[str, Attr] = {"flux.request_id": rid, "flux.span.id": str(span.get("id")),
                            "flux.span.kind": str(kind)}
    if span.get("file"):
        out["code.filepath"] = str(span["file"])
    if span.get("line"):
        out["code.lineno"] = int(span["line"])
    if kind == "gateway":
        out["flux.execution.kind"] = str(record.get("kind"))
        if record.get("function"):
            out["flux.function"] = str(record["function"])
        if record.get("kind") == "http":
            if record.get("method"):
                out["http.request.method"] = str(record["method"])
            out["http.route"] = "/" + str(record.get("route") or "")
            out["http.response.status_code"] = int(record.get("http_status") or 0)
        for key in ("code_sha", "parent_id", "replay_of", "resumed_from", "tenant"):
            if record.get(key):
                out[f"flux.{key}"] = str(record[key])
    elif kind == "function":
        out["flux.function"] = str(span.get("name"))
        out["code.function"] = str(span.get("name"))
        out["flux.runtime"] = str(record.get("runtime") or "python")
    elif kind == "db":
        out["db.system"] = "postgresql"
        if isinstance(attrs.get("sql"), str):
            out["db.statement"] = attrs["sql"]
        if attrs.get("verb"):
            out["db.operation"] = str(attrs["verb"]).upper()
        tables = [str(t) for t in attrs.get("tables") or []]
        if len(tables) == 1:
            out["db.sql.table"] = tables[0]
        elif tables:
            out["flux.db.tables"] = tables
        if isinstance(attrs.get("rowcount"), int):
            out["flux.db.rowcount"] = attrs["rowcount"]
    elif kind == "http":
        url = str(attrs.get("url") or "")
        out["http.request.method"] = str(attrs.get("method") or "")
        out["url.full"] = url
        parts = urlsplit(url)
        if parts.hostname:
            out["server.address"] = parts.hostname
        port = _port(parts)
        if port is not None:
            out["server.port"] = port
        if isinstance(attrs.get("status"), int):
            out["http.response.status_code"] = attrs["status"]
        if attrs.get("suppressed"):
            out["flux.http.suppressed"] = True
    elif kind == "queue":
        out["messaging.system"] = "flux"
        out["messaging.operation"] = "publish"
        out["messaging.destination.name"] = str(attrs.get("function"))
        if attrs.get("job_id"):
            out["messaging.message.id"] = str(attrs["job_id"])
    elif kind == "invoke":
        out["flux.function"] = str(attrs.get("function"))
    else:  # custom spans: the handler's own attributes
        out.update(_flat(attrs))
    return out


def _port(parts: Any) -> int | None:
    try:
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None


def _flat(values: Any) -> dict[str, Attr]:
    """Attribute values OpenTelemetry accepts: scalars as they are, the rest as JSON."""
    out: dict[str, Attr] = {}
    if not isinstance(values, Mapping):
        return out
    for key, value in values.items():
        if isinstance(value, bool | str | float):
            out[str(key)] = value
        elif isinstance(value, int):
            out[str(key)] = value if -_INT64 <= value < _INT64 else str(value)
        elif value is not None:
            out[str(key)] = json.dumps(value, default=str, sort_keys=True)
    return out


def _error_text(span: Mapping[str, Any]) -> str:
    error = span.get("error") or {}
    message = error.get("message") or error.get("type") or "error"
    return str(message)[:1024]


def _exception(span: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Attr]:
    """The ``exception`` event of a failed span; the function span gets the execution's
    error, with its stack."""
    error = dict(span.get("error") or {})
    if span.get("kind") in ("function", "gateway") and record.get("error"):
        error = {**error, **record["error"]}
    out: dict[str, Attr] = {"exception.type": str(error.get("type") or "error"),
                            "exception.message": str(error.get("message") or "")[:4096]}
    stack = error.get("stack")
    if isinstance(stack, list) and stack:
        out["exception.stacktrace"] = "\n".join(
            f'  File "{f.get("file")}", line {f.get("line")}, in {f.get("function")}\n'
            f'    {f.get("code") or ""}' for f in stack if isinstance(f, Mapping))
    return out


# -- the SDK side -------------------------------------------------------------------------


class Exporter:
    """Sends stored records' spans to one OTLP/HTTP endpoint through the SDK's
    ``BatchSpanProcessor``. ``export`` never raises and never touches the network: a
    record rides the processor's queue as one item, and the batch thread converts it to
    spans (``_Sender``), so a request pays for one append."""

    def __init__(self, endpoint: str, service_name: str, *,
                 headers: Mapping[str, str] | None = None, schedule_delay_ms: int = 1000,
                 timeout_s: float = 5.0) -> None:
        # the OpenTelemetry SDK (~150 ms): only when [otel] is configured
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.endpoint = endpoint
        self._sender = _Sender(
            OTLPSpanExporter(endpoint=endpoint, headers=dict(headers or {}), timeout=timeout_s),
            endpoint, Resource.create({"service.name": service_name}),
            InstrumentationScope(SCOPE, __version__, SCHEMA_URL))
        # _Sender is an exporter by duck type (export, shutdown, force_flush).
        self._processor = BatchSpanProcessor(self._sender,  # type: ignore[arg-type]
                                             schedule_delay_millis=schedule_delay_ms)

    def export(self, record: ExecutionRecord | Mapping[str, Any]) -> None:
        """Queue the record's spans (unless its caller asked not to sample the trace)."""
        try:
            row = record if isinstance(record, Mapping) else record.as_row()
            if trace_of(row).sampled:
                self._processor.on_end(_queued()(row))
        except Exception as exc:  # a bug here must never cost a request
            log.warning("OpenTelemetry: a record could not be queued (%s: %s)",
                        type(exc).__name__, exc)

    def flush(self, timeout_ms: int = 30000) -> bool:
        """Send what is queued now; whether it all went."""
        return self._processor.force_flush(timeout_ms) and self._sender.healthy

    def shutdown(self) -> None:
        """Send what is queued (dropped at once if the endpoint is down), stop the thread."""
        self._sender.closing = True
        self._processor.shutdown()


@functools.cache
def _queued() -> type:
    """The class of a record waiting in the batch processor's queue: a ``ReadableSpan`` by
    type, carrying only the sampled flag the processor checks and the record, converted
    later in the batch thread. Made on first use, so the SDK is imported only then."""
    # the OpenTelemetry SDK (~150 ms): only when [otel] is configured
    from opentelemetry import trace as api
    from opentelemetry.sdk.trace import ReadableSpan

    sampled = api.SpanContext(1, 1, is_remote=False,
                              trace_flags=api.TraceFlags(api.TraceFlags.SAMPLED))

    class Queued(ReadableSpan):
        def __init__(self, row: Mapping[str, Any]) -> None:  # no SDK state: nothing to pay
            self._context = sampled
            self.row = row

    return Queued


class _Sender:
    """The OTLP exporter as the batch processor sees it. In the batch thread it turns each
    queued record into spans; it logs one line when the endpoint stops answering (and one
    when it is back) instead of the SDK's line per retry; while the server shuts down, a
    batch for an endpoint known to be down is dropped at once."""

    def __init__(self, inner: Any, endpoint: str, resource: Any, scope: Any) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self._resource = resource
        self._scope = scope
        self.healthy = True
        self.closing = False
        self._reason: str | None = None
        self._bad_records = 0
        for name in _SDK_LOGGERS:
            logging.getLogger(name).addFilter(self._swallow)

    def _swallow(self, record: logging.LogRecord) -> bool:
        """Keep the SDK's first complaint for our own line; let nothing through."""
        if record.levelno >= logging.WARNING and self._reason is None:
            self._reason = record.getMessage()[:300]
        return False

    def export(self, batch: Any) -> Any:
        # the OpenTelemetry SDK (~150 ms): only when [otel] is configured
        from opentelemetry.sdk.trace.export import SpanExportResult

        if self.closing and not self.healthy:
            return SpanExportResult.FAILURE
        spans: list[Any] = []
        for item in batch:
            try:
                spans.extend(self._readable(d) for d in spans_of(item.row))
            except Exception as exc:  # one odd record must not cost the batch
                self._bad_records += 1
                if self._bad_records == 1:
                    log.warning("OpenTelemetry: the spans of %s could not be converted "
                                "(%s: %s)", item.row.get("request_id"), type(exc).__name__, exc)
        if not spans:
            return SpanExportResult.SUCCESS
        self._reason = None
        try:
            result = self._inner.export(spans)
        except Exception as exc:
            self._reason = f"{type(exc).__name__}: {exc}"
            result = SpanExportResult.FAILURE
        ok = result == SpanExportResult.SUCCESS
        if not ok and self.healthy:
            log.warning("OpenTelemetry export to %s failed (%s); spans are dropped until it "
                        "answers", self._endpoint, self._reason or "no answer")
        elif ok and not self.healthy:
            log.warning("OpenTelemetry export to %s works again", self._endpoint)
        self.healthy = ok
        return result

    def _readable(self, data: SpanData) -> Any:
        # the OpenTelemetry SDK (~150 ms): only when [otel] is configured
        from opentelemetry import trace as api
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import Status, StatusCode

        flags = api.TraceFlags(api.TraceFlags.SAMPLED)
        trace_id = int(data.trace_id, 16)
        context = api.SpanContext(trace_id, int(data.span_id, 16), is_remote=False,
                                  trace_flags=flags)
        parent = None if data.parent_span_id is None else api.SpanContext(
            trace_id, int(data.parent_span_id, 16), is_remote=data.remote_parent,
            trace_flags=flags)
        status = Status(StatusCode.ERROR, data.error) if data.error is not None \
            else Status(StatusCode.UNSET)
        return ReadableSpan(
            name=data.name, context=context, parent=parent, resource=self._resource,
            attributes=data.attributes,
            events=[Event(name, attrs, ts) for name, ts, attrs in data.events],
            kind=getattr(api.SpanKind, data.kind.upper()), status=status,
            start_time=data.start_ns, end_time=data.end_ns,
            instrumentation_scope=self._scope)

    def shutdown(self) -> None:
        self._inner.shutdown()
        for name in _SDK_LOGGERS:
            logging.getLogger(name).removeFilter(self._swallow)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
