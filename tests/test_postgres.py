"""PostgreSQL for the server profile (poseops.postgres): the URL, each part's database, the local cluster, the errors."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from conftest import free_port
from pg_server import cluster_home, postgres_url, running_postgres, server_settings  # noqa: F401 - postgres_url is the fixture

from poseops import postgres
from poseops.processes import ServerError
from poseops.settings import Settings, secure_home

URL = "postgresql://team:p%40ss%2Fword@db.example.org:6543"


def test_url_parsed_with_its_escapes():
    server = postgres.parse_database_url(URL)
    assert server == postgres.DatabaseServer("team", "p@ss/word", "db.example.org", 6543)
    assert not server.loopback
    assert server.url("x") == "postgresql://team:p%40ss%2Fword@db.example.org:6543/x"
    assert postgres.parse_database_url("postgres://a:b@127.0.0.1").port == postgres.DEFAULT_PORT
    assert postgres.parse_database_url("postgresql://a:b@localhost:5433").loopback
    assert postgres.parse_database_url("postgresql://a:b@[::1]:5433").address == "[::1]:5433"


def test_each_part_its_database_and_driver(tmp_path):
    settings = Settings(home=tmp_path, profile="server", database_url=URL)
    assert postgres.part_url(settings, "labelstudio") == "postgresql://team:p%40ss%2Fword@db.example.org:6543/poseops_labelstudio"
    assert postgres.part_url(settings, "mlflow").startswith("postgresql+psycopg://team:")
    assert postgres.part_url(settings, "mlflow").endswith("/poseops_mlflow")
    assert postgres.part_url(settings, "prefect").startswith("postgresql+asyncpg://team:")
    assert postgres.part_url(settings, "prefect").endswith("/poseops_prefect")
    with pytest.raises(ValueError, match="no database part 'bentoml'"):
        postgres.part_url(settings, "bentoml")


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://a:b@127.0.0.1:3306", "not a PostgreSQL URL"),
    ("postgresql://a@127.0.0.1:5432", "lacks its PASSWORD"),
    ("postgresql://127.0.0.1:5432", "lacks its USER, PASSWORD"),
    ("postgresql://a:b@127.0.0.1:5432/mydb", "names a database"),
    ("postgresql://a:b@127.0.0.1:5432?sslmode=require", "names a database or options"),
    ("postgresql://a:b@127.0.0.1:99999", "port that is not a number"),
])
def test_bad_url_says_what_is_wrong(url, says):
    with pytest.raises(postgres.PostgresError, match=says) as caught:
        postgres.parse_database_url(url)
    assert "postgresql://USER:PASSWORD@HOST:PORT" in str(caught.value)


def test_unset_url_says_how_to_get_one(tmp_path):
    with pytest.raises(postgres.PostgresError, match="poseops postgres up"):
        postgres.part_url(Settings(home=tmp_path, profile="server"), "mlflow")


def test_a_local_url_is_written_once_into_env(tmp_path, monkeypatch):
    monkeypatch.delenv("POSEOPS_DATABASE_URL", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("LABEL_STUDIO_URL=http://127.0.0.1:8080\n")
    first = postgres.ensure_database_url(env_file)
    server = postgres.parse_database_url(first.database_url)
    assert server.loopback and server.user == postgres.DEFAULT_USER and len(server.password) >= 20
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "LABEL_STUDIO_URL=http://127.0.0.1:8080" in env_file.read_text()
    assert postgres.ensure_database_url(env_file).database_url == first.database_url


def test_another_machines_cluster_is_never_run_here(tmp_path):
    with pytest.raises(postgres.PostgresError, match="not on this machine"):
        postgres.cluster(Settings(home=tmp_path, database_url=URL))
    assert not (tmp_path / "postgres").exists()


def test_postgresql_missing_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(postgres, "DEBIAN_BIN_ROOT", Path("/nonexistent"))
    with pytest.raises(postgres.PostgresError, match=r"not installed.*make install-system.*apt-get install postgresql"):
        postgres.bin_dir()


def test_connection_problems_said_plainly():
    local = postgres.parse_database_url("postgresql://poseops:secret-pw@127.0.0.1:5432")
    refused = postgres.connect_problem(local, 'connection failed: FATAL:  password authentication failed for user "poseops"')
    assert "refused user 'poseops'" in refused and "POSEOPS_DATABASE_URL" in refused
    down = postgres.connect_problem(local, "connection failed: Connection refused")
    assert "poseops postgres up" in down
    remote = postgres.connect_problem(postgres.parse_database_url(URL), "connection failed: Connection refused")
    assert "db.example.org:6543" in remote and "poseops postgres up" not in remote


def test_a_taken_port_is_refused_before_starting():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(postgres.PostgresError, match=rf"port {holder.getsockname()[1]} .* taken"):
            postgres.port_free(holder.getsockname()[1])


# --- the real cluster ------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_cluster_on_loopback_only_with_passwords(postgres_url):  # noqa: F811 - the fixture
    from conftest import assert_listens_on_loopback_only

    home = cluster_home(postgres_url)
    settings = server_settings(postgres_url, home)
    st = postgres.status(settings)
    assert st.running and st.started_here and not st.foreign
    assert_listens_on_loopback_only(st.pid, "PostgreSQL")
    hba = [line for line in (home / "postgres" / "data" / "pg_hba.conf").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    assert hba == ["host all all 127.0.0.1/32 scram-sha-256"]
    assert not list(Path("/tmp").glob(f".s.PGSQL.{postgres.parse_database_url(postgres_url).port}*")), "a Unix socket"
    if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the postgres OS user, which owns the data
        import psutil

        assert psutil.Process(st.pid).username() == postgres.CLUSTER_OS_USER
        assert (home / "postgres" / "data").stat().st_uid != 0


@pytest.mark.integration
def test_each_part_gets_its_database_once(postgres_url, tmp_path):  # noqa: F811 - the fixture
    server = postgres.parse_database_url(postgres_url)
    assert postgres.create_database(server, "poseops_once") is True
    assert postgres.create_database(server, "poseops_once") is False
    urls = postgres.ensure_databases(server_settings(postgres_url, tmp_path))
    assert set(urls) == {"labelstudio", "mlflow", "prefect"}
    with postgres.connect(server) as con:
        names = {row[0] for row in con.execute("SELECT datname FROM pg_database")}
    assert {"poseops_labelstudio", "poseops_mlflow", "poseops_prefect"} <= names


@pytest.mark.integration
def test_a_wrong_password_is_a_clear_error(postgres_url, tmp_path):  # noqa: F811 - the fixture
    server = postgres.parse_database_url(postgres_url)
    wrong = server_settings(server.__class__(server.user, "not-the-password", server.host, server.port).url("")[:-1],
                            tmp_path)
    with pytest.raises(postgres.PostgresError, match=f"refused user '{server.user}' with the password") as caught:
        postgres.database_url(wrong, "mlflow")
    assert server.password not in str(caught.value)


@pytest.mark.integration
def test_a_cluster_poseops_did_not_start_is_used_never_adopted(postgres_url, tmp_path):  # noqa: F811 - the fixture
    """Another home's URL on the port of a running cluster: its databases are made there, nothing is started or
    stopped, and that home's own cluster refuses to start on the taken port."""
    other = server_settings(postgres_url, tmp_path / "other")
    status = postgres.up(other)
    assert status.running and status.foreign and not status.started_here
    assert not (tmp_path / "other" / "postgres" / "data").exists()
    with pytest.raises(ServerError, match="something poseops did not start already answers"):
        postgres.cluster(other).up()
    assert postgres.down(other) is False
    assert postgres.status(server_settings(postgres_url, cluster_home(postgres_url))).running


