"""Prefect flow: pull a Label Studio project into a DVC-versioned YOLO-pose dataset.

    poseops pull NAME              # runs this flow once
    python flows/pull_labels.py NAME

The steps live in `poseops.pull`; this file only sequences them as tasks, with
retries on the network steps, and publishes a summary artifact.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from poseops import pull as steps
from poseops.datasets import load_record, project_of
from poseops.labelstudio import LabelStudioClient, LabelStudioError, LabelStudioRefused
from poseops.settings import load_settings


def worth_retrying(task, task_run, state) -> bool:
    """Retry what may pass on a second try (Label Studio down or failing); not a refusal or bad data."""
    return not isinstance(state.data, LabelStudioRefused | steps.PullError | steps.NotReady)


NETWORK_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 5, 15], "retry_condition_fn": worth_retrying}


@task(**NETWORK_RETRIES)
def export_labels(dataset: str) -> steps.Snapshot:
    with LabelStudioClient(load_settings()) as client:
        return steps.export_snapshot(client, project_of(client, dataset).id)


@task
def check_ready(snapshot: steps.Snapshot, options: steps.PullOptions, dataset: str) -> steps.Readiness:
    ready = steps.check_ready(snapshot.tasks, options, dataset)
    for warning in ready.warnings:
        get_run_logger().warning(warning)
    return ready


@task(**NETWORK_RETRIES)
def fetch_images(labeled: list[dict], workers: int) -> tuple[dict[int, Path], int]:
    settings = load_settings()
    with LabelStudioClient(settings) as client:
        images, downloaded = steps.fetch_images(client, labeled, steps.ImageCache(settings.home / "cache" / "images"),
                                                workers=workers)
    get_run_logger().info("images: %d (%d downloaded, the rest from the cache)", len(images), downloaded)
    return images, downloaded


@task
def build_dataset(dataset: str, options: steps.PullOptions, snapshot: steps.Snapshot, ready: steps.Readiness,
                  images: dict[int, Path]) -> steps.PullResult:
    settings = load_settings()
    skeleton = load_record(settings, dataset).skeleton_spec()
    return steps.build_dataset(settings, dataset, skeleton, options, snapshot, ready, images,
                               settings.label_studio_url, say=get_run_logger().info)


def load_options(params_file: Path, **overrides) -> steps.PullOptions:
    params = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    return steps.pull_options((params or {}).get("pull"), **overrides)


@flow(name="pull-labels")
def pull_labels(dataset: str = "demo-people", params_file: str = "params.yaml", allow_unlabeled: bool | None = None,
                version: bool = True, commit: bool = True) -> dict:
    """Export the project's labels, check they are ready, convert them, and version the dataset with DVC."""
    options = load_options(Path(params_file), allow_unlabeled=allow_unlabeled, version=version, commit=commit)
    with steps.dataset_lock(options.data_root, dataset):
        try:
            snapshot = export_labels(dataset)
            ready = check_ready(snapshot, options, dataset)
            images, downloaded = fetch_images(ready.labeled, options.workers)
        except LabelStudioError as e:
            tried = "" if isinstance(e, LabelStudioRefused) else f" (tried {NETWORK_RETRIES['retries'] + 1} times)"
            raise type(e)(f"{e}\nThe pull of {dataset!r} stopped{tried}; {options.data_root / dataset} is unchanged. "
                          "Pull again once that is fixed: the images already downloaded stay cached.") from None
        result = build_dataset(dataset, options, snapshot, ready, images)
    summary = {**result.record, "dataset_dir": str(result.dataset_dir), "downloaded_images": downloaded,
               "dvc_md5": result.dvc_md5, "pushed": result.pushed,
               "git_commit": result.git_commit, "warnings": result.warnings, **result.manifest}
    create_markdown_artifact(key=artifact_key("pull", dataset), markdown=summary_markdown(summary),
                             description=f"pull of {dataset}")
    return summary


def artifact_key(prefix: str, name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"{prefix}-{name}".lower())).strip("-")


def summary_markdown(summary: dict) -> str:
    conversion = summary.get("conversion", {})
    rows = [
        ("dataset", summary["dataset"]),
        ("DVC version (md5)", summary.get("dvc_md5")),
        ("Label Studio project", f"{summary.get('label_studio_url')}/projects/{summary.get('label_studio_project_id')}"),
        ("export snapshot", summary.get("export_snapshot_id")),
        ("tasks / labeled", f"{summary.get('tasks')} / {summary.get('labeled_tasks')}"),
        ("train / val images", f"{summary.get('train_images')} / {summary.get('val_images')}"),
        ("git commit", summary.get("git_commit")),
        ("pushed to the DVC remote", summary.get("pushed")),
    ]
    lines = ["## Pulled labels", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    counts = conversion.get("keypoint_counts") or {}
    if counts:
        lines += ["", "### Labeled keypoints", "", "| keypoint | count |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in counts.items()]]
    problems = conversion.get("problems") or []
    if problems:
        lines += ["", f"### Dropped or refused ({len(problems)})", ""]
        lines += [f"- {p if isinstance(p, str) else p.get('message', p)}" for p in problems[:100]]
    for warning in summary.get("warnings") or []:
        lines += ["", f"> warning: {warning}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    pull_labels(dataset=sys.argv[1] if len(sys.argv) > 1 else "demo-people")
