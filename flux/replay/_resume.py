"""``flux resume <id>``: finish a failed execution with today's code, without repeating the
effects it already had outside the database.

DESIGN.md's rule: a call that succeeded outside the database (an HTTP call answered 2xx
before the failure) is served from the tape and never sent again; the failed attempt's
database effects were rolled back, so its statements run again, for real, in a fresh
transaction; the call that failed and everything after it run live — an unsafe HTTP call
with the original ``Idempotency-Key`` (``<request id>-<call seq>``), so a provider that
honours it deduplicates even a call it did receive.

Before anything runs for real, the resume is rehearsed in a transaction that is rolled back
with every HTTP call answered from the tape or a stub: if today's code now departs from the
tape before the failure point, or (with ``strict``) a read returns something other than the
tape, the resume stops there and nothing is executed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from flux._errors import NotFound, ResumeRefused
from flux._ids import new_request_id, short
from flux._jsoncodec import decode
from flux.replay._replay import TapeReplay
from flux.replay._tape import KINDS, NEVER, Call, Divergence, Tape, failure_point
from flux.runtime._asgi import not_named
from flux.runtime._callkey import endpoint_of
from flux.runtime._execution import Served
from flux.runtime._executor import Invocation, execute
from flux.runtime._recorder import CallSite, Span
from flux.runtime._request import from_record
from flux.runtime._runtime import Runtime
from flux.store._database import reader, resolve
from flux.store._lookup import fetch_record
from flux.store._queries import load

if TYPE_CHECKING:
    from flux._project import Project

def past_tape(beyond: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plan's steps for the calls the rehearsal of today's code made past the tape (a
    fixed function goes further than the failed original did): an HTTP call there will be
    sent, a statement or a job runs in the new transaction. Without them a plan would hide
    the very calls a resume sends."""
    steps = []
    for call in beyond:
        kind = str(call["kind"])
        mode, note = ("live", "runs live (past the tape)") if kind == "http" else \
            ("db", "re-executed in DB (past the tape)")
        steps.append({"seq": None, "call": f"{kind} {call['call']}" if kind != "queue"
                      else str(call["call"]), "kind": kind, "mode": mode, "note": note,
                      "file": call.get("file"), "line": call.get("line"), "failed": False})
    return steps


def plan(record: dict[str, Any]) -> list[dict[str, Any]]:
    """What a resume will do with each call of the tape."""
    cut = failure_point(record)
    # A statement as people read it: its span's SQL, not the fingerprint that keys it.
    sql = {span.get("id"): (span.get("attrs") or {}).get("sql")
           for span in record.get("spans") or [] if isinstance(span, dict)}
    steps = []
    for entry in record.get("tape") or []:
        seq, kind = int(entry.get("seq") or 0), entry.get("kind")
        if kind in ("db", "queue"):
            mode, note = "db", "re-executed in DB"
        elif seq >= cut or kind in ("secret", "config"):
            mode, note = "live", "runs live"
        else:
            mode, note = "tape", "served from tape"
        key = str(entry.get("key"))  # an HTTP call as people read it: no secrets note
        if kind == "db" and isinstance(text := sql.get(entry.get("span_id")), str):
            key = " ".join(text.split())  # whole: the CLI shortens it for people
        steps.append({"seq": seq, "call": f"{kind} {endpoint_of(key) if kind == 'http' else key}",
                      "kind": kind,
                      "mode": mode, "note": note, "file": entry.get("file"),
                      "line": entry.get("line"), "failed": seq == cut})
    return steps


