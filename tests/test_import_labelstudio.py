"""`poseops dataset import` against a real Label Studio: DeepLabCut's frames into a keypoint-only dataset and COCO /
YOLO labels into a boxed one, imported as annotations, imported again without adding anything, pulled exactly."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import PERSON_SPEC, ROOT, SHARED_DATASETS
from test_pull import run_pull

from poseops.coco import parse_yolo_pose_labels, read_coco_keypoints, read_yolo_pose
from poseops.datasets import create_dataset
from poseops.importing.upload import import_labels
from poseops.labelstudio import LabelStudioClient
from poseops.settings import load_settings
from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration
DLC = SHARED_DATASETS / "dlc-reaching"
DLC_CSV = DLC / "labeled-data" / "reachingvideo1" / "CollectedData_Mackenzie.csv"
REACHING_SPEC = ROOT / "label_config" / "skeletons" / "reaching.yaml"
COCO_JSON = SHARED_DATASETS / "coco-mini-train" / "annotations" / "person_keypoints_train2017.json"
COCO8 = SHARED_DATASETS / "coco8-pose"
PADDING = 0.1


def poseops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poseops.cli", *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ))


def dlc_points() -> dict[str, list[tuple[float, float]]]:
    """Frame name -> its labeled points in pixels, read here from the CSV on its own."""
    with open(DLC_CSV, newline="") as f:
        rows = list(csv.reader(f))[3:]
    return {Path(r[0]).name: [(float(r[i]), float(r[i + 1])) for i in range(1, len(r), 2) if r[i]] for r in rows}


def expected_box(points, width, height) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    px, py = PADDING * (x1 - x0), PADDING * (y1 - y0)
    x0, x1, y0, y1 = max(0, x0 - px), min(width, x1 + px), max(0, y0 - py), min(height, y1 + py)
    return x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height


def label_files_by_source(dataset: Path, project_id: int) -> dict[str, Path]:
    """Each task's original file name -> its label file in the pulled dataset."""
    task_images = json.loads((dataset / "manifest.json").read_text())["conversion"]["task_images"]
    with LabelStudioClient(load_settings()) as client:
        sources = {t["id"]: t["data"]["source"] for t in client.iter_tasks(project_id, fields="task_only")}
    return {sources[int(tid)]: (dataset / path.replace("images/", "labels/", 1)).with_suffix(".txt")
            for tid, path in task_images.items()}


def test_a_deeplabcut_project_imports_into_a_keypoint_only_dataset_once_and_pulls_with_derived_boxes(
        prefect_api, workspace, label_studio, request_log, tmp_path):
    spec = tmp_path / "reaching.yaml"
    spec.write_text(REACHING_SPEC.read_text())
    name = f"dlc-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, spec)

    done = poseops("dataset", "import", name, "--format", "dlc", str(DLC))
    assert done.returncode == 0, done.stderr
    points = dlc_points()
    labeled = sum(len(p) for p in points.values())
    assert (f"imported 55 image(s) into {name!r} (55 new tasks, 0 existing tasks annotated): 55 objects, {labeled} "
            "keypoints; already there with labels: 0; skipped: none") in done.stdout
    with LabelStudioClient(label_studio) as client:
        tasks = list(client.iter_tasks(project.id))
    assert len(tasks) == 55 and all(len(t["annotations"]) == 1 for t in tasks)  # annotations to review, not predictions
    assert {r["type"] for t in tasks for r in t["annotations"][0]["result"]} == {"keypointlabels"}

    # The same project again adds nothing, and writes nothing to Label Studio.
    before = len(request_log.requests)
    settings = load_settings()
    with LabelStudioClient(settings) as client:
        again = import_labels(client, settings, name, "dlc", DLC)
    assert (again.new_tasks, again.annotated, again.unchanged, again.instances) == (0, 0, 55, 0)
    writes = [r for r in request_log.requests[before:] if r.method in ("POST", "PATCH", "PUT", "DELETE")]
    assert writes == []
    with LabelStudioClient(label_studio) as client:
        assert sum(1 for _ in client.iter_tasks(project.id, fields="task_only")) == 55

    summary = run_pull(name)
    conversion = summary["conversion"]
    assert conversion["problems"] == [] and conversion["skipped_tasks"] == [] and conversion["objects"] == 55
    compared = 0
    from poseops.importing.labeled import image_size

    for source, label_file in label_files_by_source(workspace / "data" / name, project.id).items():
        (pose,) = parse_yolo_pose_labels(label_file.read_text(), ["mouse"], str(label_file))
        width, height = image_size(DLC_CSV.parent / source)
        assert pose.box == pytest.approx(expected_box(points[source], width, height), abs=1e-6), source
        assert sum(v > 0 for _, _, v in pose.keypoints) == len(points[source])
        compared += 1
    assert compared == 55


