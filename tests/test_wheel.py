"""The wheel, built from this tree and installed alone in a fresh virtual environment, runs
the tour: ``flux init demo``, ``flux dev``, a request that works and one that fails,
``flux ls``, ``flux why``, ``flux replay``, then Ctrl-C. Nothing of the source tree or of
the test environment is importable there: this is what a user who ran ``pip install
flux-replay`` gets. And ``pipx install``, the README's one line, into an empty home gives a
``flux`` that prints its version and makes a project."""

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
    (wheel,) = outdir.glob("flux_replay-*.whl")  # the distribution's name: flux-replay
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this tree, built once for the tests of this module."""
    built = build_wheel(tmp_path_factory.mktemp("dist"))
    check_contents(built)
    return built


def check_contents(wheel: Path) -> None:
    """Everything the runtime reads besides Python modules is in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    sql = {f"flux/_sql/{p.relative_to(REPO / 'sql')}" for p in (REPO / "sql").rglob("*.sql")}
    assert sql <= names, f"missing from the wheel: {sorted(sql - names)}"
    assert "flux/_native/flux_capture.c" in names  # the C capture trigger (flux/store/_native.py)
    assert "flux/_native/flux_wal.c" in names  # WAL capture's writer side in C (the same)
    assert "flux/_native/flux_row.h" in names  # shared by the C trigger and the C decoder
    for package in ("flux", "cli"):
        modules = {str(p.relative_to(REPO)) for p in (REPO / package).rglob("*.py")}
        assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    web = {str(p.relative_to(REPO)) for p in (REPO / "flux/server/web").iterdir()}
    assert web and web <= names, f"the web view is missing from the wheel: {sorted(web - names)}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "flux = cli.main:main" in entry_text
    assert "[pytest11]" in entry_text  # pytest finds the plugin of flux.testing


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_tour(make_project, wheel: Path) -> None:
    root = make_project()  # /tmp, mode 755: as root, the server's own user must reach it

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


@pytest.mark.slow
def test_pipx_install_into_an_empty_home(make_project, wheel: Path) -> None:
    """``pipx install flux-replay`` as the README says, with the built wheel standing in for
    the index's copy, by a user whose home holds nothing: ``flux`` is on pipx's PATH and
    works. Only pip's download cache is shared with this machine's, to save the time of
    fetching every dependency again; it holds packages, not settings."""
    root = make_project()
    home = root / "home"
    home.mkdir()
    cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True,
                           text=True, check=True).stdout.strip()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DATABASE_URL")
           and not k.startswith(("PIPX_", "XDG_"))}
    env.update(HOME=str(home), PIP_CACHE_DIR=cache, PIP_NO_COMPILE="1")
    installed = subprocess.run([sys.executable, "-m", "pipx", "install", str(wheel)],
                               cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    flux = home / ".local" / "bin" / "flux"
    assert flux.exists(), installed.stdout + installed.stderr
    listed = subprocess.run([sys.executable, "-m", "pipx", "list", "--short"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert "flux-replay 0.1.0" in listed.stdout, listed.stdout + listed.stderr
    # The command runs from the environment pipx made under the empty home, nowhere else.
    venv_python = (home / ".local" / "share" / "pipx" / "venvs" / "flux-replay" / "bin"
                   / "python")
    assert flux.resolve().parent == venv_python.parent.resolve() or \
        flux.read_text().splitlines()[0] == f"#!{venv_python}", flux

    version = subprocess.run([str(flux), "--version"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"flux {__import__('flux').__version__}\n"
    init = subprocess.run([str(flux), "init", "demo"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    assert (root / "demo" / "flux.toml").is_file()
    assert sorted(p.name for p in (root / "demo" / "functions").glob("*.py"))


def run_python(python: Path, env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
