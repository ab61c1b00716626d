"""The whole loop on the server profile, for real, run by a `prefect worker` from a work pool.

PostgreSQL (poseops' local cluster) holds Label Studio's, MLflow's and Prefect's databases; an S3 endpoint
(moto in server mode) holds the DVC remote and the MLflow artifacts; `poseops stack up --profile server`
starts Label Studio, the MLflow tracking server and the Prefect server on them; `poseops deploy-flows --pool`
deploys the flows to a process work pool, and a real `prefect worker` runs the improvement loop in its own
process. The test then checks what the embedded loop test checks (tests/test_loop.py) where each part now
keeps it: the dataset version in the bucket, the MLflow run and its artifacts in the bucket, the promoted
champion served, the new tasks pre-labeled; that the rows are in PostgreSQL and the locks were the Prefect
server's global concurrency limits; and that no secret is in what the loop wrote.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from conftest import PERSON_SPEC, ROOT, SHARED_DATASETS, files_containing, free_port
from prefect_worker import PrefectServer, flow_run_logs, prefect_worker, use_prefect_server, wait_for_flow_run
from s3_server import S3Endpoint

from poseops.coco import read_yolo_pose
from poseops.regions import poses_to_results
from poseops.skeleton import load_skeleton

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]
COCO8 = SHARED_DATASETS / "coco8-pose"
TINY_TRAINING = {"epochs": 1, "imgsz": 320, "batch": 4, "workers": 0, "plots": False, "patience": 0,
                 "optimizer": "SGD", "lr0": 0.001, "warmup_epochs": 0.0}
POOL = "poseops-local"
LOOP_TIMEOUT_S = 1200
POSEOPS = [sys.executable, "-m", "poseops.cli"]


@dataclass(frozen=True)
class ServerProfile:
    """The running server profile: its environment, home, workspace, URLs and the S3 endpoint."""

    env: dict[str, str]
    home: Path
    repo: Path
    s3: S3Endpoint

    @property
    def prefect(self) -> PrefectServer:
        return PrefectServer(self.env["POSEOPS_PREFECT_URL"], self.home / "prefect")

    def settings(self):
        from poseops.settings import load_settings

        return load_settings(self.repo / ".env")

    def poseops(self, *args: str, timeout: float = 900) -> str:
        done = subprocess.run([*POSEOPS, *args], cwd=self.repo, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"poseops {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return done.stdout


def profile_env(home: Path, s3: S3Endpoint) -> dict[str, str]:
    """Every setting of the server profile, on free loopback ports, for a home of its own."""
    def url() -> str:
        return f"http://127.0.0.1:{free_port()}"

    import secrets

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "POSEOPS_", "MLFLOW_", "PREFECT_"))}
    return {**env, **s3.env(POSEOPS_DVC_REMOTE=s3.prefix("dvc"), POSEOPS_ARTIFACTS_URL=s3.prefix("mlartifacts")),
            "POSEOPS_PROFILE": "server", "POSEOPS_HOME": str(home),
            "POSEOPS_DATABASE_URL": f"postgresql://poseops:{secrets.token_urlsafe(12)}@127.0.0.1:{free_port()}",
            "LABEL_STUDIO_URL": url(), "LABEL_STUDIO_USERNAME": "tests@poseops.local",
            "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(12), "LABEL_STUDIO_USER_TOKEN": secrets.token_hex(20),
            "POSEOPS_PREFECT_URL": url(), "POSEOPS_MLFLOW_UI_URL": url(), "POSEOPS_SERVICE_URL": url(),
            "POSEOPS_LABEL_STUDIO_BIN": str(ROOT / ".venv-labelstudio" / "bin" / "label-studio"),
            "POSEOPS_WEIGHTS_DIR": os.environ.get("POSEOPS_WEIGHTS_DIR", ""), "YOLO_OFFLINE": "true"}


@pytest.fixture(scope="module")
def server_profile(s3_endpoint, tmp_path_factory) -> Iterator[ServerProfile]:
    """`poseops stack up --profile server` in a workspace of its own (home under a folder PostgreSQL's user may pass)."""
    from poseops.demo import make_workspace

    folder = Path(tempfile.mkdtemp(prefix="poseops-server-profile-"))
    folder.chmod(0o711)
    home = folder / "home"
    repo = make_workspace(tmp_path_factory.mktemp("server-loop") / "repo", {
        "train": TINY_TRAINING, "pull": {"min_images": 4, "val_fraction": 0.25, "allow_unlabeled": True},
        "mlflow": {"experiment": "server-loop-test"}})
    profile = ServerProfile(profile_env(home, s3_endpoint), home, repo, s3_endpoint)
    with pytest.MonkeyPatch.context() as mp:  # this process on the same settings as the commands and the worker
        for key in set(os.environ) - set(profile.env):
            mp.delenv(key)
        for key, value in profile.env.items():
            mp.setenv(key, value)
        try:
            profile.poseops("stack", "up", "--profile", "server", timeout=900)
            yield profile
        finally:
            stop_everything(profile)
            shutil.rmtree(folder, ignore_errors=True)


def stop_everything(profile: ServerProfile) -> None:
    """The service the loop deployed (it outlives the worker), then the stack; each checked stopped."""
    from poseops.deploy import service_server

    service = service_server(profile.settings())
    service.down()
    subprocess.run([*POSEOPS, "stack", "down", "--profile", "server"], cwd=profile.repo, env=profile.env, timeout=300)
    assert not service.answers(), "the deployed service still answers after the test"


def upload_the_data(profile: ServerProfile, name: str) -> None:
    """coco8-pose with its labels as annotations, and two unlabeled images for the autolabel step."""
    from poseops.datasets import create_dataset, upload_images
    from poseops.labelstudio import LabelStudioClient

    settings = profile.settings()
    skeleton = load_skeleton(PERSON_SPEC)
    images = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])
    unlabeled = sorted((SHARED_DATASETS / "coco-mini-train" / "images").glob("*.jpg"))[:2]
    with LabelStudioClient(settings) as client:
        create_dataset(client, settings, name, PERSON_SPEC)
        upload_images(client, settings, name, [im.path for im in images] + unlabeled,
                      labels={im.path: poses_to_results(skeleton, im.poses, im.width, im.height) for im in images})


