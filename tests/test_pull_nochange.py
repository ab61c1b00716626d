"""A pull of an unchanged project rebuilds nothing; a changed label, image or dataset folder rebuilds.

Real Label Studio, the real Prefect API, DVC and git in a fresh repository.
"""

from __future__ import annotations

import json

import pytest
from test_pull import COCO8, git, make_project, run_pull, tree_digest

from poseops.coco import read_yolo_pose
from poseops.labelstudio import LabelStudioClient

pytestmark = pytest.mark.integration
IMAGES = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])


def test_an_unchanged_project_keeps_its_version_and_a_change_rebuilds(prefect_api, workspace, label_studio):
    name = make_project(label_studio, IMAGES[:6])
    data = workspace / "data"
    first = run_pull(name)
    assert first["unchanged"] is False and first["pushed"] is True
    record = json.loads((data / f"{name}.pull.json").read_text())
    assert len(record["inputs_sha256"]) == 64  # what the version was made of, once pushed
    head, manifest_mtime = git(workspace, "rev-parse", "HEAD"), (data / name / "manifest.json").stat().st_mtime_ns
    before = {"tree": tree_digest(data / name), "record": (data / f"{name}.pull.json").read_text()}

    again = run_pull(name)
    assert again["unchanged"] is True and again["downloaded_images"] == 0
    assert again["dvc_md5"] == first["dvc_md5"] and again["git_commit"] == head == git(workspace, "rev-parse", "HEAD")
    assert again["export_snapshot_id"] == first["export_snapshot_id"]  # the record of the version kept
    assert (again["train_images"], again["val_images"]) == (first["train_images"], first["val_images"])
    assert again["keypoints_per_label"] == first["keypoints_per_label"]
    assert (data / name / "manifest.json").stat().st_mtime_ns == manifest_mtime  # not rebuilt
    assert {"tree": tree_digest(data / name), "record": (data / f"{name}.pull.json").read_text()} == before

    # one keypoint of one annotation moved in Label Studio: a new version
    with LabelStudioClient(label_studio) as client:
        project = client.find_project(name)
        task = next(t for t in client.iter_tasks(project.id) if t["annotations"])
        (annotation,) = task["annotations"]
        result = annotation["result"]
        point = next(r for r in result if r["type"] == "keypointlabels")
        point["value"]["x"] = min(99.0, point["value"]["x"] + 1.0)
        client.request("PATCH", f"/api/annotations/{annotation['id']}", json={"result": result})
    changed = run_pull(name)
    assert changed["unchanged"] is False and changed["dvc_md5"] != first["dvc_md5"]
    assert git(workspace, "rev-parse", "HEAD") != head and git(workspace, "status", "--porcelain", "--", "data") == ""
    assert run_pull(name)["unchanged"] is True

    # the dataset folder damaged by hand: the pull rebuilds the same version in place
    image = next((data / name / "images" / "train").iterdir())
    image.unlink()
    restored = run_pull(name)
    assert restored["unchanged"] is False and restored["dvc_md5"] == changed["dvc_md5"] and image.is_file()


def test_a_pull_without_dvc_never_counts_as_a_version(prefect_api, workspace, label_studio):
    name = make_project(label_studio, IMAGES[:6])
    unversioned = run_pull(name, version=False)
    assert unversioned["unchanged"] is False and "inputs_sha256" not in unversioned
    versioned = run_pull(name)  # the same labels, now recorded with DVC: built, not skipped
    assert versioned["unchanged"] is False and versioned["pushed"] is True and versioned["dvc_md5"]
    assert run_pull(name, version=False)["unchanged"] is False  # --no-version always writes the folder
