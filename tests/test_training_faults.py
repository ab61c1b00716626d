"""Training under faults: `poseops train` killed mid-training, stopped by a signal, facing a locked
or unreachable MLflow store. Real processes, a real MLflow SQLite store, tiny CPU trainings
(coco8-pose, imgsz 160) in projects made like tests/test_training.py's.

A registered model (the shared pretrained weights) holds `champion` from the start, so that
each test can check that a failed training did not move it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import SHARED
from request_log import HangUp
from test_training import GENTLE, MODEL, make_project

from poseops import tracking, training

POSEOPS = Path(sys.executable).parent / "poseops"
TRAIN = ["train", "--no-dvc", "--no-promote"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh SQLite store whose `champion` is the pretrained model, and the environment to train against it."""
    home = tmp_path_factory.mktemp("faults-home")
    db = home / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    env.update({"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "POSEOPS_HOME": str(home), "YOLO_OFFLINE": "true",
                "YOLO_CONFIG_DIR": str(home / "ultralytics"), "POSEOPS_WEIGHTS_DIR": str(SHARED / "weights")})
    mlc = tracking.client(env["MLFLOW_TRACKING_URI"])
    run_id = tracking.start_run(mlc, "poseops", "pretrained", {})
    mlc.log_artifact(run_id, str(SHARED / "weights" / "yolo11n-pose.pt"), training.MODEL_ARTIFACTS)
    mlc.set_terminated(run_id)
    ref = tracking.register_version(mlc, MODEL, run_id, training.MODEL_ARTIFACTS, {"run_id": run_id})
    mlc.set_registered_model_alias(MODEL, "champion", ref.version)
    return SimpleNamespace(db=db, env=env, mlc=mlc, champion=ref.version)


def project(path: Path, epochs: int) -> Path:
    return make_project(path, git=False, overrides={**GENTLE, "train.epochs": epochs, "train.plots": False})


