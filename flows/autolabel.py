"""Prefect flow: pre-label the tasks nobody labeled with the deployed model's predictions.

    poseops autolabel NAME --url http://127.0.0.1:3000     # through the running service
    poseops autolabel NAME --weights best.pt               # the model in-process

The fan-out (one task per batch of images) runs on the task runner that params.yaml's
`autolabel.task_runner` names: `threads` on this machine, or `dask` (a local Dask cluster,
or an existing one at `autolabel.dask_address`) to spread thousands of images over workers.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.pull_labels import artifact_key
from poseops import autolabel as steps
from poseops.datasets import load_record, project_of
from poseops.labelstudio import LabelStudioClient
from poseops.pull import ImageCache, fetch_images
from poseops.settings import load_settings

NETWORK_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 5, 15]}
AUTOLABEL_KEYS = {"task_runner": str, "dask_address": str, "batch_size": int, "workers": int,
                  "conf_thres": float, "iou_thres": float, "keypoint_conf": float}


def autolabel_params(params_file: Path) -> dict:
    params = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    section = (params or {}).get("autolabel") or {}
    for key, value in section.items():
        if key not in AUTOLABEL_KEYS:
            raise ValueError(f"params.yaml: unknown key autolabel.{key} (allowed: {', '.join(sorted(AUTOLABEL_KEYS))})")
        if value is not None and not isinstance(value, AUTOLABEL_KEYS[key]) and not (
                AUTOLABEL_KEYS[key] is float and isinstance(value, int)):
            raise ValueError(f"params.yaml: autolabel.{key} must be a {AUTOLABEL_KEYS[key].__name__}, not {value!r}")
    if section.get("task_runner", "threads") not in ("threads", "dask"):
        raise ValueError("params.yaml: autolabel.task_runner must be 'threads' or 'dask'")
    return section


def task_runner(config: dict):
    """The runner for the fan-out: Prefect's thread pool, or Dask (local cluster or an address)."""
    if config.get("task_runner", "threads") == "dask":
        from prefect_dask import DaskTaskRunner

        address = config.get("dask_address")
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.get("workers", 2), "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=config.get("workers", 4))


@functools.lru_cache(maxsize=2)
def _local_model(weights: str, skeleton_path: str):
    """The model in this process (one per worker process), loaded once."""
    from poseops.inference import PoseModel
    from poseops.skeleton import load_skeleton

    return PoseModel(weights, load_skeleton(skeleton_path))


def detector(service_url: str | None, weights: str | None, skeleton_path: str, options: steps.AutolabelOptions):
    """bytes → detections, through the service or the local model."""
    if service_url:
        from poseops.client import DetectClient

        client = DetectClient(service_url)
        return lambda image: client.detect(image, conf_thres=options.conf_thres, iou_thres=options.iou_thres)
    import cv2
    import numpy as np

    model = _local_model(str(weights), skeleton_path)

    def detect(image: bytes):
        array = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        return model.detect(array, options.conf_thres, options.iou_thres)

    return detect


def slim(task: dict) -> dict:
    """What a batch needs of a task (flow parameters travel serialized, so keep them small)."""
    data = task.get("data") or {}
    return {"id": task["id"], "data": {k: data[k] for k in ("image", "sha256") if k in data},
            "predictions": [{"id": p["id"], "model_version": p.get("model_version")} for p in task.get("predictions") or []]}


@task(**NETWORK_RETRIES)
def find_tasks(dataset: str, model_version: str, redo: bool) -> tuple[int, list[dict], dict]:
    with LabelStudioClient(load_settings()) as client:
        project = project_of(client, dataset)
        report = steps.AutolabelReport(model_version)
        todo = [slim(t) for t in steps.tasks_to_label(client, project.id, model_version, redo, report)]
    return project.id, todo, {"skipped_labeled": report.skipped_labeled, "skipped_done": report.skipped_done}


