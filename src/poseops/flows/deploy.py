"""Flow `deploy`: serve a registered model version.

    poseops deploy                                  # the champion (params.yaml: mlflow.registered_model, promote.alias)
    poseops deploy --model models:/poseops-pose/3

The steps live in `poseops.deploy`: the version goes into the BentoML model store, a Bento
is built around it, and the service restarts on that Bento. A version that does not load
fails before the running service is touched.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from poseops.deploy import deploy as deploy_version
from poseops.params import load_params
from poseops.reports import DeploySummary, deploy_markdown
from poseops.settings import load_settings


@flow(name="deploy")
def deploy(model_uri: str | None = None, runtime: str = "auto", params_file: str = "params.yaml") -> dict:
    model_uri = model_uri or load_params(params_file, missing_ok=True).champion_uri
    done = deploy_version(load_settings(), model_uri, runtime)
    get_run_logger().info("serving %s at %s", done.model_ref, done.url)
    summary = DeploySummary(model_uri=model_uri, model=done.model_ref, run_id=done.run_id, bento=done.bento,
                            url=done.url, files=str(done.files))
    create_markdown_artifact(key="deploy", markdown=deploy_markdown(summary), description=f"deploy of {model_uri}")
    return summary.to_dict()
