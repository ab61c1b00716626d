"""A pull of an unchanged project rebuilds nothing; a changed label, image or dataset folder rebuilds.
`poseops pull` finds an unchanged project without a flow run (`poseops.pull_unchanged`).

Real Label Studio, the real Prefect API, DVC and git in a fresh repository.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from test_pull import COCO8, git, make_project, run_pull, tree_digest

from poseops.coco import read_yolo_pose
from poseops.labelstudio import LabelStudioClient
from poseops.pull_unchanged import unchanged_pull
from poseops.safepaths import UnsafePath

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
    assert unchanged_pull(name) is None  # the CLI's check before the flow sees the change too
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


KEPT_FIELDS = ("unchanged", "dvc_md5", "git_commit", "export_snapshot_id", "train_images", "val_images",
               "keypoints_per_label", "downloaded_images", "label_studio_project_id")


def test_nothing_changed_is_found_before_the_flow_in_two_requests(prefect_api, workspace, label_studio, request_log):
    name = make_project(label_studio, IMAGES[:6])
    assert unchanged_pull(name) is None and request_log.requests == []  # no version yet: the flow builds it, unasked
    with pytest.raises(UnsafePath, match="bad dataset name"):  # refused as the flow refuses it
        unchanged_pull("../elsewhere")
    first = run_pull(name)
    flow_kept = run_pull(name)
    seen = len(request_log.requests)
    kept = unchanged_pull(name)
    assert kept is not None and {k: kept[k] for k in KEPT_FIELDS} == {k: flow_kept[k] for k in KEPT_FIELDS}
    assert kept["unchanged"] is True and kept["dvc_md5"] == first["dvc_md5"] and kept["downloaded_images"] == 0
    asked = request_log.requests[seen:]  # the project's title checked once and its tasks read: no snapshot, no image
    lookups = [r for r in asked if r.method == "GET" and re.fullmatch(r"/api/projects/\d+\?include=id%2Ctitle", r.path)]
    exports = [r for r in asked if r.method == "GET" and re.fullmatch(r"/api/projects/\d+/export\?.*", r.path)]
    assert (len(lookups), len(exports), len(asked)) == (1, 1, 2), asked

    # the CLI's way: no Prefect imported (so no flow run, no temporary Prefect server)
    code = (f"import sys; from poseops.pull_unchanged import unchanged_pull; kept = unchanged_pull({name!r}); "
            "print(kept['unchanged'], 'prefect' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=workspace, env=os.environ, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]


def test_a_new_project_under_the_name_is_pulled_not_the_renamed_one(prefect_api, workspace, label_studio):
    name = make_project(label_studio, IMAGES[:6])
    first = run_pull(name)
    with LabelStudioClient(label_studio) as client:  # the project renamed, another made under its name
        old = client.find_project(name)
        client.update_project(old.id, title=f"{name}-old")
    make_project(label_studio, IMAGES[2:8], name=name)
    assert unchanged_pull(name) is None
    new = run_pull(name)
    assert new["unchanged"] is False and new["label_studio_project_id"] != old.id
    assert new["dvc_md5"] != first["dvc_md5"]
