"""A user's own animal data, the whole way, against the real servers: a DeepLabCut project (points only, no boxes)
imports into a keypoint-only dataset, pulls with derived boxes (exact), trains one epoch, deploys, answers `/detect`
with the class's keypoint names, and autolabels new frames whose predictions Label Studio shows as points.

Kept small for CI: one tiny CPU epoch (imgsz 96) through the same loop `poseops loop` runs. The labeling editor,
in headless Chromium, shows an imported frame as points without a box: that screenshot is docs/images/
labelstudio-keypoint-only.jpg (`python tests/test_own_data_e2e.py` copies it there after a run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, SHARED_DATASETS, free_port
from PIL import Image, ImageOps
from test_keypoint_only import expected_box, read_dlc

from poseops.coco import parse_yolo_pose_labels
from poseops.conversion.coco_export import coco_file
from poseops.convert import results_to_poses
from poseops.datasets import upload_images
from poseops.labelstudio import LabelStudioClient
from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration
DLC_PROJECT = SHARED_DATASETS / "dlc-reaching"
SPEC = "label_config/skeletons/reaching.yaml"
KEYPOINTS = load_skeleton(ROOT / SPEC).classes[0].keypoint_names
NEW_FRAMES = 2
SERVICE_URL = f"http://127.0.0.1:{free_port()}"
SCREENSHOT = "labelstudio-keypoint-only.png"
TINY_TRAINING = {"epochs": 1, "imgsz": 96, "batch": 8, "workers": 0, "plots": False, "patience": 0,
                 "optimizer": "SGD", "lr0": 0.001, "warmup_epochs": 0.0}


@pytest.fixture(scope="module")
def own_repo(tmp_path_factory, label_studio):
    """A user's checkout set up for the reaching skeleton; one tiny epoch; any model above nothing is served."""
    from poseops.demo import make_workspace

    return make_workspace(tmp_path_factory.mktemp("own-data") / "repo", {
        "skeleton": SPEC,
        "train": TINY_TRAINING,
        "pull": {"min_images": 8, "val_fraction": 0.2, "allow_unlabeled": True},
        "promote": {"min_metric": 0.0},  # one epoch learns little: serve it anyway, the journey is what is tested
        "autolabel": {"conf_thres": 0.001, "keypoint_conf": 0.0},  # every keypoint of what it finds, as points
        "mlflow": {"experiment": "own-data-test"},
        "export": {"formats": ["onnx"]},  # one export is enough here; OpenVINO's has its own tests (test_runtimes.py)
    })


@pytest.fixture
def in_own_repo(own_repo, monkeypatch, label_studio):
    from conftest import settings_env

    monkeypatch.chdir(own_repo)
    for key, value in settings_env(label_studio).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{own_repo / '.poseops' / 'mlflow.db'}")
    monkeypatch.setenv("POSEOPS_SERVICE_URL", SERVICE_URL)
    yield own_repo


@pytest.fixture(scope="module", autouse=True)
def stop_the_service(label_studio):
    yield
    from dataclasses import replace

    from poseops.deploy import service_server

    server = service_server(replace(label_studio, service_url=SERVICE_URL))
    server.down()
    assert not server.answers(), "the deployed service still answers after the tests"


def new_frames(tmp_path: Path) -> list[Path]:
    """Frames the project has never seen: mirrored copies of two of its frames."""
    out = []
    for frame, _ in read_dlc()[-NEW_FRAMES:]:
        target = tmp_path / f"new-{frame.name}"
        with Image.open(frame) as im:
            ImageOps.mirror(im.convert("RGB")).save(target)
        out.append(target)
    return out


def poseops(*args: str) -> subprocess.CompletedProcess:
    """The `poseops` command, as a user runs it (the environment points it at the test servers)."""
    return subprocess.run([sys.executable, "-m", "poseops.cli", *args], capture_output=True, text=True, timeout=600)


