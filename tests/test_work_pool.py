"""Flows on a Prefect work pool: `poseops deploy-flows --pool` against a real Prefect server, runs executed by real
`prefect worker` processes (not this test's), and two pulls of one dataset at the same moment on the server
profile's locks (a Prefect global concurrency limit): one is refused clearly, the dataset is never mixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from conftest import SHARED_DATASETS
from prefect_worker import flow_run_logs, prefect_server, prefect_worker, wait_for_flow_run  # noqa: F401
from request_log import RequestLog
from test_pull import dvc, git, make_project

from poseops.coco import read_yolo_pose
from poseops.locks import resource_name

integration = pytest.mark.integration
COCO8 = SHARED_DATASETS / "coco8-pose"


def test_each_run_reads_the_project_env_below_the_workers_environment(tmp_path, monkeypatch):
    from poseops.flows.pool import use_project_settings

    monkeypatch.chdir(tmp_path)  # where set_working_directory left the run: the project
    (tmp_path / ".env").write_text("POSEOPS_HOME=/srv/poseops\nMLFLOW_TRACKING_URI=sqlite:///project.db\n"
                                   "LABEL_STUDIO_PASSWORD=never-in-the-environment\n")
    for key in ("POSEOPS_HOME", "LABEL_STUDIO_PASSWORD"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///worker.db")
    assert use_project_settings() == {"settings_file": str(tmp_path / ".env")}
    assert os.environ["POSEOPS_HOME"] == "/srv/poseops"  # from the project's .env
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///worker.db"  # the worker's own environment wins
    assert "LABEL_STUDIO_PASSWORD" not in os.environ  # secrets stay in the file, read where used


def test_the_deployments_code_source_is_the_project_folder_or_a_git_url(tmp_path):
    from poseops.flows.pool import SETTINGS_STEP, PoolError, project_source

    with pytest.raises(PoolError, match="is not a poseops project .*--source"):
        project_source(tmp_path)
    (tmp_path / "params.yaml").write_text("")
    steps = project_source(tmp_path).to_pull_step()
    assert steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(tmp_path)}}, SETTINGS_STEP]
    cloned = project_source("https://git.example.org/team/poses.git").to_pull_step()
    assert "prefect.deployments.steps.git_clone" in cloned[0] and cloned[1] == SETTINGS_STEP


def deploy_flows(workspace: Path, server, *args: str) -> str:
    env = {**os.environ, "PREFECT_API_URL": server.api_url}
    done = subprocess.run([sys.executable, "-m", "poseops.cli", "deploy-flows", *args], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def read_deployments(server) -> dict[str, object]:
    from prefect import get_client
    from prefect.client.schemas.sorting import DeploymentSort

    with get_client(sync_client=True) as client:
        return {d.name: d for d in client.read_deployments(limit=100, offset=0, sort=DeploymentSort.NAME_ASC)}


def run_deployment_now(name: str, parameters: dict | None = None):
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=parameters or {}, timeout=0)


def coco8_project(label_studio) -> str:
    images = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])
    return make_project(label_studio, images)


@integration
def test_deploy_flows_puts_every_flow_on_the_pool_and_a_worker_runs_them(prefect_server, workspace, label_studio):  # noqa: F811
    from prefect import get_client

    name = coco8_project(label_studio)
    (workspace / "params.yaml").write_text("pull:\n  min_images: 4\n  val_fraction: 0.25\n"
                                           f"schedules:\n  dataset: {name}\n  autolabel: '0 * * * *'\n"
                                           "  loop: '0 3 * * *'\n")
    pool, gpu = f"cpu-{uuid.uuid4().hex[:6]}", f"gpu-{uuid.uuid4().hex[:6]}"
    printed = deploy_flows(workspace, prefect_server, "--pool", pool, "--train-pool", gpu)
    assert f"prefect worker start --pool {pool}" in printed and f"prefect worker start --pool {gpu}" in printed

    deployments = read_deployments(prefect_server)
    assert {n: deployments[n].work_pool_name for n in ("pull-labels", "train", "autolabel", "loop")} == {
        "pull-labels": pool, "train": gpu, "autolabel": pool, "loop": pool}
    crons = {n: [s.schedule.cron for s in deployments[n].schedules] for n in ("pull-labels", "autolabel", "loop")}
    assert crons == {"pull-labels": [], "autolabel": ["0 * * * *"], "loop": ["0 3 * * *"]}
    assert deployments["pull-labels"].parameters == {"dataset": name}
    assert deployments["loop"].global_concurrency_limit.limit == 1  # one loop at a time, on the server
    steps = deployments["pull-labels"].pull_steps
    assert steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(workspace.resolve())
    assert "poseops.flows.pool.use_project_settings" in steps[1]
    # Deploying again (a changed schedule, another pool) updates the same deployments, not new ones.
    deploy_flows(workspace, prefect_server, "--pool", pool)
    assert read_deployments(prefect_server)["train"].work_pool_name == pool

    # The worker starts elsewhere; each run starts in the project and reads its .env: the server profile here.
    (workspace / ".env").write_text("POSEOPS_PROFILE=server\n")
    with prefect_worker(prefect_server, pool, cwd=workspace.parent) as worker:
        run = run_deployment_now("pull-labels/pull-labels")
        done = wait_for_flow_run(prefect_server, run.id, timeout=420)
        assert done.state.is_completed(), f"{done.state.message}\n{flow_run_logs(prefect_server, run.id)}\n{worker.log()}"
    assert f"submitting flow run '{run.id}'" in worker.log()
    assert done.infrastructure_pid and int(done.infrastructure_pid.split(":")[-1]) != os.getpid()
    with get_client(sync_client=True) as client:  # the run's pull lock was the server profile's
        lock = client.read_global_concurrency_limit_by_name(resource_name(f"pull-{name}"))
    assert lock.limit == 1 and lock.active_slots == 0
    dataset = workspace / "data" / name
    assert len(list((dataset / "images").rglob("*.jpg"))) == len(list((dataset / "labels").rglob("*.txt"))) == 8
    assert git(workspace, "status", "--porcelain", "--", "data") == ""  # versioned and committed in the project


def held_exports(log: RequestLog) -> tuple[list[str], threading.Event]:
    """Hold every export snapshot request at the proxy until released; returns (the held paths, the release)."""
    forward, held, release = log._http.request, [], threading.Event()

    def request(method, path, **kwargs):
        if method == "POST" and "/exports" in path:
            held.append(path)
            release.wait(timeout=600)
        return forward(method, path, **kwargs)

    log._http.request = request
    return held, release


@integration
def test_two_workers_pull_one_dataset_at_the_same_moment_one_refused_never_mixed(prefect_server, workspace,  # noqa: F811
                                                                                  label_studio):
    name = coco8_project(label_studio)
    pool = f"pulls-{uuid.uuid4().hex[:6]}"
    deploy_flows(workspace, prefect_server, "--pool", pool)
    with RequestLog(label_studio.label_studio_url) as log:
        held, release = held_exports(log)
        env = {"POSEOPS_PROFILE": "server", "LABEL_STUDIO_URL": log.url}
        with prefect_worker(prefect_server, pool, workspace.parent, env, limit=1) as one, \
                prefect_worker(prefect_server, pool, workspace.parent, env, limit=1) as two:
            runs = [run_deployment_now("pull-labels/pull-labels", {"dataset": name}) for _ in range(2)]
            try:
                # The first to take the lock waits at Label Studio's export, inside the lock; the other must end
                # refused meanwhile. Were the lock broken, both would reach the export and neither would end.
                refused = wait_for_any_final(prefect_server, [r.id for r in runs], timeout=420)
                assert len(held) == 1, f"{len(held)} pulls reached Label Studio's export at once"
            finally:
                release.set()
            finals = [wait_for_flow_run(prefect_server, r.id, timeout=420) for r in runs]
            logs = {r.id: flow_run_logs(prefect_server, r.id) for r in runs}
            one_log, two_log = one.log(), two.log()
            worker_logs = one_log + two_log
    states = sorted(f.state_type.value for f in finals)
    assert states == ["COMPLETED", "FAILED"], f"{states}\n{logs}\n{worker_logs[-5000:]}"
    assert refused.state.is_failed()
    assert f"another pull of '{name}' is running (pid " in logs[refused.id] and "flow run" in logs[refused.id]
    assert "failed to process item" not in logs[refused.id] + worker_logs  # the refusal said once, clearly
    ran = [sum(f"Flow run '{f.name}' submitted to infrastructure" in text for f in finals) for text in (one_log, two_log)]
    assert ran == [1, 1], f"one run per worker (each runs one at a time), not {ran}"
    dataset = workspace / "data" / name
    assert len(list((dataset / "images").rglob("*.jpg"))) == len(list((dataset / "labels").rglob("*.txt"))) == 8
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert len(manifest["conversion"]["task_images"]) == 8
    assert git(workspace, "status", "--porcelain", "--", "data") == "" and json.loads(dvc(workspace, "status", "--json") or "{}") == {}
    leftovers = [p.name for p in (workspace / "data").iterdir() if p.name.startswith(f".{name}.") and p.suffix != ".lock"]
    assert leftovers == [], "neither pull left a scratch folder behind"


def wait_for_any_final(server, run_ids, timeout: float):
    import time

    from prefect import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            for run_id in run_ids:
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    return run
        time.sleep(0.5)
    raise AssertionError(f"neither pull ended in {timeout:.0f} s")
