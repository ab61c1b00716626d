"""A training killed outright (SIGKILL, the OOM killer) leaves its MLflow run RUNNING; the next training marks it
FAILED. Through the command line and DVC, the way a user meets it: `poseops train` in a process group, killed
mid-training, then `poseops train` again with other params (and again with the same ones)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_training import GENTLE, make_project

from poseops import tracking, training

integration = pytest.mark.integration
POSEOPS = Path(sys.executable).parent / "poseops"


@pytest.fixture
def env(tmp_path, prefect_api):
    """The environment of the `poseops` processes: a fresh MLflow store, the session's Prefect API."""
    from conftest import SHARED
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"

    environ = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    return {**environ, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}", "POSEOPS_HOME": str(home),
            "YOLO_OFFLINE": "true", "YOLO_CONFIG_DIR": str(home / "ultralytics"),
            "POSEOPS_WEIGHTS_DIR": str(SHARED / "weights"), "PREFECT_API_URL": PREFECT_API_URL.value(),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def poseops_train(root: Path, env: dict, *args: str, log: Path | None = None):
    cmd = [str(POSEOPS), "train", "--no-promote", "--root", str(root), *args]
    if log is None:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=root)
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=root)


def kill_after_first_epoch(root: Path, env: dict, mlc, *args: str) -> str:
    """Start `poseops train`, SIGKILL its whole process group once an epoch is logged; the run it left."""
    log = root / "killed.log"
    proc = poseops_train(root, env, *args, log=log)
    deadline = time.monotonic() + 400
    try:
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch logged in time: " + log.read_text()[-3000:]
            run_id = training.read_state(root / "runs" / "train").get("run_id")
            if run_id and training.read_state(root / "runs" / "train").get("status") == "running" \
                    and tracking.last_logged_step(mlc, run_id) >= 1:
                break
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a kill -9 of the job, or the OOM killer
        proc.wait(timeout=30)
    assert mlc.get_run(run_id).info.status == "RUNNING"  # nothing could end it
    return run_id


def assert_failed(mlc, run_id: str) -> None:
    run = mlc.get_run(run_id)
    assert run.info.status == "FAILED", f"the killed run is {run.info.status}"
    assert "killed (SIGKILL, out of memory) or crashed" in run.data.tags["poseops.interrupted"]


@integration
def test_a_killed_training_is_failed_by_the_next_one_with_other_params(tmp_path, env):
    """`dvc exp run` (`poseops train -S`) first puts back the train folder DVC recorded last, which names the
    finished training, not the killed one: the killed run is still found, by the process it names."""
    root = make_project(tmp_path / "p", overrides={**GENTLE, "train.epochs": 3, "train.plots": False})
    mlc = tracking.client(env["MLFLOW_TRACKING_URI"])
    done = poseops_train(root, env)  # a finished training recorded by DVC first, as in a project that has trained
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    params = root / "params.yaml"
    doc = yaml.safe_load(params.read_text())
    doc["train"]["epochs"] = 4  # other params: `dvc repro` trains again
    params.write_text(yaml.safe_dump(doc, sort_keys=False))
    killed = kill_after_first_epoch(root, env, mlc)
    after = poseops_train(root, env, "-S", "train.epochs=2")
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
    assert_failed(mlc, killed)
    assert f"MLflow run {killed}, of a training killed or crashed earlier, is marked FAILED" in after.stdout + after.stderr


@integration
def test_a_killed_training_is_failed_by_the_next_one_with_the_same_params(tmp_path, env):
    root = make_project(tmp_path / "p", overrides={**GENTLE, "train.epochs": 3, "train.plots": False})
    mlc = tracking.client(env["MLFLOW_TRACKING_URI"])
    killed = kill_after_first_epoch(root, env, mlc)
    after = poseops_train(root, env)
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
    assert_failed(mlc, killed)


@pytest.mark.parametrize("holder", ["dead", "alive"])
def test_only_runs_held_by_a_dead_process_are_failed(tmp_path, holder):
    mlc = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_id = tracking.start_run(mlc, "poseops", "held", {})
        tracking.set_tags(mlc, run_id, {"poseops.pid": proc.pid, "poseops.held_since": f"{time.time():.3f}"})
        if holder == "dead":
            proc.kill()
            proc.wait()
        assert training.fail_orphaned_runs(mlc, "poseops") == ([run_id] if holder == "dead" else [])
        run = mlc.get_run(run_id)
        assert run.info.status == ("FAILED" if holder == "dead" else "RUNNING")
        if holder == "dead":
            assert f"(pid {proc.pid})" in run.data.tags["poseops.interrupted"]
    finally:
        proc.kill()
        proc.wait()
    mine = tracking.start_run(mlc, "poseops", "mine", {})  # held by this very process: never touched
    assert mine not in training.fail_orphaned_runs(mlc, "poseops") and mlc.get_run(mine).info.status == "RUNNING"
