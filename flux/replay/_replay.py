"""``flux replay``: run today's code on a recorded execution with every outside value served
from its tape — same request, same IO — and compare the outcome with the original.

Nothing outside is touched: an HTTP call is answered from the tape and never sent; a DB
statement is answered from the tape (``db="tape"``) or runs in a transaction that is always
rolled back (``db="live"``, and for any statement past the end of the tape); a job is never
enqueued. Calls past the end of the tape follow DESIGN.md's "Beyond the tape": HTTP is
answered by a stub from ``[replay.stubs]`` or a synthetic empty 200 marked
``x-flux-suppressed: true``, and every such call is listed in the result.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg

from flux._errors import FluxError, HttpConnectionError, HttpTimeout, NotFound
from flux._ids import new_request_id, short
from flux._jsoncodec import decode, encode
from flux.replay._tape import NEVER, Call, Tape, failure_point
from flux.runtime._asgi import not_named
from flux.runtime._callkey import endpoint_of, marker_of
from flux.runtime._ctx_db import shape
from flux.runtime._ctx_http import Response, suppressed_response
from flux.runtime._execution import Served
from flux.runtime._executor import Invocation, Outcome, execute
from flux.runtime._recorder import CallSite, Span
from flux.runtime._request import Request, from_record
from flux.runtime._runtime import Runtime
from flux.store._database import reader, resolve
from flux.store._lookup import fetch_record
from flux.store._portable import read_file

REPLAY_HEADER = "x-flux-replay"


class ReplayError(FluxError):
    code = "replay"


@dataclass
class TapeReplay:
    """The replay source: answers ctx calls from a record's tape."""

    tape: Tape
    db_mode: str = "tape"  # tape | live
    stubs: dict[str, Any] = field(default_factory=dict)
    beyond: list[dict[str, Any]] = field(default_factory=list)
    suppressed: list[dict[str, Any]] = field(default_factory=list)
    # Secrets: the values this machine has, the project's fingerprint function, and the
    # names a stand-in was handed out for.
    local_secrets: dict[str, str] = field(default_factory=dict)
    fingerprint: Callable[[str], str] | None = None
    stood_in: list[str] = field(default_factory=list)
    config_local: bool = False  # ctx.config from today's flux.toml, not the tape
    # Whether a call the tape does not answer is sent for real (a resume's live part);
    # a replay sends nothing.
    sends: bool = False

    async def db(self, mode: str, query: str, params: Any, span: Span, site: CallSite, *,
                 key: str) -> Served | None:
        call = Call("db", key, site.file, site.line, describe=_sql_head(query))
        entry = self.tape.take(call).entry
        if entry is None:
            self.beyond.append({"kind": "db", "call": call.describe, "file": site.file,
                                "line": site.line,
                                "handled": "ran in a transaction that is rolled back"})
            return None
        if self.db_mode == "live":
            return None  # the real statement, in the always-rolled-back transaction
        value = entry.get("value") or {}
        if value.get("_flux_truncated"):
            raise ReplayError(
                f"the recorded result of {call.describe} at {site.file}:{site.line} was too "
                f"large to keep ({value.get('size')} bytes), so it cannot be served",
                hint="replay with --db live, or raise [record] max_body_bytes")
        if "error" in value:
            raise _database_error(value["error"])
        rows = decode(value.get("rows"))
        return Served(shape(mode, rows, int(value.get("rowcount") or 0)))

    async def http(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                   span: Span, site: CallSite, *, key: str) -> Served | None:
        # ``url`` may carry a secret (or its stand-in): only the key's redacted form is shown.
        shown = endpoint_of(key).split(" ", 1)[1]
        call = Call("http", key, site.file, site.line, describe=endpoint_of(key))
        entry = self.tape.take(call).entry
        record = {"method": method, "url": shown, "file": site.file, "line": site.line}
        if entry is None:
            response, stubbed = suppressed_response(self.stubs, url)
            response = replace(response, url=shown)
            self.beyond.append({"kind": "http", "call": call.describe, "file": site.file,
                                "line": site.line,
                                "handled": f"not sent; answered {response.status} by "
                                           + ("a stub" if stubbed else "a synthetic response")})
            self.suppressed.append({**record, "answered": response.status, "from": "stub"})
            return Served(response)
        value = entry.get("value") or {}
        error = value.get("error")
        self.suppressed.append({**record, "answered": value.get("status") or
                                (error or {}).get("type"), "from": "tape"})
        if error:
            if error.get("type") == "timeout":
                raise HttpTimeout(f"{method} {shown} timed out after "
                                  f"{error.get('timeout_s', '?')}s (from the tape)",
                                  method=method, url=shown)
            raise HttpConnectionError(f"{method} {shown} failed: {error.get('message')} "
                                      "(from the tape)", method=method, url=shown)
        recorded = value.get("body")
        content = b"" if recorded is None else (
            recorded.encode() if isinstance(recorded, str) else json.dumps(recorded).encode())
        return Served(Response(status=int(value.get("status") or 200),
                               headers=dict(value.get("headers") or {}), content=content,
                               url=shown))

    def value(self, kind: str, key: str, site: CallSite) -> Served | None:
        entry = self.tape.take(Call(kind, key, site.file, site.line,
                                    describe=f"ctx {kind} {key}")).entry
        if entry is None:
            if kind == "queue":  # never enqueue: a made-up id, listed
                self.beyond.append({"kind": "queue", "call": f"queue.push({key})",
                                    "file": site.file, "line": site.line,
                                    "handled": "not enqueued"})
                return Served(str(uuid.uuid4()))
            return None  # clock, random, uuid, secret: a live value, harmless
        if kind == "secret":
            return Served(self.secret(key, entry.get("value")))
        if kind == "config" and self.config_local:
            return None  # today's value
        return Served(decode(entry.get("value")))

    def secret(self, name: str, fingerprint: Any) -> tuple[str | None, str | None]:
        """The value a replayed ``ctx.secrets.get(name)`` returns, and the marker calls
        carrying it are keyed with: the recorded fingerprint's, whichever value is handed
        out. The local value when this machine has it with the recorded fingerprint (an
        HMAC the handler computes comes out the same), else a stand-in, listed."""
        if not isinstance(fingerprint, str):
            return None, None  # the secret was unset when the execution ran
        local = self.local_secrets.get(name)
        if local is not None and self.fingerprint is not None and \
                self.fingerprint(local) == fingerprint:
            return local, marker_of(fingerprint)
        if name not in self.stood_in:
            self.stood_in.append(name)
        return self._stand_in(name, marker_of(fingerprint)), marker_of(fingerprint)

    def _stand_in(self, name: str, marker: str) -> str:
        """The value handed out for a secret this machine lacks. A secret the tape shows as
        a URL's base gets one that parses as a URL's base: a captured client (httpx,
        requests, urllib) normalises the URL before Flux sees it, and would mangle any
        other text into a call the tape does not hold."""
        for entry in self.tape.entries:
            _, _, url = str(entry.get("key") or "").partition(" ")
            if entry.get("kind") == "http" and url.startswith(marker):
                return f"http://flux-replay-secret.invalid/{name}"
        return f"flux-replay-secret:{name}"