@pytest.mark.integration
def test_restart_keeps_the_data_and_the_home_stays_passable():
    with running_postgres() as url:
        home = cluster_home(url)
        settings = server_settings(url, home)
        postgres.database_url(settings, "mlflow")
        with postgres.connect(postgres.parse_database_url(url), postgres.database_name("mlflow")) as con:
            con.execute("CREATE TABLE kept (n int)")
            con.execute("INSERT INTO kept VALUES (7)")
        secure_home(home)  # every server's factory tightens the home: the cluster must still reach its data
        with postgres.connect(postgres.parse_database_url(url)) as con:
            con.execute("CHECKPOINT")
        assert postgres.down(settings) is True
        assert not postgres.status(settings).running
        assert postgres.down(settings) is False
        postgres.up(settings)
        with postgres.connect(postgres.parse_database_url(url), postgres.database_name("mlflow")) as con:
            assert con.execute("SELECT n FROM kept").fetchall() == [(7,)]
        if os.geteuid() == 0:
            assert stat.S_IMODE(home.stat().st_mode) == 0o711  # pass, never list


@pytest.mark.integration
def test_stack_down_without_the_profile_stops_what_the_server_profile_started():
    """`POSEOPS_PROFILE=server` set for `up` alone: a later `stack down` on the default profile still stops the
    MLflow tracking server and the cluster poseops started in this home."""
    from dataclasses import replace

    from poseops import stack

    with running_postgres() as url:
        home = cluster_home(url)
        settings = server_settings(url, home, mlflow_ui_url=f"http://127.0.0.1:{free_port()}",
                                   prefect_url=f"http://127.0.0.1:{free_port()}",
                                   label_studio_url=f"http://127.0.0.1:{free_port()}")
        tracking = stack.mlflow_server(settings)
        tracking.up(180)
        try:
            stopped = stack.stack_down(replace(settings, profile="embedded"))
            assert stopped == ["the MLflow tracking server", "PostgreSQL"]
            assert not tracking.status().running
            assert not postgres.status(settings).running
        finally:
            tracking.down()


