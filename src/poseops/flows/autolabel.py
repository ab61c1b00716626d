"""Flow `autolabel`: pre-label the tasks nobody labeled with the deployed model's predictions.

    poseops autolabel NAME --url http://127.0.0.1:3000     # through the running service
    poseops autolabel NAME --weights best.pt               # the model in-process

With `autolabel.task_runner: threads` (params.yaml) and a weights file, the model runs in this
process and the run is a pipeline (`poseops.autolabel_pipeline`): each batch's images are fetched (task
`fetch-batch`) and its predictions written (task `write-batch`) on threads while the model
works on the batch before, so the model never waits for Label Studio. With `dask` (a local
Dask cluster, or an existing one at `autolabel.dask_address`) each batch is a task on a
worker process (`predict-batch`), with one model per worker; through the service (--url), batches
run on threads that way too. The steps live in `poseops.autolabel`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.utilities.annotations import quote

from poseops import autolabel as steps
from poseops.autolabel_pipeline import LocalModel, run_pipeline
from poseops.datasets import DatasetRecord, load_record, project_of
from poseops.flows.quick import quick_flow
from poseops.flows.retries import NETWORK_RETRIES, label_studio
from poseops.imagecache import ImageCache, fetch_images
from poseops.params import AutolabelParams, load_params
from poseops.reports import AutolabelSummary, artifact_key, autolabel_markdown
from poseops.settings import load_settings
from poseops.skeleton import Skeleton, parse_skeleton


@dataclass(frozen=True)
class SkeletonText:
    """The dataset's skeleton spec as its YAML, for workers that do not have its file (plain strings: Dask
    rebuilds dataclasses in task arguments field by field, which a `Skeleton`'s nested tuples do not survive)."""

    text: str
    source: str

    @classmethod
    def of(cls, record: DatasetRecord) -> SkeletonText:
        record.skeleton_spec()  # checked here, where the file is
        return cls(Path(record.skeleton).read_text(encoding="utf-8"), record.skeleton)

    def parse(self) -> Skeleton:
        return parse_skeleton(self.text, self.source)


def task_runner(config: AutolabelParams):
    """The runner for the fan-out: Prefect's thread pool, or Dask (local cluster or an address)."""
    if config.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=config.workers)


@task(**NETWORK_RETRIES)
def find_tasks(dataset: str, model_version: str, redo: bool) -> tuple[int, list[dict], dict]:
    with label_studio(load_settings()) as client:
        project = project_of(client, dataset)
        report = steps.AutolabelReport(model_version)
        todo = [steps.slim(t) for t in steps.tasks_to_label(client, project.id, model_version, redo, report)]
    return project.id, todo, {"skipped_labeled": report.skipped_labeled, "skipped_done": report.skipped_done}


@task(**NETWORK_RETRIES)
def predict_batch(project_id: int, batch: list[dict], model_version: str, service_url: str | None,
                  weights: str | None, spec: SkeletonText, options: steps.AutolabelOptions) -> steps.AutolabelReport:
    """One batch: fetch its images, detect, write predictions. Runs on any worker, on any machine: it reads
    this worker's settings (Label Studio, POSEOPS_HOME) and downloads what it lacks into this worker's own
    image cache; nothing of the machine that started the run (its dataset record, its cache) is needed."""
    settings = load_settings()
    skeleton = spec.parse()
    report = steps.AutolabelReport(model_version)
    with label_studio(settings) as client:
        images, _ = fetch_images(client, batch, ImageCache(settings.home / "cache" / "images"), workers=options.workers)
        detect = steps.detector(service_url, weights, skeleton, options)
        steps.label_tasks(client, project_id, skeleton, batch, images, detect, model_version, options, report)
    return report


@flow(name="autolabel-batches")
def label_batches(project_id: int, batches: list[list[dict]], model_version: str, service_url: str | None,
                  weights: str | None, spec: SkeletonText,
                  options: steps.AutolabelOptions) -> list[steps.AutolabelReport]:
    futures = predict_batch.map(project_id, batches, model_version, service_url, weights, spec, options)
    return [f.result() for f in futures]


@task(name="fetch-batch", **NETWORK_RETRIES)
def fetch_batch(batch: list[dict], workers: int) -> dict[int, Path]:
    """One batch's images, from poseops' image cache or downloaded from Label Studio into it."""
    settings = load_settings()
    with label_studio(settings) as client:
        images, _ = fetch_images(client, batch, ImageCache(settings.home / "cache" / "images"), workers=workers)
    return images