def test_coco_and_yolo_labels_import_and_pull_exactly(prefect_api, workspace, label_studio, tmp_path):
    skeleton = load_skeleton(PERSON_SPEC)
    name = f"coco-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, PERSON_SPEC)
    # a COCO file of 12 images of coco-mini-train (people and negatives), and coco8-pose as an Ultralytics folder
    doc = json.loads(COCO_JSON.read_text())
    doc["images"] = doc["images"][:12]
    kept = {im["id"] for im in doc["images"]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in kept]
    coco_file = tmp_path / "annotations" / "kp.json"
    coco_file.parent.mkdir()
    coco_file.write_text(json.dumps(doc))
    data_yaml = tmp_path / "coco8.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(COCO8), "train": "images/train", "val": "images/val",
                                         "kpt_shape": [17, 3], "names": {0: "person"}}))

    coco = poseops("dataset", "import", name, "--format", "coco", str(coco_file),
                   "--images", str(COCO_JSON.parent.parent / "images"))
    assert coco.returncode == 0, coco.stderr
    assert "(12 new tasks, 0 existing tasks annotated)" in coco.stdout and "skipped: " in coco.stdout
    # coco8's train images are in the dataset already, unlabeled: their tasks get the labels, nothing is duplicated
    uploaded = poseops("dataset", "upload", name, str(COCO8 / "images" / "train"))
    assert uploaded.returncode == 0 and "uploaded 4," in uploaded.stdout, uploaded.stderr
    yolo = poseops("dataset", "import", name, "--format", "yolo", str(data_yaml))
    assert yolo.returncode == 0, yolo.stderr
    assert "(4 new tasks, 4 existing tasks annotated): 21 objects" in yolo.stdout
    again = poseops("dataset", "import", name, "--format", "yolo", str(data_yaml))
    assert "(0 new tasks, 0 existing tasks annotated)" in again.stdout and "already there with labels: 8" in again.stdout

    summary = run_pull(name)
    assert summary["conversion"]["problems"] == [] and summary["conversion"]["skipped_tasks"] == []
    originals = {im.file_name: im for im in read_coco_keypoints(coco_file, COCO_JSON.parent.parent / "images",
                                                                skeleton=skeleton)}
    originals |= {im.file_name: im for split in ("train", "val") for im in read_yolo_pose(COCO8, split, ["person"])}
    files = label_files_by_source(workspace / "data" / name, project.id)
    assert sorted(files) == sorted(originals)
    for source, label_file in files.items():
        got = parse_yolo_pose_labels(label_file.read_text(), ["person"], str(label_file))
        want = originals[source].poses
        assert len(got) == len(want), source
        for have, pose in zip(got, want, strict=True):
            assert have.box == pytest.approx(pose.box, abs=1e-6)
            assert [v for *_, v in have.keypoints] == [v for *_, v in pose.keypoints]
            assert [c for kp in have.keypoints for c in kp] == pytest.approx([c for kp in pose.keypoints for c in kp],
                                                                             abs=1e-6)


def test_each_animal_of_a_multi_animal_project_stays_one_object_through_label_studio(prefect_api, workspace,
                                                                                     label_studio, tmp_path):
    from test_import import multi_animal_project

    spec = tmp_path / "reaching.yaml"
    spec.write_text(REACHING_SPEC.read_text())
    name = f"madlc-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, spec)
    project_dir = multi_animal_project(tmp_path / "project")
    refused = poseops("dataset", "import", name, "--format", "dlc", str(project_dir))
    assert refused.returncode == 1 and "Not in the skeleton: lamp" in refused.stderr and "Traceback" not in refused.stderr
    done = poseops("dataset", "import", name, "--format", "dlc", str(project_dir), "--map", "lamp=")
    assert done.returncode == 0, done.stderr
    assert "imported 2 image(s)" in done.stdout and "3 objects, 9 keypoints" in done.stdout
    assert "skipped: 1 points_left_out" in done.stdout and "(points_left_out) img005.png" in done.stderr
    # what Label Studio stores and gives back ties each animal's points together: the pull's reader sees 2 + 1 animals
    from poseops.convert import results_to_poses

    animals = {}
    with LabelStudioClient(label_studio) as client:
        for task in client.iter_tasks(project.id):
            poses, problems = results_to_poses(load_skeleton(spec), task["annotations"][0]["result"], task["id"])
            assert problems == []
            animals[task["data"]["source"]] = sorted(sum(v > 0 for *_, v in pose.keypoints) for pose in poses)
    assert animals == {"img005.png": [2, 4], "img020.png": [3]}
