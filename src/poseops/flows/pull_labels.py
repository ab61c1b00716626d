"""Flow `pull-labels`: a Label Studio project → a checked, DVC-versioned YOLO-pose dataset.

    poseops pull NAME

The steps live in `poseops.pull`; this flow runs them as tasks (retries on the Label
Studio calls only), holds the dataset's lock, and publishes the summary artifact.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.utilities.annotations import quote

from poseops import labelchecks
from poseops import pull as steps
from poseops.datasets import load_record, project_of
from poseops.flows.quick import quick_flow
from poseops.flows.retries import ATTEMPTS, NETWORK_RETRIES, label_studio
from poseops.labelstudio import LabelStudioError, LabelStudioRefused
from poseops.params import load_params
from poseops.pull_unchanged import unchanged_summary
from poseops.reports import PullSummary, artifact_key, pull_markdown
from poseops.settings import load_settings


@task(**NETWORK_RETRIES)
def export_labels(dataset: str) -> steps.Snapshot:
    with label_studio(load_settings()) as client:
        return steps.export_snapshot(client, project_of(client, dataset).id)


@task
def check_ready(snapshot: steps.Snapshot, options: steps.PullOptions, dataset: str) -> steps.Readiness:
    skeleton = load_record(load_settings(), dataset).skeleton_spec()
    ready = steps.check_ready(snapshot.tasks, options, dataset, skeleton)
    for warning in ready.warnings:
        get_run_logger().warning(warning)
    return ready


@task(**NETWORK_RETRIES)
def fetch_images(labeled: list[dict], workers: int) -> tuple[dict[int, Path], int]:
    settings = load_settings()
    with label_studio(settings) as client:
        images, downloaded = steps.fetch_images(client, labeled, steps.ImageCache(settings.home / "cache" / "images"),
                                                workers=workers)
    get_run_logger().info("images: %d (%d downloaded, the rest from the cache)", len(images), downloaded)
    return images, downloaded


@task
def check_labels(dataset: str, ready: steps.Readiness, images: dict[int, Path],
                 options: steps.PullOptions) -> labelchecks.LabelChecks:
    skeleton = load_record(load_settings(), dataset).skeleton_spec()
    checks = labelchecks.run_checks(skeleton, ready.labeled, images, options.check_model_url)
    get_run_logger().info("label checks: %s", checks.summary())
    return checks


@task(**NETWORK_RETRIES)
def tag_checked_tasks(tasks: list[dict], checks: labelchecks.LabelChecks) -> int:
    with label_studio(load_settings()) as client:
        return labelchecks.tag_tasks(client, tasks, checks)


@task
def kept_version(dataset: str, options: steps.PullOptions, snapshot: steps.Snapshot, ready: steps.Readiness,
                 images: dict[int, Path]) -> steps.PullResult | None:
    """The last version when nothing changed since (then nothing is checked or built again), else None."""
    skeleton = load_record(load_settings(), dataset).skeleton_spec()
    return steps.kept_version(dataset, skeleton, options, snapshot, ready, images, say=get_run_logger().info)


@task
def build_dataset(dataset: str, options: steps.PullOptions, snapshot: steps.Snapshot, ready: steps.Readiness,
                  images: dict[int, Path]) -> steps.PullResult:
    settings = load_settings()
    skeleton = load_record(settings, dataset).skeleton_spec()
    return steps.build_dataset(settings, dataset, skeleton, options, snapshot, ready, images,
                               settings.label_studio_url, say=get_run_logger().info)


@quick_flow(name="pull-labels")
def pull_labels(dataset: str = "demo-people", params_file: str = "params.yaml", allow_unlabeled: bool | None = None,
                version: bool = True, commit: bool = True, check_first: bool = True) -> dict:
    """Export the project's labels, check they are ready, convert them, and version the dataset with DVC.

    `check_first`: look for "nothing changed" first, without task runs (`poseops.pull_unchanged`); False when the
    caller did (`poseops pull`)."""
    if check_first and (kept := unchanged_summary(dataset, params_file, allow_unlabeled, version, commit)) is not None:
        get_run_logger().info("no change since the last pull: DVC version %s kept, nothing rebuilt", kept.dvc_md5)
        publish(dataset, kept)
        return kept.to_dict()
    params = load_params(params_file, missing_ok=True)
    options = steps.pull_options(params.pull, allow_unlabeled=allow_unlabeled, version=version, commit=commit)
    with steps.dataset_lock(options.data_root, dataset):
        try:
            # quote(): Prefect passes these as they are instead of walking every task's JSON (seconds on a big export)
            snapshot = export_labels(dataset)
            ready = check_ready(quote(snapshot), options, dataset)
            images, downloaded = fetch_images(quote(ready.labeled), options.workers)
            kept = kept_version(dataset, options, quote(snapshot), quote(ready), quote(images))
            checks = None if kept else check_labels(dataset, quote(ready), quote(images), options)
            if checks is not None:  # flagged tasks filterable in Label Studio, refused or not
                tag_checked_tasks(quote(snapshot.tasks), checks)
        except LabelStudioError as e:
            tried = "" if isinstance(e, LabelStudioRefused) else f" (tried {ATTEMPTS} times)"
            raise type(e)(f"{e}\nThe pull of {dataset!r} stopped{tried}; {options.data_root / dataset} is unchanged. "
                          "Pull again once that is fixed: the images already downloaded stay cached.") from None
        if checks is not None and (why := labelchecks.refusal(checks, options.max_flagged, dataset)):
            raise steps.NotReady(f"{why} {options.data_root / dataset} is unchanged.")
        result = kept or build_dataset(dataset, options, quote(snapshot), quote(ready), quote(images))
    summary = dataclasses.replace(PullSummary.of(result, downloaded), label_checks=checks.to_dict() if checks else {})
    publish(dataset, summary)
    return summary.to_dict()


def publish(dataset: str, summary: PullSummary) -> None:
    """The pull's artifact (`pull-NAME`)."""
    create_markdown_artifact(key=artifact_key("pull", dataset), markdown=pull_markdown(summary),
                             description=f"pull of {dataset}")