@pytest.mark.integration
def test_port_taken_by_another_program(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        port = holder.getsockname()[1]
        folder = Path(__import__("tempfile").mkdtemp(prefix="poseops-pg-"))
        folder.chmod(0o711)
        try:
            settings = server_settings(f"postgresql://u:pw-123456@127.0.0.1:{port}", folder)
            with pytest.raises(postgres.PostgresError, match=f"port {port} on 127.0.0.1 is taken"):
                postgres.up(settings)
            assert not postgres.status(settings).started_here
            assert not (folder / "postgres" / "data").exists(), "a cluster made for a port it cannot have"
        finally:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


def test_servers_of_the_server_profile_without_a_database_url_say_so_at_up(tmp_path):
    """Their factories still work (a client asks whether they answer); starting one names the missing setting."""
    from poseops import labelstudio_server, stack

    settings = Settings(home=tmp_path, profile="server", label_studio_url=f"http://127.0.0.1:{free_port()}",
                        prefect_url=f"http://127.0.0.1:{free_port()}", mlflow_ui_url=f"http://127.0.0.1:{free_port()}")
    for server in (stack.prefect_server(settings), stack.mlflow_ui(settings), labelstudio_server.server(settings)):
        assert not server.answers()
        with pytest.raises(postgres.PostgresError, match="POSEOPS_DATABASE_URL is not set"):
            server.up(timeout=5)
        assert server.recorded_pid() is None


def test_the_profile_alone_switches_each_server_to_postgresql(tmp_path, monkeypatch):
    from poseops import labelstudio_server, stack, tracking

    embedded = Settings(home=tmp_path, database_url=URL)
    server = Settings(home=tmp_path, profile="server", database_url=URL, s3_endpoint_url="http://127.0.0.1:9000",
                      artifacts_url="s3://team/mlflow", mlflow_ui_url="http://127.0.0.1:5055")
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in stack.prefect_server(embedded).env
    assert stack.prefect_server(server).env["PREFECT_API_DATABASE_CONNECTION_URL"] == postgres.part_url(server, "prefect")
    assert "ui" in stack.mlflow_ui(embedded).command
    mlflow = stack.mlflow_ui(server)
    assert mlflow.command[mlflow.command.index("mlflow") + 1] == "server"
    assert mlflow.command[mlflow.command.index("--artifacts-destination") + 1] == "s3://team/mlflow"
    assert "p@ss/word" not in " ".join(mlflow.command) and "p%40ss" not in " ".join(mlflow.command)
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"] == postgres.part_url(server, "mlflow")
    assert mlflow.env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert "DJANGO_DB" not in labelstudio_server.server(embedded).env
    ls = labelstudio_server.server(server).env
    assert {k: ls[k] for k in ("DJANGO_DB", "POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_HOST",
                               "POSTGRE_PORT")} == {"DJANGO_DB": "default", "POSTGRE_NAME": "poseops_labelstudio",
                                                    "POSTGRE_USER": "team", "POSTGRE_PASSWORD": "p@ss/word",
                                                    "POSTGRE_HOST": "db.example.org", "POSTGRE_PORT": "6543"}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("POSEOPS_HOME", str(tmp_path))
    monkeypatch.setenv("POSEOPS_MLFLOW_UI_URL", "http://127.0.0.1:5055")
    monkeypatch.setenv("POSEOPS_PROFILE", "embedded")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("POSEOPS_PROFILE", "server")
    assert tracking.tracking_uri() == "http://127.0.0.1:5055"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.org")
    assert tracking.tracking_uri() == "http://mlflow.example.org"
