"""Prefect flow: deploy a registered model version as the detection service.

    poseops deploy                                  # models:/poseops-pose@champion
    poseops deploy --model models:/poseops-pose/3

The version goes into the BentoML model store and a Bento is built around it; the
service restarts on that Bento. A version that does not load fails before the running
service is touched.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from poseops.deploy import deploy as deploy_version
from poseops.settings import load_settings

DEFAULT_MODEL = "models:/poseops-pose@champion"


@flow(name="deploy")
def deploy(model_uri: str = DEFAULT_MODEL, runtime: str = "onnx") -> dict:
    settings = load_settings()
    done = deploy_version(settings, model_uri, runtime)
    get_run_logger().info("serving %s at %s", done.model_ref, done.url)
    create_markdown_artifact(
        key="deploy",
        markdown=(f"## Deployed\n\n| | |\n|---|---|\n| model | `{done.model_ref}` ({model_uri}) |\n"
                  f"| MLflow run | `{done.run_id}` |\n| Bento | `{done.bento}` |\n| service | {done.url} (playground {done.url}/, docs {done.url}/docs) |\n"),
        description=f"deploy of {model_uri}")
    return {"url": done.url, "model": done.model_ref, "run_id": done.run_id, "files": str(done.files),
            "bento": done.bento}


if __name__ == "__main__":
    deploy(model_uri=sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL)
