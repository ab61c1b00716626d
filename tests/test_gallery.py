"""Per-keypoint evaluation, the error gallery and the keypoint guard, for real.

Label Studio holds coco8-pose's 8 photos with their real labels; the pull makes the dataset, `dvc repro`
trains one gentle epoch from the pretrained model and evaluates it. Then: the per-keypoint metrics are in
`dvc metrics show`, the MLflow run and the stage's outputs; the gallery opens in the real MLflow UI (headless
Chromium) with its pictures drawn and its links opening the right Label Studio tasks; a second training
through the train flow is compared with the champion per keypoint and per image, in the run and the report.
"""

from __future__ import annotations

import csv
import hashlib
import json
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import yaml
from browser import browser_page, screenshot
from conftest import PERSON_SPEC, SHARED_DATASETS, free_port, settings_env

from poseops import tracking, training
from poseops.coco import read_yolo_pose
from poseops.datasets import create_dataset, upload_images
from poseops.dvc import run_dvc
from poseops.labelstudio import LabelStudioClient
from poseops.regions import poses_to_results
from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration
COCO8 = SHARED_DATASETS / "coco8-pose"
SKELETON = load_skeleton(PERSON_SPEC)
NAMES = SKELETON.classes[0].keypoint_names
GENTLE = {"epochs": 1, "imgsz": 320, "batch": 4, "workers": 0, "plots": False, "patience": 0,
          "optimizer": "SGD", "lr0": 0.00001, "warmup_epochs": 0.0}
GALLERY = "eval/gallery/gallery.html"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, label_studio, prefect_api):
    """A pulled coco8-pose dataset in a fresh workspace, trained and evaluated by `dvc repro evaluate`."""
    from poseops.demo import make_workspace
    from poseops.flows.pull_labels import pull_labels

    name = f"gallery-{uuid.uuid4().hex[:6]}"
    repo = make_workspace(tmp_path_factory.mktemp("gallery") / "repo", {
        "dataset": {"name": name, "dir": f"data/{name}"}, "train": GENTLE, "evaluate": {"gallery_images": 3},
        "pull": {"min_images": 4, "val_fraction": 0.25}, "mlflow": {"experiment": "gallery-test"}})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        for key, value in settings_env(label_studio).items():
            mp.setenv(key, value)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / '.poseops' / 'mlflow.db'}")
        images = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])
        with LabelStudioClient(label_studio) as client:
            project, _ = create_dataset(client, label_studio, name, PERSON_SPEC)
            upload_images(client, label_studio, name, [im.path for im in images],
                          labels={im.path: poses_to_results(SKELETON, im.poses, im.width, im.height) for im in images})
        pull_labels(dataset=name)
        training.dvc_repro(repo, extra=["evaluate"])
        yield repo, project, training.finished_run_id(training.Layout().under(repo))


def test_per_keypoint_metrics_in_dvc_mlflow_and_the_stage_outputs(trained):
    repo, project, run_id = trained
    keypoints = json.loads((repo / "reports" / "keypoints.json").read_text())
    assert set(keypoints) == {*NAMES, "mean"}
    for name in NAMES:
        assert set(keypoints[name]) == {"ap", "ap50", "pck05", "pck10", "pck20", "rmse_px", "visibility_acc"}
    assert 0 < keypoints["mean"]["pck20"] <= 1 and keypoints["mean"]["rmse_px"] > 0
    assert keypoints["mean"]["pck05"] <= keypoints["mean"]["pck10"] <= keypoints["mean"]["pck20"]

    shown = json.loads(run_dvc(["metrics", "show", "--json"], repo, stream=False).stdout)
    files = next(iter(shown.values()))["data"]  # the workspace's metrics files
    assert files["reports/keypoints.json"]["data"]["nose"]["pck10"] == keypoints["nose"]["pck10"]

    rows = list(csv.DictReader((repo / "reports" / "images_oks.csv").open()))
    manifest = json.loads((repo / "data" / dataset_name(repo) / "manifest.json").read_text())
    task_of = {image: int(task) for task, image in manifest["conversion"]["task_images"].items()}
    assert {r["image"] for r in rows} == {i for i in task_of if i.startswith("images/val/")}
    assert all(int(r["task_id"]) == task_of[r["image"]] for r in rows)
    assert [float(r["oks"]) for r in rows] == sorted(float(r["oks"]) for r in rows)  # worst first

    mlc = tracking.client()
    run = mlc.get_run(run_id)
    assert run.data.metrics["eval/kpt/nose/pck10"] == pytest.approx(keypoints["nose"]["pck10"], abs=1e-6)
    assert "eval/kpt/mean/ap" in run.data.metrics
    logged = {a.path for a in mlc.list_artifacts(run_id, "eval")}
    assert {"eval/keypoints.json", "eval/images_oks.csv", "eval/keypoints_table.json", "eval/gallery"} <= logged
    table = json.loads(Path(tracking.download(f"runs:/{run_id}/eval/keypoints_table.json",
                                              repo / "dl")).read_text())
    assert table["columns"][0] == "name" and [r[0] for r in table["data"]] == NAMES


def dataset_name(repo: Path) -> str:
    return yaml.safe_load((repo / "params.yaml").read_text())["dataset"]["name"]


