"""`poseops dataset connect-backend`: the champion predicts inside Label Studio, and label changes can retrain.

Wired into the main CLI with `cli_backend.register(app)`, on its `dataset` group; the server itself is
`poseops ml-backend up|down|status` (cli.py's server commands).
"""

from __future__ import annotations

from typing import Annotated

import typer

from poseops.cli_common import console, user_errors


@user_errors
def connect_backend(
    name: Annotated[str, typer.Argument(help="Dataset name")],
    url: Annotated[str | None, typer.Option(help="The backend's URL as Label Studio reaches it "
                                                 "(default: POSEOPS_ML_BACKEND_URL)")] = None,
) -> None:
    """Register the ML backend (predictions when a task opens) and its webhook (label changes) on the project."""
    from poseops.datasets import project_of
    from poseops.labelstudio import LabelStudioClient
    from poseops.ml_backend import connect
    from poseops.settings import check_url, ensure_label_studio_credentials

    settings = ensure_label_studio_credentials()  # generates POSEOPS_WEBHOOK_SECRET into .env on first use
    backend_url = check_url("--url", url) if url else settings.ml_backend_url
    with LabelStudioClient(settings) as client:
        project = project_of(client, name)
        link = connect(client, project.id, backend_url, settings.webhook_secret)
    console.print(f"dataset {name}: ML backend {backend_url} connected (model version {link.model_version}); "
                  f"annotation changes go to {backend_url}/webhook")
    console.print("Tasks opened without a prediction now get the champion's. To retrain from label changes, set "
                  "schedules.retrain_after in params.yaml and run `poseops serve-flows`.")


def register(app: typer.Typer) -> None:
    """`connect-backend` on the app's `dataset` group."""
    group = next(g.typer_instance for g in app.registered_groups if g.name == "dataset")
    group.command("connect-backend")(connect_backend)