@task(name="write-batch", **NETWORK_RETRIES)
def write_batch(project_id: int, predicted: list[tuple[dict, list[dict], float]], model_version: str,
                replace: bool) -> None:
    """One batch's predictions in one request (with `replace`, this version's older ones go first)."""
    with label_studio(load_settings()) as client:
        steps.write_predictions(client, project_id, predicted, model_version, replace)


def label_in_this_process(dataset: str, project_id: int, batches: list[list[dict]], model_version: str, weights: str,
                          options: steps.AutolabelOptions) -> steps.AutolabelReport:
    """Every batch through the pipeline: fetch and write tasks on threads, the model here (loaded once)."""
    record = load_record(load_settings(), dataset)
    model = LocalModel(steps.local_model(str(weights), record.skeleton), options)
    report = steps.AutolabelReport(model_version)
    logger = get_run_logger()

    def progress(done: int, total: int, predicted: int) -> None:
        logger.info("batch %d of %d: %d predicted", done, total, predicted)

    times = run_pipeline(batches, lambda batch: fetch_batch.submit(quote(batch), options.workers),
                         lambda predicted: write_batch.submit(project_id, quote(predicted), model_version, options.redo),
                         model, record.skeleton_spec(), options, report, on_batch=progress)
    logger.info("pipeline: %s", times.summary())
    return report


@task(**NETWORK_RETRIES)
def diversity_quota(predicted: dict[int, float], thumbnails: dict, quota: int,
                    model_version: str) -> tuple[dict[int, float], int]:
    """Near-identical pictures move back in the queue beyond the quota (poseops.diversity)."""
    from poseops.diversity import apply_quota

    with label_studio(load_settings()) as client:
        return apply_quota(client, predicted, thumbnails, quota, model_version)


@task(**NETWORK_RETRIES)
def show_version(project_id: int, model_version: str) -> None:
    with label_studio(load_settings()) as client:
        steps.show_model_version(client, project_id, model_version)


@quick_flow(name="autolabel")
def autolabel(dataset: str = "demo-people", service_url: str | None = None, weights: str | None = None,
              model_version: str | None = None, redo: bool = False, params_file: str = "params.yaml") -> dict:
    """Predictions from the deployed model for every task nobody labeled; least confident first in the queue."""
    if not service_url and not weights:
        raise steps.AutolabelError("give the service's URL (--url) or a weights file (--weights)")
    config = load_params(params_file, missing_ok=True).autolabel
    options = steps.AutolabelOptions.of(config, redo=redo)
    model_version = model_version or steps.model_version_of(service_url, weights)
    project_id, todo, skipped = find_tasks(dataset, model_version, redo)
    batches = steps.batches_of(todo, config.batch_size)
    if not batches:
        reports = []
    elif config.task_runner == "threads" and not service_url:
        reports = [label_in_this_process(dataset, project_id, batches, model_version, weights, options)]
    else:
        spec = SkeletonText.of(load_record(load_settings(), dataset))
        reports = label_batches.with_options(task_runner=task_runner(config))(
            project_id, batches, model_version, service_url, weights, spec, options)
    predicted = {int(k): v for r in reports for k, v in r.predicted.items()}
    failed = {int(k): v for r in reports for k, v in r.failed.items()}
    moved_back = 0
    if predicted and options.diversity_quota:
        thumbnails = {int(k): v for r in reports for k, v in r.thumbnails.items()}
        predicted, moved_back = diversity_quota(predicted, quote(thumbnails), options.diversity_quota, model_version)
    if predicted:
        show_version(project_id, model_version)
    summary = AutolabelSummary(dataset=dataset, model_version=model_version, predicted=len(predicted), failed=failed,
                               least_confident=sorted(predicted.items(), key=lambda kv: kv[1])[:20], score=options.score,
                               diversity_quota=options.diversity_quota, moved_back=moved_back, **skipped)
    create_markdown_artifact(key=artifact_key("autolabel", dataset), markdown=autolabel_markdown(summary),
                             description=f"autolabel of {dataset} with {model_version}")
    if failed:
        get_run_logger().warning("%d task(s) failed: %s", len(failed), list(failed.items())[:5])
    return summary.to_dict()
