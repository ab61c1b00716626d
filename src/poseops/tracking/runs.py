"""What is logged to an MLflow run: params, tags, metrics, artifacts, the dataset it trained on.

Runs are reopened and ended with the client itself (`mlc.update_run(run_id, status="RUNNING")`,
`mlc.set_terminated(run_id, status)`); these functions add what the client lacks: values as
text, None skipped, batches, files and folders alike.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from poseops.tracking.store import experiment_id

# The process that holds a run RUNNING, its machine and since when (a later process with its pid is another one).
PID_TAG, HOST_TAG, SINCE_TAG = "poseops.pid", "poseops.host", "poseops.held_since"


def text(value: Any) -> str:
    """A param or tag value as MLflow stores it: JSON for containers, "" for None."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return "" if value is None else str(value)


def process_tags() -> dict[str, str]:
    """Tags naming this process as the one running a run (a dead one's runs are closed by the next training)."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), SINCE_TAG: f"{time.time():.3f}"}


def start_run(mlc, experiment: str, run_name: str, tags: Mapping[str, str]) -> str:
    """A new run in `experiment` (created when missing), held by this process; returns its id."""
    run = mlc.create_run(experiment_id(mlc, experiment), run_name=run_name, tags={**tags, **process_tags()})
    return run.info.run_id


def reopen_run(mlc, run_id: str) -> None:
    """Set a finished run RUNNING again to add to it, held by this process."""
    mlc.update_run(run_id, status="RUNNING")
    set_tags(mlc, run_id, process_tags())


def orphaned_runs(mlc, experiment: str) -> list:
    """The experiment's RUNNING runs held by a process of this machine that no longer exists (killed, crashed).

    A pid that lives again but was started after the run was taken belongs to another process.
    """
    import psutil
    from mlflow.exceptions import MlflowException

    try:
        exp = mlc.get_experiment_by_name(experiment)
    except MlflowException:
        return []
    if exp is None:
        return []
    host = socket.gethostname().replace("'", "")
    runs = mlc.search_runs([exp.experiment_id], f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
                           max_results=1000)
    dead = []
    for run in runs:
        pid = int(run.data.tags.get(PID_TAG, "0") or 0)
        if not pid or pid == os.getpid():
            continue
        try:
            since = float(run.data.tags.get(SINCE_TAG) or run.info.start_time / 1000)
            alive = psutil.Process(pid).create_time() <= since + 1
        except psutil.Error:
            alive = False
        if not alive:
            dead.append(run)
    return dead


def log_params(mlc, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params once; a value already logged with the same text is skipped (MLflow refuses changes)."""
    from mlflow.entities import Param

    logged = mlc.get_run(run_id).data.params
    fresh = [Param(k, text(v)) for k, v in params.items() if k not in logged]
    for i in range(0, len(fresh), 100):
        mlc.log_batch(run_id, params=fresh[i:i + 100])


def set_tags(mlc, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set the tags whose value is not None, in one call."""
    from mlflow.entities import RunTag

    mlc.log_batch(run_id, tags=[RunTag(k, text(v)) for k, v in tags.items() if v is not None])


def log_metrics(mlc, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log the metrics whose value is not None at `step`, in one call."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
    if batch:
        mlc.log_batch(run_id, metrics=batch)


def log_artifacts(mlc, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    """Log each file or folder that exists under `artifact_path`; missing ones are skipped."""
    for path in paths:
        if path.is_dir():
            mlc.log_artifacts(run_id, str(path), artifact_path=artifact_path)
        elif path.is_file():
            mlc.log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_dataset(mlc, run_id: str, name: str, digest: str, source: str, context: str = "training") -> None:
    """Record the dataset as a run input (MLflow's Datasets column): name, DVC hash as digest, where it lives."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=digest[:36], source_type="local", source=json.dumps({"uri": source}))
    mlc.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])


def last_logged_step(mlc, run_id: str, key: str = "fitness") -> int:
    """The last step of `key` logged to the run (0 when none)."""
    history = mlc.get_metric_history(run_id, key)
    return max((m.step for m in history), default=0)
