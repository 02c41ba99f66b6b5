"""The OpenAPI 3.1 description of the admin API, served at ``GET /_flux/openapi.json``,
and of the project's own functions — their route table — at
``GET /_flux/functions/openapi.json``.

The admin API's is written by hand next to the handlers (flux/server/_admin.py); a test
checks that every route of the admin router is described here and every path here is
routed, and schemathesis checks the answers against it. The functions' is made from the
registry: a path, its typed parameters and its methods per function.
"""

from __future__ import annotations

import re
from typing import Any

from flux._function import FunctionSpec
from flux._version import __version__
from flux.runtime._loader import Registry

_NULLABLE_TEXT: dict[str, Any] = {"type": ["string", "null"]}
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    why = {
        400: "Bad input: one sentence says which (a malformed id, status, time or key).",
        401: "No token, or a wrong one (`Authorization: Bearer <FLUX_ADMIN_TOKEN>`).",
        403: "The admin API is closed (the server was started without FLUX_ADMIN_TOKEN), "
             "or the call may come from a web page: a foreign Host on flux dev, another "
             "site's Origin, a state change without the X-Flux-Client header.",
        404: "No such execution, table or row.",
        409: "The id prefix matches several executions (`candidates` lists them).",
        503: "The database is unavailable.",
    }
    return {str(s): _json(_ref("Error"), why[s]) for s in (401, 403, *statuses, 503)}


_ID = {"name": "id", "in": "path", "required": True,
       "description": "An execution id or any unique prefix of one (hex digits, dashes "
                      "optional), as the CLI takes it.",
       "schema": {"type": "string", "minLength": 1}}
_TABLE = {"name": "table", "in": "path", "required": True,
          "description": "A table, `users` or `schema.users`; resolved with to_regclass, "
                         "never spliced into SQL.",
          "schema": {"type": "string", "minLength": 1}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


_FLAG = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 10000}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error", "request_id"],
        "properties": {
            "error": {"type": "object", "required": ["code", "message"],
                      "properties": {"code": {"type": "string"},
                                     "message": {"type": "string"},
                                     "hint": _NULLABLE_TEXT}},
            "request_id": _NULLABLE_TEXT,
            "candidates": {"type": "array", "items": {"type": "string"}},
            "details": {"type": ["object", "null"]},
        },
    },
    "ExecutionSummary": {
        "type": "object",
        "required": ["request_id", "kind", "function", "status", "http_status", "started_at",
                     "duration_ms"],
        "properties": {
            "request_id": {"type": "string"}, "kind": {"type": "string"},
            "function": _NULLABLE_TEXT, "method": _NULLABLE_TEXT, "route": _NULLABLE_TEXT,
            "status": {"type": "string", "enum": ["ok", "error"]},
            "http_status": {"type": ["integer", "null"]},
            "started_at": {"type": "string"}, "duration_ms": {"type": "number"},
            "error_type": _NULLABLE_TEXT, "error_message": _NULLABLE_TEXT,
            "parent_id": _NULLABLE_TEXT, "replay_of": _NULLABLE_TEXT,
            "resumed_from": _NULLABLE_TEXT,
            "imported": {"type": "boolean", "description": "From a record file "
                         "(flux record import), not an execution of this database."},
        },
    },
    "Executions": {
        "type": "object", "required": ["executions"],
        "properties": {"executions": {"type": "array", "items": _ref("ExecutionSummary")}},
    },
    "Record": {
        "description": "What `flux record export` writes: the record and its mutations.",
        "type": "object", "required": ["format", "version", "record", "mutations"],
        "properties": {"format": {"const": "flux-record"}, "version": {"type": "integer"},
                       "flux_version": {"type": "string"}, "exported_at": {"type": "string"},
                       "record": _ANY_OBJECT, "mutations": {"type": "array"}},
    },
    "Why": {
        "description": "What `flux why --json` prints (with `spans=true`, the spans too).",
        "type": "object",
        "required": ["request_id", "function", "status", "root_cause", "location",
                     "mutations", "similar", "suggestion"],
        "properties": {
            "request_id": {"type": "string"}, "function": _NULLABLE_TEXT,
            "status": {"type": "string"},
            "root_cause": {"type": "object", "required": ["class", "message"],
                           "properties": {"class": {"enum": [
                               "timeout", "dependency_error", "rate_limit", "constraint",
                               "payload_shape", "exception"]},
                               "message": {"type": "string"}}},
            "location": _ANY_OBJECT, "mutations": {"type": "array"},
            "similar": {"type": "array"}, "suggestion": {"type": "string"},
            "imported": {"type": "boolean"}, "imported_from": {"type": ["object", "null"]},
            "spans": {"type": "array"},
        },
    },
    "WhyAi": {
        "description": "What `flux why --ai --json` adds as `ai`: the model's reading, or "
                       "(`send=false`) only the prompt it would get. A model that cannot be "
                       "reached, hangs or fails is one sentence in `error`.",
        "type": "object", "required": ["request_id", "ai"],
        "properties": {
            "request_id": {"type": "string"},
            "ai": {"type": "object",
                   "required": ["model", "answer", "error", "complete", "sent", "truncated"],
                   "properties": {
                       "model": _NULLABLE_TEXT, "endpoint": _NULLABLE_TEXT,
                       "answer": _NULLABLE_TEXT, "error": _NULLABLE_TEXT,
                       "complete": {"type": "boolean"}, "sent": {"type": "boolean"},
                       "sent_chars": {"type": "integer"}, "truncated": {"type": "boolean"},
                       "prompt": {"type": "array", "items": {
                           "type": "object", "required": ["role", "content"],
                           "properties": {"role": {"type": "string"},
                                          "content": {"type": "string"}}}}}},
        },
    },
    "Trace": {
        "description": "What `flux trace --json` prints: the span tree and its facts.",
        "type": "object",
        "required": ["request_id", "status", "http_status", "duration_ms", "stats", "spans"],
        "properties": {"request_id": {"type": "string"}, "status": {"type": "string"},
                       "http_status": {"type": ["integer", "null"]},
                       "duration_ms": {"type": "number"}, "stats": _ANY_OBJECT,
                       "spans": {"type": "array"}, "jobs": {"type": "array"},
                       "parent": {"type": ["object", "null"]}},
    },
    "History": {
        "description": "What `flux state history --json` prints.",
        "type": "object", "required": ["table", "pk", "rows"],
        "properties": {"table": {"type": "string"}, "pk": _ANY_OBJECT,
                       "record_id": {"type": "string"},
                       "rows": {"type": "array", "items": {
                           "type": "object",
                           "required": ["at", "request_id", "op", "changes", "rolled_back",
                                        "actor"]}}},
    },
    "Blame": {
        "description": "What `flux state blame --json` prints: `columns` for one row "
                       "(with id), `rows` for a table.",
        "type": "object", "required": ["table"],
        "properties": {"table": {"type": "string"}, "pk": _ANY_OBJECT,
                       "columns": _ANY_OBJECT, "rows": {"type": "array"}},
    },
    "Resume": {
        "description": "What `flux resume --json` prints. 200 whenever the resume ran; the "
                       "resumed execution's own outcome is `status`.",
        "type": "object", "required": ["resumed_from", "plan", "status"],
        "properties": {"request_id": _NULLABLE_TEXT, "resumed_from": {"type": "string"},
                       "status": {"type": "string"}, "plan": {"type": "array"}},
    },
}


