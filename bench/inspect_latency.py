"""How fast the inspect commands answer on a large store: `flux state history/blame` of one
row through the views, and a cold `flux why <id>` process.

Setup, all in a temporary directory under /tmp that is removed at the end (also after
Ctrl-C, SIGTERM or an error): one embedded PostgreSQL, the flux schema migrated, a user
table ``accounts`` with capture triggers on it, and a synthetic history written with
set-based SQL (``INSERT … SELECT … generate_series``, nothing per row in Python):

- 200 000 executions in ``flux.trace_requests`` over 30 days, from seven functions, 5 %
  failed, each with 3–5 spans (db spans with sql, fingerprint and file:line; http spans),
  a small tape, an ``error`` shaped like the executor's;
- about 2.07 million ``flux.state_mutations`` rows over 100 000 accounts (20 changes per
  row on average, ten hot rows with 2 000), in time order as production fills the table,
  ``record_id`` computed exactly as the capture trigger does, most attributed to an
  execution and a span, some from outside writers (no request id), and the attempts of
  failed executions stored rolled back, as the executor stores them;
- one ``flux.failure_signatures`` row per failed execution (10 000), with the class,
  signature and vector Flux's own code computes for such a failure.

All indexes stay as the migrations create them; VACUUM ANALYZE runs after the load. Then:

- 200 random rows (fixed seed): the CLI's own ``history`` and ``blame_row`` queries
  (``sql/queries/inspect.sql``), unprepared as a one-shot CLI sends them → p50 / p95, plus
  EXPLAIN (ANALYZE, BUFFERS) of one blame query;
- ``flux why <prefix>`` as a fresh process (DATABASE_URL set), beside ``python -c pass``
  and ``flux --help`` as baselines, with ``-X importtime`` per top-level package.

    .venv/bin/python bench/inspect_latency.py [--scale 1.0] [--samples 200] [--runs 7]

The last line is ``ratio: <p50 blame ms / 5>``: under 1 meets the target. The exit status is
1 only when something was wrong (a failed ``flux why``, synthetic records that do not match
what the trigger writes), never because a target was missed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from _children import scratch_dir
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from flux.store._database import ensure_database
from flux.store._embedded import EmbeddedServer
from flux.store._migrate import migrate
from flux.store._queries import load
from flux.store._statement import sql_info, tape_key

DB = "bench_inspect"
TARGET_VIEW_MS = 5.0
TARGET_WHY_MS = 400.0
DAYS = 30
FAIL_EVERY = 20  # every 20th execution failed: 5 %
HOT_ROWS = 10
HOT_CHANGES = 2000
# Server settings for the bulk load; none of them changes how a query is planned or run.
# With wal_level=minimal, rows written into a table truncated in the same transaction
# skip the WAL (the files are synced at commit instead): the load writes 1.7 GB once,
# not twice. Nothing here needs logical decoding (capture is by trigger).
SERVER_SETTINGS = {"max_wal_size": "8GB", "checkpoint_timeout": "30min",
                   "wal_level": "minimal", "max_wal_senders": "0"}

ACCOUNTS_SQL = """\
CREATE TABLE public.accounts (
    id         bigint PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    plan       text NOT NULL,
    balance    numeric(12, 2) NOT NULL CHECK (balance >= 0),
    updated_at timestamptz NOT NULL
)"""


# -- what the synthetic executions look like ---------------------------------------------

@dataclass
class Variant:
    """One shape of execution: a function's success, or one of its ways to fail. Every
    execution is a copy of one variant (only ids, times and the request body differ)."""

    function: str
    kind: str
    method: str | None
    spans: list[dict[str, Any]]
    tape: list[dict[str, Any]]
    error: dict[str, Any] | None = None
    http_status: int = 200
    response: dict[str, Any] | None = None
    wrote: bool = False  # a failure that had written to accounts before failing
    expect: str = ""  # the root-cause class the failure is meant to be
    cls: str | None = None  # what flux's classifier says, filled in by _signatures
    signature: str | None = None
    vec: list[float] | None = None

    @property
    def duration_ms(self) -> float:
        return float(self.spans[0]["duration_ms"])


@dataclass
class Function:
    name: str
    weight: int
    write_span: str  # the span whose statement writes accounts
    variants: list[Variant] = field(default_factory=list)


def _span(sid: str, parent: str | None, name: str, kind: str, start: float, dur: float,
          file: str | None = None, line: int | None = None, attrs: dict[str, Any] | None = None,
          error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": sid, "parent_id": parent, "name": name, "kind": kind, "start_ms": start,
            "duration_ms": dur, "status": "error" if error else "ok", "file": file,
            "line": line, "attrs": attrs or {}, "error": error}


def _db(sid: str, start: float, dur: float, file: str, line: int, verb: str, sql: str,
        params: list[Any], rowcount: int | None = 1, error: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    # as _ctx_db records a statement: its pglast fingerprint rides with the span
    attrs = {"sql": sql, "params": params, "tables": ["accounts"], "verb": verb,
             "fingerprint": sql_info(sql).fingerprint}
    if rowcount is not None:
        attrs["rowcount"] = rowcount
    return _span(sid, "s2", f"db.{verb}(accounts)", "db", start, dur, file, line, attrs, error)


def _http(sid: str, start: float, dur: float, file: str, line: int, method: str, url: str,
          body: Any, status: int | None = 200, error: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    host_path = url.split("://", 1)[1]
    attrs: dict[str, Any] = {
        "method": method, "url": url, "call_seq": 1, "timeout_s": 5.0,
        "request": {"headers": {"Authorization": "[redacted]",
                                "Content-Type": "application/json"},
                    "params": None, "body": body}}
    if status is not None:
        attrs["status"] = status
    if error is None and status is not None and status >= 400:
        error = {"type": "http_status", "status": status, "message": f"answered {status}"}
    return _span(sid, "s2", f"http.{method.lower()} {host_path}", "http", start, dur, file,
                 line, attrs, error)


def _tape_db(seq: int, span: dict[str, Any], value: Any) -> dict[str, Any]:
    key = tape_key(span["attrs"]["sql"], span["attrs"]["params"])
    return {"seq": seq, "kind": "db", "key": key, "value": value, "span_id": span["id"],
            "file": span["file"], "line": span["line"]}


def _tape_http(seq: int, span: dict[str, Any], value: Any) -> dict[str, Any]:
    attrs = span["attrs"]
    return {"seq": seq, "kind": "http", "key": f"{attrs['method']} {attrs['url']}",
            "value": value, "span_id": span["id"], "file": span["file"],
            "line": span["line"], "call_seq": 1}


def _root(function: str, kind: str, method: str | None, dur: float, file: str, line: int,
          failed: bool) -> list[dict[str, Any]]:
    """The gateway and function spans every execution has."""
    error = {"type": "error", "message": "failed"} if failed else None
    return [_span("s1", None, f"{method or kind} /{function}", "gateway", 0.0, dur,
                  attrs={"kind": kind}, error=error),
            _span("s2", "s1", function, "function", 0.31, dur - 0.5, file, line, error=error)]


def _error(type_: str, message: str, file: str, line: int, function: str, span_id: str | None,
           source: str, http_status: int = 500, **extra: Any) -> dict[str, Any]:
    """A record's ``error`` as ``describe_error`` writes it."""
    error: dict[str, Any] = {"type": type_, "message": message, "file": file, "line": line,
                             "function": function, **extra}
    if span_id:
        error["span_id"] = span_id
    error["stack"] = [
        {"file": file, "line": line, "function": function, "code": source},
        {"file": "/work/main/flux/runtime/_ctx_http.py" if "Http" in type_ else
         "/work/main/flux/runtime/_ctx_db.py", "line": 128, "function": "_run", "code": "raise"},
    ] if span_id else [{"file": file, "line": line, "function": function, "code": source}]
    error["http_status"] = http_status
    return error


