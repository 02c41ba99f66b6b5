"""The wheel, built from this tree and installed alone in a fresh virtual environment, runs
the tour: ``flux init demo``, ``flux dev``, a request that works and one that fails,
``flux ls``, ``flux why``, ``flux replay``, then Ctrl-C. Nothing of the source tree or of
the test environment is importable there: this is what a user who ran ``pip install``
gets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import psutil
import pytest

from flux.store._embedded import EmbeddedServer

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: object) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), \
                response.headers["x-flux-request-id"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers["x-flux-request-id"]


def wait_healthy(url: str, dev: subprocess.Popen[str], log: Path) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert dev.poll() is None, f"flux dev exited {dev.returncode}:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError(f"no answer from {url} within 120 s:\n{log.read_text()}")


def build_wheel(outdir: Path) -> Path:
    """``python -m build --wheel`` on this tree, as the Dockerfile does."""
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir),
                           str(REPO)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = outdir.glob("flux_runtime-*.whl")
    return wheel


def check_contents(wheel: Path) -> None:
    """Everything the runtime reads besides Python modules is in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    sql = {f"flux/_sql/{p.relative_to(REPO / 'sql')}" for p in (REPO / "sql").rglob("*.sql")}
    assert sql <= names, f"missing from the wheel: {sorted(sql - names)}"
    for package in ("flux", "cli"):
        modules = {str(p.relative_to(REPO)) for p in (REPO / package).rglob("*.py")}
        assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "flux = cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_tour(make_project) -> None:
    root = make_project()  # /tmp, mode 755: as root, the server's own user must reach it
    wheel = build_wheel(root / "dist")
    check_contents(wheel)

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    python = venv / "bin" / "python"
    # Only the wheel is named; its dependencies come from the index (pip's cache makes a
    # second run fast). No .pyc compiled ahead: half the install's time, for files most of
    # which this test never imports.
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python),
                                "install", "--quiet", "--disable-pip-version-check",
                                "--no-compile", str(wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DATABASE_URL")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    flux = str(venv / "bin" / "flux")

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([flux, *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=120)

    where = subprocess.run([str(python), "-c", "import cli, flux; print(flux.__file__); "
                            "print(cli.__file__)"], cwd=root, env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    site = (venv / "lib").resolve()
    assert all(Path(p).resolve().is_relative_to(site) for p in where), where
    assert (venv / "bin" / "flux").read_text().splitlines()[0] == f"#!{python}"
    version = run("--version", cwd=root)
    assert version.returncode == 0 and version.stdout.startswith("flux "), version
    extension = run_python(python, env, root, "-m", "flux.store._extension", str(root / "ext"))
    assert (root / "ext" / "flux.control").is_file(), extension

    init = run("init", "demo", cwd=root)
    assert init.returncode == 0, init.stdout + init.stderr
    demo = root / "demo"
    port = free_port()
    log = root / "dev.log"
    with log.open("w") as output:
        dev = subprocess.Popen([flux, "dev", "--port", str(port)], cwd=demo, env=env,
                               stdout=output, stderr=subprocess.STDOUT, text=True)
    try:
        health = wait_healthy(f"http://127.0.0.1:{port}/health", dev, log)
        assert health["status"] == "ok"
        server = EmbeddedServer(demo / ".flux").running()
        assert server is not None, log.read_text()

        url = f"http://127.0.0.1:{port}/create_user"
        status, body, created = post(url, {"email": "ada@example.com"})
        assert status == 200 and body["email"] == "ada@example.com" and created
        status, body, failed = post(url, {"email": "ada@example.com"})  # a duplicate
        assert status == 500 and body["request_id"] == failed

        listed = run("ls", "--json", cwd=demo)
        assert listed.returncode == 0, listed.stderr
        statuses = {e["request_id"]: e["http_status"]
                    for e in json.loads(listed.stdout)["executions"]}
        assert statuses == {created: 200, failed: 500}
        why = run("why", failed[:18], "--json", cwd=demo)
        assert why.returncode == 0, why.stderr
        assert json.loads(why.stdout)["root_cause"]["class"] == "constraint"
        replay = run("replay", failed[:18], "--json", cwd=demo)
        assert replay.returncode == 1, replay.stderr  # the same IO: it still fails
        replayed = json.loads(replay.stdout)
        assert replayed["passed"] is False and replayed["divergence"] is None
        assert replayed["replayed"]["error"]["type"] == "UniqueViolation"

        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0, log.read_text()
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait(10)
        EmbeddedServer(demo / ".flux").stop()
    output_text = log.read_text()
    assert "stopped" in output_text and "Traceback" not in output_text, output_text
    # flux dev started the embedded server, so it stopped it, cleanly.
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == "zombie"
    assert not (demo / ".flux" / "pgdata" / "postmaster.pid").exists()


def run_python(python: Path, env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
