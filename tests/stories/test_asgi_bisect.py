"""Story: a Starlette service served by Flux (``[asgi] app`` in flux.toml) starts failing
after a few commits; ``flux bug bisect`` replays the failed request — driving the app with
the recorded request — at commits in temporary worktrees, and names the commit that broke
it (issue 19: bisect works on an ASGI app's executions as on a function's)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.projects import run_flux
from tests.fixtures.shop import serve_app
from tests.stories._world import GIT_ENV, Provider, commit, git, init_project

API = """from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import flux

RATES = {"eur": 0.92, "gbp": 0.79}


async def convert(request):
    body = await request.json()
    cents = round(body["cents"] * RATES[body["to"]])
    await flux.context().db.execute(
        "INSERT INTO conversions (currency, cents) VALUES (%s, %s)", [body["to"], cents])
    return JSONResponse({"cents": cents, "to": body["to"]})


app = Starlette(routes=[Route("/convert", convert, methods=["POST"])])
"""
SCHEMA = "CREATE TABLE conversions (id bigserial PRIMARY KEY, currency text, cents int);\n"
GOOD = 'RATES[body["to"]]'
BAD = 'RATES[body["currency"]]'  # a rename half done: a KeyError on every request


async def test_bisect_names_the_commit_that_broke_the_asgi_app(
    db: str, provider: Provider, tmp_path: Path
) -> None:
    project = init_project(tmp_path, "fx")
    (project / "schema" / "002_conversions.sql").write_text(SCHEMA)
    (project / "fx").mkdir()
    (project / "fx" / "__init__.py").write_text("")
    api = project / "fx" / "api.py"
    api.write_text(API)
    toml = project / "flux.toml"
    toml.write_text(toml.read_text() + '\n[asgi]\napp = "fx.api:app"\n')
    git(project, "init", "-q", "-b", "main")
    shas = [commit(project, "fx: the conversion service")]
    for n in range(1, 4):
        if n == 2:
            api.write_text(API.replace(GOOD, BAD))
        else:
            (project / "NOTES.md").write_text(f"note {n}\n")
        shas.append(commit(project, "fx: read the currency" if n == 2 else f"notes {n}"))

    async with serve_app(project, db, provider) as app:  # type: ignore[arg-type]
        async with app.client.post(f"{app.url}/convert", json={"cents": 1000, "to": "eur"}) as r:
            assert r.status == 500
            rid = r.headers["x-flux-request-id"]
        assert app.record(rid)["function"] == "asgi"

    done = run_flux(
        ["bug", "bisect", "--request", rid[:18], "--good", shas[0][:10], "--json"],
        project,
        env={"DATABASE_URL": db, **GIT_ENV},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["first_bad"]["sha"] == shas[2], result
    assert "fx/api.py" in result["first_bad"]["files"]
    assert result["undecided"] == []
