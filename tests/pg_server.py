"""A real PostgreSQL cluster for the tests: poseops' own local cluster (`poseops.postgres.cluster`, the one
`poseops postgres up` runs), in a temporary folder on a free 127.0.0.1 port, always stopped at the end.

Use it from a test module:

    from pg_server import postgres_url, server_env, server_settings  # noqa: F401 - postgres_url is the fixture

    def test_something(postgres_url, tmp_path):
        settings = server_settings(postgres_url, tmp_path / "home")  # the server profile on that cluster
        ...

- `postgres_url` (session-scoped fixture): POSEOPS_DATABASE_URL for the cluster,
  `postgresql://poseops_tests:PASSWORD@127.0.0.1:PORT`. Its user is the cluster's superuser, so poseops
  creates the parts' databases (`poseops_labelstudio`, `poseops_mlflow`, `poseops_prefect`) on it as on any
  other. pytest makes one cluster per test module that imports the fixture: modules never share databases.
- `server_settings(url, home, **fields)`: `Settings` of the server profile on it, with `home` as POSEOPS_HOME
  and any other field given (label_studio_url=..., ...).
- `server_env(url)`: the environment that puts a poseops command or a child process on the server profile on
  it (POSEOPS_PROFILE, POSEOPS_DATABASE_URL); set it with `monkeypatch.setenv` or pass it to the child.
- `drop_databases(url)`: remove the parts' databases (connections closed by force), for a test that must
  start from empty ones.
- `running_postgres()`: the same cluster as a context manager, outside pytest's fixtures (yields the URL).
- `cluster_home(url)`: the POSEOPS_HOME whose `postgres/` folder holds that cluster (its data, its log).

The cluster's folder is made with `tempfile.mkdtemp` (not pytest's tmp_path, whose parent is 0700): under
root PostgreSQL runs as the `postgres` OS user, which must pass through the folders above its data. Its log
is `<folder>/home/postgres/server.log`, printed when the cluster fails to start.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import free_port

from poseops import postgres
from poseops.processes import ServerError, alive
from poseops.settings import Settings

USER = "poseops_tests"
START_TIMEOUT_S = 120
_HOMES: dict[str, Path] = {}  # URL -> the home of the cluster running there


def cluster_home(url: str) -> Path:
    """The POSEOPS_HOME whose `postgres/` folder holds the cluster at `url` (started by this module)."""
    return _HOMES[url]


def server_settings(url: str, home: Path, **fields) -> Settings:
    """Settings of the server profile on the cluster at `url`, with `home` as POSEOPS_HOME."""
    return Settings(home=home, profile="server", database_url=url, **fields)


def server_env(url: str) -> dict[str, str]:
    """Environment variables that put poseops on the server profile on the cluster at `url`."""
    return {"POSEOPS_PROFILE": "server", "POSEOPS_DATABASE_URL": url}


def drop_databases(url: str) -> None:
    """Drop the parts' databases on the cluster at `url`, closing their connections."""
    from psycopg import sql

    with postgres.connect(postgres.parse_database_url(url)) as con:
        for part in postgres.PARTS:
            con.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(postgres.database_name(part))))


@contextmanager
def running_postgres() -> Iterator[str]:
    """A fresh local cluster on a free port, stopped (and its folder removed) on the way out; yields its URL."""
    folder = Path(tempfile.mkdtemp(prefix="poseops-pg-"))
    folder.chmod(0o711)  # the cluster's OS user passes through to its data (lists nothing)
    cluster = None
    url = ""
    password = secrets.token_urlsafe(12)
    try:
        for attempt in range(3):  # a free port may be taken by another test before PostgreSQL binds it
            url = f"postgresql://{USER}:{password}@127.0.0.1:{free_port()}"
            cluster = postgres.cluster(server_settings(url, folder / "home"))
            try:
                cluster.up(START_TIMEOUT_S)
                _HOMES[url] = folder / "home"
                break
            except (postgres.PostgresError, ServerError):
                if attempt == 2:
                    raise
        yield url
    finally:
        _HOMES.pop(url, None)
        if cluster is not None:
            pid = cluster.recorded_pid()
            cluster.down()
            assert pid is None or not alive(pid), "the PostgreSQL cluster survived down"
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """POSEOPS_DATABASE_URL of a real PostgreSQL cluster on 127.0.0.1 (see the module's docstring)."""
    with running_postgres() as url:
        yield url