def local_secrets(runtime: Runtime, record: dict[str, Any]) -> dict[str, str]:
    """The values this machine has for the secrets the record read (by the same
    ``[secrets]`` mapping the runtime uses)."""
    names = {str(e.get("key")) for e in record.get("tape") or [] if e.get("kind") == "secret"}
    found = {n: os.environ.get(runtime.secrets_map.get(n, n)) for n in names}
    return {n: v for n, v in found.items() if v}


def _sql_head(query: str) -> str:
    text = " ".join(query.split())
    return text if len(text) <= 80 else text[:77] + "…"


def _database_error(error: dict[str, Any]) -> psycopg.Error:
    """The recorded database error, raised again as the same psycopg class."""
    sqlstate = error.get("sqlstate")
    try:
        cls = psycopg.errors.lookup(sqlstate) if sqlstate else psycopg.DatabaseError
    except KeyError:
        cls = psycopg.DatabaseError
    message = error.get("message") or "database error (from the tape)"
    if error.get("detail"):
        message += f"\nDETAIL:  {error['detail']}"
    return cls(message)


def _outcome_facts(status: str, body: Any, error: dict[str, Any] | None,
                   headers: Any = None) -> dict[str, Any]:
    return {"status": status, "output": body, "headers": headers or {},
            "error": None if not error else {"type": error.get("type"),
                                             "message": error.get("message"),
                                             "code": error.get("code"),
                                             "file": error.get("file"),
                                             "line": error.get("line")}}


def same_outcome(original: dict[str, Any], replayed: dict[str, Any]) -> bool:
    """Whether a replay reproduced the original exactly: same status, and the same answer —
    HTTP status, headers (as recorded: redacted) and output — (for a failure: the same
    error type and code; its body names another request id)."""
    if original["status"] != replayed["status"]:
        return False
    if original["status"] == "ok":
        return (original["output"] == replayed["output"]
                and original.get("headers", {}) == replayed.get("headers", {})
                and original.get("http_status", 200) == replayed.get("http_status", 200))
    a, b = original["error"] or {}, replayed["error"] or {}
    return a.get("type") == b.get("type") and a.get("code") == b.get("code")


