"""Resuming: whether an interrupted training can go on from its last.pt, and closing dead runs.

A training is identified by its fingerprint (the train params, device and dataset); an
interrupted one with the same fingerprint goes on from last.pt when `train.resume` allows.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from poseops.params import Params
from poseops.processes import alive
from poseops.tracking.metrics import read_epochs
from poseops.tracking.runs import PID_TAG, last_logged_step, orphaned_runs, set_tags
from poseops.tracking.store import client
from poseops.training.dataset import DatasetInfo, read_dataset_info
from poseops.training.layout import Layout, TrainingError, read_state, write_state
from poseops.weights import UnsafeWeightsError, load_checkpoint


@dataclass(frozen=True)
class Resumable:
    """An interrupted training that can go on: its run, the epochs its last.pt holds, the last.pt."""

    run_id: str
    epochs_done: int
    last: Path


def fingerprint(params: Params, dataset: DatasetInfo, data_yaml_text: str) -> str:
    """Identifies what a training trains: its params (but `resume`), device, dataset and data.yaml."""
    train = {k: v for k, v in asdict(params.train).items() if k != "resume"}
    blob = json.dumps({"train": train, "device": params.device, "dataset": dataset.dvc_hash,
                       "data": data_yaml_text}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_epochs(last: Path) -> int | None:
    """How many epochs an unfinished last.pt holds, or None when it cannot be resumed (missing, damaged, finished)."""
    if not last.is_file():
        return None
    try:
        ckpt = load_checkpoint(last)  # weights only: a last.pt that would run code is refused, naming the file
    except UnsafeWeightsError as e:
        if e.damaged:  # a last.pt cut short by a kill while it was written
            return None
        raise
    if ckpt.get("epoch", -1) < 0 or ckpt.get("optimizer") is None:
        return None
    return int(ckpt["epoch"]) + 1


def settle_dead_run(mlc, train_dir: Path) -> dict[str, Any]:
    """Close the run of a training whose process died without saying so (SIGKILL, out of memory, power loss).

    Its MLflow run still reads RUNNING: it is marked FAILED, tagged `poseops.interrupted` with
    why, and the state file says `interrupted`. A training still alive on this machine is an error.
    """
    state = read_state(train_dir)
    if state.get("status") != "running" or not state.get("run_id"):
        return state
    pid = state.get("pid")
    if pid and pid != os.getpid() and state.get("host") == socket.gethostname() and alive(pid):
        raise TrainingError(f"a training (pid {pid}) is still running in {train_dir}: wait for it to end, "
                            f"or stop it (kill {pid}) and run again")
    if mlc.get_run(state["run_id"]).info.status == "RUNNING":
        _mark_failed(mlc, state["run_id"], pid, len(read_epochs(train_dir / "results.csv")))
    state = {**state, "status": "interrupted"}
    write_state(train_dir, state)
    return state


def _mark_failed(mlc, run_id: str, pid: Any, epochs: int) -> None:
    set_tags(mlc, run_id, {
        "poseops.interrupted": f"the training process (pid {pid}) ended after {epochs} epoch(s) without closing "
                               "this run: killed (SIGKILL, out of memory) or crashed; marked FAILED by the next "
                               f"training at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"})
    mlc.set_terminated(run_id, status="FAILED")


def fail_orphaned_runs(mlc, experiment: str) -> list[str]:
    """Mark FAILED the experiment's runs still RUNNING whose process on this machine is gone; their ids.

    The train folder's state file names the last run only, and `dvc exp run` puts back the folder
    of the last finished training before it starts (a killed one's state is lost): each run names
    the process holding it (`poseops.pid`, `poseops.host`), which is checked instead.
    """
    failed = []
    for run in orphaned_runs(mlc, experiment):
        _mark_failed(mlc, run.info.run_id, run.data.tags.get(PID_TAG), last_logged_step(mlc, run.info.run_id))
        failed.append(run.info.run_id)
    return failed


def resume_point(params: Params, state: dict[str, Any], fingerprint: str, last: Path) -> tuple[int | None, str]:
    """The epochs the interrupted training completed when it can go on from last.pt, else None and why not."""
    if state.get("status") != "interrupted" or not state.get("run_id"):
        return None, "the last training there " + ("finished" if state.get("status") == "finished" else "is unknown")
    if not params.train.resume:
        return None, "train.resume is false in params.yaml"
    if state.get("fingerprint") != fingerprint:
        return None, "the training params or the dataset differ from the interrupted training's"
    done = checkpoint_epochs(last)
    if done is None:
        return None, f"{last} is missing or unreadable (killed while it was written?)"
    return done, ""


def interrupted_training(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None) -> Resumable:
    """What `poseops train --resume` continues: the interrupted run and its epochs; an error saying why when none.

    A dead training's run is marked FAILED on the way (see `settle_dead_run`).
    """
    lay = layout.under(root.resolve())
    mlc = mlc or client()
    state = settle_dead_run(mlc, lay.train)
    if not state.get("run_id"):
        raise TrainingError(f"nothing to resume in {lay.train}: no training ran there; run `poseops train` "
                            "without --resume")
    current = fingerprint(params, read_dataset_info(lay), (lay.prepared / "data.yaml").read_text(encoding="utf-8"))
    last = lay.train / "weights" / "last.pt"
    done, why = resume_point(params, state, current, last)
    if done is None:
        raise TrainingError(f"nothing to resume in {lay.train}: {why}; run `poseops train` without --resume "
                            "to train from the start")
    return Resumable(run_id=state["run_id"], epochs_done=done, last=last)


def drop_epochs_after(results_csv: Path, epochs: int) -> None:
    """Keep results.csv's rows up to `epochs`, the epochs that last.pt holds (a kill can fall in between)."""
    if not results_csv.is_file():
        return
    header, *rows = results_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [row for row in rows if row.strip() and int(float(row.split(",")[0])) <= epochs]
    results_csv.write_text("".join([header, *kept]), encoding="utf-8")
