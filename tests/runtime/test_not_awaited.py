"""An async handler that calls a ctx door without ``await`` is handed a coroutine that never
runs: the job is not pushed, the row not written. Flux fails that execution, naming the call
and its line, instead of answering 200 as if the call had happened."""

from __future__ import annotations

import textwrap
from pathlib import Path

import psycopg

from tests.fixtures.shop import serve_app

HANDLER = '''
from flux import function


@function
async def forgetful(ctx, input):
    await ctx.db.execute("INSERT INTO notes (body) VALUES ('kept?')")
    if input.get("push"):
        ctx.queue.push("later", {"n": 1})  # no await
    else:
        ctx.db.execute("INSERT INTO notes (body) VALUES ('lost')")  # no await
    return {"done": True}
'''

LATER = '''
from flux import function


@function
async def later(ctx, input):
    return input
'''


async def test_a_ctx_call_never_awaited_fails_the_execution_at_its_line(
        db: str, provider: object, tmp_path: Path) -> None:
    root = tmp_path / "forgetful"
    (root / "functions").mkdir(parents=True)
    (root / "schema").mkdir()
    (root / "flux.toml").write_text('name = "forgetful"\n')
    (root / "schema" / "001.sql").write_text(
        "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);\n")
    (root / "functions" / "forgetful.py").write_text(textwrap.dedent(HANDLER))
    (root / "functions" / "later.py").write_text(textwrap.dedent(LATER))
    lines = (root / "functions" / "forgetful.py").read_text().splitlines()
    push_line = next(i for i, line in enumerate(lines, 1) if "ctx.queue.push" in line)
    db_line = next(i for i, line in enumerate(lines, 1) if "'lost'" in line)

    async with serve_app(root, db, provider) as app:  # type: ignore[arg-type]
        answers = [await app.post("forgetful", {"push": push}) for push in (True, False)]
        records = [app.record(rid) for _, _, rid in answers]

    for (status, body, _), record, (door, line) in zip(
            answers, records, [("ctx.queue.push", push_line), ("ctx.db.execute", db_line)],
            strict=True):
        assert status == 500, body
        error = record["error"]
        assert error["type"] == "NotAwaited"
        assert error["message"] == (
            f"{door}(…) at functions/forgetful.py:{line} was never awaited, so it never ran")
        assert (error["file"], error["line"]) == ("functions/forgetful.py", line)
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)  # rolled back
        assert conn.execute("SELECT count(*) FROM flux.jobs").fetchone() == (0,)
