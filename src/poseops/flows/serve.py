"""Serve every flow as a Prefect deployment, with the schedules in params.yaml's `schedules` section.

    poseops prefect up      # the Prefect server with its UI, http://127.0.0.1:4200
    poseops serve-flows     # this: one long-running process for all deployments

Schedules are cron strings (empty: run only when triggered from the UI or the CLI).
`pause_on_shutdown=False` keeps the schedules active while this process restarts.
"""

from __future__ import annotations

from prefect import serve

from poseops.params import SchedulesParams, load_params
from poseops.settings import load_settings

LOOP_DEPLOYMENT = "improvement-loop/loop"  # <flow name>/<deployment name>: annotation events start this one


def deployments(config: SchedulesParams, service_url: str) -> list:
    from poseops.flows.autolabel import autolabel
    from poseops.flows.loop import improvement_loop
    from poseops.flows.pull_labels import pull_labels
    from poseops.flows.train import train_flow

    dataset = config.dataset
    return [
        pull_labels.to_deployment(name="pull-labels", cron=config.pull_labels, parameters={"dataset": dataset},
                                  description="Label Studio → DVC-versioned YOLO-pose dataset"),
        train_flow.to_deployment(name="train", cron=config.train,
                                 description="DVC pipeline prepare → train → evaluate → export, tracked in MLflow"),
        autolabel.to_deployment(name="autolabel", cron=config.autolabel,
                                parameters={"dataset": dataset, "service_url": service_url},
                                description="the deployed model pre-labels the tasks nobody labeled"),
        improvement_loop.to_deployment(name=LOOP_DEPLOYMENT.split("/")[1], cron=config.loop,
                                       parameters={"dataset": dataset}, concurrency_limit=1,  # one loop at a time
                                       description="pull → train → promote if better → deploy → autolabel"),
    ]


def serve_all(params_file: str = "params.yaml") -> None:
    config = load_params(params_file, missing_ok=True).schedules
    serve(*deployments(config, config.service_url or load_settings().service_url), pause_on_shutdown=False)
