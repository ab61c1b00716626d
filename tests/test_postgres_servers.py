"""The server profile's servers on a real PostgreSQL: Label Studio, the MLflow tracking server and the Prefect server,
each keeping its state in its own database of the cluster (tests/pg_server.py), none in a SQLite file."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from conftest import ROOT, assert_listens_on_loopback_only, files_containing, free_port
from pg_server import postgres_url, server_settings  # noqa: F401 - postgres_url is the fixture

from poseops import labelstudio_server, postgres, stack
from poseops.processes import alive
from poseops.settings import child_env

pytestmark = pytest.mark.integration


def rows(url: str, part: str, query: str, params: tuple = ()) -> list[tuple]:
    """`query`'s rows in the part's database of the cluster at `url`."""
    with postgres.connect(postgres.parse_database_url(url), postgres.database_name(part)) as con:
        return con.execute(query, params).fetchall()


@pytest.fixture(scope="module")
def label_studio_on_postgres(postgres_url, tmp_path_factory):  # noqa: F811 - the fixture
    """One Label Studio on the cluster for this module; its first start migrates its database there (timed)."""
    settings = server_settings(postgres_url, tmp_path_factory.mktemp("ls-home"),
                               label_studio_url=f"http://127.0.0.1:{free_port()}",
                               label_studio_username="tests@poseops.local",
                               label_studio_password=secrets.token_urlsafe(12), label_studio_token=secrets.token_hex(20),
                               label_studio_bin=ROOT / ".venv-labelstudio" / "bin" / "label-studio")
    started = time.monotonic()
    labelstudio_server.up(settings, timeout=1200)
    print(f"\nLabel Studio's first start on PostgreSQL (migrations included): {time.monotonic() - started:.0f} s")
    pid = labelstudio_server.status(settings).pid
    try:
        yield settings
    finally:
        labelstudio_server.down(settings)
    assert pid is not None and not alive(pid), "Label Studio survived down"


def test_label_studio_keeps_its_projects_in_postgresql(label_studio_on_postgres, postgres_url):  # noqa: F811
    settings = label_studio_on_postgres
    status = labelstudio_server.status(settings)
    assert status.running and status.started_here
    assert_listens_on_loopback_only(status.pid, "Label Studio")
    title = f"pg-{secrets.token_hex(4)}"
    answer = httpx.post(f"{settings.label_studio_url}/api/projects", json={"title": title},
                        headers={"Authorization": f"Token {settings.label_studio_token}"}, timeout=60)
    assert answer.status_code == 201, answer.text
    assert rows(postgres_url, "labelstudio", "SELECT title FROM project") == [(title,)]
    assert not list(settings.label_studio_dir.rglob("*.sqlite3")), "Label Studio made a SQLite database as well"
    assert files_containing(settings.home, [postgres.parse_database_url(postgres_url).password]) == []


def test_label_studio_finds_its_database_again_after_a_restart(label_studio_on_postgres, postgres_url):  # noqa: F811
    settings = label_studio_on_postgres
    before = rows(postgres_url, "labelstudio", "SELECT id, title FROM project ORDER BY id")
    started = time.monotonic()
    labelstudio_server.server(settings).restart(timeout=600)
    print(f"\nLabel Studio's restart on its migrated PostgreSQL database: {time.monotonic() - started:.0f} s")
    answer = httpx.get(f"{settings.label_studio_url}/api/projects", timeout=60,
                       headers={"Authorization": f"Token {settings.label_studio_token}"})
    assert answer.status_code == 200, answer.text
    assert sorted((p["id"], p["title"]) for p in answer.json()["results"]) == before


def test_mlflow_server_logs_a_run_into_postgresql(postgres_url, tmp_path, monkeypatch):  # noqa: F811
    from poseops import tracking

    home = tmp_path / "home"
    settings = server_settings(postgres_url, home, mlflow_ui_url=f"http://127.0.0.1:{free_port()}")
    for key, value in {"POSEOPS_PROFILE": "server", "POSEOPS_DATABASE_URL": postgres_url, "POSEOPS_HOME": str(home),
                       "POSEOPS_MLFLOW_UI_URL": settings.mlflow_ui_url}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    server = stack.mlflow_ui(settings)
    assert server.name == "the MLflow tracking server" and "server" in server.command
    assert postgres.parse_database_url(postgres_url).password not in " ".join(server.command), "a password in ps"
    started = time.monotonic()
    server.up(timeout=300)
    print(f"\nthe MLflow tracking server's first start on PostgreSQL: {time.monotonic() - started:.0f} s")
    try:
        assert_listens_on_loopback_only(server.status().pid, "the MLflow tracking server")
        assert tracking.tracking_uri() == settings.mlflow_ui_url
        tracking.check_store()
        mlc = tracking.client()
        experiment = tracking.experiment_id(mlc, "pg-tests")
        run = mlc.create_run(experiment)
        mlc.log_metric(run.info.run_id, "oks_map", 0.5)
        (tmp_path / "note.txt").write_text("kept by the server")
        mlc.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        mlc.set_terminated(run.info.run_id)
        assert rows(postgres_url, "mlflow", "SELECT key, value FROM metrics WHERE run_uuid = %s",
                    (run.info.run_id,)) \
            == [("oks_map", 0.5)]
        assert [f.read_text() for f in (home / "mlartifacts").rglob("note.txt")] == ["kept by the server"]
        assert not list(home.rglob("*.db")), "a SQLite store beside the server"
    finally:
        server.down()
    assert files_containing(home, [postgres.parse_database_url(postgres_url).password]) == []


def test_prefect_server_runs_a_flow_into_postgresql(postgres_url, tmp_path):  # noqa: F811
    settings = server_settings(postgres_url, tmp_path / "home", prefect_url=f"http://127.0.0.1:{free_port()}")
    server = stack.prefect_server(settings)
    assert server.env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    started = time.monotonic()
    server.up(timeout=300)
    print(f"\nthe Prefect server's first start on PostgreSQL: {time.monotonic() - started:.0f} s")
    try:
        assert_listens_on_loopback_only(server.status().pid, "the Prefect server")
        script = textwrap.dedent("""
            from prefect import flow

            @flow(name="pg-check")
            def pg_check() -> int:
                return 42

            print("result", pg_check())
        """)
        env = child_env({"PREFECT_API_URL": f"{settings.prefect_url}/api", "PREFECT_HOME": str(tmp_path / "client")})
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "result 42" in done.stdout, done.stdout + done.stderr
        assert rows(postgres_url, "prefect", "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id"
                    ) == [("pg-check", "COMPLETED")]
        assert not list((tmp_path / "home").rglob("*.db")), "a SQLite database beside the server"
    finally:
        server.down()
    assert files_containing(tmp_path / "home", [postgres.parse_database_url(postgres_url).password]) == []


def test_stack_up_status_down_on_the_server_profile(label_studio_on_postgres, postgres_url, tmp_path):  # noqa: F811
    """`poseops stack up --profile server` with one setting (the database URL) starts Label Studio, the MLflow
    tracking server and the Prefect server on it; `down` stops those and leaves the cluster it did not start."""
    env = {**child_env(), "POSEOPS_HOME": str(tmp_path / "home"), "POSEOPS_DATABASE_URL": postgres_url,
           "LABEL_STUDIO_URL": f"http://127.0.0.1:{free_port()}", "POSEOPS_MLFLOW_UI_URL": f"http://127.0.0.1:{free_port()}",
           "POSEOPS_PREFECT_URL": f"http://127.0.0.1:{free_port()}", "POSEOPS_PROFILE": "embedded",
           "POSEOPS_LABEL_STUDIO_BIN": str(ROOT / ".venv-labelstudio" / "bin" / "label-studio")}
    poseops = [str(ROOT / ".venv" / "bin" / "poseops"), "stack"]

    def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([*poseops, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)

    started = time.monotonic()
    up = run("up", "--profile", "server")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"\nposeops stack up --profile server (its databases migrated already): {time.monotonic() - started:.0f} s")
        status = run("status", "--profile", "server", timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        lines = status.stdout.splitlines()
        assert [line.split(":")[0].strip() for line in lines] == [
            "PostgreSQL", "Label Studio", "the MLflow tracking server", "the Prefect server"]
        assert all("answering" in line and "not answering" not in line for line in lines), status.stdout
        embedded = run("status", timeout=120)  # the setting says embedded: the same servers, the MLflow UI's name
        assert "PostgreSQL" not in embedded.stdout and "the MLflow UI" in embedded.stdout
    finally:
        down = run("down", "--profile", "server", timeout=180)
    assert down.returncode == 0 and "Label Studio" in down.stdout and "PostgreSQL" not in down.stdout, down.stdout
    assert postgres.status(server_settings(postgres_url, tmp_path / "home")).running, "stopped a cluster not its own"
    assert files_containing(tmp_path / "home", [postgres.parse_database_url(postgres_url).password]) == []
