"""What Flux needs to know of a SQL statement: its pglast fingerprint (the tape key that
survives a change of literal values or whitespace), its verb and the tables it touches
(for span names, ``flux explain`` and trace diffs)."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson
from pglast import ast, parse_sql
from pglast.parser import ParseError, fingerprint
from pglast.visitors import Visitor

from flux._jsoncodec import encode

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%b|%t")

_VERBS = {
    ast.SelectStmt: "select", ast.InsertStmt: "insert", ast.UpdateStmt: "update",
    ast.DeleteStmt: "delete", ast.MergeStmt: "merge",
}


@dataclass(frozen=True)
class SqlInfo:
    fingerprint: str
    verb: str  # select, insert, update, delete, merge, ddl, other
    tables: tuple[str, ...]
    parsed: bool
    written: tuple[str, ...] = ()

    @property
    def span_name(self) -> str:
        target = f"({self.tables[0]})" if self.tables else ""
        return f"db.{self.verb}{target}"


def to_dollar_params(query: str) -> str:
    """psycopg's %s / %(name)s placeholders as $n, which the PostgreSQL parser accepts."""
    numbers: dict[str, int] = {}
    counter = 0

    def number(match: re.Match[str]) -> str:
        nonlocal counter
        name = match.group(1)
        if name is not None:
            if name not in numbers:
                counter += 1
                numbers[name] = counter
            return f"${numbers[name]}"
        counter += 1
        return f"${counter}"

    return _PLACEHOLDER.sub(number, query.replace("%%", "%"))


class _Tables(Visitor):
    """Tables a statement names (not its CTEs), and those it writes, at any depth — a
    data-modifying CTE writes too."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.written: list[str] = []
        self.ctes: set[str] = set()

    def visit_CommonTableExpr(self, ancestors: Any, node: ast.CommonTableExpr) -> None:
        self.ctes.add(str(node.ctename))

    def visit_RangeVar(self, ancestors: Any, node: ast.RangeVar) -> None:
        name = f"{node.schemaname}.{node.relname}" if node.schemaname else str(node.relname)
        if name not in self.names:
            self.names.append(name)

    def _write(self, node: Any) -> None:
        target = node.relation
        name = f"{target.schemaname}.{target.relname}" if target.schemaname else target.relname
        if name not in self.written:
            self.written.append(name)

    def visit_InsertStmt(self, ancestors: Any, node: ast.InsertStmt) -> None:
        self._write(node)

    def visit_UpdateStmt(self, ancestors: Any, node: ast.UpdateStmt) -> None:
        self._write(node)

    def visit_DeleteStmt(self, ancestors: Any, node: ast.DeleteStmt) -> None:
        self._write(node)

    def visit_MergeStmt(self, ancestors: Any, node: ast.MergeStmt) -> None:
        self._write(node)

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n not in self.ctes)


@functools.lru_cache(maxsize=4096)
def sql_info(query: str) -> SqlInfo:
    text = to_dollar_params(query)
    try:
        statements = parse_sql(text)
        print_ = fingerprint(text)
    except ParseError:
        digest = hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]
        return SqlInfo(fingerprint=f"raw:{digest}", verb="other", tables=(), parsed=False)
    first = statements[0].stmt if statements else None
    verb = _VERBS.get(type(first), "ddl" if type(first).__name__.endswith(
        ("CreateStmt", "AlterTableStmt", "DropStmt", "IndexStmt")) else "other")
    visitor = _Tables()
    for statement in statements:
        visitor(statement)
    return SqlInfo(fingerprint=print_, verb=verb, tables=visitor.tables, parsed=True,
                   written=tuple(visitor.written))


def tables_read_written(query: str) -> tuple[list[str], list[str]]:
    """(tables only read, tables written) by a statement, from its parse tree."""
    info = sql_info(query)
    return [t for t in info.tables if t not in info.written], list(info.written)


def params_hash(params: Any) -> str:
    return encoded_params_hash(encode(params))


def encoded_params_hash(encoded: Any) -> str:
    """``params_hash`` of parameters already through ``encode`` (which changes nothing it
    has made: encoding twice gives the same value, so the same hash). What orjson refuses
    (an integer beyond 64 bits, a lone surrogate) hashes its ``json`` text instead."""
    try:
        blob = orjson.dumps(encoded, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError is one
        blob = json.dumps(encoded, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.sha256(blob).hexdigest()[:16]


def tape_key(query: str, params: Any) -> str:
    """The tape key of a statement: fingerprint plus a hash of its parameters."""
    return f"{sql_info(query).fingerprint}:{params_hash(params)}"
