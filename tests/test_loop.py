"""The whole loop once, for real: Label Studio → pull → DVC pipeline + MLflow → promote → bentoml serve → autolabel.

Then a deliberately worse model (trained from scratch for one epoch) is refused promotion, and
the running service keeps the champion. Deploying a version that does not exist changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import PERSON_SPEC, SHARED_DATASETS, assert_listens_on_loopback_only, files_containing, free_port

from poseops.coco import read_yolo_pose
from poseops.datasets import create_dataset, upload_images
from poseops.labelstudio import LabelStudioClient
from poseops.regions import poses_to_results
from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration
COCO8 = SHARED_DATASETS / "coco8-pose"
TINY_TRAINING = {"epochs": 1, "imgsz": 320, "batch": 4, "workers": 0, "plots": False, "patience": 0,
                 "optimizer": "SGD", "lr0": 0.001, "warmup_epochs": 0.0}


@pytest.fixture(scope="module")
def loop_repo(tmp_path_factory, label_studio):
    """A user's checkout of the project: pipeline files, params for a tiny run, git and DVC initialized."""
    from poseops.demo import make_workspace

    return make_workspace(tmp_path_factory.mktemp("loop") / "repo", {
        "train": TINY_TRAINING,
        "pull": {"min_images": 4, "val_fraction": 0.25, "allow_unlabeled": True},
        "mlflow": {"experiment": "loop-test"},
    })


@pytest.fixture
def in_loop_repo(loop_repo, monkeypatch, label_studio, tmp_path_factory):
    from conftest import settings_env

    monkeypatch.chdir(loop_repo)
    for key, value in settings_env(label_studio).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{loop_repo / '.poseops' / 'mlflow.db'}")
    monkeypatch.setenv("POSEOPS_SERVICE_URL", SERVICE_URL)
    yield loop_repo


SERVICE_URL = f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module", autouse=True)
def stop_the_service(label_studio):
    """Stop the service the loop deployed: its state is under the test home (POSEOPS_HOME), at SERVICE_URL."""
    yield
    from dataclasses import replace

    from poseops.deploy import service_server

    server = service_server(replace(label_studio, service_url=SERVICE_URL))
    server.down()
    assert not server.answers(), "the deployed service still answers after the tests"


def test_the_loop_end_to_end_then_a_worse_model_is_not_deployed(prefect_api, in_loop_repo, label_studio):
    from poseops.deploy import service_server
    from poseops.flows.loop import improvement_loop
    from poseops.settings import load_settings

    skeleton = load_skeleton(PERSON_SPEC)
    images = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])
    name = f"loop-{uuid.uuid4().hex[:6]}"
    unlabeled = [p for p in sorted((SHARED_DATASETS / "coco-mini-train" / "images").glob("*.jpg"))[:2]]
    with LabelStudioClient(label_studio) as client:
        create_dataset(client, label_studio, name, PERSON_SPEC)
        upload_images(client, label_studio, name, [im.path for im in images] + unlabeled,
                      labels={im.path: poses_to_results(skeleton, im.poses, im.width, im.height) for im in images})

    first = improvement_loop(dataset=name, root=str(in_loop_repo))
    steps = dict(first["steps"])
    assert first["outcome"] == "completed", first
    assert "dataset version" in steps["pull labels"]
    assert "at least as good" in steps["promote"] or "no champion" in steps["promote"], steps["promote"]
    champion_map = float(steps["train"].rsplit(" ", 1)[-1])
    assert champion_map > 0.1, f"the fine-tuned champion lost its accuracy: {steps['train']}"
    assert "poseops-pose:1" in steps["deploy"]
    from poseops import tracking

    run_id = tracking.client().get_model_version("poseops-pose", "1").run_id
    bento = check_the_bento_serves_the_model_from_the_store(label_studio.home, f"poseops-pose:v1-{run_id[:12]}")
    assert bento in steps["deploy"]
    assert steps["autolabel"].startswith("2 task(s)")
    meta = httpx.get(f"{SERVICE_URL}/metadata", timeout=10).json()
    assert (meta["model"]["name"], meta["model"]["version"]) == ("poseops-pose", "1")
    assert meta["model"]["imgsz"] == TINY_TRAINING["imgsz"]  # served at the size it was trained and exported at
    lineage = meta["lineage"]
    assert lineage["mlflow_run_id"] and lineage["dataset_dvc_hash"]
    assert lineage["dataset_dvc_hash"] == yaml.safe_load((in_loop_repo / "data" / f"{name}.dvc").read_text())["outs"][0]["md5"]

    worse = improvement_loop(dataset=name, root=str(in_loop_repo),
                             overrides=["train.model=yolo11n-pose.yaml", "train.init_weights=null"],
                             autolabel_new=False)
    steps = dict(worse["steps"])
    assert worse["outcome"] == "completed"
    assert "kept the running service" in steps["deploy"], steps
    meta = httpx.get(f"{SERVICE_URL}/metadata", timeout=10).json()
    assert meta["model"]["version"] == "1"  # still the champion
    assert_listens_on_loopback_only(service_server(load_settings()).status().pid, "the deployed service")
    # the Label Studio token and password are in none of what two loops wrote: the MLflow store (params, tags,
    # artifacts), DVC and git files, the deployed model, BentoML's stores, the service's log (Label Studio's own
    # database, under labelstudio/, is where they belong)
    secrets = [label_studio.label_studio_token, label_studio.label_studio_password]
    assert files_containing(in_loop_repo, secrets) == []
    assert files_containing(label_studio.home, secrets, skip=("labelstudio",)) == []
    assert httpx.post(f"{SERVICE_URL}/detect", files={"image": images[0].path.read_bytes()}, timeout=60).status_code == 200


