"""Story: a developer writes endpoints the way their old service had them — a ``GET`` with a
typed path parameter, a ``PATCH`` on the same path that reads the request itself
(``ctx.request.json()``, ``.text()``, headers, content type, repeated query keys) — and
``flux dev`` prints the route table they make before it says ready; each answers as
written over loopback, and a method the path does not take is a 405 naming what it does."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.access.conftest import free_port
from tests.fixtures.processes import FluxProcess
from tests.stories._world import init_project

SHOW = """from flux import function


@function(route="/notes/{id:int}", methods=["GET"])
async def show_note(ctx, input):
    return {"id": ctx.request.path_params["id"], "tags": ctx.request.query.getall("tag", [])}
"""
EDIT = """from flux import Response, function


@function(route="/notes/{id:int}", methods=["PATCH"])
async def edit_note(ctx, input):
    sent = ctx.request.json()
    return Response({"id": ctx.request.path_params["id"], "title": sent["title"],
                     "same": sent == input, "chars": len(ctx.request.text()),
                     "type": ctx.request.content_type,
                     "editor": ctx.request.headers.get("X-Editor")},
                    status=200, headers={"ETag": '"v2"'})
"""


def call(
    url: str, method: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def test_dev_prints_the_route_table_and_serves_it(
    db: str, tmp_path: Path, flux_process: type[FluxProcess]
) -> None:
    project = init_project(tmp_path, "notes")
    (project / "functions" / "show_note.py").write_text(SHOW)
    (project / "functions" / "edit_note.py").write_text(EDIT)
    port = free_port()
    dev = flux_process(["dev", "--port", str(port)], project, env={"DATABASE_URL": db})
    dev.wait_for("ready")
    table = [line.split() for line in dev.lines if line.startswith("    ")]
    assert ["GET", "/notes/{id:int}", "show_note"] in table, dev.output()
    assert ["PATCH", "/notes/{id:int}", "edit_note"] in table
    assert ["POST", "/create_user", "create_user"] in table  # the scaffold's, by its name
    assert "3 function(s)" in dev.output()

    base = f"http://127.0.0.1:{port}"
    status, shown, _ = call(f"{base}/notes/7?tag=a&tag=b", "GET")
    assert (status, shown) == (200, {"id": 7, "tags": ["a", "b"]})
    text = b'{"title":  "Groceries"}'
    status, edited, headers = call(
        f"{base}/notes/7", "PATCH", text, {"Content-Type": "application/json", "X-Editor": "ada"}
    )
    assert status == 200 and headers["ETag"] == '"v2"'
    assert edited == {
        "id": 7,
        "title": "Groceries",
        "same": True,
        "chars": len(text),
        "type": "application/json",
        "editor": "ada",
    }
    status, refused, headers = call(f"{base}/notes/7", "DELETE")
    assert status == 405, refused
    assert sorted(headers["Allow"].split(", ")) == ["GET", "HEAD", "PATCH"]
    status, _, _ = call(f"{base}/notes/seven", "GET")
    assert status == 404
    dev.signal(signal.SIGINT)
    assert dev.wait(30) == 0
