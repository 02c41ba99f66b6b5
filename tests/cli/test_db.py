"""`flux db …` as a user types it."""

from __future__ import annotations

import json


def test_db_start_then_psql_queries_state_history(make_project, flux_cli) -> None:
    root = make_project()
    started = flux_cli(["db", "start"], root)
    assert started.returncode == 0, started.stderr
    assert "embedded PostgreSQL started" in started.stdout
    result = flux_cli(["db", "psql", "-c", "select * from flux.state_history limit 1"], root)
    assert result.returncode == 0, result.stderr
    assert "request_id" in result.stdout and "(0 rows)" in result.stdout


def test_db_status_reports_server_version_data_dir_size_wal_level(make_project, flux_cli
                                                                  ) -> None:
    root = make_project()
    stopped = json.loads(flux_cli(["db", "status", "--json"], root).stdout)
    assert stopped["running"] is False and stopped["mode"] == "embedded"
    flux_cli(["db", "start"], root)
    status = json.loads(flux_cli(["db", "status", "--json"], root).stdout)
    assert status["running"] is True
    assert status["version"].startswith("18")
    assert status["wal_level"] == "logical"
    assert status["data_dir"] == str(root / ".flux" / "pgdata")
    assert status["data_dir_size"] > 1_000_000
    assert status["schema_version"] == status["schema_latest"]
    human = flux_cli(["db", "status"], root).stdout
    assert "wal_level  logical" in human and "running" in human


def test_db_url_connects_over_tcp_with_the_generated_password(make_project, flux_cli) -> None:
    import psycopg

    root = make_project()
    url = flux_cli(["db", "url"], root).stdout.strip()
    assert url.startswith("postgresql://postgres:") and "@127.0.0.1:" in url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("flux",)
    wrong = url.replace("postgres:", "postgres:wrong", 1)
    try:
        psycopg.connect(wrong).close()
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc)
    else:
        raise AssertionError("TCP connection without the right password was accepted")


def test_db_stop_then_status_says_stopped(make_project, flux_cli) -> None:
    root = make_project()
    flux_cli(["db", "start"], root)
    assert "stopped" in flux_cli(["db", "stop"], root).stdout
    assert json.loads(flux_cli(["db", "status", "--json"], root).stdout)["running"] is False


def test_outside_a_project_is_one_clear_sentence(tmp_path, flux_cli) -> None:
    result = flux_cli(["db", "status"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no flux.toml") and "Traceback" not in result.stderr
    assert "flux init" in result.stderr


def test_bad_flux_toml_is_one_clear_sentence(make_project, flux_cli) -> None:
    root = make_project('name = "x"\ncapture = "magic"\n')
    result = flux_cli(["db", "status"], root)
    assert result.returncode == 2 and 'capture must be "trigger" or "wal"' in result.stderr
    (root / "flux.toml").write_text("name = [unclosed\n")
    result = flux_cli(["db", "status"], root)
    assert result.returncode == 2 and "is not valid TOML" in result.stderr