def test_a_deeplabcut_project_goes_all_the_way_to_points_in_label_studio(prefect_api, in_own_repo, label_studio,
                                                                        tmp_path):
    from poseops.flows.loop import improvement_loop

    name = f"reach-{uuid.uuid4().hex[:6]}"
    fresh = new_frames(tmp_path)
    created = poseops("dataset", "create", name, "--skeleton", SPEC)
    assert created.returncode == 0, created.stderr
    imported = poseops("dataset", "import", name, "--format", "dlc", str(DLC_PROJECT))
    assert imported.returncode == 0, imported.stderr
    labeled = [f for f, points in read_dlc() if len(points) >= 2]  # one point gives no box: not imported, said so
    assert f"imported {len(labeled)} image(s)" in imported.stdout, imported.stdout
    with LabelStudioClient(label_studio) as client:
        project = client.find_project(name)
        upload_images(client, label_studio, name, fresh)  # new, unlabeled frames for the model to pre-label
        sources = {t["id"]: t["data"]["source"] for t in client.iter_tasks(project.id, fields="task_only")}

    loop = improvement_loop(dataset=name, root=str(in_own_repo))
    steps = dict(loop["steps"])
    assert loop["outcome"] == "completed", loop
    check_the_derived_boxes(in_own_repo / "data" / name, sources)
    assert "poseops-pose:1" in steps["deploy"], steps
    assert steps["autolabel"].startswith(f"{NEW_FRAMES} task(s)"), steps

    # the service answers with the class's keypoint names
    detections = httpx.post(f"{SERVICE_URL}/detect", files={"image": fresh[0].read_bytes()},
                            data={"conf_thres": "0.001"}, timeout=60).raise_for_status().json()
    assert detections, "the served model found nothing even at conf 0.001"
    assert {d["class"] for d in detections} == {"mouse"}
    assert all([k["name"] for k in d["keypoints"]] == KEYPOINTS for d in detections)

    # the new frames' predictions are points (no box), whole skeletons that read back as mice
    new_ids = [tid for tid, source in sources.items() if source.startswith("new-")]
    with LabelStudioClient(label_studio) as client:
        tasks = {t["id"]: t for t in client.iter_tasks(project.id)}
    for tid in new_ids:
        (prediction,) = [p for p in tasks[tid]["predictions"] if p["model_version"] != "template"]
        assert {r["type"] for r in prediction["result"]} == {"keypointlabels"}, prediction["result"][:3]
        poses, problems = results_to_poses(load_skeleton(in_own_repo / SPEC), prediction["result"], task_id=tid)
        assert poses and all(p.class_name == "mouse" for p in poses), problems
        # one epoch's model may collapse an animal's points onto one line: said so, never a silent box
        assert {p.kind for p in problems} <= {"empty_box"}, problems
    imported = next(tid for tid, source in sources.items() if not source.startswith("new-")
                    and len(tasks[tid]["annotations"][0]["result"]) == len(KEYPOINTS))
    check_the_editor_shows_points(label_studio, project.url, imported, new_ids[0], tasks)


def check_the_derived_boxes(dataset: Path, sources: dict[int, str]) -> None:
    """Every frame's box is its labeled points' min/max plus the padding (1e-6); the COCO export names the points."""
    task_images = json.loads((dataset / "manifest.json").read_text())["conversion"]["task_images"]
    by_source = {sources[int(tid)]: path for tid, path in task_images.items()}
    compared = 0
    for frame, points in read_dlc():
        if len(points) < 2:
            assert frame.name not in by_source  # one point gives no box: left out, reported
            continue
        label = (dataset / by_source[frame.name].replace("images/", "labels/", 1)).with_suffix(".txt")
        (pose,) = parse_yolo_pose_labels(label.read_text(), ["mouse"], str(label))
        with Image.open(frame) as im:  # the project's frames come in two sizes
            width, height = im.size
        assert pose.box == pytest.approx(expected_box(points, width=width, height=height), abs=1e-6), frame.name
        compared += 1
    assert compared >= 50
    coco = json.loads(coco_file(dataset, "train").read_text())
    assert coco["categories"][0]["keypoints"] == KEYPOINTS and coco["annotations"]


def check_the_editor_shows_points(settings, project_url: str, imported: int, predicted: int, tasks: dict) -> None:
    """Headless Chromium: an imported frame and a pre-labeled new frame both show points and no box."""
    from browser import EDITOR_SHAPES, browser_page, label_studio_login, screenshot

    with browser_page(1200, 860) as page:
        label_studio_login(page, settings)
        for task_id, expected, picture in ((imported, len(KEYPOINTS), SCREENSHOT), (predicted, None, None)):
            page.goto(f"{project_url}/data?task={task_id}")
            page.get_by_text(KEYPOINTS[-1], exact=True).first.wait_for(timeout=60_000)
            page.wait_for_function("() => window.Konva && window.Konva.stages.length > 0 "
                                   "&& window.Konva.stages[0].find('Circle').length > 0", timeout=60_000)
            shapes = page.evaluate(EDITOR_SHAPES)
            if picture:
                screenshot(page, picture)
            regions = len(tasks[task_id]["annotations"][0]["result"]) if expected else \
                len([r for p in tasks[task_id]["predictions"] if p["model_version"] != "template" for r in p["result"]])
            assert shapes == {"circles": regions, "rects": 0}, (task_id, shapes)


if __name__ == "__main__":  # the docs' picture from the last run's screenshot
    from browser import ARTIFACTS

    target = ROOT / "docs" / "images" / "labelstudio-keypoint-only.jpg"
    with Image.open(ARTIFACTS / SCREENSHOT) as shot:
        shot.convert("RGB").save(target, quality=85)
    print(f"wrote {target}", file=sys.stderr)
