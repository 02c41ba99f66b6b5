"""Story: ``flux replay --expect same`` compares the whole answer a handler chose — its HTTP
status and its (redacted) headers as well as its body. A refactor that keeps the body but
answers 200 instead of 201, or points ``Location`` elsewhere, or sets a different cookie, is
not "the same"; putting the answer back makes it pass again (issue 19, third bullet)."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.shop import serve_app
from tests.stories._world import Provider, flux, init_project

CREATE = """from flux import Response, function


@function(route="/carts", methods=["POST"])
async def create_cart(ctx, input):
    return Response({"cart": input["name"]}, status=201,
                    headers={"Location": "/carts/" + input["name"],
                             "Set-Cookie": "cart=" + input["name"] + "; HttpOnly"})
"""
CHANGES = {
    "status": ("status=201", "status=200"),
    "location": ('"/carts/" + input["name"]', '"/basket/" + input["name"]'),
    "cookie": ('"cart=" + input["name"]', '"cart=other"'),
}


async def test_expect_same_compares_status_and_headers_not_only_the_body(
    db: str, provider: Provider, tmp_path: Path
) -> None:
    project = init_project(tmp_path, "carts")
    handler = project / "functions" / "create_cart.py"
    handler.write_text(CREATE)
    async with serve_app(project, db, provider) as app:  # type: ignore[arg-type]
        async with app.client.post(f"{app.url}/carts", json={"name": "ada"}) as response:
            assert response.status == 201 and response.headers["Location"] == "/carts/ada"
            rid = response.headers["x-flux-request-id"]
        record = app.record(rid)
    assert record["response"]["status"] == 201
    assert record["response"]["headers"]["location"] == "/carts/ada"
    assert "ada" not in record["response"]["headers"]["set-cookie"]  # fingerprinted

    code, same, _ = flux(project, db, "replay", rid[:18], "--expect", "same")
    assert code == 0 and same["passed"], same
    for what, (before, after) in CHANGES.items():
        handler.write_text(CREATE.replace(before, after))
        code, replay, out = flux(project, db, "replay", rid[:18], "--expect", "same")
        assert code == 1 and not replay["passed"], (what, out)
        assert replay["replayed"]["output"] == {"cart": "ada"}, what  # the body is the same
    handler.write_text(CREATE)
    code, again, _ = flux(project, db, "replay", rid[:18], "--expect", "same")
    assert code == 0 and again["passed"], again