def _failure_response(function: str, status: int, code: str, message: str) -> dict[str, Any]:
    return {"status": status, "body": {"error": {"code": code, "message": message},
                                       "hint": f"flux why <id> ({function})"}}


def _functions() -> list[Function]:
    """Seven functions writing accounts, each with its success and its failure modes."""
    fns: list[Function] = []

    # charge_card: select, charge through Stripe, update the balance.
    f, p = "charge_card", "functions/charge_card.py"
    sel = "SELECT id, balance, plan FROM accounts WHERE id = %s FOR UPDATE"
    upd = "UPDATE accounts SET balance = balance - %s, updated_at = now() WHERE id = %s"
    url = "https://api.stripe.com/v1/charges"
    charge = {"amount": 1200, "currency": "eur", "customer": "cus_Q8hT2kLm"}
    answer = {"status": 200, "headers": {"Content-Type": "application/json"},
              "body": {"id": "ch_3PqR7s", "object": "charge", "amount": 1200,
                       "currency": "eur", "status": "succeeded", "paid": True}}
    row = {"rows": [{"id": 42, "balance": "120.00", "plan": "pro"}], "rowcount": 1,
           "columns": ["id", "balance", "plan"]}
    s3 = _db("s3", 1.02, 1.14, p, 11, "select", sel, [42])
    ok = Variant(f, "http", "POST", [*_root(f, "http", "POST", 48.6, p, 8, False), s3,
                                     _http("s4", 2.4, 40.2, p, 14, "POST", url, charge),
                                     _db("s5", 43.1, 1.41, p, 19, "update", upd, [12, 42])],
                 [_tape_db(1, s3, row), _tape_http(2, {"id": "s4", "file": p, "line": 14,
                                                        "attrs": {"method": "POST", "url": url}},
                                                   answer),
                  {"seq": 3, "kind": "db", "key": tape_key(upd, [12, 42]),
                   "value": {"rows": None, "rowcount": 1, "columns": None}, "span_id": "s5",
                   "file": p, "line": 19}])
    timeout_span = _http("s4", 2.4, 5001.3, p, 14, "POST", url, charge, status=None,
                         error={"type": "timeout", "message": "no answer within 5s",
                                "timeout_s": 5.0})
    message = f"POST {url} timed out after 5s"
    timeout = Variant(
        f, "http", "POST", [*_root(f, "http", "POST", 5004.9, p, 8, True), s3, timeout_span],
        [_tape_db(1, s3, row), _tape_http(2, timeout_span, {"error": timeout_span["error"]})],
        _error("HttpTimeout", message, p, 14, f, "s4",
               "resp = await ctx.http.post(STRIPE, json=charge)", url=url, method="POST",
               code="http_timeout"),
        500, _failure_response(f, 500, "internal_error", f"{f} failed: HttpTimeout"),
        expect="timeout")
    limited = _http("s4", 2.4, 31.7, p, 14, "POST", url, charge, status=429)
    rate_limit = Variant(
        f, "http", "POST", [*_root(f, "http", "POST", 36.2, p, 8, True), s3, limited],
        [_tape_db(1, s3, row), _tape_http(2, limited, {
            "status": 429, "headers": {"Retry-After": "2"},
            "body": {"error": {"type": "rate_limit_error",
                               "message": "Too many requests"}}})],
        _error("HttpStatusError", f"{url} answered 429", p, 15, f, "s4",
               "resp.raise_for_status()", http_code=429, url=url),
        500, _failure_response(f, 500, "internal_error", f"{f} failed: HttpStatusError"),
        expect="rate_limit")
    fns.append(Function(f, 4, "s5", [ok, timeout, rate_limit]))

    # update_profile: select, update, then a KeyError on a missing field.
    f, p = "update_profile", "functions/update_profile.py"
    upd = "UPDATE accounts SET email = %s, updated_at = now() WHERE id = %s"
    s3 = _db("s3", 0.9, 0.82, p, 10, "select", "SELECT * FROM accounts WHERE id = %s", [42])
    s4 = _db("s4", 1.9, 1.2, p, 16, "update", upd, ["a@example.com", 42])
    tape = [_tape_db(1, s3, row), _tape_db(2, s4, {"rows": None, "rowcount": 1,
                                                   "columns": None})]
    ok = Variant(f, "http", "PATCH", [*_root(f, "http", "PATCH", 4.1, p, 7, False), s3, s4],
                 tape)
    key_error = Variant(
        f, "http", "PATCH", [*_root(f, "http", "PATCH", 3.9, p, 7, True), s3, s4], tape,
        _error("KeyError", "'plan'", p, 21, f, None, 'tier = input["plan"]'),
        500, _failure_response(f, 500, "internal_error", f"{f} failed: KeyError"),
        wrote=True, expect="exception")
    fns.append(Function(f, 3, "s4", [ok, key_error]))

    # change_plan: select, update; fails on the balance check.
    f, p = "change_plan", "functions/change_plan.py"
    upd = ("UPDATE accounts SET plan = %s, balance = balance - %s, updated_at = now() "
           "WHERE id = %s")
    s3 = _db("s3", 0.8, 0.9, p, 12, "select", "SELECT plan, balance FROM accounts "
             "WHERE id = %s", [42])
    s4 = _db("s4", 1.8, 1.3, p, 18, "update", upd, ["team", 49, 42])
    ok = Variant(f, "http", "POST", [*_root(f, "http", "POST", 4.4, p, 9, False), s3, s4],
                 [_tape_db(1, s3, row)])
    check = {"type": "CheckViolation", "sqlstate": "23514",
             "message": 'new row for relation "accounts" violates check constraint '
                        '"accounts_balance_check"',
             "detail": "Failing row contains (42, u42@example.com, team, -9.00, 2025-01-01).",
             "constraint": "accounts_balance_check", "table": "accounts", "column": None,
             "schema": "public"}
    bad = _db("s4", 1.8, 1.1, p, 18, "update", upd, ["team", 49, 42], None, check)
    constraint = Variant(
        f, "http", "POST", [*_root(f, "http", "POST", 3.6, p, 9, True), s3, bad],
        [_tape_db(1, s3, row), _tape_db(2, bad, {"error": check})],
        _error("CheckViolation", check["message"], p, 18, f, "s4",
               "await ctx.db.execute(UPGRADE, [plan, price, account])",
               **{k: v for k, v in check.items() if k not in ("type", "message")}),
        500, _failure_response(f, 500, "internal_error", f"{f} failed: CheckViolation"),
        expect="constraint")
    fns.append(Function(f, 1, "s4", [ok, constraint]))

    # create_account: insert, welcome mail; fails on a duplicate e-mail.
    f, p = "create_account", "functions/create_account.py"
    ins = ("INSERT INTO accounts (id, email, plan, balance, updated_at) "
           "VALUES (%s, %s, 'free', 0, now())")
    mail = "https://api.sendgrid.com/v3/mail/send"
    s3 = _db("s3", 0.7, 1.5, p, 14, "insert", ins, [42, "u42@example.com"])
    s4 = _http("s4", 2.6, 88.0, p, 20, "POST", mail, {"template": "welcome"}, 202)
    ok = Variant(f, "http", "POST", [*_root(f, "http", "POST", 92.3, p, 10, False), s3, s4],
                 [_tape_db(1, s3, {"rows": None, "rowcount": 1, "columns": None}),
                  _tape_http(2, s4, {"status": 202, "headers": {}, "body": None})])
    dup = {"type": "UniqueViolation", "sqlstate": "23505",
           "message": 'duplicate key value violates unique constraint "accounts_email_key"',
           "detail": "Key (email)=(u42@example.com) already exists.",
           "constraint": "accounts_email_key", "table": "accounts", "column": None,
           "schema": "public"}
    bad = _db("s3", 0.7, 1.2, p, 14, "insert", ins, [42, "u42@example.com"], None, dup)
    unique = Variant(
        f, "http", "POST", [*_root(f, "http", "POST", 2.4, p, 10, True), bad],
        [_tape_db(1, bad, {"error": dup})],
        _error("UniqueViolation", dup["message"], p, 14, f, "s3",
               "await ctx.db.execute(INSERT, [account, email])",
               **{k: v for k, v in dup.items() if k not in ("type", "message")}),
        500, _failure_response(f, 500, "internal_error", f"{f} failed: UniqueViolation"),
        expect="constraint")
    fns.append(Function(f, 1, "s3", [ok, unique]))

    # sync_crm (a job): select, PUT to the CRM, update; the CRM answers 502 or is down.
    f, p = "sync_crm", "functions/sync_crm.py"
    crm = "https://crm.internal:8443/v2/contacts/42"
    s3 = _db("s3", 0.6, 0.7, p, 9, "select", "SELECT * FROM accounts WHERE id = %s", [42])
    s4 = _http("s4", 1.5, 120.4, p, 13, "PUT", crm, {"email": "u42@example.com"})
    s5 = _db("s5", 122.2, 1.0, p, 17, "update", "UPDATE accounts SET updated_at = now() "
             "WHERE id = %s", [42])
    ok = Variant(f, "job", None, [*_root(f, "job", None, 124.0, p, 6, False), s3, s4, s5],
                 [_tape_db(1, s3, row), _tape_http(2, s4, {"status": 200, "headers": {},
                                                           "body": {"id": 42, "ok": True}})])
    gone = _http("s4", 1.5, 30.2, p, 13, "PUT", crm, {"email": "u42@example.com"}, 502)
    bad_gateway = Variant(
        f, "job", None, [*_root(f, "job", None, 33.0, p, 6, True), s3, gone],
        [_tape_db(1, s3, row), _tape_http(2, gone, {"status": 502, "headers": {},
                                                    "body": "<html>Bad Gateway</html>"})],
        _error("HttpStatusError", f"{crm} answered 502", p, 14, f, "s4",
               "resp.raise_for_status()", http_code=502, url=crm),
        500, None, expect="dependency_error")
    down = _http("s4", 1.5, 3.1, p, 13, "PUT", crm, {"email": "u42@example.com"}, None,
                 {"type": "connection", "message": "Cannot connect to host crm.internal:8443 "
                  "ssl:default [Connect call failed ('10.0.3.7', 8443)]"})
    refused = Variant(
        f, "job", None, [*_root(f, "job", None, 5.2, p, 6, True), s3, down],
        [_tape_db(1, s3, row), _tape_http(2, down, {"error": down["error"]})],
        _error("HttpConnectionError", f"PUT {crm} failed: {down['error']['message']}", p, 13,
               f, "s4", "resp = await ctx.http.put(url, json=contact)", url=crm,
               method="PUT", code="http_connection"),
        500, None, expect="dependency_error")
    fns.append(Function(f, 2, "s5", [ok, bad_gateway, refused]))

    # apply_coupon: select, update; refuses an expired coupon after writing.
    f, p = "apply_coupon", "functions/apply_coupon.py"
    upd = "UPDATE accounts SET balance = balance + %s, updated_at = now() WHERE id = %s"
    s3 = _db("s3", 0.7, 0.8, p, 11, "select", "SELECT * FROM accounts WHERE id = %s", [42])
    s4 = _db("s4", 1.7, 1.1, p, 15, "update", upd, [5, 42])
    tape = [_tape_db(1, s3, row), _tape_db(2, s4, {"rows": None, "rowcount": 1,
                                                   "columns": None})]
    ok = Variant(f, "http", "POST", [*_root(f, "http", "POST", 3.5, p, 8, False), s3, s4],
                 tape)
    expired = Variant(
        f, "http", "POST", [*_root(f, "http", "POST", 3.3, p, 8, True), s3, s4], tape,
        _error("FunctionError", "coupon SPRING24 expired on 2025-04-30", p, 19, f, None,
               'raise ctx.error(409, "coupon_expired", f"coupon {code} expired on {end}")',
               code="coupon_expired", http_status=409),
        409, {"status": 409, "body": {"error": {"code": "coupon_expired",
                                                "message": "coupon SPRING24 expired"}}},
        wrote=True, expect="exception")
    fns.append(Function(f, 2, "s4", [ok, expired]))

    # nightly_rollup (cron): an aggregate, an update; the aggregate hits statement_timeout.
    f, p = "nightly_rollup", "functions/nightly_rollup.py"
    agg = "SELECT plan, sum(balance) FROM accounts GROUP BY plan"
    s3 = _db("s3", 0.5, 210.0, p, 7, "select", agg, [], 4)
    s4 = _db("s4", 211.0, 3.2, p, 12, "update", "UPDATE accounts SET updated_at = now() "
             "WHERE id = %s", [42])
    ok = Variant(f, "cron", None, [*_root(f, "cron", None, 215.0, p, 5, False), s3, s4],
                 [_tape_db(1, s3, {"rows": [], "rowcount": 4, "columns": ["plan", "sum"]})])
    cancel = {"type": "QueryCanceled", "sqlstate": "57014",
              "message": "canceling statement due to statement timeout", "detail": None,
              "constraint": None, "table": None, "column": None, "schema": None}
    slow = _db("s3", 0.5, 30000.4, p, 7, "select", agg, [], None, cancel)
    stuck = Variant(
        f, "cron", None, [*_root(f, "cron", None, 30001.9, p, 5, True), slow],
        [_tape_db(1, slow, {"error": cancel})],
        _error("QueryCanceled", cancel["message"], p, 7, f, "s3",
               "totals = await ctx.db.fetchall(TOTALS)",
               **{k: v for k, v in cancel.items() if k not in ("type", "message")}),
        500, None, expect="timeout")
    fns.append(Function(f, 1, "s4", [ok, stuck]))
    return fns