def check_the_bento_serves_the_model_from_the_store(home: Path, model_tag: str) -> str:
    """The BentoML stores under the home hold the model version and a Bento of the service packing it; its tag."""
    env = {**os.environ, "BENTOML_HOME": str(home / "bentoml")}
    models = json.loads(subprocess.run([sys.executable, "-m", "bentoml", "models", "list", "-o", "json"], env=env,
                                       capture_output=True, text=True, check=True).stdout)
    assert model_tag in [m["tag"] for m in models], models
    bentos = json.loads(subprocess.run([sys.executable, "-m", "bentoml", "list", "-o", "json"], env=env,
                                       capture_output=True, text=True, check=True).stdout)
    assert bentos, "deploy built no Bento"
    newest = max(bentos, key=lambda b: b["creation_time"])
    info = yaml.safe_load(Path(home / "bentoml" / "bentos" / newest["tag"].replace(":", "/") / "bento.yaml").read_text())
    assert [m["tag"] for m in info["services"][0]["models"]] == [model_tag]
    return newest["tag"]


def test_deploying_a_missing_version_leaves_the_service_alone(prefect_api, in_loop_repo):
    from poseops.deploy import service_server
    from poseops.settings import load_settings
    from poseops.tracking import TrackingError

    server = service_server(load_settings())
    before = server.status()
    from poseops.flows.deploy import deploy

    with pytest.raises(TrackingError, match="no version 99"):
        deploy(model_uri="models:/poseops-pose/99")
    after = server.status()
    assert after.pid == before.pid and after.running == before.running


def test_the_mlflow_ui_shows_the_champion_runs_pose_map(in_loop_repo, label_studio, tmp_path):
    """In headless Chromium: the MLflow UI on the loop's store shows the registered run's pose mAP."""
    from dataclasses import replace

    from browser import browser_page, screenshot

    from poseops import tracking
    from poseops.settings import load_settings
    from poseops.stack import mlflow_ui

    mlc = tracking.client()
    version = tracking.version_for_alias(mlc, "poseops-pose", "champion")
    assert version is not None, "the loop test registers and promotes a model first"
    run = mlc.get_run(version.run_id)
    pose_map = run.data.metrics["pose_mAP50-95"]
    settings = replace(load_settings(), home=tmp_path, mlflow_ui_url=f"http://127.0.0.1:{free_port()}")
    ui = mlflow_ui(settings)
    ui.up(timeout=180)
    try:
        with browser_page() as page:
            page.goto(f"{settings.mlflow_ui_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
            page.get_by_text("pose_mAP50-95").first.wait_for(timeout=60_000)
            screenshot(page, "mlflow-run.png")
            text = page.inner_text("body")
    finally:
        ui.down()
    assert run.info.run_name in text
    shown = re.findall(r"pose_mAP50-95\s+(\d+\.\d+)", text)  # the metric's own row: its name, then its value
    assert shown, f"no value beside pose_mAP50-95 on the run's page: {text[:2000]}"
    decimals = len(shown[0].split(".")[1])
    assert decimals >= 3 and abs(float(shown[0]) - pose_map) <= 0.5 * 10**-decimals, (shown, pose_map)
