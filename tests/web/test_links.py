"""``flux dev`` prints its web view's address, and ``flux why`` / ``flux trace`` print the
link to the same execution when a server is known: a running ``flux dev`` of the project,
or ``--remote``. A dev server that stopped leaves no link behind."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from tests.access.conftest import serve_project
from tests.fixtures.processes import FluxProcess
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import copy_project


def test_dev_prints_the_web_view_and_why_links_to_it(
    db: str, provider: Any, tmp_path: Path, flux_process: type[FluxProcess]
) -> None:
    root = copy_project(tmp_path / "shop", provider.url)
    dev = serve_project(root, db, flux_process, token=None, args=("dev",))
    port = dev.url.rsplit(":", 1)[1]
    dev.process.wait_for(f"web view http://localhost:{port}/_flux/ui/")
    status, _, _ = dev.call("/signup", method="POST", body={"email": "x@example.com"})
    assert status == 200
    status, _, failed = dev.call("/signup", method="POST", body={"email": "x@example.com"})
    assert status == 500  # the same email again: a unique violation
    rid = failed["x-flux-request-id"]
    env = {"DATABASE_URL": db}
    link = f"http://localhost:{port}/_flux/ui/x/{rid}"
    why = run_flux(["why", rid[:18]], root, env=env)
    assert why.returncode == 0 and link in why.stdout, why.stdout + why.stderr
    trace = run_flux(["trace", rid[:18]], root, env=env)
    assert trace.returncode == 0 and link in trace.stdout
    as_json = run_flux(["why", rid[:18], "--json"], root, env=env)
    assert "_flux/ui" not in as_json.stdout and json.loads(as_json.stdout)["request_id"] == rid
    remote = run_flux(["--remote", dev.url, "trace", rid[:18]], tmp_path, env={})
    assert f"{dev.url}/_flux/ui/x/{rid}" in remote.stdout, remote.stdout + remote.stderr
    dev.process.signal(signal.SIGINT)
    dev.process.wait(30)
    assert not (root / ".flux" / "dev.json").exists()
    after = run_flux(["why", rid[:18]], root, env=env)
    assert after.returncode == 0 and "_flux/ui" not in after.stdout