def _signatures(variants: list[Variant]) -> str | None:
    """Class, signature and vector of each failure variant, computed by Flux's own code
    (as the executor does when it stores a failure). Returns a note if that code could
    not be used; the variants then get a plain signature and a one-hot vector."""
    note = None
    try:
        from flux.inspect._classify import classify
        from flux.inspect._signature import features, signature_text, vector
        from flux.store._lookup import attach_responses
    except Exception as exc:  # flux is being edited: measure anyway
        note = f"flux's classifier could not be imported ({type(exc).__name__}: {exc})"
    for i, v in enumerate(variants):
        if v.error is None:
            continue
        record = {"request_id": "00000000-0000-7000-8000-000000000000", "status": "error",
                  "function": v.function, "kind": v.kind, "method": v.method,
                  "http_status": v.http_status, "error": copy.deepcopy(v.error),
                  "spans": copy.deepcopy(v.spans), "tape": copy.deepcopy(v.tape)}
        if note is None:
            try:
                attach_responses(record)
                cause = classify(record, {})
                feats = features(record, cause)
                v.cls, v.signature, v.vec = cause.cls, signature_text(feats), vector(feats)
                continue
            except Exception as exc:
                note = (f"flux's classifier failed on a synthetic record "
                        f"({type(exc).__name__}: {exc})")
        v.cls = v.expect
        v.signature = f"class:{v.expect} | fn:{v.function} | type:{v.error['type']}"
        v.vec = [1.0 if j == i % 64 else 0.0 for j in range(64)]
    return note


# -- the load -----------------------------------------------------------------------------

