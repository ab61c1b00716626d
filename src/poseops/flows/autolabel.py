"""Flow `autolabel`: pre-label the tasks nobody labeled with the deployed model's predictions.

    poseops autolabel NAME --url http://127.0.0.1:3000     # through the running service
    poseops autolabel NAME --weights best.pt               # the model in-process

The fan-out (one task per batch of images) runs on the task runner that params.yaml's
`autolabel.task_runner` names: `threads` on this machine, or `dask` (a local Dask cluster,
or an existing one at `autolabel.dask_address`) to spread thousands of images over workers.
The steps live in `poseops.autolabel`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from poseops import autolabel as steps
from poseops.datasets import load_record, project_of
from poseops.flows.retries import NETWORK_RETRIES, label_studio
from poseops.imagecache import ImageCache, fetch_images
from poseops.params import AutolabelParams, load_params
from poseops.reports import AutolabelSummary, artifact_key, autolabel_markdown
from poseops.settings import load_settings


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
def predict_batch(dataset: str, project_id: int, batch: list[dict], model_version: str, service_url: str | None,
                  weights: str | None, options: steps.AutolabelOptions) -> steps.AutolabelReport:
    """One batch: fetch its images (cache first), detect, write predictions. Runs on any worker."""
    settings = load_settings()
    record = load_record(settings, dataset)
    report = steps.AutolabelReport(model_version)
    with label_studio(settings) as client:
        images, _ = fetch_images(client, batch, ImageCache(settings.home / "cache" / "images"), workers=options.workers)
        detect = steps.detector(service_url, weights, record.skeleton, options)
        steps.label_tasks(client, project_id, record.skeleton_spec(), batch, images, detect, model_version, options,
                          report)
    return report


@flow(name="autolabel-batches")
def label_batches(dataset: str, project_id: int, batches: list[list[dict]], model_version: str,
                  service_url: str | None, weights: str | None,
                  options: steps.AutolabelOptions) -> list[steps.AutolabelReport]:
    futures = predict_batch.map(dataset, project_id, batches, model_version, service_url, weights, options)
    return [f.result() for f in futures]


@task(**NETWORK_RETRIES)
def show_version(project_id: int, model_version: str) -> None:
    with label_studio(load_settings()) as client:
        steps.show_model_version(client, project_id, model_version)


@flow(name="autolabel")
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
    reports = label_batches.with_options(task_runner=task_runner(config))(
        dataset, project_id, batches, model_version, service_url, weights, options) if batches else []
    predicted = {int(k): v for r in reports for k, v in r.predicted.items()}
    failed = {int(k): v for r in reports for k, v in r.failed.items()}
    if predicted:
        show_version(project_id, model_version)
    summary = AutolabelSummary(dataset=dataset, model_version=model_version, predicted=len(predicted), failed=failed,
                               least_confident=sorted(predicted.items(), key=lambda kv: kv[1])[:20], **skipped)
    create_markdown_artifact(key=artifact_key("autolabel", dataset), markdown=autolabel_markdown(summary),
                             description=f"autolabel of {dataset} with {model_version}")
    if failed:
        get_run_logger().warning("%d task(s) failed: %s", len(failed), list(failed.items())[:5])
    return summary.to_dict()