def config_differences(record: dict[str, Any], today: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``ctx.config`` keys the execution read whose value differs in today's flux.toml."""
    out = []
    for entry in record.get("tape") or []:
        if entry.get("kind") != "config":
            continue
        name, recorded = str(entry.get("key")), entry.get("value")
        now = encode(today[name]) if name in today else {"_flux_missing": True}
        if recorded != now:
            out.append({"key": name, "recorded": recorded, "today": now})
    return out


async def replay(runtime: Runtime, record: dict[str, Any], *, db_mode: str = "tape",
                 persist: bool = False, expect_same: bool = False,
                 config_local: bool = False) -> dict[str, Any]:
    """Replay one record against the runtime's (today's) functions."""
    if db_mode not in ("tape", "live"):
        raise ReplayError(f"--db takes tape or live, not {db_mode!r}")
    if record.get("sampled") is False:
        raise ReplayError(f"{short(str(record['request_id']))} succeeded and was sampled out "
                          "([record] sample_rate): only its outline was kept, not its tape, "
                          "so it cannot be replayed")
    function = record.get("function")
    spec = runtime.registry.named(function)
    if spec is None:
        raise NotFound(not_named(function, runtime.project.asgi)
                       or f"no function named {function!r} in {runtime.functions_dir}",
                       hint="replay runs today's code: is this the right project?")
    request = record.get("request") or {}
    source = TapeReplay(Tape.of(record, loose_db=db_mode == "live"), db_mode=db_mode,
                        stubs=runtime.project.replay_stubs,
                        local_secrets=local_secrets(runtime, record),
                        fingerprint=runtime.policy.fingerprint, config_local=config_local)
    headers = {**(request.get("headers") or {}), REPLAY_HEADER: "true"}
    payload = decode(request.get("body"))
    given = from_record(request, kind=str(record.get("kind")), input=payload,
                        route=str(request.get("route") or spec.route), headers=headers)
    invocation = Invocation(
        request_id=str(new_request_id()), spec=spec, input=payload,
        kind="replay", method=request.get("method"), route=request.get("route"),
        headers=headers, query=request.get("query") or {}, replay_of=str(record["request_id"]),
        parent_id=record.get("parent_id"), tenant=record.get("tenant"), request=given,
    )
    outcome: Outcome = await execute(runtime, invocation, replay=source, persist=persist,
                                     commit_data=False)
    divergence = source.tape.finish()
    response = record.get("response") or {}
    original = _outcome_facts(record["status"], response.get("body"), record.get("error"),
                              response.get("headers"))
    replayed = _outcome_facts(outcome.status, outcome.body, outcome.error,
                              (outcome.record.response or {}).get("headers"))
    original["http_status"], replayed["http_status"] = (record.get("http_status"),
                                                        outcome.http_status)
    # "The same" is the same outcome reached the same way: a replay that diverged from its
    # tape did not reproduce the original, even if it happened to return the same thing.
    passed = (same_outcome(original, replayed) and divergence is None) if expect_same \
        else outcome.status == "ok"
    return {
        "request_id": str(record["request_id"]),
        "replay_id": outcome.request_id,
        "function": function,
        "original": original,
        "replayed": replayed,
        "divergence": None if divergence is None else divergence.to_json(),
        # Whether the replay departed from the tape before the original failed (then its
        # outcome says nothing about the original failure: bisect's "skip").
        "diverged_before_failure": divergence is not None and int(
            (divergence.expected or {}).get("seq") or NEVER) < failure_point(record),
        "passed": passed,
        "beyond_tape": source.beyond,
        "suppressed": source.suppressed,
        "db": db_mode,
        "secrets_stood_in": source.stood_in,
        # ctx.config: production's values (from the tape) unless --config local; either
        # way, the keys whose value differs today.
        "config": {"from": "local" if config_local else "tape",
                   "differs": config_differences(record, runtime.app_config)},
        "http_status": {"original": record.get("http_status"),
                        "replayed": outcome.http_status},
        "request_body": request_body(given),
    }


def request_body(given: Request | None) -> dict[str, Any]:
    """Whether the handler got the original request body's bytes: ``exact`` false with
    ``reason`` when the record could not keep them (a redacted field, a secret, the cap) —
    and whether the handler read them, when a signature over them cannot match."""
    if given is None:
        return {"exact": True, "read": False, "reason": None}
    return {"exact": given.exact, "read": given.body_read, "reason": given.why_inexact}


def load_target(project: Any, target: str) -> dict[str, Any]:
    """The record to replay: a record file if ``target`` names one, else an id prefix."""

    path = Path(target)
    if path.suffix == ".json" or path.is_file():
        return read_file(path)["record"]
    with reader(project) as conn:
        return fetch_record(conn, target)


def replay_command(project: Any, target: str, *, db_mode: str = "tape",
                   expect_same: bool = False, config: str = "tape") -> dict[str, Any]:
    """``flux replay ID|FILE``: nothing is stored, nothing is sent."""
    if config not in ("tape", "local"):
        raise ReplayError(f"--config takes tape or local, not {config!r}")


    record = load_target(project, target)

    async def run() -> dict[str, Any]:
        # The database is resolved (and an embedded one started) only if a call needs it.
        runtime = Runtime(project, lambda: resolve(project, create=False).conninfo,
                          pool_size=2, keeps_records=False, exports_spans=False)
        errors = await runtime.start(open_pool=False)
        try:
            if runtime.registry.named(record.get("function")) is None and errors:
                broken = "; ".join(f"{e.file.name}: {e.message}" for e in errors)
                raise ReplayError(f"{record.get('function')} is not loaded; modules that fail "
                                  f"to load: {broken}")
            return await replay(runtime, record, db_mode=db_mode, expect_same=expect_same,
                                config_local=config == "local")
        finally:
            await runtime.close()

    return asyncio.run(run())