def description() -> dict[str, Any]:
    """The OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Flux admin API",
            "version": __version__,
            "description": (
                "The inspect commands and resume of a running Flux, over HTTP. Each read "
                "answers exactly what the matching `flux … --json` prints; `flux --remote "
                "URL …` is a client of it. Every call needs `Authorization: Bearer "
                "<FLUX_ADMIN_TOKEN>`, except on `flux dev` bound to loopback; this "
                "description needs none. Every answer carries `x-flux-request-id`."),
        },
        "servers": [{"url": "/_flux"}],
        "security": [{"bearer": []}],
        "paths": {
            "/executions": {"get": {
                "operationId": "listExecutions", "summary": "flux ls",
                "parameters": [
                    _query("function", "Only this function."),
                    _query("status", "ok, error, 4xx, 5xx or an HTTP status."),
                    _query("since", "15m, 2h, 14:05 (the server's local time) or ISO."),
                    _query("window", "START..END, e.g. 2026-03-10T14:00..2026-03-10T14:05."),
                    _query("limit", "At most this many (default 20).", _LIMIT),
                    _query("kind", "What started it.", {"type": "string", "enum": [
                        "http", "job", "cron", "replay", "resume", "invoke"]}),
                ],
                "responses": {"200": _json(_ref("Executions"), "Newest first."),
                              **_errors(400)},
            }},
            "/executions/{id}": {"get": {
                "operationId": "getRecord", "summary": "flux record export",
                "parameters": [_ID],
                "responses": {"200": _json(_ref("Record"), "The portable record."),
                              **_errors(400, 404, 409)},
            }},
            "/executions/{id}/why": {"get": {
                "operationId": "why", "summary": "flux why",
                "parameters": [_ID, _query("spans", "Include the flat span list.", _FLAG)],
                "responses": {"200": _json(_ref("Why"), "Root cause and what surrounds it."),
                              **_errors(400, 404, 409)},
            }},
            "/executions/{id}/why/ai": {"post": {
                "operationId": "whyAi", "summary": "flux why --ai",
                "parameters": [
                    _ID,
                    _query("send", "Ask the model (default); false: only build the prompt.",
                           _FLAG),
                    _query("show_prompt", "Include the messages sent as `ai.prompt`.", _FLAG)],
                "responses": {"200": _json(_ref("WhyAi"), "The model's reading, or why "
                                           "there is none."),
                              **_errors(400, 404, 409)},
            }},
            "/executions/{id}/trace": {"get": {
                "operationId": "trace", "summary": "flux trace",
                "parameters": [_ID],
                "responses": {"200": _json(_ref("Trace"), "The span tree."),
                              **_errors(400, 404, 409)},
            }},
            "/executions/{id}/resume": {"post": {
                "operationId": "resume", "summary": "flux resume",
                "parameters": [_ID,
                               {"name": "X-Flux-Client", "in": "header", "required": True,
                                "description": "Any value (or a JSON Content-Type): a web "
                                               "page cannot send it without asking first.",
                                "schema": {"type": "string", "minLength": 1}},
                               _query("dry_run", "Show the plan; run nothing.", _FLAG),
                               _query("strict", "Stop if a read returns something else "
                                      "now.", _FLAG)],
                "responses": {"200": _json(_ref("Resume"), "The resume ran (or was planned)."),
                              **_errors(400, 404, 409)},
            }},
            "/state/{table}/history": {"get": {
                "operationId": "stateHistory", "summary": "flux state history",
                "parameters": [_TABLE, _query("id", "Primary key: 42, a=1,b=2 or JSON.",
                                              required=True)],
                "responses": {"200": _json(_ref("History"), "Every change of one row."),
                              **_errors(400, 404)},
            }},
            "/state/{table}/blame": {"get": {
                "operationId": "stateBlame", "summary": "flux state blame",
                "parameters": [_TABLE, _query("id", "Primary key; without it, the table."),
                               _query("limit", "Rows, without id (default 50).", _LIMIT)],
                "responses": {"200": _json(_ref("Blame"), "Who wrote each column's value."),
                              **_errors(400, 404)},
            }},
            "/functions/openapi.json": {"get": {
                "operationId": "functionsOpenapi", "summary": "The functions' routes",
                "responses": {"200": _json(_ANY_OBJECT, "OpenAPI 3.1 of the project's "
                                           "functions: each route, its methods and "
                                           "typed path parameters."), **_errors()},
            }},
            "/diff": {"get": {
                "operationId": "traceDiff", "summary": "flux trace diff",
                "parameters": [_query("a", "The execution compared against (an id or a "
                                      "unique prefix).", {"type": "string", "minLength": 1},
                                      required=True),
                               _query("b", "The execution compared.",
                                      {"type": "string", "minLength": 1}, required=True)],
                "responses": {"200": _json(_ANY_OBJECT, "Spans aligned: same, changed, "
                                           "added, removed; input, output, mutations."),
                              **_errors(400, 404, 409)},
            }},
            "/source": {"get": {
                "operationId": "source", "summary": "Code around a location (web view)",
                "parameters": [_query("file", "A project-relative source file.",
                                      {"type": "string", "minLength": 1}, required=True),
                               _query("line", "The line (default 1).", _LIMIT)],
                "responses": {"200": _json(_ANY_OBJECT, "The lines around it, as the file "
                                           "reads on the server now."),
                              **_errors(400, 404)},
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This description",
                "security": [],
                "responses": {"200": _json(_ANY_OBJECT, "OpenAPI 3.1.")},
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS,
        },
    }


_PARAM_SCHEMA: dict[str, dict[str, Any]] = {
    "str": {"type": "string"}, "path": {"type": "string"}, "int": {"type": "integer",
                                                                   "minimum": 0},
    "float": {"type": "number", "minimum": 0}, "uuid": {"type": "string", "format": "uuid"},
}
_BODYLESS = ("GET", "HEAD", "DELETE", "OPTIONS")


def functions_description(registry: Registry, title: str = "Flux functions"
                          ) -> dict[str, Any]:
    """The OpenAPI document of the functions ``registry`` serves: one path per route (its
    parameters typed as declared), one operation per method."""
    paths: dict[str, dict[str, Any]] = {}
    for method, _, spec in registry.table():
        path = "/" + re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z]+)?\}", r"{\1}",
                            spec.route)
        paths.setdefault(path, {})[method.lower()] = _operation(spec, method)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__,
                 "description": "The functions this Flux serves. Every answer carries "
                                "`x-flux-request-id`; an error answer is `{\"error\": "
                                "{\"code\", \"message\"}, \"request_id\"}`."},
        "paths": paths,
        "components": {"schemas": {"Error": _SCHEMAS["Error"]}},
    }


def _operation(spec: FunctionSpec, method: str) -> dict[str, Any]:
    several = len(spec.methods) > 1
    operation: dict[str, Any] = {
        "operationId": f"{spec.name}_{method.lower()}" if several else spec.name,
        "summary": spec.name,
        "parameters": [{"name": name, "in": "path", "required": True,
                        "schema": _PARAM_SCHEMA[kind]} for name, kind in spec.pattern.params],
        "responses": {
            "200": {"description": "The function's answer: JSON, or the status, headers "
                                   "and body its flux.Response chose."},
            "4XX": _json(_ref("Error"), "Bad input, or an error the function raised."),
            "5XX": _json(_ref("Error"), "The function failed (`flux why <request_id>`)."),
        },
    }
    if method not in _BODYLESS:
        operation["requestBody"] = {"required": False, "content": {
            "application/json": {"schema": {}},
            "application/x-www-form-urlencoded": {"schema": {"type": "object"}}}}
    return operation
