"""The exceptions Flux raises, one root and a small tree.

    FluxError                     code        every error Flux raises on purpose
    ├── ConfigError               config      flux.toml missing or invalid, bad option values
    ├── NotFound                  not_found   no execution / table / row with that id
    ├── AmbiguousId               ambiguous   an id prefix matches several executions
    ├── DatabaseError             database    PostgreSQL is unreachable or refused something
    │   ├── EmbeddedServerError   embedded    the embedded server cannot start, stop or be reached
    │   ├── DatabaseUnavailable   unavailable the server is down or the connection to it was lost
    │   ├── MigrationError        migration   a migration failed or the schema is ahead of Flux
    │   └── ReplicationUnavailable  replication_unavailable  no replication connection for WAL
    │                                           capture (capture/_walstream.py)
    ├── FunctionError             function    raised by user code through ctx.error(status, code, …)
    ├── HttpError                 http        an outbound ctx.http call failed
    │   ├── HttpTimeout           http_timeout      no answer within the timeout
    │   ├── HttpConnectionError   http_connection   could not connect / connection dropped
    │   └── HttpStatusError       http_status       raise_for_status() on a 4xx/5xx answer
    ├── Overloaded                overloaded  the runtime sheds load (pool exhausted, queue full)
    ├── Unauthorized              unauthorized  the admin API refused the token (or has none)
    ├── ResumeRefused             resume_refused  a resume that would be unsafe or is a repeat
    ├── UnrecordedIO              unrecorded_io   outside access that no recorded path made,
    │                                             blocked where nothing may leave (replays)
    ├── StepFailed                step        a ctx.step's recorded exception, when its own
    │                                         class cannot be rebuilt on replay
    ├── WasmError                 wasm        a WebAssembly function broke the ABI or its limits
    │   ├── WasmTrap              wasm_trap     the guest trapped (unreachable, out of bounds…)
    │   └── WasmMemoryLimit       wasm_memory   the guest needed more memory than its cap
    ├── CaptureError              capture     WAL capture cannot go on (capture/_consumer.py)
    ├── OutsideExecution          outside_execution  flux.current() with no execution running
    │                                           (runtime/_context.py)
    ├── NotAwaited                not_awaited  an async handler never awaited a ctx call, so it
    │                                          never ran (runtime/_context.py)
    ├── SecretNotSet              secret_not_set  ctx.secrets["NAME"] of a variable that is not
    │                                             set; also a KeyError (runtime/_context.py)
    ├── AppError                  asgi_app    the [asgi] app cannot be loaded, or its lifespan
    │                                         startup or shutdown failed (runtime/_asgi.py)
    ├── ReplayError               replay      a record cannot be replayed (replay/_replay.py)
    ├── RecordFileError           record_file  a record file that is not one, or cannot be
    │                                          stored (store/_portable.py)
    ├── BisectError               bisect      a bisect cannot run as asked (replay/_bisect.py)
    └── PolicyViolation           policy      an explain run broke its policy (replay/_explain.py)

The classes drawn with a path are defined beside the code that raises them; every class is
drawn here, wherever it lives (tests/test_layout.py checks that).

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


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached now (restarting, down, the connection lost). With
    ``in_doubt`` the connection died during an execution's COMMIT, so whether it committed
    is unknown until the database is back."""

    code = "unavailable"

    def __init__(self, message: str, *, hint: str | None = None, in_doubt: bool = False
                 ) -> None:
        super().__init__(message, hint=hint)
        self.in_doubt = in_doubt


class MigrationError(DatabaseError):
    code = "migration"


class FunctionError(FluxError):
    """What ``ctx.error(status, code, message)`` returns, for the handler to raise: an
    intended failure with an HTTP status and a stable code for clients."""

    code = "function"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = code


class HttpError(FluxError):
    code = "http"

    def __init__(self, message: str, *, method: str, url: str) -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class HttpTimeout(HttpError, TimeoutError):
    code = "http_timeout"


class HttpConnectionError(HttpError, ConnectionError):
    code = "http_connection"


class HttpStatusError(HttpError):
    code = "http_status"

    def __init__(self, message: str, *, method: str, url: str, status: int) -> None:
        super().__init__(message, method=method, url=url)
        self.status = status


class Overloaded(FluxError):
    code = "overloaded"


class Unauthorized(FluxError):
    code = "unauthorized"


class ResumeRefused(FluxError):
    code = "resume_refused"

    def __init__(self, message: str, *, hint: str | None = None,
                 details: dict[str, object] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.details = details or {}


class UnrecordedIO(FluxError):
    """Outside access that went through no recorded path (a socket, DNS, a subprocess, a
    file written outside temp, a database connection of the handler's own), stopped before
    it left the process because the run may send nothing: a replay, an incident replay, a
    resume, explain. ``str(err)`` is ``unrecorded IO: <what> at <file:line>``."""

    code = "unrecorded_io"


class StepFailed(FluxError):
    """A ``ctx.step`` that failed in the original, replayed when its exception's class
    cannot be rebuilt here (``type`` names the original class)."""

    code = "step"

    def __init__(self, message: str, *, type: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.type = type


class WasmError(FluxError):
    """A WebAssembly function failed in a way only Wasm can: a module that breaks the ABI
    (missing export, bad pointer, output that is not JSON), or an instance that could not
    be made. ``site`` and ``stack`` say where in the module, for the record."""

    code = "wasm"

    def __init__(self, message: str, *, hint: str | None = None,
                 details: dict[str, object] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.details = details or {}


class WasmTrap(WasmError):
    code = "wasm_trap"


class WasmMemoryLimit(WasmError):
    code = "wasm_memory"