@dataclass
class Plan:
    """Sizes and the SQL expressions every table's generator shares."""

    executions: int
    rows: int
    t0_ms: int
    step_ms: int
    functions: list[Function]

    @property
    def variants(self) -> list[Variant]:
        return [v for f in self.functions for v in f.variants]

    @property
    def hot_every(self) -> int:
        return max(1, self.rows // HOT_ROWS)

    @property
    def hot_changes(self) -> int:
        return max(2, min(HOT_CHANGES, self.executions // 100))

    def hot_ids(self) -> list[int]:
        return list(range(self.hot_every, self.rows + 1, self.hot_every))

    def temp_functions(self) -> list[str]:
        """SQL functions (inlined by the planner) that turn an execution number e or a row
        number r and version v into ids, times and images, the same way in every table."""
        weighted = [i + 1 for i, f in enumerate(self.functions) for _ in range(f.weight)]
        base, modes, at = [], [], 1
        for f in self.functions:
            base.append(at)
            modes.append(len(f.variants) - 1)
            at += len(f.variants)
        e, r, v = "e", "r", "v"
        fn = f"(ARRAY{weighted})[1 + (pg_temp.bench_h({e}) >> 8) % {len(weighted)}]"
        raw = (f"(1 + floor(({v} - 1 + pg_temp.bench_phase({r})) * {self.executions}"
               f" / pg_temp.bench_k({r}))::int)")
        return [
            # a multiplicative hash: deterministic pseudo-randomness
            "CREATE FUNCTION pg_temp.bench_h(x bigint) RETURNS bigint LANGUAGE sql "
            "IMMUTABLE RETURN (x * 2654435761) % 4294967296",
            # the number of changes of row r, and where in time its changes start
            f"CREATE FUNCTION pg_temp.bench_k(r bigint) RETURNS int LANGUAGE sql IMMUTABLE "
            f"RETURN CASE WHEN r % {self.hot_every} = 0 THEN {self.hot_changes} "
            f"ELSE 6 + ((r * 7919) % 30)::int END",
            "CREATE FUNCTION pg_temp.bench_phase(r bigint) RETURNS float8 LANGUAGE sql "
            "IMMUTABLE RETURN (pg_temp.bench_h(r) % 1000) / 1000.0",
            # the execution that made version v of row r: spread evenly over time, moved
            # off a failed execution (whose writes were rolled back)
            f"CREATE FUNCTION pg_temp.bench_e(r bigint, v int) RETURNS int LANGUAGE sql "
            f"IMMUTABLE RETURN CASE WHEN {raw} % {FAIL_EVERY} = 0 THEN {raw} - 1 "
            f"ELSE {raw} END",
            f"CREATE FUNCTION pg_temp.bench_fn(e int) RETURNS int LANGUAGE sql IMMUTABLE "
            f"RETURN {fn}",
            # the variant of execution e: its function's success, or one of its failures
            f"CREATE FUNCTION pg_temp.bench_vid(e int) RETURNS int LANGUAGE sql IMMUTABLE "
            f"RETURN (ARRAY{base})[{fn}] + CASE WHEN e % {FAIL_EVERY} = 0 "
            f"THEN 1 + (pg_temp.bench_h(e) >> 20) % (ARRAY{modes})[{fn}] ELSE 0 END",
            # a UUIDv7 of the execution's start time
            f"CREATE FUNCTION pg_temp.bench_rid(e int) RETURNS uuid LANGUAGE sql IMMUTABLE "
            f"RETURN (lpad(to_hex({self.t0_ms} + e::bigint * {self.step_ms}), 12, '0') || '7'"
            f" || substr(md5(e::text), 1, 3) || '8' || substr(md5(e::text), 4, 15))::uuid",
            f"CREATE FUNCTION pg_temp.bench_at(e int) RETURNS timestamptz LANGUAGE sql "
            f"IMMUTABLE RETURN to_timestamp(({self.t0_ms} + e::bigint * {self.step_ms})"
            f" / 1000.0)",
            "CREATE FUNCTION pg_temp.bench_email(r bigint, v int) RETURNS text LANGUAGE sql "
            "IMMUTABLE RETURN 'user' || r || CASE WHEN v / 13 > 0 THEN '+' || v / 13 "
            "ELSE '' END || '@example.com'",
            "CREATE FUNCTION pg_temp.bench_plan(r bigint, v int) RETURNS text LANGUAGE sql "
            "IMMUTABLE RETURN (ARRAY['free', 'starter', 'pro', 'team'])[1 + (r + v / 7) % 4]",
            "CREATE FUNCTION pg_temp.bench_balance(r bigint, v int) RETURNS numeric "
            "LANGUAGE sql IMMUTABLE RETURN round(((r * 7919 + v * 977) % 1000000)::numeric"
            " / 100, 2)",
            # row r as version v (written by execution e) had it: what to_jsonb(NEW) gives
            "CREATE FUNCTION pg_temp.bench_img(r bigint, v int, e int) RETURNS jsonb "
            "LANGUAGE sql IMMUTABLE RETURN jsonb_build_object("
            "'id', r, 'email', pg_temp.bench_email(r, v), 'plan', pg_temp.bench_plan(r, v), "
            "'balance', pg_temp.bench_balance(r, v), "
            "'updated_at', pg_temp.bench_at(e) + interval '2 ms')",
        ]


def _create_temp_functions(conn: psycopg.Connection[Any], plan: Plan) -> None:
    # In dependency order: a SQL-standard body is checked when the function is created.
    # STABLE, not IMMUTABLE: the planner inlines a SQL function only if its body is no
    # more volatile than declared, and jsonb_build_object and text || bigint are STABLE;
    # a function call per image would make the load several times slower.
    statements = plan.temp_functions()
    order = ["bench_h", "bench_k", "bench_phase", "bench_e", "bench_fn", "bench_vid",
             "bench_rid", "bench_at", "bench_email", "bench_plan", "bench_balance",
             "bench_img"]
    for name in order:
        statement = next(s for s in statements if f"pg_temp.{name}(" in s.split("RETURNS")[0])
        conn.execute(statement.replace(" IMMUTABLE ", " STABLE ").encode())


ROWS_SQL = """\
SELECT r, pg_temp.bench_k(r) AS k, pg_temp.bench_phase(r) AS phase,
       (mod(r, 200) = 17) AS deleted
FROM generate_series(1, {rows}::bigint) AS r"""

FILL_ACCOUNTS_SQL = """\
INSERT INTO public.accounts (id, email, plan, balance, updated_at)
SELECT r, pg_temp.bench_email(r, k), pg_temp.bench_plan(r, k), pg_temp.bench_balance(r, k),
       pg_temp.bench_at(pg_temp.bench_e(r, k)) + interval '2 ms'
FROM ({rows_sql}) AS a
WHERE NOT deleted"""

EXECUTIONS_SQL = """\
INSERT INTO flux.trace_requests (
    request_id, kind, function, runtime, method, route, status, http_status, started_at,
    duration_ms, request, response, error, spans, tape, logs, code_sha, code_dirty,
    recorded_at)
SELECT pg_temp.bench_rid(e), (%(kind)s::text[])[vid], (%(function)s::text[])[vid], 'python',
       (%(method)s::text[])[vid], (%(function)s::text[])[vid],
       CASE WHEN mod(e, {fail_every}) = 0 THEN 'error' ELSE 'ok' END, (%(http)s::int[])[vid],
       pg_temp.bench_at(e), dur,
       jsonb_build_object('method', (%(method)s::text[])[vid],
                          'route', (%(function)s::text[])[vid],
                          'headers', jsonb_build_object('Content-Type', 'application/json',
                                                        'User-Agent', 'shop-web/4.2',
                                                        'Authorization', '[redacted]'),
                          'query', '{{}}'::jsonb,
                          'body', jsonb_build_object('account_id', 1 + mod(h, {rows}),
                                                     'amount_cents', 100 + mod(h, 9900))),
       coalesce((%(response)s::jsonb[])[vid],
                jsonb_build_object('status', 200, 'body',
                                   jsonb_build_object('ok', true,
                                                      'account_id', 1 + mod(h, {rows})))),
       (%(error)s::jsonb[])[vid], (%(spans)s::jsonb[])[vid], (%(tape)s::jsonb[])[vid],
       '[]'::jsonb,
       md5('deploy-' || (e * 12 / ({executions} + 1)))
           || substr(md5('sha-' || (e * 12 / ({executions} + 1))), 1, 8),
       false, pg_temp.bench_at(e) + dur * interval '1 ms'
FROM (SELECT e, vid, h, (%(duration)s::float8[])[vid] * (0.7 + (mod(h, 600)) / 1000.0) AS dur
      FROM (SELECT e, pg_temp.bench_vid(e) AS vid, pg_temp.bench_h(e) AS h
            FROM generate_series(1, {executions}) AS e) AS x) AS y"""

# Committed changes (version v of row r, made by execution e; the old image is version
# v - 1 as execution e_prev wrote it) and the rolled-back attempts of failed executions
# that wrote before failing, inserted in time order as production appends them.
MUTATIONS_SQL = """\
INSERT INTO flux.state_mutations (
    record_id, table_oid, table_schema, table_name, pk, op, old, new, changed_cols,
    request_id, span_id, actor, application_name, txid, committed_at, source, rolled_back)
SELECT md5('{oid}:' || jsonb_build_object('id', r)::text)::uuid, {oid}::oid, 'public',
       'accounts', jsonb_build_object('id', r), op,
       CASE WHEN op = 'INSERT' THEN NULL ELSE pg_temp.bench_img(r, v_old, e_prev) END,
       CASE WHEN op = 'DELETE' THEN NULL
            WHEN rb THEN pg_temp.bench_img(r, v, e_prev)
                         || jsonb_build_object('balance', pg_temp.bench_balance(r, v) + 12.5,
                                               'updated_at', pg_temp.bench_at(e) + interval '2 ms')
            ELSE pg_temp.bench_img(r, v, e) END,
       CASE WHEN op IN ('INSERT', 'DELETE')
            THEN ARRAY['balance', 'email', 'id', 'plan', 'updated_at']
            WHEN rb THEN ARRAY['balance', 'updated_at']
            ELSE ARRAY['balance']
                 || CASE WHEN mod(v, 13) = 0 THEN ARRAY['email'] ELSE '{{}}'::text[] END
                 || CASE WHEN mod(v, 7) = 0 THEN ARRAY['plan'] ELSE '{{}}'::text[] END
                 || ARRAY['updated_at'] END,
       CASE WHEN outside THEN NULL ELSE pg_temp.bench_rid(e) END,
       CASE WHEN outside THEN NULL ELSE (%(write_span)s::text[])[pg_temp.bench_fn(e)] END,
       CASE WHEN outside AND mod(r, 2) = 1 THEN 'billing' ELSE 'postgres' END,
       CASE WHEN NOT outside THEN '' WHEN mod(r, 2) = 1 THEN 'billing-sync' ELSE 'psql' END,
       1000 + e, pg_temp.bench_at(e) + interval '2 ms',
       CASE WHEN rb THEN 'executor' ELSE 'trigger' END, rb
FROM (
    SELECT e, r, v, e_prev, rb,
           CASE WHEN rb THEN v ELSE v - 1 END AS v_old,
           CASE WHEN rb THEN 'UPDATE' WHEN v = 1 THEN 'INSERT'
                WHEN deleted AND v = k THEN 'DELETE' ELSE 'UPDATE' END AS op,
           NOT rb AND v > 1 AND mod((r * 31 + v * 17), 50) = 0 AS outside
    FROM (
        SELECT pg_temp.bench_e(a.r, g.v) AS e, a.r, g.v, a.k, a.deleted, false AS rb,
               CASE WHEN g.v > 1 THEN pg_temp.bench_e(a.r, g.v - 1) END AS e_prev
        FROM ({rows_sql}) AS a
        CROSS JOIN LATERAL generate_series(1, a.k) AS g(v)
        UNION ALL
        SELECT f.e, a.r, f.v, a.k, a.deleted, true, pg_temp.bench_e(a.r, f.v)
        FROM (SELECT e, r, least(floor((e - 1)::float8 * pg_temp.bench_k(r) / {executions}
                                       - pg_temp.bench_phase(r))::int + 1,
                                 pg_temp.bench_k(r)) AS v
              FROM (SELECT e, 1 + mod(pg_temp.bench_h(e * 7), {rows}) AS r
                    FROM generate_series({fail_every}, {executions}, {fail_every}) AS e
                    WHERE (%(wrote)s::bool[])[pg_temp.bench_vid(e)]) AS w) AS f
        JOIN ({rows_sql}) AS a USING (r)
        WHERE f.v >= 1 AND NOT (a.deleted AND f.v >= a.k)
        ORDER BY 1, 6, 2
        OFFSET 0
    ) AS ordered
) AS m"""

SIGNATURES_SQL = """\
INSERT INTO flux.failure_signatures (request_id, function, class, signature, vec, at)
SELECT pg_temp.bench_rid(e), (%(function)s::text[])[vid], (%(cls)s::text[])[vid],
       (%(signature)s::text[])[vid], (%(vec)s::text[])[vid]::real[], pg_temp.bench_at(e)
FROM (SELECT e, pg_temp.bench_vid(e) AS vid
      FROM generate_series({fail_every}, {executions}, {fail_every}) AS e) AS x"""


@dataclass
class Loaded:
    oid: int
    executions: int
    failed: int
    mutations: int
    rolled_back: int
    outside: int
    signatures: int
    accounts: int
    sizes: dict[str, str]
    seconds: dict[str, float]


def _timed(seconds: dict[str, float], name: str, action: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = action()
    seconds[name] = time.perf_counter() - start
    print(f"  {name:<28} {seconds[name]:6.1f} s", flush=True)
    return result


def load_data(conninfo: str, plan: Plan) -> Loaded:
    variants = plan.variants
    seconds: dict[str, float] = {}
    fmt = {"rows": plan.rows, "executions": plan.executions, "fail_every": FAIL_EVERY}
    rows_sql = ROWS_SQL.format(**fmt)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET work_mem = '512MB'")
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET synchronous_commit = off")
        _create_temp_functions(conn, plan)

        def accounts() -> int:
            with conn.transaction():
                # flux's event trigger puts capture on the new table at once; the fill is
                # the state the synthetic history ends in, so it must not be captured
                # itself: capture goes back on after it, as on a production table
                conn.execute(ACCOUNTS_SQL.encode())
                conn.execute("SELECT flux.uninstall_capture('public.accounts')")
                conn.execute(FILL_ACCOUNTS_SQL.format(rows_sql=rows_sql).encode())
                conn.execute("SELECT flux.install_capture('public.accounts')")
            row = conn.execute("SELECT 'public.accounts'::regclass::oid").fetchone()
            assert row is not None
            return int(row[0])

        oid = _timed(seconds, "accounts", accounts)
        arrays = {
            "kind": [v.kind for v in variants], "function": [v.function for v in variants],
            "method": [v.method for v in variants], "http": [v.http_status for v in variants],
            "response": [Jsonb(v.response) if v.response else None for v in variants],
            "error": [Jsonb(v.error) if v.error else None for v in variants],
            "spans": [Jsonb(v.spans) for v in variants],
            "tape": [Jsonb(v.tape) for v in variants],
            "duration": [v.duration_ms for v in variants],
        }
        def fill(table: str, sql: str, params: dict[str, Any]) -> None:
            with conn.transaction():
                conn.execute(f"TRUNCATE {table}".encode())  # empty: lets the rows skip WAL
                conn.execute(sql.encode(), params)

        _timed(seconds, "flux.trace_requests", lambda: fill(
            "flux.trace_requests", EXECUTIONS_SQL.format(**fmt), arrays))
        _timed(seconds, "flux.state_mutations", lambda: fill(
            "flux.state_mutations", MUTATIONS_SQL.format(oid=oid, rows_sql=rows_sql, **fmt),
            {"write_span": [f.write_span for f in plan.functions],
             "wrote": [v.wrote for v in variants]}))
        _timed(seconds, "flux.failure_signatures", lambda: fill(
            "flux.failure_signatures", SIGNATURES_SQL.format(**fmt),
            {"function": [v.function for v in variants], "cls": [v.cls for v in variants],
             "signature": [v.signature for v in variants],
             "vec": ["{" + ",".join(f"{x:.7g}" for x in v.vec) + "}" if v.vec else None
                     for v in variants]}))
        _timed(seconds, "VACUUM ANALYZE", lambda: [conn.execute(
            f"VACUUM (ANALYZE) {t}".encode()) for t in (
            "flux.trace_requests", "flux.state_mutations", "flux.failure_signatures",
            "public.accounts")])

        def one(sql: str) -> int:
            row = conn.execute(sql.encode()).fetchone()
            assert row is not None
            return int(row[0])

        sizes = {name: str(conn.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) "
            "FROM pg_partition_tree(%s::regclass)", [name]
        ).fetchone()[0]) for name in ("flux.trace_requests",  # type: ignore[index]
                                       "flux.state_mutations", "flux.failure_signatures")}
        counts = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE rolled_back), "
            "count(*) FILTER (WHERE request_id IS NULL) FROM flux.state_mutations").fetchone()
        assert counts is not None
        return Loaded(
            oid=oid,
            executions=one("SELECT count(*) FROM flux.trace_requests"),
            failed=one("SELECT count(*) FROM flux.trace_requests WHERE status = 'error'"),
            mutations=int(counts[0]), rolled_back=int(counts[1]), outside=int(counts[2]),
            signatures=one("SELECT count(*) FROM flux.failure_signatures"),
            accounts=one("SELECT count(*) FROM public.accounts"),
            sizes=sizes, seconds=seconds)


