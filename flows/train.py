"""Prefect flow `train`: the DVC pipeline, then promotion, then a report linking the MLflow run.

    python flows/train.py                             # params.yaml as it is
    python flows/train.py --set train.epochs=3        # an override (dvc exp run -S …)
    python flows/train.py --no-dvc                    # the stages in this process, without DVC

The pipeline (prepare → train → evaluate → export) runs as one `dvc repro` (or `dvc exp run`)
so DVC skips what did not change; DVC takes a lock per repository, so run one training flow
per repository at a time. A failed training registers nothing: the model version is created
at the end of `export`, all or nothing.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from poseops import tracking, training
from poseops.params import load_params, parse_override

REPORT_KEY = "train-report"


@task(name="pipeline")
def run_pipeline(root: str, overrides: list[str], use_dvc: bool) -> dict[str, Any]:
    if use_dvc:
        training.dvc_repro(Path(root), overrides)
    else:
        params = load_params(Path(root) / "params.yaml", dict(map(parse_override, overrides)))
        training.run_stages(params, Path(root))
    return training.pipeline_outputs(Path(root))


@task(name="promote")
def promote_version(root: str, version: str, overrides: list[str]) -> dict[str, Any]:
    params = load_params(Path(root) / "params.yaml", dict(map(parse_override, overrides)))
    return asdict(training.promote(params, Path(root), version=version))


@task(name="report")
def report(outputs: dict[str, Any], promotion: dict[str, Any] | None) -> str:
    markdown = tracking.report_markdown(tracking.client(), outputs["run_id"], outputs["metrics"],
                                        outputs["version"], outputs["model"], promotion)
    create_markdown_artifact(markdown=markdown, key=REPORT_KEY, description="Training run, metrics and promotion")
    return markdown


@flow(name="train")
def train_flow(root: str = ".", overrides: list[str] | None = None, use_dvc: bool | None = None,
               promote: bool | None = None) -> dict[str, Any]:
    """Train through the DVC pipeline, promote when `promote.auto` (or `promote`) says so, and report."""
    overrides = list(overrides or [])
    params = load_params(Path(root) / "params.yaml", dict(map(parse_override, overrides)))  # fail before any work
    tracking.check_store()  # an unreachable or locked MLflow store too
    use_dvc = training.is_dvc_repo(Path(root)) if use_dvc is None else use_dvc
    outputs = run_pipeline(root, overrides, use_dvc)
    do_promote = params.promote.auto if promote is None else promote
    promotion = promote_version(root, outputs["version"], overrides) if do_promote else None
    markdown = report(outputs, promotion)
    return {**outputs, "promotion": promotion, "report": markdown}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the training flow once.")
    parser.add_argument("--root", default=".", help="project root (with dvc.yaml and params.yaml)")
    parser.add_argument("--set", "-S", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--no-dvc", action="store_true", help="run the stages in this process, without DVC")
    parser.add_argument("--no-promote", action="store_true", help="do not move the champion alias")
    args = parser.parse_args()
    train_flow(root=args.root, overrides=args.overrides, use_dvc=False if args.no_dvc else None,
               promote=False if args.no_promote else None)


if __name__ == "__main__":
    main()
