"""Flow `improvement-loop`: pull labels → train → promote if at least as good → deploy → autolabel.

Each step is a subflow with its own artifact. The loop stops with a clear reason at the
ready gate, and never deploys a model that lost to the champion: the service keeps
running the champion, which then pre-labels the new tasks.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from poseops.deploy import service_server
from poseops.flows.autolabel import autolabel
from poseops.flows.deploy import deploy
from poseops.flows.pull_labels import pull_labels
from poseops.flows.train import train_flow
from poseops.params import load_params, parse_override
from poseops.pull import NotReady
from poseops.reports import LoopSummary, artifact_key, loop_markdown
from poseops.settings import load_settings


@flow(name="improvement-loop")
def improvement_loop(dataset: str = "demo-people", root: str = ".", overrides: list[str] | None = None,
                     autolabel_new: bool = True) -> dict:
    """Pull → train → promote if better → deploy → autolabel, each step a subflow.

    One loop of a dataset at a time: a second fails at once (`poseops.locks`, `loop-<dataset>`, across
    machines on the server profile); runs of the loop deployment queue behind its concurrency limit of 1.
    """
    from poseops.locks import exclusive

    settings = load_settings()
    with exclusive(settings, f"loop-{dataset}", wait_s=0, what=f"the improvement loop of {dataset!r}"):
        return _loop_steps(settings, dataset, root, overrides, autolabel_new)


def _loop_steps(settings, dataset: str, root: str, overrides: list[str] | None, autolabel_new: bool) -> dict:
    params_file = str(Path(root) / "params.yaml")
    summary = LoopSummary(dataset)

    def finish(outcome: str) -> dict:
        summary.outcome = outcome
        create_markdown_artifact(key=artifact_key("loop", dataset), markdown=loop_markdown(summary),
                                 description=f"improvement loop of {dataset}")
        return summary.to_dict()

    try:
        pulled = pull_labels(dataset=dataset, params_file=params_file)
    except NotReady as e:
        summary.steps.append(("pull labels", f"stopped: {e}"))
        get_run_logger().warning("stopped at the ready gate: %s", e)
        return finish("stopped at the ready gate")
    summary.steps.append(("pull labels", f"dataset version {pulled['dvc_md5']} "
                                         f"({pulled['train_images']} train / {pulled['val_images']} val)"))

    overrides = [f"dataset.name={dataset}", f"dataset.dir={pulled['dataset_dir']}", *(overrides or [])]
    trained = train_flow(root=root, overrides=overrides, promote=True)
    promotion = trained.get("promotion") or {}
    metrics = trained.get("metrics") or {}
    summary.steps.append(("train", f"model version {trained.get('version')}, run {trained.get('run_id')}, "
                                   f"pose mAP50-95 {metrics.get('pose_mAP50-95')}"))
    summary.steps.append(("promote", promotion.get("reason", "not compared")))

    if promotion.get("promoted") or not service_server(settings).answers():
        params = load_params(params_file, dict(map(parse_override, overrides)))
        deployed = deploy(model_uri=params.champion_uri, params_file=params_file)
        summary.steps.append(("deploy", f"{deployed['model']} (Bento {deployed['bento']}) at {deployed['url']}"))
    else:
        summary.steps.append(("deploy", "kept the running service: the new model is not better than the champion"))

    if autolabel_new:
        labeled = autolabel(dataset=dataset, service_url=settings.service_url, params_file=params_file)
        summary.steps.append(("autolabel", f"{labeled['predicted']} task(s) pre-labeled by {labeled['model_version']}"))
    return finish("completed")