@dataclass
class ResumeSource(TapeReplay):
    """HTTP before the failure point from the tape; the failed call and after live; every
    statement live (in the resume's own transaction), its reads compared with the tape."""

    cut: int = NEVER
    rehearsal: bool = False
    drift: list[dict[str, Any]] = field(default_factory=list)
    params_drift: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    _expected: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def db(self, mode: str, query: str, params: Any, span: Span, site: CallSite, *,
                 key: str) -> Served | None:
        # Statements match by fingerprint (the tape is loose_db): a statement re-executed
        # live may carry a value an earlier one generated anew (a serial id, a timestamp).
        call = Call("db", key, site.file, site.line, describe=" ".join(query.split()))
        entry = self.tape.take(call).entry
        if entry is None:  # today's code writes more than the original got to
            self.beyond.append({"kind": "db", "call": call.describe, "file": site.file,
                                "line": site.line, "handled": "re-executed in DB"})
        if entry is not None and str(entry.get("key")) != key:
            self.params_drift.append({"call": " ".join(query.split()),
                                      "file": site.file, "line": site.line,
                                      "note": "parameters differ from the recorded ones "
                                              "(a value generated anew is expected)"})
        if entry is not None and "rows" in (entry.get("value") or {}):
            self._expected[span.id] = entry
        return None  # always live, in the resume's transaction

    def observed_db(self, span: Span, value: dict[str, Any]) -> None:
        entry = self._expected.pop(span.id, None)
        if entry is None or span.attrs.get("verb") != "select":
            return
        recorded = (entry.get("value") or {}).get("rows")
        if recorded != value.get("rows"):
            self.drift.append({"call": " ".join(str(span.attrs.get("sql")).split()),
                               "file": span.file, "line": span.line,
                               "recorded": recorded, "now": value.get("rows")})

    async def http(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                   span: Span, site: CallSite, *, key: str) -> Served | None:

        queue = self.tape._pending.get("http", [])
        due = queue[0] if queue else None
        if due is not None and int(due.get("seq") or 0) < self.cut:
            served = await super().http(method, url, headers, body, span, site, key=key)
            span.attrs["resume"] = "served from tape"
            return served
        if self.rehearsal:  # rehearsing: nothing leaves, whatever the tape says
            span.attrs["resume"] = "live (rehearsal: not sent)"
            return await super().http(method, url, headers, body, span, site, key=key)
        self.tape.take(Call("http", key, site.file, site.line, describe=endpoint_of(key)))
        self.sent.append({"method": method, "url": endpoint_of(key).split(" ", 1)[1],
                          "file": site.file, "line": site.line,
                          "idempotency_key": headers.get("Idempotency-Key")})
        span.attrs["resume"] = "runs live"
        return None

    def value(self, kind: str, key: str, site: CallSite) -> Served | None:
        queue = self.tape._pending.get(kind, [])
        before_cut = bool(queue) and int(queue[0].get("seq") or 0) < self.cut
        entry = self.tape.take(Call(kind, key, site.file, site.line)).entry
        if entry is None and kind == "queue":
            self.beyond.append({"kind": "queue", "call": f"queue.push({key})",
                                "file": site.file, "line": site.line,
                                "handled": "enqueued in the new transaction"})
        if kind in ("secret", "queue", "config") or entry is None or not before_cut:
            # the real secret for live calls; the job in the new transaction; today's
            # configuration, as today's code (a fix deployed as a flag applies)
            return None
        return Served(decode(entry.get("value")))


async def _run(runtime: Runtime, record: dict[str, Any], *, rehearsal: bool,
               request_id: str) -> tuple[Any, ResumeSource]:
    spec = runtime.registry.named(record.get("function"))
    if spec is None:
        raise NotFound(not_named(record.get("function"), runtime.project.asgi)
                       or f"no function named {record.get('function')!r} in "
                       f"{runtime.functions_dir}")
    request = record.get("request") or {}
    # Only outside calls (HTTP, steps, jobs, invokes) must keep their sequence before the
    # failure point: statements run again for real, and match by fingerprint.
    watched = [k for k in KINDS if k in ("http", "step", "queue", "invoke")]
    source = ResumeSource(Tape.of(record, loose_db=True, watched=watched), db_mode="live",
                          cut=failure_point(record), rehearsal=rehearsal, sends=not rehearsal)
    payload = decode(request.get("body"))
    headers = request.get("headers") or {}
    invocation = Invocation(
        request_id=request_id, spec=spec, input=payload, kind="resume",
        method=request.get("method"), route=request.get("route"),
        headers=headers, query=request.get("query") or {},
        parent_id=record.get("parent_id"), resumed_from=str(record["request_id"]),
        tenant=record.get("tenant"),
        request=from_record(request, kind=str(record.get("kind")), input=payload,
                            route=str(request.get("route") or spec.route), headers=headers))
    outcome = await execute(runtime, invocation, replay=source,
                            idempotency_prefix=str(record["request_id"]),
                            persist=not rehearsal, commit_data=not rehearsal)
    return outcome, source


def _stopped_by(error: dict[str, Any] | None, divergence: Divergence) -> str:
    """Why a rehearsal never reached an expected call: the error it ended with (a secret
    not set where the resume runs, a changed line raising), said where it was raised."""
    if divergence.actual is not None or not error:
        return ""
    where = f" at {error['file']}:{error['line']}" if error.get("file") else ""
    return f": it failed first with {error.get('type')}: {error.get('message')}{where}"


def _check(record: dict[str, Any], state: tuple[str, str | None] | None) -> None:
    rid = short(record["request_id"])
    if state is None:
        raise NotFound(f"execution {rid} is gone")
    status, resumed_by = state
    if status == "ok":
        raise ResumeRefused(f"execution {rid} succeeded; there is nothing to resume")
    if resumed_by:
        raise ResumeRefused(f"execution {rid} was already resumed by {short(resumed_by)}",
                            hint=f"flux trace {short(resumed_by)}")