def loop_steps(profile: ServerProfile, run_id, dataset: str) -> dict[str, str]:
    """The steps of the loop's artifact (its Markdown table), as the flow run published it to the Prefect server."""
    from poseops.reports import artifact_key

    key = artifact_key("loop", dataset)
    body = {"artifacts": {"flow_run_id": {"any_": [str(run_id)]}, "key": {"any_": [key]}}, "limit": 10, "offset": 0,
            "sort": "CREATED_DESC"}  # over HTTP: Prefect's client sends nulls for these, which its server refuses
    found = httpx.post(f"{profile.prefect.api_url}/artifacts/filter", json=body, timeout=30)
    found.raise_for_status()
    assert found.json(), f"the loop run {run_id} published no {key} artifact"
    table = found.json()[0]["data"]
    return dict(re.findall(r"^\| ([a-z ]+) \| (.*) \|$", table, flags=re.M)[1:])  # less the header row


def rows(profile: ServerProfile, part: str, query: str, *args) -> list[tuple]:
    """Rows of `query` on the part's PostgreSQL database (poseops_labelstudio, _mlflow, _prefect)."""
    from poseops import postgres

    server = postgres.parse_database_url(profile.env["POSEOPS_DATABASE_URL"])
    with postgres.connect(server, postgres.database_name(part)) as con:
        return con.execute(query, args).fetchall()


def test_the_loop_on_the_server_profile_runs_on_a_worker_and_keeps_its_state_in_postgres_and_s3(server_profile):
    profile = server_profile
    started = time.perf_counter()
    name = f"server-loop-{uuid.uuid4().hex[:6]}"
    upload_the_data(profile, name)
    profile.poseops("deploy-flows", "--pool", POOL)
    run = the_loop_as_a_deployment_run_on_a_worker(profile, name)

    steps = loop_steps(profile, run.id, name)
    assert "dataset version" in steps["pull labels"], steps
    assert "at least as good" in steps["promote"] or "no champion" in steps["promote"], steps["promote"]
    champion_map = float(steps["train"].rsplit(" ", 1)[-1])
    assert champion_map > 0.1, f"the fine-tuned champion lost its accuracy: {steps['train']}"
    assert "poseops-pose:1" in steps["deploy"], steps
    assert steps["autolabel"].startswith("2 task(s)"), steps

    md5 = yaml.safe_load((profile.repo / "data" / f"{name}.dvc").read_text())["outs"][0]["md5"]
    champion_run = check_the_bucket_and_the_registry(profile, md5)
    check_the_service_serves_the_champion(profile, champion_run, md5)
    check_the_rows_are_in_postgres(profile, name, champion_run, run.id)

    # nothing secret in what the loop wrote: the workspace, and the home less Label Studio's and PostgreSQL's data
    secrets = [profile.env["LABEL_STUDIO_USER_TOKEN"], profile.env["LABEL_STUDIO_PASSWORD"],
               urlsplit(profile.env["POSEOPS_DATABASE_URL"]).password, profile.env["AWS_SECRET_ACCESS_KEY"]]
    assert files_containing(profile.repo, secrets) == []
    assert files_containing(profile.home, secrets, skip=("labelstudio", "postgres")) == []
    print(f"the whole test, servers excluded: {time.perf_counter() - started:.1f} s")


