"""The servers around the pipeline, each on 127.0.0.1 with its state under `<home>/`:
the Prefect server (API + UI, schedules), the MLflow UI, and Label Studio (in
`labelstudio_server`). `poseops demo` starts them all; `poseops demo-down` stops them.
"""

from __future__ import annotations

import os
import sys

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


def use_prefect_server(settings: Settings) -> bool:
    """Send flow runs to our Prefect server when it runs (so they show in its UI); else Prefect's ephemeral API."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    if prefect_server(settings).answers():
        os.environ["PREFECT_API_URL"] = f"{settings.prefect_url}/api"
        return True
    return False