async def resume(runtime: Runtime, record: dict[str, Any], *, dry_run: bool = False,
                 strict: bool = False) -> dict[str, Any]:
    """Resume one failed execution (its record as fetched). One resume at a time: the
    original's row is locked for the whole resume, and marked resumed at the end."""
    steps = plan(record)
    result: dict[str, Any] = {"resumed_from": str(record["request_id"]), "plan": steps,
                              "request_id": None, "status": None, "drift": [],
                              "divergence": None, "sent": []}
    async with runtime.pool.connection() as lock:
        await lock.set_autocommit(False)
        try:
            row = await (await lock.execute(load("inspect").lock_for_resume,
                                            {"request_id": record["request_id"]})).fetchone()
        except psycopg.errors.LockNotAvailable as exc:
            raise ResumeRefused(f"execution {short(record['request_id'])} is being resumed "
                                "right now by another process") from exc
        _check(record, row)
        rehearsal, source = await _run(runtime, record, rehearsal=True,
                                       request_id=str(new_request_id()))
        divergence = source.tape.finish()
        cut = failure_point(record)
        steps.extend(past_tape(source.beyond))
        result["drift"] = source.drift
        result["params_drift"] = source.params_drift  # information, never a refusal
        problem = None
        if divergence is not None and (divergence.expected or {}).get("seq", NEVER) < cut:
            result["divergence"] = divergence.to_json()
            because = (f" because {len(source.drift)} read(s) return something else now "
                       f"(first at {source.drift[0]['file']}:{source.drift[0]['line']})"
                       if source.drift else "")
            problem = ("today's code departs from the recorded execution before the point "
                       f"where it failed{because} ({divergence.file}:{divergence.line}: "
                       f"{divergence.reason}{_stopped_by(rehearsal.error, divergence)}); "
                       "nothing was executed")
        elif (rehearsal.error or {}).get("type") == "SecretNotSet":
            # The machine lacks a secret the code reads: the resume would fail on it, at
            # the failed call or after it, leaving one more failed record and nothing done.
            where = (f" at {rehearsal.error['file']}:{rehearsal.error['line']}"
                     if rehearsal.error.get("file") else "")
            problem = (f"SecretNotSet{where}: {rehearsal.error['message']} where this resume "
                       "runs; nothing was executed")
        elif (rehearsal.error or {}).get("type") == "UnrecordedIO":
            problem = (f"{rehearsal.error['message']}: the resume would reach outside "
                       "through no recorded path; nothing was executed")
        elif strict and source.drift:
            problem = (f"{len(source.drift)} read(s) return something else than when the "
                       f"execution ran (first: {source.drift[0]['call']} at "
                       f"{source.drift[0]['file']}:{source.drift[0]['line']}); --strict "
                       "stops here, nothing was executed")
        if dry_run:
            # ``status`` is the rehearsal's outcome (ok/error), as everywhere else.
            # A predicted refusal is said as the real one would be (the CLI exits as it).
            result.update(status=rehearsal.status, dry_run=True, refusal=problem,
                          refused=problem is not None,
                          error=None if problem is None else f"a resume would be refused: "
                                                             f"{problem}",
                          http_status=rehearsal.http_status,
                          rehearsal={"status": rehearsal.status,
                                     "http_status": rehearsal.http_status})
            return result
        if problem is not None:
            raise ResumeRefused(problem, details=result)
        outcome, live = await _run(runtime, record, rehearsal=False,
                                   request_id=str(new_request_id()))
        result.update(request_id=outcome.request_id, status=outcome.status,
                      http_status=outcome.http_status, output=outcome.body,
                      error=outcome.error and {k: outcome.error.get(k)
                                               for k in ("type", "message", "file", "line")},
                      sent=live.sent, drift=live.drift, params_drift=live.params_drift)
        if outcome.status == "ok":
            await lock.execute(load("inspect").mark_resumed,
                               {"request_id": record["request_id"],
                                "resumed_by": outcome.request_id})
        await lock.commit()
    return result


def resume_command(project: Project, prefix: str, *, dry_run: bool = False,
                   strict: bool = False) -> dict[str, Any]:
    """``flux resume ID``."""

    with reader(project) as conn:
        record = fetch_record(conn, prefix)

    async def run() -> dict[str, Any]:
        runtime = Runtime(project, resolve(project, create=False).conninfo, pool_size=4)
        await runtime.start()
        try:
            return await resume(runtime, record, dry_run=dry_run, strict=strict)
        finally:
            await runtime.close()

    return asyncio.run(run())
