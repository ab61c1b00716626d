"""Serve every flow as a Prefect deployment, with the schedules in params.yaml's `schedules` section.

    poseops prefect up      # the Prefect server with its UI, http://127.0.0.1:4200
    poseops serve-flows     # this: one long-running process for all deployments

Schedules are cron strings (empty: run only when triggered from the UI or the CLI).
`pause_on_shutdown=False` keeps the schedules active while this process restarts.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import serve

SCHEDULE_KEYS = {"dataset", "pull_labels", "train", "autolabel", "loop", "service_url"}
DEFAULT_SCHEDULES = {"dataset": "demo-people", "pull_labels": None, "train": None,
                     "autolabel": "0 * * * *", "loop": "0 3 * * *", "service_url": "http://127.0.0.1:3000"}


def schedules(params_file: Path = Path("params.yaml")) -> dict:
    params = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    section = (params or {}).get("schedules") or {}
    unknown = set(section) - SCHEDULE_KEYS
    if unknown:
        raise ValueError(f"params.yaml: unknown key schedules.{sorted(unknown)[0]} (allowed: {', '.join(sorted(SCHEDULE_KEYS))})")
    return {**DEFAULT_SCHEDULES, **section}


def deployments(config: dict) -> list:
    from flows.autolabel import autolabel
    from flows.loop import improvement_loop
    from flows.pull_labels import pull_labels
    from flows.train import train_flow

    dataset = config["dataset"]
    return [
        pull_labels.to_deployment(name="pull-labels", cron=config["pull_labels"], parameters={"dataset": dataset},
                                  description="Label Studio → DVC-versioned YOLO-pose dataset"),
        train_flow.to_deployment(name="train", cron=config["train"],
                            description="DVC pipeline prepare → train → evaluate → export, tracked in MLflow"),
        autolabel.to_deployment(name="autolabel", cron=config["autolabel"],
                                parameters={"dataset": dataset, "service_url": config["service_url"]},
                                description="the deployed model pre-labels the tasks nobody labeled"),
        improvement_loop.to_deployment(name="loop", cron=config["loop"], parameters={"dataset": dataset},
                                       description="pull → train → promote if better → deploy → autolabel"),
    ]


def serve_all(params_file: Path = Path("params.yaml")) -> None:
    serve(*deployments(schedules(params_file)), pause_on_shutdown=False)


if __name__ == "__main__":
    serve_all()
