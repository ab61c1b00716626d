"""The servers around the pipeline, each on 127.0.0.1 with its state under `<home>/`:
the Prefect server (API + UI, schedules), the MLflow UI, and Label Studio (in
`labelstudio_server`). `poseops demo` starts them all; `poseops demo-down` stops them.

On the server profile (POSEOPS_PROFILE=server) the same factories give the servers on PostgreSQL
(`poseops.postgres`): the Prefect server on the `poseops_prefect` database, and instead of `mlflow ui`
over SQLite the MLflow tracking server on `poseops_mlflow`, serving the artifacts it keeps at
POSEOPS_ARTIFACTS_URL (or `<home>/mlartifacts`). Each creates its database when missing as it starts.
`poseops stack up` (`cli_stack`) starts them in order.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from poseops import postgres
from poseops.processes import ManagedServer, ServerStatus, port_of
from poseops.settings import Settings, secure_home


def prefect_server(settings: Settings) -> ManagedServer:
    home = (secure_home(settings.home) / "prefect").resolve()
    url = settings.prefect_url
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
               "--port", str(port_of(url, 4200)), "--analytics-off"]
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": f"{url}/api", "PREFECT_UI_API_URL": f"{url}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # the leases of poseops.locks' slots outlive a restart of the server (in memory, a slot held across a
           # restart would stay taken for good): they are files under its PREFECT_HOME
           "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem"}
    if settings.server_profile and settings.database_url:  # unset: `up` says so (a client needs only the URL)
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = postgres.part_url(settings, "prefect")
    server = ManagedServer("the Prefect server", home, url, f"{url}/api/health", command, env,
                           hint="If the port is taken, set POSEOPS_PREFECT_URL to another port.")
    return postgres.on_database(server, settings, "prefect") if settings.server_profile else server


def mlflow_ui(settings: Settings) -> ManagedServer:
    """The MLflow UI over the SQLite store; on the server profile, the MLflow tracking server (`mlflow_server`)."""
    from poseops.tracking import tracking_uri

    if settings.server_profile:
        return mlflow_server(settings)
    state = (secure_home(settings.home) / "mlflow-ui").resolve()
    url = settings.mlflow_ui_url
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
               "--host", "127.0.0.1", "--port", str(port_of(url, 5000)), "--workers", "1"]
    return ManagedServer("the MLflow UI", state, url, f"{url}/health", command,
                         hint="If the port is taken, set POSEOPS_MLFLOW_UI_URL to another port.")


def mlflow_server(settings: Settings) -> ManagedServer:
    """`mlflow server` on PostgreSQL (`poseops_mlflow`), proxying the artifacts it keeps at POSEOPS_ARTIFACTS_URL
    (s3://…, reached with `storage.s3_env`) or in `<home>/mlartifacts`. Clients log through it (tracking_uri()).
    The store's URL, with its password, goes through the environment, never the command line.
    """
    from poseops.storage import s3_env

    state = (secure_home(settings.home) / "mlflow-server").resolve()
    url = settings.mlflow_ui_url
    artifacts = settings.artifacts_url or str((settings.home / "mlartifacts").resolve())
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port_of(url, 5000)),
               "--workers", "1", "--serve-artifacts", "--artifacts-destination", artifacts]
    env = s3_env(settings)
    if settings.database_url:  # unset: `up` says so
        env["MLFLOW_BACKEND_STORE_URI"] = postgres.part_url(settings, "mlflow")
    server = ManagedServer("the MLflow tracking server", state, url, f"{url}/health", command, env,
                           hint="If the port is taken, set POSEOPS_MLFLOW_UI_URL to another port.")
    return postgres.on_database(server, settings, "mlflow")


def ml_backend(settings: Settings) -> ManagedServer:
    """The champion as Label Studio's ML backend (`poseops.ml_backend`), run from this checkout's folder."""
    state = (secure_home(settings.home) / "ml-backend").resolve()
    url = settings.ml_backend_url
    # its secrets, and only those: Label Studio's token (to read task images) and the webhook secret
    env = {"LABEL_STUDIO_USER_TOKEN": settings.label_studio_token, "POSEOPS_WEBHOOK_SECRET": settings.webhook_secret,
           "LABEL_STUDIO_URL": settings.label_studio_url, "POSEOPS_HOME": str(settings.home.resolve()),
           "POSEOPS_ML_BACKEND_URL": url, "POSEOPS_PREFECT_URL": settings.prefect_url}
    return ManagedServer("the ML backend", state, url, f"{url}/health", [sys.executable, "-m", "poseops.ml_backend"],
                         env, cwd=Path.cwd(), hint="If the port is taken, set POSEOPS_ML_BACKEND_URL to another port.")


def connect_prefect(settings: Settings) -> bool:
    """Point Prefect at the server poseops runs, before anything imports Prefect (it reads its settings then).

    Prefect's own state (the temporary server's database when none runs) stays under
    `<home>/prefect`. Returns whether flow runs will show in a running server's UI.
    """
    if os.environ.get("PREFECT_API_URL"):
        return True
    if "prefect" in sys.modules:  # too late to point it anywhere (a test calling the CLI in its own process)
        return False
    os.environ.setdefault("PREFECT_HOME", str((settings.home / "prefect").resolve()))
    if prefect_server(settings).answers():
        os.environ["PREFECT_API_URL"] = f"{settings.prefect_url}/api"
        return True
    # Prefect's temporary server is a child in this process group: Ctrl-C (or SIGTERM to the group) stops it
    # with us, and a client retrying it with back-off would keep the command alive a minute for nothing.
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "0")
    return False


def deployed_bento(settings: Settings) -> str | None:
    """The Bento `poseops deploy` built last (BentoML's `latest` of the `poseops` Bento), or None."""
    from poseops.deploy import bentoml_env

    latest = Path(bentoml_env(settings)["BENTOML_HOME"]) / "bentos" / "poseops" / "latest"
    return f"poseops:{latest.read_text().strip()}" if latest.is_file() else None


def detection_service(settings: Settings) -> ManagedServer:
    """The detection service, on the Bento deployed last; `up` refuses when nothing was deployed."""
    from poseops.deploy import DeployError, service_server

    bento = deployed_bento(settings)
    server = service_server(settings, bento=bento)
    if bento is None:
        def nothing_to_start(*args, **kwargs):
            raise DeployError("no Bento deployed yet: run `poseops deploy` (it builds the Bento and starts the service)")

        server.up = nothing_to_start  # type: ignore[method-assign]
    return server


# --- the whole stack on one profile (`poseops stack up|down|status`) ---------------------------------------------


def stack_up(settings: Settings, say=print, timeout: float = 900.0) -> list[ServerStatus]:
    """Start (or find) every server of the settings' profile, in order: PostgreSQL on the server profile (started
    here when on this machine, else only its databases made), Label Studio, the MLflow UI or tracking server, the
    Prefect server. The first start of Label Studio migrates its database (minutes)."""
    from poseops import labelstudio_server

    statuses = []
    if settings.server_profile:
        say(f"PostgreSQL: starting or finding it at {postgres.database_server(settings).address}")
        statuses.append(postgres.up(settings))
    say(f"Label Studio: starting or finding it at {settings.label_studio_url} (a first start migrates for minutes)")
    statuses.append(labelstudio_server.up(settings, timeout))
    for server in (mlflow_ui(settings), prefect_server(settings)):
        say(f"{server.name}: starting or finding it at {server.url}")
        statuses.append(server.up(timeout))
    return statuses


def stack_status(settings: Settings) -> list[tuple[str, ServerStatus]]:
    """Each server of the settings' profile with its status, in start order."""
    from poseops import labelstudio_server

    found = [("PostgreSQL", postgres.status(settings))] if settings.server_profile else []
    found.append(("Label Studio", labelstudio_server.status(settings)))
    return found + [(server.name, server.status()) for server in (mlflow_ui(settings), prefect_server(settings))]


def stack_down(settings: Settings) -> list[str]:
    """Stop the servers poseops started under this home, PostgreSQL last; returns what was stopped.

    Those of either profile: each stops only what its state folder records, so a stack started with the
    profile set for `up` alone (`POSEOPS_PROFILE=server poseops stack up`) stops without it too.
    """
    from dataclasses import replace

    from poseops import labelstudio_server

    servers = (prefect_server(settings), mlflow_server(settings), mlflow_ui(replace(settings, profile="embedded")),
               labelstudio_server.server(settings))
    stopped = [server.name for server in servers if server.down()]
    if settings.database_url and postgres.down(settings):
        stopped.append("PostgreSQL")
    return stopped
