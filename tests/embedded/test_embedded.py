"""The embedded server: reuse, crash recovery, and one clear sentence for each failure."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from flux import EmbeddedServerError
from flux.store._embedded import SOCKET_PATH_LIMIT, EmbeddedServer
from flux.store._embedded import ServerInfo as Info


def one_sentence(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.startswith("error: ")
    assert len([ln for ln in stderr.splitlines() if ln.startswith("error: ")]) == 1


def start(root: Path) -> Info:
    info, _ = EmbeddedServer(root / ".flux").start()
    return info


def test_second_process_reuses_the_running_server(make_project, flux_cli) -> None:
    root = make_project()
    info = start(root)
    result = flux_cli(["db", "start", "--json"], root)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["started"] is False
    assert EmbeddedServer(root / ".flux").running() == info
    postmasters = [p for p in psutil.process_iter(["name", "cmdline"])
                   if p.info["name"] == "postgres" and str((root / ".flux" / "pgdata").resolve())
                   in (p.info["cmdline"] or [])]
    assert len(postmasters) == 1


def test_sigkill_then_start_recovers_with_no_data_lost(make_project) -> None:
    root = make_project()
    info = start(root)
    with psycopg.connect(info.conninfo("postgres"), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept SELECT generate_series(1, 1000)")
    os.kill(info.pid, signal.SIGKILL)
    psutil.Process(info.pid).wait(10) if psutil.pid_exists(info.pid) else None
    again, started = EmbeddedServer(root / ".flux").start()
    assert started and again.pid != info.pid
    with psycopg.connect(again.conninfo("postgres")) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (1000,)


def test_stale_pid_file_naming_a_live_unrelated_process_is_recovered(make_project) -> None:
    root = make_project()
    server = EmbeddedServer(root / ".flux")
    start(root)
    server.stop()
    pid_file = (root / ".flux" / "pgdata" / "postmaster.pid")
    # The pid of a running process that is not postgres: pytest itself.
    pid_file.write_text(f"{os.getpid()}\n{root}/.flux/pgdata\n0\n5432\n/tmp\n127.0.0.1\n"
                        "  0  0\nready\n")
    info, started = server.start()
    assert started and info.pid != os.getpid()


def test_configured_port_in_use_is_one_clear_sentence(make_project, flux_cli) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        root = make_project(f'name = "demo"\n[database]\nport = {port}\n')
        result = flux_cli(["db", "start"], root)
    assert result.returncode != 0
    one_sentence(result.stderr)
    assert f"port {port} is already in use" in result.stderr


def test_corrupted_data_dir_is_one_clear_sentence(make_project, flux_cli) -> None:
    root = make_project()
    start(root)
    EmbeddedServer(root / ".flux").stop()
    control = root / ".flux" / "pgdata" / "global" / "pg_control"
    control.write_bytes(os.urandom(8192))
    result = flux_cli(["db", "start"], root)
    assert result.returncode != 0
    one_sentence(result.stderr)
    assert "is damaged" in result.stderr and "mv " in result.stderr


def test_data_dir_owned_by_another_user_is_one_clear_sentence(make_project, flux_cli) -> None:
    root = make_project()
    start(root)
    EmbeddedServer(root / ".flux").stop()
    data = (root / ".flux" / "pgdata").resolve()
    nobody = 65534
    if os.geteuid() != 0:
        # A normal user cannot give files away; point the data dir at one it does not own.
        data.rename(root / "moved")
        (root / ".flux" / "pgdata").symlink_to("/proc/1")
    else:
        for path in (data, *data.rglob("*")):
            os.lchown(path, nobody, nobody)
    result = flux_cli(["db", "start"], root)
    assert result.returncode != 0
    one_sentence(result.stderr)
    assert "belongs to" in result.stderr


def test_unreachable_database_url_is_one_clear_sentence(make_project, flux_cli) -> None:
    root = make_project()
    result = flux_cli(["db", "status"], root,
                      env={"DATABASE_URL": "postgresql://app:s3cret@127.0.0.1:1/app"})
    assert result.returncode != 0
    one_sentence(result.stderr)
    assert "cannot connect to PostgreSQL at postgresql://app:***@127.0.0.1:1/app" in result.stderr
    assert "s3cret" not in result.stderr
    assert not (root / ".flux" / "pgdata").exists()  # never starts a server of its own


def test_database_url_is_used_instead_of_the_embedded_server(make_project, flux_cli,
                                                            pg_server, empty_db) -> None:
    root = make_project()
    env = {"DATABASE_URL": empty_db}
    assert flux_cli(["db", "migrate"], root, env=env).returncode == 0
    status = json.loads(flux_cli(["db", "status", "--json"], root, env=env).stdout)
    assert status["mode"] == "external" and status["schema_version"] == status["schema_latest"]
    assert status["wal_level"] == "logical"
    assert not (root / ".flux" / "pgdata").exists()
    stop = flux_cli(["db", "stop"], root, env=env)
    assert stop.returncode != 0 and "will not stop it" in stop.stderr


def test_deep_project_path_falls_back_to_a_short_socket_dir(make_project) -> None:
    root = make_project()
    deep = root / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "flux.toml").write_text('name = "deep"\n')
    server = EmbeddedServer(deep / ".flux")
    try:
        info, _ = server.start()
        assert len(str(info.socket_dir / f".s.PGSQL.{info.port}")) < SOCKET_PATH_LIMIT
        assert not info.socket_dir.is_relative_to(deep)
        with psycopg.connect(info.conninfo("postgres")) as conn:
            assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
    finally:
        server.stop()


def test_project_the_server_user_cannot_reach_keeps_data_elsewhere(make_project) -> None:
    private = make_project()
    private.chmod(0o700)  # like /root: the unprivileged server user cannot enter
    root = make_project(parent=private)
    info = start(root)
    data = root / ".flux" / "pgdata"
    if os.geteuid() == 0:
        assert data.is_symlink() and data.resolve().is_relative_to("/var/lib/flux")
        status = EmbeddedServer(root / ".flux").status()
        assert status.real_data_dir == data.resolve() != status.data_dir
    else:
        assert not data.is_symlink()  # a normal user runs the server itself, in place
    with psycopg.connect(info.conninfo("postgres")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    EmbeddedServer(root / ".flux").stop()


def test_stop_is_a_clean_shutdown(make_project) -> None:
    root = make_project()
    info = start(root)
    assert EmbeddedServer(root / ".flux").stop() is True
    assert not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == "zombie"
    log = (root / ".flux" / "postgres.log").read_text()
    assert "database system is shut down" in log
    assert EmbeddedServer(root / ".flux").stop() is False


def test_empty_foreign_directory_is_refused_not_overwritten(make_project) -> None:
    root = make_project()
    data = root / ".flux" / "pgdata"
    data.mkdir(parents=True)
    (data / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddedServerError, match="holds no PostgreSQL cluster"):
        EmbeddedServer(root / ".flux").start()
    assert (data / "notes.txt").read_text() == "mine"


def test_startup_time_is_reasonable_for_reuse(make_project) -> None:
    """Reusing a running server must not re-run initdb or restart it."""
    root = make_project()
    first = start(root)
    log_size = (root / ".flux" / "postgres.log").stat().st_size
    time.sleep(0.1)
    assert start(root) == first
    assert (root / ".flux" / "postgres.log").stat().st_size == log_size
