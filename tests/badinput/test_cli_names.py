"""Table and column names from the command line never reach SQL as text: a name full of
quotes and semicolons is one sentence and a non-zero exit, the table survives, a table that
really has such a name is read correctly — and no query in flux/ is assembled from text."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import psycopg
import pytest

from flux._project import parse
from flux.capture._schema import apply_schema
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import copy_project

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(db: str, tmp_path: Path) -> Path:
    root = copy_project(tmp_path / "shop", "http://127.0.0.1:9")
    apply_schema(db, parse(root).schema_dir, capture="trigger")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO users (email) VALUES ('ada@example.com')")
        conn.execute('CREATE TABLE "we;ird""name" ("k;ey" int PRIMARY KEY, "v""al" text)')
        conn.execute("SELECT flux.install_capture_all()")
        conn.execute('INSERT INTO "we;ird""name" VALUES (1, \'one\')')
        conn.execute('UPDATE "we;ird""name" SET "v""al" = \'uno\'')
    return root


@pytest.mark.parametrize("args", [
    ["state", "history", 'users"; drop table users; --', "--id", "1"],
    ["state", "history", "users; DROP TABLE users", "--id", "1"],
    ["state", "blame", "users'); DROP TABLE users; --"],
    ["state", "blame", "a.b.c.d"],
    ["state", "blame", "otherdb.public.users"],
    ["state", "history", "users", "--id", "1; DROP TABLE users"],
    ["state", "history", "users", "--id", 'id"; DROP TABLE users; --=1'],
    ["state", "history", "users", "--id", '{"id) ; DROP TABLE users; --": 1}'],
    ["state", "blame", "users", "--id", "1'::int; DROP TABLE users; --"],
])
def test_a_hostile_name_is_one_sentence_and_the_table_survives(db: str, project: Path,
                                                               args: list[str]) -> None:
    result = run_flux(args, project, env={"DATABASE_URL": db})
    assert result.returncode != 0, result.stdout
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: ") and len(lines) <= 2, result.stderr
    assert "Traceback" not in result.stderr and "PostgreSQL refused" not in result.stderr
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)


def test_a_table_named_with_quotes_and_semicolons_is_read_as_named(db: str, project: Path
                                                                    ) -> None:
    quoted = '"we;ird""name"'
    history = run_flux(["state", "history", quoted, "--id", "1", "--json"], project,
                       env={"DATABASE_URL": db})
    assert history.returncode == 0, history.stderr
    rows = json.loads(history.stdout)["rows"]
    assert [r["op"] for r in rows] == ["INSERT", "UPDATE"]
    assert rows[1]["changes"] == {'v"al': ["one", "uno"]}
    blame = run_flux(["state", "blame", quoted, "--id", 'k;ey=1', "--json"], project,
                     env={"DATABASE_URL": db})
    assert blame.returncode == 0, blame.stderr
    assert json.loads(blame.stdout)["columns"]['v"al']["value"] == "uno"


# Every execute() in flux/ takes a named query from sql/, or composes identifiers with
# psycopg.sql; these few pass text on by design, each for a reason.
PASSED_ON = {
    ("_ctx_db.py", "tagged(query, span_id)"): "the function's own SQL, through ctx.db",
    ("_explain.py", "(prefix + text).encode()"): "the statement given to flux explain --sql",
    ("_migrate.py", "migration.text.encode()"): "a migration file of sql/",
    ("_schema.py", "text.encode()"): "a schema/*.sql file of the project",
    ("_portable.py", "insert.encode()"): "a named query and a constant ON CONFLICT clause",
    ("_retention.py", "composed"): "a named query with a partition's sql.Identifier",
    ("_retention.py", "query"): "a named query passed in by its callers",
    ("_runtime.py", "statement"): "the BEGIN of flux/runtime/_execution.py begin_statement",
    ("_record.py", "bind(text, {'payload': payload.decode()})"):
        "the named emit_record and commit queries, the record's line bound by bind",
    ("_execution.py", "statement"): "the BEGIN of begin_statement (a UUID Flux made, the "
        "tenant quoted by sql.Literal), read back for the WAL-record mode",
    ("_ctx_db.py", "f'/*flux:{span_id}*/ '.encode() + begin + b'; ' + bound"):
        "BEGIN with a UUID Flux made and the tenant quoted by sql.Literal, then the "
        "function's own SQL with its parameters bound by psycopg (ClientCursor.mogrify)",
    ("_record.py", "text"): "simple_query's text: each call of simple_query is checked; "
        "and prepared_commit's statements: named queries with $n for %(name)s (_numbered)",
    ("_walstream.py", "command"): "START_REPLICATION, a named query formatted with "
        "sql.Identifier/Literal in WalStream.open",
    ("_native.py", "command"): "ALTER SYSTEM SET output_plugin_libraries, a named query "
        "formatted with sql.Literal in _allowed",
    ("_record.py", "bind(text, params, conn.info.encoding)"):
        "named queries of sql/queries/execution.sql with the record's values inlined by "
        "_record._literal (dollar-quoted, or E'' with quotes and backslashes doubled; "
        "tests/store/test_record.py)",
    ("_worker.py", "claim"): "the named query claim of sql/queries/jobs.sql, composed by "
        "sql.SQL(...).format with the batch size as a sql.Literal, kept as bytes",
    ("_worker.py", "statement"): "insert_records (flux/store/_record_batch.py): the named "
        "query insert_record with each record's values inlined by _record.bind",
}


def _safe(node: ast.expr) -> bool:
    """A query named in sql/queries (q.x, self._q.x, load('g').x, getattr(q, name)), encoded,
    a choice between such, an f-string of such, or sql.SQL(named).format(...) with only
    sql.Identifier/Literal arguments."""
    if isinstance(node, ast.Attribute):
        value = node.value
        return ((isinstance(value, ast.Name) and value.id == "q")
                or (isinstance(value, ast.Attribute) and value.attr == "_q")
                or (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                    and value.func.id == "load"))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            node.func.attr == "encode" and not node.args:
        return _safe(node.func.value)
    if isinstance(node, ast.IfExp):
        return _safe(node.body) and _safe(node.orelse)
    if isinstance(node, ast.JoinedStr):
        return all(_safe(v.value) for v in node.values if isinstance(v, ast.FormattedValue))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id == "getattr":
        holder = node.args[0]
        return (isinstance(holder, ast.Attribute) and holder.attr == "_q") or \
            (isinstance(holder, ast.Name) and holder.id == "q")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            node.func.attr == "format":
        composed = node.func.value
        parts = [*node.args, *(k.value for k in node.keywords)]
        return isinstance(composed, ast.Call) and ast.unparse(composed.func) == "sql.SQL" \
            and _safe(composed.args[0]) and all(
                isinstance(p, ast.Call) and ast.unparse(p.func) in ("sql.Identifier",
                                                                    "sql.Literal")
                for p in parts)
    return False


def test_no_query_in_flux_is_assembled_from_text() -> None:
    found = set()
    for path in sorted((REPO / "flux").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            # conn.execute(text), cur.executemany(text), pgconn.send_query(text), and
            # simple_query(conn, text) (flux/store/_record.py), which sends text as it is
            if isinstance(node.func, ast.Attribute):
                position = {"execute": 0, "executemany": 0, "send_query": 0,
                            "send_query_params": 0, "send_prepare": 1}.get(node.func.attr)
                if ast.unparse(node.func.value) == "generators":  # psycopg's, on a pgconn
                    position = None
            else:
                position = 1 if ast.unparse(node.func) == "simple_query" else None
            if position is not None and len(node.args) > position:
                query = node.args[position]
                if _safe(query):
                    continue
                key = (path.name, ast.unparse(query))
                assert key in PASSED_ON, f"{path.name}:{node.lineno} runs {key[1]}"
                found.add(key)
    assert found == set(PASSED_ON)  # an exception no longer needed is taken off the list
