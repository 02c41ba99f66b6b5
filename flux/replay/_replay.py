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
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from flux._errors import FluxError, HttpConnectionError, HttpTimeout, NotFound
from flux._ids import new_request_id, short
from flux._jsoncodec import decode
from flux.replay._tape import Call, Tape
from flux.runtime._ctx_db import shape
from flux.runtime._ctx_http import Response, suppressed_response
from flux.runtime._execution import Served
from flux.runtime._executor import Invocation, Outcome, execute
from flux.runtime._recorder import CallSite, Span
from flux.runtime._runtime import Runtime
from flux.store._database import reader, resolve
from flux.store._lookup import fetch_record
from flux.store._portable import read_file
from flux.store._statement import tape_key

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
    # Whether a call the tape does not answer is sent for real (a resume's live part);
    # a replay sends nothing.
    sends: bool = False

    async def db(self, mode: str, query: str, params: Any, span: Span, site: CallSite
                 ) -> Served | None:
        call = Call("db", tape_key(query, params), site.file, site.line,
                    describe=_sql_head(query))
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
                   span: Span, site: CallSite) -> Served | None:
        call = Call("http", f"{method} {url}", site.file, site.line, describe=f"{method} {url}")
        entry = self.tape.take(call).entry
        record = {"method": method, "url": url, "file": site.file, "line": site.line}
        if entry is None:
            response, stubbed = suppressed_response(self.stubs, url)
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
                raise HttpTimeout(f"{method} {url} timed out after "
                                  f"{error.get('timeout_s', '?')}s (from the tape)",
                                  method=method, url=url)
            raise HttpConnectionError(f"{method} {url} failed: {error.get('message')} "
                                      "(from the tape)", method=method, url=url)
        recorded = value.get("body")
        content = b"" if recorded is None else (
            recorded.encode() if isinstance(recorded, str) else json.dumps(recorded).encode())
        return Served(Response(status=int(value.get("status") or 200),
                               headers=dict(value.get("headers") or {}), content=content,
                               url=url))

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
            # The value never left production; a stand-in of the same name will do, as
            # every call that would carry it is answered from the tape.
            return Served(None if entry.get("value") is None else f"flux-replay-secret:{key}")
        return Served(decode(entry.get("value")))


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


def _outcome_facts(status: str, body: Any, error: dict[str, Any] | None) -> dict[str, Any]:
    return {"status": status, "output": body,
            "error": None if not error else {"type": error.get("type"),
                                             "message": error.get("message"),
                                             "code": error.get("code")}}


def same_outcome(original: dict[str, Any], replayed: dict[str, Any]) -> bool:
    """Whether a replay reproduced the original exactly: same status, and the same output
    (for a failure: the same error type and code; its body names another request id)."""
    if original["status"] != replayed["status"]:
        return False
    if original["status"] == "ok":
        return original["output"] == replayed["output"]
    a, b = original["error"] or {}, replayed["error"] or {}
    return a.get("type") == b.get("type") and a.get("code") == b.get("code")


async def replay(runtime: Runtime, record: dict[str, Any], *, db_mode: str = "tape",
                 persist: bool = False, expect_same: bool = False) -> dict[str, Any]:
    """Replay one record against the runtime's (today's) functions."""
    if db_mode not in ("tape", "live"):
        raise ReplayError(f"--db takes tape or live, not {db_mode!r}")
    if record.get("sampled") is False:
        raise ReplayError(f"{short(str(record['request_id']))} succeeded and was sampled out "
                          "([record] sample_rate): only its outline was kept, not its tape, "
                          "so it cannot be replayed")
    function = record.get("function")
    spec = runtime.registry.by_name.get(function or "")
    if spec is None:
        raise NotFound(f"no function named {function!r} in {runtime.functions_dir}",
                       hint="replay runs today's code: is this the right project?")
    request = record.get("request") or {}
    source = TapeReplay(Tape.of(record, loose_db=db_mode == "live"), db_mode=db_mode,
                        stubs=runtime.project.replay_stubs)
    headers = {**(request.get("headers") or {}), REPLAY_HEADER: "true"}
    invocation = Invocation(
        request_id=str(new_request_id()), spec=spec, input=decode(request.get("body")),
        kind="replay", method=request.get("method"), route=request.get("route"),
        headers=headers, query=request.get("query") or {}, replay_of=str(record["request_id"]),
        parent_id=record.get("parent_id"), tenant=record.get("tenant"),
    )
    outcome: Outcome = await execute(runtime, invocation, replay=source, persist=persist,
                                     commit_data=False)
    divergence = source.tape.finish()
    original = _outcome_facts(record["status"], (record.get("response") or {}).get("body"),
                              record.get("error"))
    replayed = _outcome_facts(outcome.status, outcome.body, outcome.error)
    passed = same_outcome(original, replayed) if expect_same else outcome.status == "ok"
    return {
        "request_id": str(record["request_id"]),
        "replay_id": outcome.request_id,
        "function": function,
        "original": original,
        "replayed": replayed,
        "divergence": None if divergence is None else divergence.to_json(),
        "passed": passed,
        "beyond_tape": source.beyond,
        "suppressed": source.suppressed,
        "db": db_mode,
        "http_status": {"original": record.get("http_status"),
                        "replayed": outcome.http_status},
    }


def load_target(project: Any, target: str) -> dict[str, Any]:
    """The record to replay: a record file if ``target`` names one, else an id prefix."""

    path = Path(target)
    if path.suffix == ".json" or path.is_file():
        return read_file(path)["record"]
    with reader(project) as conn:
        return fetch_record(conn, target)


def replay_command(project: Any, target: str, *, db_mode: str = "tape",
                   expect_same: bool = False) -> dict[str, Any]:
    """``flux replay ID|FILE``: nothing is stored, nothing is sent."""

    record = load_target(project, target)

    async def run() -> dict[str, Any]:
        # The database is resolved (and an embedded one started) only if a call needs it.
        runtime = Runtime(project, lambda: resolve(project, create=False).conninfo,
                          pool_size=2, keeps_records=False, exports_spans=False)
        errors = await runtime.start(open_pool=False)
        try:
            if record.get("function") not in runtime.registry.by_name and errors:
                broken = "; ".join(f"{e.file.name}: {e.message}" for e in errors)
                raise ReplayError(f"{record.get('function')} is not loaded; modules that fail "
                                  f"to load: {broken}")
            return await replay(runtime, record, db_mode=db_mode, expect_same=expect_same)
        finally:
            await runtime.close()

    return asyncio.run(run())