@task(**NETWORK_RETRIES)
def predict_batch(dataset: str, project_id: int, batch: list[dict], model_version: str, service_url: str | None,
                  weights: str | None, options: steps.AutolabelOptions) -> dict:
    """One batch: fetch its images (cache first), detect, write predictions. Runs on any worker."""
    settings = load_settings()
    record = load_record(settings, dataset)
    skeleton = record.skeleton_spec()
    report = steps.AutolabelReport(model_version)
    with LabelStudioClient(settings) as client:
        images, _ = fetch_images(client, batch, ImageCache(settings.home / "cache" / "images"), workers=options.workers)
        detect = detector(service_url, weights, record.skeleton, options)
        steps.label_tasks(client, project_id, skeleton, batch, images, detect, model_version, options, report)
    return {"predicted": report.predicted, "failed": report.failed}


@flow(name="autolabel-batches")
def label_batches(dataset: str, project_id: int, batches: list[list[dict]], model_version: str,
                  service_url: str | None, weights: str | None, options: steps.AutolabelOptions) -> list[dict]:
    futures = predict_batch.map(dataset, project_id, batches, model_version, service_url, weights, options)
    return [f.result() for f in futures]


def model_version_of(service_url: str | None, weights: str | None) -> str:
    """The registered model version the service runs (from its metadata), or the weights file's identity."""
    if service_url:
        from poseops.client import DetectClient

        with DetectClient(service_url) as client:
            meta = client.metadata()
        model = meta.get("model") or {}
        name, version = model.get("name"), model.get("version")
        if name and version:
            return f"{name}:{version}"
        return f"{model.get('weights', 'model')}@{str(model.get('sha256', ''))[:12]}"
    from poseops.inference import file_sha256
    from poseops.weights import resolve_weights

    path = Path(resolve_weights(str(weights)))
    return f"{path.name}@{file_sha256(path)[:12]}"


@flow(name="autolabel")
def autolabel(dataset: str = "demo-people", service_url: str | None = None, weights: str | None = None,
              model_version: str | None = None, redo: bool = False, params_file: str = "params.yaml") -> dict:
    """Predictions from the deployed model for every task nobody labeled; least confident first in the queue."""
    if not service_url and not weights:
        raise ValueError("give the service's URL (--url) or a weights file (--weights)")
    config = autolabel_params(Path(params_file))
    options = steps.AutolabelOptions(
        conf_thres=config.get("conf_thres", 0.25), iou_thres=config.get("iou_thres", 0.45),
        keypoint_conf=config.get("keypoint_conf", 0.5), redo=redo, workers=config.get("workers", 4))
    model_version = model_version or model_version_of(service_url, weights)
    project_id, todo, skipped = find_tasks(dataset, model_version, redo)
    size = config.get("batch_size", 16)
    batches = [todo[i:i + size] for i in range(0, len(todo), size)]
    results = label_batches.with_options(task_runner=task_runner(config))(
        dataset, project_id, batches, model_version, service_url, weights, options) if batches else []
    predicted = {int(k): v for r in results for k, v in r["predicted"].items()}
    failed = {int(k): v for r in results for k, v in r["failed"].items()}
    if predicted:
        with LabelStudioClient(load_settings()) as client:
            steps.show_model_version(client, project_id, model_version)
    summary = {"dataset": dataset, "model_version": model_version, "predicted": len(predicted), "failed": failed,
               **skipped, "least_confident": sorted(predicted.items(), key=lambda kv: kv[1])[:20]}
    create_markdown_artifact(key=artifact_key("autolabel", dataset), markdown=summary_markdown(summary),
                             description=f"autolabel of {dataset} with {model_version}")
    if failed:
        get_run_logger().warning("%d task(s) failed: %s", len(failed), list(failed.items())[:5])
    return summary


def summary_markdown(summary: dict) -> str:
    lines = [
        "## Autolabel", "",
        f"Model version **{summary['model_version']}** pre-labeled **{summary['predicted']}** task(s) of "
        f"`{summary['dataset']}`; {summary['skipped_labeled']} already labeled, {summary['skipped_done']} already "
        f"pre-labeled by this version, {len(summary['failed'])} failed.", "",
        "The project now serves the **least confident tasks first** (Label Studio's uncertainty sampling): "
        "fixing those teaches the next model the most.", "",
        "| task | score (mean confidence) |", "|---|---|",
        *[f"| {task_id} | {score:.3f} |" for task_id, score in summary["least_confident"]],
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    autolabel(dataset=sys.argv[1] if len(sys.argv) > 1 else "demo-people", service_url=sys.argv[2] if len(sys.argv) > 2 else None)