def the_loop_as_a_deployment_run_on_a_worker(profile: ServerProfile, name: str):
    """The improvement-loop deployment run by a `prefect worker` of the pool, in a process of its own; the final run."""
    from prefect.deployments import run_deployment

    from poseops.flows.serve import LOOP_DEPLOYMENT

    with prefect_worker(profile.prefect, POOL, cwd=profile.repo, env=profile.env) as worker:
        loop_started = time.perf_counter()
        with use_prefect_server(profile.prefect):
            submitted = run_deployment(LOOP_DEPLOYMENT, parameters={"dataset": name, "root": str(profile.repo)},
                                       timeout=0)
        run = wait_for_flow_run(profile.prefect, submitted.id, timeout=LOOP_TIMEOUT_S)
        loop_seconds = time.perf_counter() - loop_started
        assert run.state.is_completed(), f"{run.state}\n{flow_run_logs(profile.prefect, run.id)[-6000:]}"
        assert str(run.id) in worker.log(), "the worker never picked the loop run up"
    print(f"\nthe loop on the server profile (a deployment run on the worker): {loop_seconds:.1f} s")
    assert run.work_pool_name == POOL
    pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
    assert pid not in (os.getpid(), worker.process.pid), "the loop ran in the test's or the worker's own process"
    return run


def check_the_bucket_and_the_registry(profile: ServerProfile, md5: str) -> str:
    """The dataset version and the run's weights in the bucket, the champion registered and promoted; its run id."""
    from poseops import tracking

    dvc_keys = profile.s3.keys("dvc")
    assert f"dvc/files/md5/{md5[:2]}/{md5[2:]}" in dvc_keys, dvc_keys[:20]  # the version's .dir object
    assert len(dvc_keys) > 8, "the images were not pushed with the version"
    mlc = tracking.client()
    assert mlc.tracking_uri == profile.env["POSEOPS_MLFLOW_UI_URL"], "MLflow is not the tracking server"
    champion = tracking.version_for_alias(mlc, "poseops-pose", "champion")
    assert champion is not None and str(champion.version) == "1"
    artifact_uri = mlc.get_run(champion.run_id).info.artifact_uri
    assert artifact_uri.startswith("mlflow-artifacts:"), artifact_uri  # the client logged through the server
    artifact_keys = [k for k in profile.s3.keys("mlartifacts") if f"/{champion.run_id}/artifacts/" in k]
    assert any(k.endswith(".pt") for k in artifact_keys), f"the run's weights are not in the bucket: {artifact_keys}"
    return champion.run_id


def check_the_service_serves_the_champion(profile: ServerProfile, run_id: str, md5: str) -> None:
    service = profile.env["POSEOPS_SERVICE_URL"]
    meta = httpx.get(f"{service}/metadata", timeout=10).json()
    assert (meta["model"]["name"], meta["model"]["version"]) == ("poseops-pose", "1")
    assert meta["model"]["imgsz"] == TINY_TRAINING["imgsz"]
    assert meta["lineage"]["mlflow_run_id"] == run_id and meta["lineage"]["dataset_dvc_hash"] == md5
    image = read_yolo_pose(COCO8, "val", ["person"])[0].path
    assert httpx.post(f"{service}/detect", files={"image": image.read_bytes()}, timeout=60).status_code == 200


def check_the_rows_are_in_postgres(profile: ServerProfile, name: str, mlflow_run_id: str, flow_run_id) -> None:
    """Label Studio's project, tasks and predictions; MLflow's run and alias; Prefect's runs and the locks."""
    from poseops.locks import resource_name

    (project_id,) = rows(profile, "labelstudio", "SELECT id FROM project WHERE title = %s", name)[0]
    assert rows(profile, "labelstudio", "SELECT count(*) FROM task WHERE project_id = %s", project_id) == [(10,)]
    predicted = rows(profile, "labelstudio", "SELECT count(DISTINCT p.task_id) FROM prediction p JOIN task t "
                     "ON t.id = p.task_id WHERE t.project_id = %s AND NOT EXISTS (SELECT 1 FROM task_completion c "
                     "WHERE c.task_id = t.id)", project_id)
    assert predicted == [(2,)], "the two unlabeled tasks are not pre-labeled in Label Studio's database"
    assert rows(profile, "mlflow", "SELECT status FROM runs WHERE run_uuid = %s", mlflow_run_id) == [("FINISHED",)]
    assert rows(profile, "mlflow", "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
                "poseops-pose", "champion") == [(1,)]
    assert rows(profile, "prefect", "SELECT state_type FROM flow_run WHERE id = %s", flow_run_id) == [("COMPLETED",)]
    assert rows(profile, "prefect", "SELECT count(*) FROM flow_run WHERE parent_task_run_id IS NOT NULL")[0][0] >= 4
    # the locks were the Prefect server's global concurrency limits (not files), each released after the loop
    limits = dict(rows(profile, "prefect", "SELECT name, active_slots FROM concurrency_limit_v2"))
    for lock in (f"pull-{name}", f"loop-{name}", "registry-poseops-pose", "champion-poseops-pose", "deploy"):
        assert limits.get(resource_name(lock)) == 0, f"no released {resource_name(lock)} among {limits}"