def start_training(root: Path, env: dict, *args: str) -> subprocess.Popen:
    """`poseops train` in its own process group (as a shell job), its output in <root>/train.log."""
    log = (root / "train.log").open("w")
    return subprocess.Popen([str(POSEOPS), *TRAIN, "--root", str(root), *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def run_training(root: Path, env: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(POSEOPS), *TRAIN, "--root", str(root), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def wait_for_epoch(proc: subprocess.Popen, root: Path, mlc, epoch: int, timeout: float = 180) -> str:
    """The run id once the run has the metrics of `epoch` (its last.pt is saved before they are logged)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (root / "train.log").read_text()[-3000:]
        run_id = training.read_state(root / "runs" / "train").get("run_id")
        if run_id and tracking.last_logged_step(mlc, run_id) >= epoch:
            return run_id
        time.sleep(0.5)
    raise AssertionError(f"epoch {epoch} was not logged within {timeout} s")


def wait_for_output(proc: subprocess.Popen, root: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in (root / "train.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (root / "train.log").read_text()[-3000:]
        time.sleep(0.2)


def results_rows(root: Path) -> list[str]:
    return (root / "runs" / "train" / "results.csv").read_text().splitlines()[1:]


def champion(mlc) -> str:
    return str(mlc.get_model_version_by_alias(MODEL, "champion").version)


def versions_of(mlc, run_id: str) -> list[str]:
    return [str(v.version) for v in mlc.search_model_versions(f"run_id='{run_id}'")]


class LockedStore:
    """Another process holding an exclusive lock on the SQLite store (`BEGIN EXCLUSIVE`) until released."""

    def __init__(self, db: Path):
        code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
                "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.readline(); c.execute('COMMIT')")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.communicate("\n", timeout=10)


@pytest.mark.integration
def test_killed_training_is_marked_failed_and_resumes_from_last_pt(store, tmp_path):
    mlc, root = store.mlc, project(tmp_path / "killed", epochs=3)
    proc = start_training(root, store.env)
    try:
        killed_run = wait_for_epoch(proc, root, mlc, 1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job, as a kill -9 or the OOM killer would
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = training.checkpoint_epochs(root / "runs" / "train" / "weights" / "last.pt")
    assert done in (1, 2), "killed before the training finished"
    before = results_rows(root)
    assert mlc.get_run(killed_run).info.status == "RUNNING"  # nobody could end it
    assert versions_of(mlc, killed_run) == [] and champion(mlc) == store.champion

    resumed = run_training(root, store.env, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"after epoch {done} (interrupted MLflow run {killed_run})" in resumed.stdout
    # the killed run: FAILED, saying why, and pointing to the run that went on
    old = mlc.get_run(killed_run)
    assert old.info.status == "FAILED" and "killed (SIGKILL, out of memory) or crashed" in old.data.tags["poseops.interrupted"]
    new_run = old.data.tags["poseops.resumed_by_run"]
    assert versions_of(mlc, killed_run) == []
    # the resumed run: from last.pt at the next epoch, to the end, registered
    new = mlc.get_run(new_run)
    assert new.info.status == "FINISHED"
    assert new.data.tags["poseops.resumed_from"] == str(root.resolve() / "runs" / "train" / "weights" / "last.pt")
    assert new.data.tags["poseops.resumed_from_run"] == killed_run
    assert new.data.tags["poseops.resumed_at_epoch"] == str(done + 1)
    rows = results_rows(root)
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3]
    assert rows[:done] == before[:done]  # the epochs before the kill were not trained again
    assert [m.step for m in mlc.get_metric_history(new_run, "fitness")] == [1, 2, 3]
    assert len(versions_of(mlc, new_run)) == 1
    assert champion(mlc) == store.champion  # --no-promote


@pytest.mark.integration
def test_sigterm_ends_the_run_as_killed_at_once(store, tmp_path):
    """Also: a store locked when the training starts is waited for, and training goes on once it is free."""
    mlc, root = store.mlc, project(tmp_path / "stopped", epochs=3)
    lock = LockedStore(store.db)
    proc = start_training(root, store.env)
    try:
        wait_for_output(proc, root, "is locked by another process: waiting up to 60 s")
        time.sleep(2)
        assert proc.poll() is None and not (root / "runs").exists()  # waiting, not training
        lock.release()
        run_id = wait_for_epoch(proc, root, mlc, 1)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        lock.release()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (root / "train.log").read_text()
    assert proc.returncode == 130 and "interrupted (stopped by SIGTERM)" in log and "Traceback" not in log
    run = mlc.get_run(run_id)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    assert run.data.tags["poseops.interrupted"].startswith("stopped by SIGTERM after")
    assert training.read_state(root / "runs" / "train")["status"] == "interrupted"
    assert versions_of(mlc, run_id) == [] and champion(mlc) == store.champion


@pytest.mark.integration
def test_store_locked_while_logging_keeps_the_trained_weights(store, tmp_path):
    """Locked from epoch 1 until after the training: it trains on, keeps its weights, and a rerun only logs them."""
    # four epochs: the store is locked once epoch 1 is logged, and epochs 2-4 must still be logged after it
    mlc, root = store.mlc, project(tmp_path / "logging", epochs=4)
    proc = start_training(root, store.env)
    lock = None
    try:
        run_id = wait_for_epoch(proc, root, mlc, 1)
        lock = LockedStore(store.db)
        proc.wait(timeout=240)
    finally:
        if lock is not None:
            lock.release()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = " ".join((root / "train.log").read_text().split())
    assert proc.returncode == 1, log[-3000:]
    assert f"warning: epoch metrics not logged yet, the MLflow store {store.db} stayed locked" in log
    assert f"the training finished and its weights are kept in {root.resolve() / 'runs' / 'train' / 'weights'}" in log
    assert "run the same command again: it logs this training without training again" in log
    weights = root / "runs" / "train" / "weights" / "best.pt"
    trained = (weights.stat().st_mtime_ns, results_rows(root))
    assert [int(r.split(",")[0]) for r in trained[1]] == [1, 2, 3, 4]

    again = run_training(root, store.env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (weights.stat().st_mtime_ns, results_rows(root)) == trained  # logged, not trained again
    run = mlc.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in mlc.get_metric_history(run_id, "fitness")] == [1, 2, 3, 4]
    assert "weights/best.pt" in {a.path for a in mlc.list_artifacts(run_id, "weights")}
    assert len(versions_of(mlc, run_id)) == 1 and champion(mlc) == store.champion


@pytest.mark.integration
def test_store_locked_too_long_fails_before_training(store, tmp_path):
    root = project(tmp_path / "locked", epochs=1)
    lock = LockedStore(store.db)
    try:
        result = run_training(root, {**store.env, "POSEOPS_MLFLOW_LOCK_WAIT": "2"}, timeout=120)
    finally:
        lock.release()
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"the MLflow store {store.db} stayed locked by another process for 2 s" in message
    assert f"fuser {store.db}" in message and "nothing was trained" in message and "Traceback" not in message
    assert not (root / "runs").exists() and not (root / "data" / "prepared").exists()


@pytest.mark.integration
def test_unreachable_tracking_server_fails_before_training(store, tmp_path):
    root = project(tmp_path / "unreachable", epochs=1)
    with HangUp() as server:  # takes each connection and hangs up: a tracking server that never answers
        result = run_training(root, {**store.env, "MLFLOW_TRACKING_URI": server.url}, timeout=120)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"the MLflow tracking server {server.url} does not answer" in message and "nothing was trained" in message
    assert not (root / "runs").exists() and not (root / "data" / "prepared").exists()
    assert server.connections == 1, f"asked {server.connections} times: no MLflow retries, the one check comes first"


@pytest.mark.integration
def test_resume_without_an_interrupted_training_says_so(store, tmp_path):
    root = project(tmp_path / "fresh", epochs=1)
    result = run_training(root, store.env, "--resume", timeout=120)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"nothing to resume in {root.resolve() / 'runs' / 'train'}: no training ran there" in message
    assert "Traceback" not in message and not (root / "runs").exists()
