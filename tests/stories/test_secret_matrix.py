"""The secret-placement matrix: a secret in the URL's base, its path, its query string, a
header, the JSON body or a SQL parameter — and for each, replay, incident replay, bisect and
resume all match the call to its tape. Nothing printed and nothing stored holds a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.shop import serve_app
from tests.stories._world import Provider, commit, dump, flux, git, init_project

SECRETS = {"ACCOUNT": "acct_Q7x9Lm2P", "QUERY_TOKEN": "tok_query_5Rk8Wn",
           "HEADER_TOKEN": "hdr_3Jd7Yp1Z", "BODY_TOKEN": "body_tok_8Hs2Kq",
           "SQL_KEY": "sql_key_4Nc6Vt"}  # and BASE_URL: an address on the provider

# Each handler makes its outside call with the secret in one place, then fails in code.
CALLS = {
    "url_base": 'await ctx.http.post(ctx.secrets.get("BASE_URL") + "/v1/charges", '
                'json={"amount": 100})',
    "url_path": 'await ctx.http.post(ctx.config["provider"] + "/accounts/" + '
                'ctx.secrets.get("ACCOUNT") + "/charges", json={"amount": 100})',
    "query": 'await ctx.http.post(ctx.config["provider"] + "/v1/charges?token=" + '
             'ctx.secrets.get("QUERY_TOKEN"), json={"amount": 100})',
    "header": 'await ctx.http.post(ctx.config["provider"] + "/v1/charges", '
              'json={"amount": 100}, headers={"X-Payments-Token": '
              'ctx.secrets.get("HEADER_TOKEN")})',
    "json_body": 'await ctx.http.post(ctx.config["provider"] + "/v1/charges", '
                 'json={"amount": 100, "auth": {"api_token": ctx.secrets.get("BODY_TOKEN")}})',
    "sql_param": '(await ctx.db.fetchone("SELECT count(*) AS n FROM notes WHERE body = %s", '
                 '[ctx.secrets.get("SQL_KEY")]), await ctx.http.post(ctx.config["provider"] '
                 '+ "/v1/charges", json={"amount": 100}))',
}
BUG = 'raise RuntimeError("the receipt printer jammed")'
FIXED = 'return {"sent": True, "receipt": ctx.uuid().hex[:8]}'


def handler(name: str, call: str) -> str:
    return f'''from flux import function


@function
async def {name}(ctx, input):
    await ctx.db.execute("INSERT INTO notes (body) VALUES (%s)", ["{name}"])
    response = {call}
    {FIXED}
'''


async def test_every_secret_placement_matches_its_tape_everywhere(
        db: str, provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The base URL names a tenant's prefix on the provider: a secret of its own.
    secrets = {**SECRETS, "BASE_URL": provider.url + "/t_Wk4Zr8Ya"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    project = init_project(tmp_path, "matrix")
    toml = project / "flux.toml"
    toml.write_text(toml.read_text().replace(
        "[app]\n", f'[app]\nprovider = "{provider.url}"\n'))
    (project / "schema" / "002_notes.sql").write_text(
        "CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, body text NOT NULL);\n")
    for name, call in CALLS.items():
        (project / "functions" / f"{name}.py").write_text(handler(name, call))
    git(project, "init", "-q", "-b", "main")
    good = commit(project, "matrix: every placement of a secret")
    for name in CALLS:
        path = project / "functions" / f"{name}.py"
        path.write_text(path.read_text().replace(FIXED, BUG))
    broken = commit(project, "receipts: print them")
    (project / "README.md").write_text("Docs only.\n")
    bad = commit(project, "docs: a readme")

    rids = {}
    async with serve_app(project, db, provider) as app:  # type: ignore[arg-type]
        for name in CALLS:
            status, _, rids[name] = await app.post(name, {})
            assert status == 500, name
    assert provider.charges == len(CALLS)
    sent = len(provider.requests)
    placed = provider.requests
    assert placed[0]["path"] == "/t_Wk4Zr8Ya/v1/charges"
    assert placed[1]["path"] == f"/accounts/{SECRETS['ACCOUNT']}/charges"
    assert placed[2]["query"] == {"token": SECRETS["QUERY_TOKEN"]}
    assert placed[3]["headers"]["X-Payments-Token"] == SECRETS["HEADER_TOKEN"]
    assert placed[4]["body"]["auth"]["api_token"] == SECRETS["BODY_TOKEN"]
    printed: list[str] = []

    for name, rid in rids.items():  # replay: the same failure, every call from its tape
        code, replay, out = flux(project, db, "replay", rid[:18], "--expect", "same")
        printed.append(out)
        assert code == 0 and replay["divergence"] is None, (name, replay["divergence"])
        assert replay["beyond_tape"] == [], (name, replay["beyond_tape"])

    code, incident, out = flux(project, db, "incident", "replay", "--ids",
                               ",".join(r[:18] for r in rids.values()), "--db", "tape")
    printed.append(out)
    assert incident["replayed"] == len(CALLS) and incident["failing"] == len(CALLS)
    assert all(r["divergence"] is None and r["beyond_tape"] == 0
               for r in incident["results"]), incident["results"]

    code, bisect, out = flux(project, db, "bug", "bisect", "--good", good, "--bad", bad,
                             *[arg for rid in rids.values() for arg in ("--request", rid)])
    printed.append(out)
    assert code == 0 and bisect["first_bad"]["sha"] == broken, bisect
    assert [(s["sha"], s["verdict"]) for s in bisect["tested"]] == [
        (bad, "bad"), (broken, "bad")], bisect["tested"]

    for name in CALLS:  # the fix
        path = project / "functions" / f"{name}.py"
        path.write_text(path.read_text().replace(BUG, FIXED))
    commit(project, "receipts: printed later")
    for name, rid in rids.items():  # resume: finished, nothing sent again
        code, resumed, out = flux(project, db, "resume", rid[:18])
        printed.append(out)
        assert code == 0 and resumed["status"] == "ok", (name, resumed)
        assert resumed["sent"] == [] and resumed["divergence"] is None, (name, resumed)
    assert provider.charges == len(CALLS) and len(provider.requests) == sent

    everything = "\n".join(printed) + dump(db)
    for name, value in secrets.items():
        assert value not in everything, f"the secret {name} leaked"