def test_the_gallery_opens_in_the_mlflow_ui_with_links_to_the_right_tasks(trained, label_studio, tmp_path):
    from poseops.settings import load_settings
    from poseops.stack import mlflow_ui

    repo, project, run_id = trained
    entries = training.read_gallery(repo / "runs" / "evaluate" / "gallery")
    val_images = len(list((repo / "data" / dataset_name(repo) / "images" / "val").iterdir()))
    assert len(entries) == min(3, val_images) > 0  # evaluate.gallery_images: 3
    mlc = tracking.client()
    run = mlc.get_run(run_id)
    settings = replace(load_settings(), home=tmp_path, mlflow_ui_url=f"http://127.0.0.1:{free_port()}")
    ui = mlflow_ui(settings)
    ui.up(timeout=180)
    try:
        with browser_page(1400, 1000) as page:
            page.goto(f"{settings.mlflow_ui_url}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
                      f"/artifacts/{GALLERY}")
            frame = _gallery_frame(page)
            frame.wait_for_function("() => [...document.images].length > 0 && "
                                    "[...document.images].every((i) => i.complete && i.naturalWidth > 0)",
                                    timeout=60_000)
            shown = frame.evaluate("""() => [...document.querySelectorAll('figure')].map((f) => ({
                image: f.dataset.image, href: f.querySelector('a.task')?.href,
                width: f.querySelector('img').naturalWidth, height: f.querySelector('img').naturalHeight}))""")
            shot = screenshot(page, "error-gallery.png")
            opened = _open_in_label_studio(page, label_studio, shown[0]["href"])
    finally:
        ui.down()
    assert shot.stat().st_size > 0
    assert [s["image"] for s in shown] == [e.image for e in entries]
    for s in shown:
        assert s["width"] > 400 and s["height"] > 100  # label and prediction side by side
        task = _task_of_image(repo, s["image"])
        assert s["href"] == f"{label_studio.label_studio_url}/projects/{project.id}/data?task={task}"
        assert _label_studio_image_digest(label_studio, task).startswith(Path(s["image"]).stem)  # the same photo
    assert opened == _task_of_image(repo, shown[0]["image"])


def _gallery_frame(page):
    """The frame the MLflow UI shows gallery.html in (an iframe of the artifact view)."""
    page.wait_for_selector("iframe", timeout=60_000)
    for _ in range(120):
        for frame in page.frames:
            if frame != page.main_frame and frame.query_selector("figure"):
                return frame
        page.wait_for_timeout(500)
    raise AssertionError(f"no frame with the gallery: {page.inner_text('body')[:2000]}")


def _task_of_image(repo: Path, image: str) -> int:
    manifest = json.loads((repo / "data" / dataset_name(repo) / "manifest.json").read_text())
    return next(int(t) for t, i in manifest["conversion"]["task_images"].items() if i == image)


def _label_studio_image_digest(label_studio, task: int) -> str:
    """The sha256 of the image Label Studio serves for the task (the pull names images by their content)."""
    headers = {"Authorization": f"Token {label_studio.label_studio_token}"}
    with httpx.Client(base_url=label_studio.label_studio_url, headers=headers, timeout=60) as http:
        data = http.get(f"/api/tasks/{task}").raise_for_status().json()["data"]
        url = next(v for v in data.values() if isinstance(v, str) and v.startswith(("/", "http")))
        return hashlib.sha256(http.get(url).raise_for_status().content).hexdigest()


def _open_in_label_studio(page, label_studio, href: str) -> int:
    """Log in and follow the gallery's link; the task id the labeling editor opened."""
    page.goto(f"{label_studio.label_studio_url}/user/login/")
    page.fill("input[name=email]", label_studio.label_studio_username)
    page.fill("input[name=password]", label_studio.label_studio_password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    page.goto(href)
    page.wait_for_function("() => window.Htx && window.Htx.task && window.Htx.task.id", timeout=60_000)
    return int(page.evaluate("() => window.Htx.task.id"))


def test_a_second_training_is_compared_with_the_champion_per_keypoint_and_per_image(trained, prefect_api):
    from poseops.flows.train import train_flow

    repo, project, _ = trained
    mlc = tracking.client()
    training.dvc_repro(repo)  # registers the first training as a version
    first = training.pipeline_outputs(repo)
    # the first version becomes champion; the second (another seed) is compared with it on the same val split
    training.promote(training_params(repo), repo, version=first.version)
    result = train_flow(str(repo), overrides=["train.seed=1"], use_dvc=True)
    promotion = result["promotion"]
    assert promotion["champion_version"] == first.version and promotion["keypoint_guard"] == "refuse"
    rows = promotion["keypoints"]["rows"]
    assert [r["name"] for r in rows] == NAMES and all(r["champion"] is not None for r in rows)
    assert promotion["image_diffs"], "the same val images were scored by both"
    report = result["report"]
    assert "Per keypoint: PCK@0.1, champion" in report and "Error gallery" in report
    assert f"/projects/{project.id}/data?task=" in report
    run = mlc.get_run(result["run_id"])
    assert run.data.tags["promotion.keypoint_guard"] == "refuse"
    regressions = run.data.tags["promotion.keypoint_regressions"]
    assert regressions == "none" or set(regressions.split(",")) <= set(NAMES)
    if regressions != "none":  # refused, and the reason names them
        assert not promotion["promoted"] and all(n in promotion["reason"] for n in regressions.split(","))
    logged = {a.path for a in mlc.list_artifacts(result["run_id"], "promotion")}
    assert {"promotion/comparison.md", "promotion/promotion.json"} <= logged


def training_params(repo: Path):
    from poseops.params import load_params

    return load_params(repo / "params.yaml")

