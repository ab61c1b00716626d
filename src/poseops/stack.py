"""The servers around the pipeline, each on 127.0.0.1 with its state under `<home>/`:
the Prefect server (API + UI, schedules), the MLflow UI, and Label Studio (in
`labelstudio_server`). `poseops demo` starts them all; `poseops demo-down` stops them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from poseops.processes import ManagedServer, port_of
from poseops.settings import Settings, secure_home


def prefect_server(settings: Settings) -> ManagedServer:
    home = (secure_home(settings.home) / "prefect").resolve()
    url = settings.prefect_url
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
               "--port", str(port_of(url, 4200)), "--analytics-off"]
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": f"{url}/api", "PREFECT_UI_API_URL": f"{url}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return ManagedServer("the Prefect server", home, url, f"{url}/api/health", command, env,
                         hint="If the port is taken, set POSEOPS_PREFECT_URL to another port.")


def mlflow_ui(settings: Settings) -> ManagedServer:
    from poseops.tracking import tracking_uri

    state = (secure_home(settings.home) / "mlflow-ui").resolve()
    url = settings.mlflow_ui_url
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
               "--host", "127.0.0.1", "--port", str(port_of(url, 5000)), "--workers", "1"]
    return ManagedServer("the MLflow UI", state, url, f"{url}/health", command,
                         hint="If the port is taken, set POSEOPS_MLFLOW_UI_URL to another port.")


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