def check_against_trigger(conninfo: str, oid: int, account: int) -> list[str]:
    """Make one real change through the capture trigger (rolled back) and compare what it
    writes with the synthetic rows of the same account. Returns the mismatches."""
    problems: list[str] = []
    q = load("inspect")
    with psycopg.connect(conninfo) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = %s", [account])
        real = cur.execute("SELECT id, record_id, pk, new, old, changed_cols "
                           "FROM flux.state_mutations ORDER BY id DESC LIMIT 1").fetchone()
        last = cur.execute("SELECT record_id, pk, new FROM flux.state_mutations "
                           "WHERE record_id = %s AND NOT rolled_back AND id < %s "
                           "ORDER BY committed_at DESC, id DESC LIMIT 1",
                           [real["record_id"], real["id"]]).fetchone() if real else None
        cli = cur.execute(q.record_id_of, {"oid": oid, "vals": [str(account)]}).fetchone()
        conn.rollback()
    if real is None or last is None:
        return [f"no synthetic history found under the record_id the trigger computes for "
                f"account {account}"]
    if cli is None or str(next(iter(cli.values()))) != str(real["record_id"]):
        problems.append("record_id_of (the CLI's query) disagrees with the trigger")
    if real["pk"] != last["pk"]:
        problems.append(f"pk: trigger {real['pk']} vs synthetic {last['pk']}")
    if real["changed_cols"] != ["balance"]:
        problems.append(f"changed_cols of a balance update: {real['changed_cols']}")
    if real["old"] != last["new"]:
        problems.append(f"the row as the trigger sees it {real['old']} differs from the last "
                        f"synthetic image {last['new']}")
    return problems


