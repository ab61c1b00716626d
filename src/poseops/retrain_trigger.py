"""Retraining from annotation events: Label Studio's webhooks count changed labels; enough of them start the loop.

Each annotation created, updated or deleted in a dataset's project adds to that dataset's count.
When the count reaches `schedules.retrain_after` and the last loop this started is older than
`schedules.retrain_cooldown_minutes`, the `improvement-loop/loop` deployment (served by
`poseops serve-flows`) gets one run, with the dataset as its parameter, and the count starts
again. A burst of events past the threshold therefore starts one loop, not one per event; a
loop already scheduled or running is not joined by another (the check here, and the
deployment's concurrency limit of 1 on the Prefect server). The counts and the time of the
last start live in `<home>/ml-backend/retrain.json`, under a file lock, so a restarted backend
keeps them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from poseops.params import SchedulesParams
from poseops.processes import file_lock
from poseops.settings import Settings, secure_home

log = logging.getLogger(__name__)

ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED"}


@dataclass(frozen=True)
class Decision:
    dataset: str | None
    counted: int  # annotations this event changed
    pending: int  # changed since the last loop this started
    start: bool  # whether this event starts the loop
    reason: str

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "counted": self.counted, "pending": self.pending, "started_loop": self.start,
                "reason": self.reason}


def changed_annotations(event: dict) -> int:
    """How many annotations a Label Studio webhook event reports changed (0 for other events)."""
    if event.get("action") not in ANNOTATION_ACTIONS:
        return 0
    many = event.get("annotations")
    return len(many) if isinstance(many, list) else 1


class RetrainTrigger:
    def __init__(self, settings: Settings, config: SchedulesParams, clock=time.time) -> None:
        self.config, self.clock = config, clock
        self.state_file = secure_home(settings.home) / "ml-backend" / "retrain.json"
        self.state_file.parent.mkdir(parents=True, exist_ok=True)

    def _read(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _write(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.replace(self.state_file)

    def decide(self, event: dict) -> Decision:
        """Count the event and decide, as one step no other event interleaves with."""
        project = event.get("project") if isinstance(event.get("project"), dict) else {}
        dataset = project.get("title") if isinstance(project.get("title"), str) else None
        counted = changed_annotations(event)
        if not counted or not dataset:
            return Decision(dataset, 0, 0, False, "not an annotation change of a dataset's project")
        with file_lock(self.state_file.with_suffix(".lock")):
            state = self._read()
            entry = state.setdefault(dataset, {"pending": 0, "last_start": 0.0})
            entry["pending"] += counted
            now, threshold = self.clock(), self.config.retrain_after
            cooldown_s = self.config.retrain_cooldown_minutes * 60
            if threshold <= 0:
                start, reason = False, "schedules.retrain_after is 0: events never start the loop"
            elif entry["pending"] < threshold:
                start, reason = False, f"{entry['pending']} of {threshold} changed annotations"
            elif now - entry["last_start"] < cooldown_s:
                wait = cooldown_s - (now - entry["last_start"])
                start, reason = False, f"cooling down: the last loop started {(now - entry['last_start']) / 60:.1f} " \
                                       f"min ago; the next may start in {wait / 60:.1f} min"
            else:
                start, reason = True, f"{entry['pending']} changed annotations reached {threshold}: loop started"
                entry["pending"], entry["last_start"] = 0, now
            self._write(state)
        return Decision(dataset, counted, entry["pending"], start, reason)

    def receive(self, event: dict) -> dict:
        decision = self.decide(event)
        if decision.start:
            # the webhook answers at once; the Prefect API call happens beside it
            threading.Thread(target=start_loop, args=(decision.dataset,), daemon=True).start()
        return decision.to_dict()


def start_loop(dataset: str) -> str | None:
    """One run of the loop deployment for `dataset`, unless one is already scheduled or running. Returns its id."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.deployments import run_deployment

    from poseops.flows.serve import LOOP_DEPLOYMENT

    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(LOOP_DEPLOYMENT)
            active = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]))),
                sort=FlowRunSort.ID_DESC, limit=1)
        if active:
            log.info("a loop run is already %s (%s): the new labels go into it or the next",
                     active[0].state_type.value.lower(), active[0].name)
            return None
        run = run_deployment(LOOP_DEPLOYMENT, parameters={"dataset": dataset}, timeout=0,
                             tags=["poseops", "annotation-trigger"])
        log.info("started loop run %s for dataset %s", run.name, dataset)
        return str(run.id)
    except Exception as e:  # noqa: BLE001 - the backend keeps serving; the log says why no loop started
        log.error("could not start the loop for %s: %s: %s (is `poseops serve-flows` running on the Prefect server?)",
                  dataset, type(e).__name__, e)
        return None

