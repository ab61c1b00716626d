"""Flow `train`: the DVC pipeline, then promotion, then a report linking the MLflow run.

    poseops train                          # params.yaml as it is
    poseops train -S train.epochs=3        # one run with an override; params.yaml is left as it was
    poseops train --no-dvc                 # the stages in this process, without DVC

The pipeline (prepare → train → evaluate → export) runs as one `dvc repro` (or `dvc exp run`
with overrides) so DVC skips what did not change; DVC takes a lock per repository, so run
one training flow per repository at a time. A failed training registers nothing: the model
version is created at the end of `export`, all or nothing.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from poseops import tracking, training
from poseops.params import file_kept, load_params, parse_override

REPORT_KEY = "train-report"


@task(name="pipeline")
def run_pipeline(root: str, overrides: list[str], use_dvc: bool) -> dict[str, Any]:
    if use_dvc:
        with file_kept(Path(root) / "params.yaml"):  # `dvc exp run -S` writes the overrides into it
            training.dvc_repro(Path(root), overrides)
    else:
        params = load_params(Path(root) / "params.yaml", dict(map(parse_override, overrides)))
        training.run_stages(params, Path(root))
    return training.pipeline_outputs(Path(root)).to_dict()


@task(name="promote")
def promote_version(root: str, version: str, overrides: list[str]) -> dict[str, Any]:
    params = load_params(Path(root) / "params.yaml", dict(map(parse_override, overrides)))
    return asdict(training.promote(params, Path(root), version=version))


@task(name="report")
def report(outputs: dict[str, Any], promotion: dict[str, Any] | None, root: str = ".") -> str:
    mlc = tracking.client()
    markdown = tracking.report_markdown(mlc, outputs["run_id"], outputs["metrics"],
                                        outputs["version"], outputs["model"], promotion)
    markdown += training.promotion_markdown(promotion) if promotion else ""  # per keypoint vs the champion
    gallery = training.read_gallery(training.Layout().under(Path(root)).evaluate / "gallery")
    if gallery:
        page = f"{tracking.run_url(mlc, outputs['run_id'])}/artifacts/eval/gallery/gallery.html"
        markdown += "\n" + training.gallery_markdown(gallery, page)
    create_markdown_artifact(markdown=markdown, key=REPORT_KEY,
                             description="Training run, metrics, promotion, per-keypoint comparison, error gallery")
    return markdown


@flow(name="train")
def train_flow(root: str = ".", overrides: list[str] | None = None, use_dvc: bool | None = None,
               promote: bool | None = None, resume: bool = False) -> dict[str, Any]:
    """Train through the DVC pipeline, promote when `promote.auto` (or `promote`) says so, and report.

    `resume`: insist on going on with an interrupted training (an error when there is none); an
    interrupted training with the same params resumes by itself anyway.
    """
    overrides = list(overrides or [])
    params = load_params(Path(root) / "params.yaml", dict(map(parse_override, overrides)))  # fail before any work
    tracking.check_store()  # an unreachable or locked MLflow store too
    for run_id in training.fail_orphaned_runs(tracking.client(), params.mlflow.experiment):
        get_run_logger().warning("MLflow run %s, of a training killed or crashed earlier, is marked FAILED", run_id)
    resumed = asdict(training.interrupted_training(params, Path(root), mlc=tracking.client())) if resume else None
    if resumed:
        get_run_logger().info("resuming from %s after epoch %s (interrupted MLflow run %s)",
                              resumed["last"], resumed["epochs_done"], resumed["run_id"])
    use_dvc = training.is_dvc_repo(Path(root)) if use_dvc is None else use_dvc
    outputs = run_pipeline(root, overrides, use_dvc)
    if warning := training.zero_pose_warning(outputs["metrics"]):
        get_run_logger().warning(warning)
    do_promote = params.promote.auto if promote is None else promote
    promotion = promote_version(root, outputs["version"], overrides) if do_promote else None
    markdown = report(outputs, promotion, root)
    return {**outputs, "promotion": promotion, "report": markdown, "resumed": resumed,
            "run_url": tracking.run_url(tracking.client(), outputs["run_id"])}