# -- the view queries -------------------------------------------------------------------

@dataclass
class Timings:
    history: list[float] = field(default_factory=list)  # ms
    blame: list[float] = field(default_factory=list)
    changes: list[int] = field(default_factory=list)  # history rows per sampled row
    columns: list[int] = field(default_factory=list)  # blame rows per sampled row


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _reader(conninfo: str) -> psycopg.Connection[Any]:
    """A connection like the CLI's: autocommit, read-only, nothing prepared (a one-shot
    command sends each query once, so its plan is made for its parameters every time)."""
    conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
    conn.execute(load("database").read_only)
    return conn


def record_ids(conn: psycopg.Connection[Any], oid: int, ids: list[int]) -> dict[int, str]:
    q = load("inspect")
    found = {}
    for account in ids:
        row = conn.execute(q.record_id_of, {"oid": oid, "vals": [str(account)]}).fetchone()
        assert row is not None
        found[account] = str(row[0])
    return found


def time_views(conn: psycopg.Connection[Any], rids: dict[int, str]) -> Timings:
    """The CLI's history and blame_row queries for each row, alternating which goes first
    so neither always finds the row's pages warmed by the other."""
    q = load("inspect")
    out = Timings()
    with conn.cursor(row_factory=dict_row) as cur:
        for i, rid in enumerate(rids.values()):
            for name in (("history", "blame") if i % 2 == 0 else ("blame", "history")):
                start = time.perf_counter()
                rows = cur.execute(q.history if name == "history" else q.blame_row,
                                   {"record_id": rid}).fetchall()
                elapsed = _ms(start)
                if name == "history":
                    out.history.append(elapsed)
                    out.changes.append(len(rows))
                else:
                    out.blame.append(elapsed)
                    out.columns.append(len(rows))
    return out


def time_state_functions(conn: psycopg.Connection[Any], ids: list[int]
                         ) -> tuple[list[float], list[float]]:
    """flux.inspect._state.history / blame as `flux state …` calls them: table lookup, key typing,
    record id and the view query, rendered to JSON-able data."""
    from flux.inspect._state import blame, history

    hist, bl = [], []
    for account in ids:
        start = time.perf_counter()
        history(conn, "accounts", str(account))
        hist.append(_ms(start))
        start = time.perf_counter()
        blame(conn, "accounts", str(account))
        bl.append(_ms(start))
    return hist, bl


def explain(conn: psycopg.Connection[Any], query: str, rid: str, analyze: bool = True
            ) -> list[str]:
    options = "ANALYZE, BUFFERS" if analyze else "COSTS OFF"
    with psycopg.ClientCursor(conn) as cur:  # the literal, as a one-shot command's plan sees it
        cur.execute(f"EXPLAIN ({options}) {query}".encode(), {"record_id": rid})
        return [str(r[0]) for r in cur.fetchall()]


# -- the CLI processes --------------------------------------------------------------------

@dataclass
class Run:
    argv: list[str]
    seconds: float
    returncode: int
    stdout: str
    stderr: str


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> Run:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    return Run(argv, time.perf_counter() - start, done.returncode, done.stdout, done.stderr)


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


@dataclass
class Imported:
    name: str
    own_ms: float
    cumulative_ms: float
    depth: int
    parent: Imported | None = None

    @property
    def package(self) -> str:
        return self.name.split(".")[0]

    @property
    def ours(self) -> bool:
        return self.package in ("flux", "cli")


def import_tree(stderr: str) -> list[Imported]:
    """The modules of ``-X importtime`` output, each linked to the module that imported it
    (the output is post-order: a module's line follows those of what it imported)."""
    found: list[Imported] = []
    pending: list[Imported] = []
    for line in stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if not match:
            continue
        node = Imported(match[4], int(match[1]) / 1000, int(match[2]) / 1000, len(match[3]))
        while pending and pending[-1].depth > node.depth:
            pending.pop().parent = node
        pending.append(node)
        found.append(node)
    return found


