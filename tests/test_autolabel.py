"""Autolabel against real Label Studio and Prefect, with the model in-process, on threads and on a real Dask cluster."""

from __future__ import annotations

import uuid

import pytest
from conftest import PERSON_SPEC, SHARED_DATASETS

from poseops.coco import read_yolo_pose
from poseops.datasets import create_dataset, upload_images
from poseops.labelstudio import LabelStudioClient
from poseops.regions import poses_to_results
from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration
COCO8 = SHARED_DATASETS / "coco8-pose"
SKELETON = load_skeleton(PERSON_SPEC)


@pytest.fixture(scope="module")
def reference_model():
    from poseops.inference import PoseModel

    return PoseModel("yolo11n-pose.pt", SKELETON)


def make_dataset(settings, labeled: int = 1) -> tuple[str, list]:
    """coco8's val images; the first `labeled` carry their real labels, the rest are new."""
    images = read_yolo_pose(COCO8, "val", ["person"])
    name = f"auto-{uuid.uuid4().hex[:8]}"
    labels = {im.path: poses_to_results(SKELETON, im.poses, im.width, im.height) for im in images[:labeled]}
    with LabelStudioClient(settings) as client:
        create_dataset(client, settings, name, PERSON_SPEC)
        upload_images(client, settings, name, [im.path for im in images], labels=labels)
    return name, images


def test_autolabel_writes_the_models_detections_once(prefect_api, workspace, label_studio, reference_model):
    import cv2

    from flows.autolabel import autolabel

    name, images = make_dataset(label_studio, labeled=1)
    summary = autolabel(dataset=name, weights="yolo11n-pose.pt")
    assert summary["predicted"] == 3 and summary["skipped_labeled"] == 1 and summary["failed"] == {}
    version = summary["model_version"]
    assert version.startswith("yolo11n-pose.pt@")

    with LabelStudioClient(label_studio) as client:
        project = client.find_project(name)
        settings = client.json("GET", f"/api/projects/{project.id}")
        assert settings["model_version"] == version and settings["sampling"] == "Uncertainty sampling"
        tasks = {t["data"]["source"]: t for t in client.iter_tasks(project.id)}
    for image in images[1:]:
        task = tasks[image.file_name]
        (prediction,) = [p for p in task["predictions"] if p["model_version"] == version]
        expected = reference_model.detect(cv2.imread(str(image.path)), 0.25, 0.45)
        boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
        assert len(boxes) == len(expected)
        for box, det in zip(boxes, expected, strict=True):
            v = box["value"]
            assert v["x"] / 100 * image.width == pytest.approx(det["x"], abs=1.0)
            assert v["y"] / 100 * image.height == pytest.approx(det["y"], abs=1.0)
            assert v["width"] / 100 * image.width == pytest.approx(det["width"], abs=1.0)
            assert box["score"] == pytest.approx(det["confidence"], abs=1e-3)
            points = [r for r in prediction["result"] if r.get("parentID") == box["id"]]
            confident = [k for k in det["keypoints"] if k["confidence"] >= 0.5]
            assert len(points) == len(confident) > 0
            for point, kp in zip(points, confident, strict=True):
                assert point["value"]["keypointlabels"] == [kp["name"]]
                assert point["value"]["x"] / 100 * image.width == pytest.approx(kp["x"], abs=1.0)
        if expected:
            mean = sum(d["confidence"] for d in expected) / len(expected)
            assert prediction["score"] == pytest.approx(mean, abs=1e-3)

    again = autolabel(dataset=name, weights="yolo11n-pose.pt")
    assert again["predicted"] == 0 and again["skipped_done"] == 3


def test_autolabel_fans_out_on_a_real_dask_cluster(prefect_api, workspace, label_studio):
    from flows.autolabel import autolabel

    (workspace / "params.yaml").write_text("autolabel:\n  task_runner: dask\n  workers: 2\n  batch_size: 2\n")
    name, _ = make_dataset(label_studio, labeled=0)
    summary = autolabel(dataset=name, weights="yolo11n-pose.pt")
    assert summary["predicted"] == 4 and summary["failed"] == {}
    with LabelStudioClient(label_studio) as client:
        project = client.find_project(name)
        versions = [p["model_version"] for t in client.iter_tasks(project.id) for p in t["predictions"]]
    assert versions.count(summary["model_version"]) == 4


def test_bad_autolabel_params_name_the_key(prefect_api, workspace):
    from flows.autolabel import autolabel

    (workspace / "params.yaml").write_text("autolabel:\n  task_runner: spark\n")
    with pytest.raises(ValueError, match="autolabel.task_runner must be"):
        autolabel(dataset="x", weights="yolo11n-pose.pt")
