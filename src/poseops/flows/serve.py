"""Serve every flow as a Prefect deployment, with the schedules in params.yaml's `schedules` section.

    poseops prefect up      # the Prefect server with its UI, http://127.0.0.1:4200
    poseops serve-flows     # this: one long-running process for all deployments

Schedules are cron strings (empty: run only when triggered from the UI or the CLI).
`pause_on_shutdown=False` keeps the schedules active while this process restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import serve

from poseops.params import SchedulesParams, load_params
from poseops.settings import load_settings

LOOP_DEPLOYMENT = "improvement-loop/loop"  # <flow name>/<deployment name>: annotation events start this one


@dataclass(frozen=True)
class FlowDeployment:
    """One deployment of a flow: the same list for `serve-flows` and `deploy-flows --pool` (`poseops.flows.pool`)."""

    flow: str  # the flow object's module path, e.g. poseops.flows.train.train_flow (a work pool's entrypoint)
    name: str  # the deployment's name
    cron: str | None  # from params.yaml `schedules`; None: only when triggered
    description: str
    parameters: dict = field(default_factory=dict)
    concurrency_limit: int | None = None


def flow_deployments(config: SchedulesParams, service_url: str) -> list[FlowDeployment]:
    """Every flow's deployment, scheduled from params.yaml `schedules`."""
    dataset = config.dataset
    return [
        FlowDeployment("poseops.flows.pull_labels.pull_labels", "pull-labels", config.pull_labels,
                       "Label Studio → DVC-versioned YOLO-pose dataset", {"dataset": dataset}),
        FlowDeployment("poseops.flows.train.train_flow", "train", config.train,
                       "DVC pipeline prepare → train → evaluate → export, tracked in MLflow"),
        FlowDeployment("poseops.flows.autolabel.autolabel", "autolabel", config.autolabel,
                       "the deployed model pre-labels the tasks nobody labeled",
                       {"dataset": dataset, "service_url": service_url}),
        FlowDeployment("poseops.flows.loop.improvement_loop", LOOP_DEPLOYMENT.split("/")[1], config.loop,
                       "pull → train → promote if better → deploy → autolabel", {"dataset": dataset},
                       concurrency_limit=1),  # one loop at a time
    ]


def deployments(config: SchedulesParams, service_url: str) -> list:
    from prefect.utilities.importtools import import_object

    return [import_object(d.flow).to_deployment(name=d.name, cron=d.cron, parameters=d.parameters or None,
                                                description=d.description, concurrency_limit=d.concurrency_limit)
            for d in flow_deployments(config, service_url)]


def serve_all(params_file: str = "params.yaml") -> None:
    config = load_params(params_file, missing_ok=True).schedules
    serve(*deployments(config, config.service_url or load_settings().service_url), pause_on_shutdown=False)