def importer(node: Imported) -> str:
    """The flux/cli module whose import brought ``node`` in; else the outermost module of
    the chain in parentheses: one imported while a command ran (``(typer._adapters)``) or
    at interpreter start (``(site)``)."""
    at, root = node.parent, node
    while at is not None and not at.ours:
        root, at = at, at.parent
    return at.name if at is not None else f"({root.name})"


def time_explain_failure(conninfo: str, prefix: str, runs: int) -> float | str:
    """Median ms of flux.inspect._why.explain_failure in a warm process (what `flux why` does
    after its imports and connection), or why it could not be measured."""
    try:
        from flux.inspect._why import explain_failure

        with _reader(conninfo) as conn:
            explain_failure(conn, prefix)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                explain_failure(conn, prefix)
                times.append(_ms(start))
        return statistics.median(times)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


# -- the report ---------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def verdict(value: float, target: float) -> str:
    return "PASS" if value < target else "FAIL"


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 86 - len(title)), flush=True)


def indent(lines: list[str] | str, prefix: str = "    ", limit: int = 60) -> None:
    items = lines.splitlines() if isinstance(lines, str) else lines
    for line in items[:limit]:
        print(prefix + line)
    if len(items) > limit:
        print(f"{prefix}… {len(items) - limit} more lines")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Latency of flux state history/blame (the views) and of a cold "
                    "`flux why` process, on a store of 2 M mutations and 200 000 executions.")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="size of the store relative to the issue's (default 1: 200 000 "
                             "executions, 100 000 rows, ~2.07 M mutations)")
    parser.add_argument("--samples", type=int, default=200,
                        help="random rows whose history and blame are timed (default 200)")
    parser.add_argument("--runs", type=int, default=7,
                        help="timed runs of each process (default 7)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the row sample")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.samples < 1 or args.runs < 1:
        parser.error("--scale must be positive, --samples and --runs at least 1")
    return args



@contextlib.contextmanager
def private_server(tmp: Path) -> Iterator[str]:
    """An embedded PostgreSQL under ``tmp`` with the flux schema in database DB."""
    server = EmbeddedServer(tmp / "pg", settings=SERVER_SETTINGS)
    try:
        info, _ = server.start()
        ensure_database(info.conninfo("postgres"), DB)
        conninfo = info.conninfo(DB)
        migrate(conninfo)
        # One partition per day of the generated history, as flux serve would have made
        # them day by day (sql/0009), so the reads below see a partitioned store.
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SELECT flux.ensure_partition(t, (now() AT TIME ZONE 'UTC')::date - d) "
                         "FROM unnest(ARRAY['trace_requests', 'state_mutations']) AS t, "
                         "generate_series(-2, %s) AS d", [DAYS + 1])
        yield conninfo
    finally:
        with contextlib.suppress(Exception):
            server.stop()


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    flux_bin = Path(sys.executable).parent / "flux"
    if not flux_bin.exists():
        print(f"no flux command next to {sys.executable}: run with the venv's python",
              file=sys.stderr)
        return 1
    try:
        with scratch_dir("flux-bench-inspect-") as tmp, private_server(tmp) as conninfo:
            return _bench(args, tmp, conninfo, flux_bin)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _bench(args: argparse.Namespace, tmp: Path, conninfo: str, flux_bin: Path) -> int:
    healthy = True
    executions = max(2000, round(200_000 * args.scale))
    rows = max(100, round(100_000 * args.scale))
    step_ms = DAYS * 86_400_000 // executions
    t0_ms = int(time.time() * 1000) - DAYS * 86_400_000 - 3_600_000
    plan = Plan(executions, rows, t0_ms, step_ms, _functions())

    section("load")
    note = _signatures(plan.variants)
    if note:
        print(f"  note: {note}")
    for v in plan.variants:
        if v.error is not None and v.cls != v.expect:
            print(f"  note: {v.function}/{v.error['type']} is classified {v.cls}, "
                  f"meant as {v.expect}")
    start = time.perf_counter()
    loaded = load_data(conninfo, plan)
    load_seconds = time.perf_counter() - start
    print(f"  {'total':<28} {load_seconds:6.1f} s")
    print(f"  flux.trace_requests      {loaded.executions:>10,} executions, {loaded.failed:,} "
          f"failed ({loaded.sizes['flux.trace_requests']})")
    print(f"  flux.state_mutations     {loaded.mutations:>10,} mutations over {rows:,} rows: "
          f"{loaded.rolled_back:,} rolled back, {loaded.outside:,} from outside writers "
          f"({loaded.sizes['flux.state_mutations']})")
    print(f"  flux.failure_signatures  {loaded.signatures:>10,} "
          f"({loaded.sizes['flux.failure_signatures']})")
    print(f"  public.accounts          {loaded.accounts:>10,} rows "
          f"(hot rows: {HOT_ROWS} with {plan.hot_changes:,} changes each)")
    classes = sorted({f"{v.function}→{v.cls}" for v in plan.variants if v.error})
    print(f"  failure modes: {', '.join(classes)}")
    problems = check_against_trigger(conninfo, loaded.oid, 4242 % rows or 1)
    if problems:
        healthy = False
        for p in problems:
            print(f"  MISMATCH with the capture trigger: {p}")
    else:
        print("  a real UPDATE through the capture trigger matches the synthetic history "
              "(record_id, pk, row image, record_id_of)")

    section("flux state history / blame of one row, through the views")
    rng = random.Random(args.seed)
    sample = rng.sample(range(1, rows + 1), min(args.samples, rows))
    warm = [n for n in rng.sample(range(1, rows + 1), min(20, rows)) if n not in sample]
    with _reader(conninfo) as conn:
        rids = record_ids(conn, loaded.oid, warm + sample + plan.hot_ids())
        time_views(conn, {n: rids[n] for n in warm})  # connection and catalog caches
        timings = time_views(conn, {n: rids[n] for n in sample})
        hot = time_views(conn, {n: rids[n] for n in plan.hot_ids()})
        e2e_hist, e2e_blame = time_state_functions(conn, sample[:50])
        ordered = sorted(zip(timings.blame, sample, strict=True))
        median_row = ordered[len(ordered) // 2][1]
        blame_plan = explain(conn, load("inspect").blame_row, rids[median_row])
        history_plan = explain(conn, load("inspect").history, rids[median_row], analyze=False)
        hot_plan = explain(conn, load("inspect").blame_row, rids[plan.hot_ids()[0]])

    h50, h95 = percentile(timings.history, 0.5), percentile(timings.history, 0.95)
    b50, b95 = percentile(timings.blame, 0.5), percentile(timings.blame, 0.95)
    print(f"  {len(sample)} random rows (seed {args.seed}), "
          f"{statistics.mean(timings.changes):.1f} changes per row on average "
          f"(min {min(timings.changes)}, max {max(timings.changes)}); each query sent "
          "unprepared, as `flux state` sends it")
    print(f"  {'query':<34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    print(f"  {'history (view state_history)':<34} {h50:8.2f} {h95:8.2f} "
          f"{max(timings.history):8.2f}")
    print(f"  {'blame_row (view state_blame)':<34} {b50:8.2f} {b95:8.2f} "
          f"{max(timings.blame):8.2f}")
    print(f"  {'hot rows: history':<34} {percentile(hot.history, 0.5):8.2f} "
          f"{percentile(hot.history, 0.95):8.2f} {max(hot.history):8.2f}"
          f"   ({HOT_ROWS} rows, {plan.hot_changes:,} changes each)")
    print(f"  {'hot rows: blame_row':<34} {percentile(hot.blame, 0.5):8.2f} "
          f"{percentile(hot.blame, 0.95):8.2f} {max(hot.blame):8.2f}")
    print(f"  {'flux.inspect._state.history() end to end':<34} {percentile(e2e_hist, 0.5):8.2f} "
          f"{percentile(e2e_hist, 0.95):8.2f} {max(e2e_hist):8.2f}"
          f"   (first {len(e2e_hist)} rows: table lookup, key typing, record id, view)")
    print(f"  {'flux.inspect._state.blame() end to end':<34} {percentile(e2e_blame, 0.5):8.2f} "
          f"{percentile(e2e_blame, 0.95):8.2f} {max(e2e_blame):8.2f}")
    # Partitions' copies of the index are named <partition>_record_id_committed_at_id_idx.
    uses = {name: any("record_id_committed_at_id_idx" in line for line in lines)
            for name, lines in (("history", history_plan), ("blame", blame_plan))}
    print(f"\n  EXPLAIN (ANALYZE, BUFFERS) blame_row for account {median_row} "
          f"(the median blame of the sample):")
    indent(blame_plan)
    print("\n  history plan for the same row (COSTS OFF):")
    indent(history_plan)
    for name, used in uses.items():
        if not used:
            print(f"  FINDING: the {name} query does not use state_mutations_record_idx")
    hot_ms = percentile(hot.blame, 0.5)
    hot_summary = [line.strip() for line in hot_plan if line.lstrip().startswith(
        ("Execution Time", "Planning Time"))]
    print(f"\n  blame_row of hot account {plan.hot_ids()[0]} ({plan.hot_changes:,} changes): "
          + ", ".join(hot_summary) + ("" if hot_ms < TARGET_VIEW_MS else "; its plan:"))
    if hot_ms >= TARGET_VIEW_MS:
        indent(hot_plan)
        print(f"  FINDING: blame of a row with {plan.hot_changes:,} changes takes {hot_ms:.0f} ms "
              "(p50): state_blame joins trace_requests and evaluates span_of for every change "
              "of the row before DISTINCT ON keeps one per column (see bench/README.md)")

    section("cold `flux why <id>` process")
    project = tmp / "project"
    project.mkdir()
    (project / "flux.toml").write_text('name = "bench"\n')
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT t.request_id::text, t.function FROM flux.trace_requests t "
            "WHERE t.status = 'error' AND t.function = 'update_profile' AND EXISTS ("
            "SELECT 1 FROM flux.state_mutations m WHERE m.request_id = t.request_id) "
            "ORDER BY t.started_at DESC LIMIT 1").fetchone()
    assert row is not None, "no failed execution with rolled-back changes"
    failed_id, failed_fn = row
    prefix = failed_id[:18]
    # As installed: pip compiles bytecode at install time and an editable install caches it
    # on first import. PYTHONDONTWRITEBYTECODE (set on some CI machines) would make every
    # run compile Flux from source, which is not what a user's `flux why` costs.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"DATABASE_URL": conninfo, "NO_COLOR": "1"}
    python = sys.executable
    commands = {"python -c pass": [python, "-c", "pass"],
                "flux --help": [str(flux_bin), "--help"],
                f"flux why {prefix}": [str(flux_bin), "why", prefix]}
    first = {name: run(argv, project, env) for name, argv in commands.items()}  # .pyc, caches
    walls: dict[str, list[float]] = {name: [] for name in commands}
    failures: list[Run] = [r for r in first.values() if r.returncode != 0]
    for _ in range(args.runs):
        for name, argv in commands.items():  # interleaved: noise hits all three alike
            result = run(argv, project, env)
            walls[name].append(result.seconds * 1000)
            if result.returncode != 0:
                failures.append(result)
    why_first = first[f"flux why {prefix}"]
    print(f"  failed execution {failed_id} ({failed_fn}), DATABASE_URL set, "
          f"cwd a project with flux.toml; {args.runs} timed runs after one untimed "
          "(which leaves the bytecode cache, as an install does)")
    print(f"  {'process':<34} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    for name, values in walls.items():
        print(f"  {name:<34} {statistics.median(values):10.0f} {min(values):8.0f} "
              f"{max(values):8.0f}")
    why_ms = statistics.median(walls[f"flux why {prefix}"])
    pass_ms = statistics.median(walls["python -c pass"])
    help_ms = statistics.median(walls["flux --help"])
    work = time_explain_failure(conninfo, prefix, args.runs)
    print(f"  where the median goes: interpreter {pass_ms:.0f} ms · CLI start-up as far as "
          f"`flux --help` {help_ms - pass_ms:.0f} ms · `why` on top of that "
          f"{why_ms - help_ms:.0f} ms, of which")
    if isinstance(work, float):
        print(f"  {work:.0f} ms is the work itself (explain_failure() in a warm process: "
              f"queries and classification) and {why_ms - help_ms - work:.0f} ms imports, "
              "connecting and rendering")
    else:
        print(f"  (explain_failure() could not be timed in process: {work})")
    if failures:
        healthy = False
        for f in failures[:3]:
            print(f"  FAILED ({f.returncode}): {' '.join(f.argv[1:])}")
            indent(f.stderr.strip() or f.stdout.strip(), limit=25)
    else:
        print("\n  its output (first run):")
        indent(why_first.stdout.rstrip(), limit=40)

    traced = run([python, "-X", "importtime", str(flux_bin), "why", prefix], project, env)
    modules = import_tree(traced.stderr)
    per_package: dict[str, float] = defaultdict(float)
    for m in modules:
        per_package[m.package] += m.own_ms
    total_import = sum(per_package.values())
    print(f"\n  python -X importtime flux why: {len(modules)} modules, {total_import:.0f} ms of "
          "imports (self time summed per top-level package; importtime inflates it):")
    heaviest = sorted(per_package.items(), key=lambda item: -item[1])
    for name, ms in heaviest[:15]:
        print(f"    {name:<28} {ms:7.1f} ms  {100 * ms / total_import:4.0f} %")
    rest = sum(ms for _, ms in heaviest[15:])
    print(f"    {'(' + str(len(heaviest) - 15) + ' more)':<28} {rest:7.1f} ms")
    pulled: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for m in modules:
        if not m.ours:
            pulled[importer(m)][m.package] += m.own_ms
    print("  who pulls it in: self time of non-flux modules, by the flux/cli module whose "
          "import loaded them first (in parentheses: loaded by a library, not by flux):")
    for who, packages in sorted(pulled.items(), key=lambda item: -sum(item[1].values()))[:10]:
        top = sorted(packages.items(), key=lambda item: -item[1])
        names = ", ".join(f"{p} {ms:.0f}" for p, ms in top[:4] if ms >= 0.5)
        print(f"    {who:<22} {sum(packages.values()):6.1f} ms   {names}")
    ours = sorted((m for m in modules if m.ours), key=lambda m: -m.cumulative_ms)
    print("  heaviest flux/cli imports (cumulative: with everything they import):")
    for m in ours[:8]:
        print(f"    {m.name:<22} {m.cumulative_ms:6.1f} ms   imported by "
              f"{m.parent.name if m.parent else '(top level: the script, or in a function)'}")

    section("summary")
    print(f"  store: {loaded.executions:,} executions, {loaded.mutations:,} mutations, "
          f"{loaded.signatures:,} failure signatures; loaded in {load_seconds:.0f} s")
    print(f"  {'measure':<36} {'value':>10} {'target':>10}   verdict")
    print(f"  {'state_history p50, one row':<36} {h50:7.2f} ms {'< 5 ms':>10}   "
          f"{verdict(h50, TARGET_VIEW_MS)}")
    print(f"  {'state_blame p50, one row':<36} {b50:7.2f} ms {'< 5 ms':>10}   "
          f"{verdict(b50, TARGET_VIEW_MS)}")
    print(f"  {'cold `flux why <id>` (median)':<36} {why_ms:7.0f} ms {'< 400 ms':>10}   "
          f"{verdict(why_ms, TARGET_WHY_MS) if not failures else 'FAIL (errors)'}")
    print("  blame p50 / 5 ms (under 1 meets the target):")
    print(f"ratio: {b50 / TARGET_VIEW_MS:.2f}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
