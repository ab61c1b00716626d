"""Readers of existing labels (COCO keypoints JSON, Ultralytics YOLO-pose txt) and the task builder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from poseops import coco
from poseops.skeleton import load_skeleton, parse_skeleton

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("POSEOPS_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))
COCO_JSON = DATASETS / "coco-mini-train" / "annotations" / "person_keypoints_train2017.json"
PERSON = load_skeleton(ROOT / "label_config" / "skeletons" / "person.yaml")


def test_coco_reader_matches_the_json():
    doc = json.loads(COCO_JSON.read_text())
    images = coco.read_coco_keypoints(COCO_JSON, skeleton=PERSON)
    assert [i.file_name for i in images] == [i["file_name"] for i in doc["images"]]
    assert all(i.path.is_file() for i in images)
    by_id = {i["id"]: i for i in doc["images"]}
    first = next(a for a in doc["annotations"] if a["num_keypoints"] and not a["iscrowd"])
    img = by_id[first["image_id"]]
    pose = next(i for i in images if i.file_name == img["file_name"]).poses[0]
    x, y, w, h = first["bbox"]
    assert pose.box == pytest.approx((x / img["width"], y / img["height"], w / img["width"], h / img["height"]))
    kx, ky, kv = first["keypoints"][:3]
    assert pose.keypoints[0] == ((kx / img["width"], ky / img["height"], kv) if kv else (0.0, 0.0, 0))


def test_crowd_and_unlabeled_persons():
    doc = json.loads(COCO_JSON.read_text())
    crowd = sum(1 for a in doc["annotations"] if a["iscrowd"])
    assert crowd == 5
    with_kps = coco.read_coco_keypoints(COCO_JSON)
    everyone = coco.read_coco_keypoints(COCO_JSON, include_without_keypoints=True)
    assert sum(len(i.poses) for i in with_kps) == 86
    assert sum(len(i.poses) for i in everyone) == len(doc["annotations"]) - crowd
    assert any(all(k == (0.0, 0.0, 0) for k in p.keypoints) for i in everyone for p in i.poses)


def test_coco_keypoints_must_match_the_skeleton():
    other = parse_skeleton("classes: [{name: person, keypoints: [nose, left_eye]}]")
    with pytest.raises(coco.DatasetError, match="must match in order"):
        coco.read_coco_keypoints(COCO_JSON, skeleton=other)


def test_yolo_label_parse_errors():
    with pytest.raises(coco.DatasetError, match=r"x.txt:2: expected"):
        coco.parse_yolo_pose_labels("0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1", ["person"], "x.txt")
    with pytest.raises(coco.DatasetError, match="class 3"):
        coco.parse_yolo_pose_labels("3 0.5 0.5 0.1 0.1", ["person"])
    assert coco.parse_yolo_pose_labels("0 0.5 0.5 0.2 0.4 0.1 0.2 1\n", ["person"])[0].keypoints == ((0.1, 0.2, 1),)


def test_tasks_carry_one_annotation_per_image():
    images = coco.read_coco_keypoints(COCO_JSON)[:3]
    tasks = coco.to_label_studio_tasks(PERSON, images, first_id=10, image_url=lambda i: f"/data/{i.file_name}")
    assert [t["id"] for t in tasks] == [10, 11, 12]
    assert tasks[0]["data"]["image"] == f"/data/{images[0].file_name}"
    for task, image in zip(tasks, images, strict=True):
        (annotation,) = task["annotations"]
        boxes = [r for r in annotation["result"] if r["type"] == "rectanglelabels"]
        assert len(boxes) == len(image.poses) and annotation["was_cancelled"] is False


def test_yolo_lines_are_read_by_kpt_shape():
    three = "0 0.5 0.5 0.2 0.2 0.1 0.1 2 0.2 0.2 1 0.3 0.3 0\n"
    with pytest.raises(coco.DatasetError, match=r"x.txt:1: expected 'cls cx cy w h' and 3 keypoints of 2 values "
                                                r"\(kpt_shape \[3, 2\]\): 11 numbers, got 14"):
        coco.parse_yolo_pose_labels(three, ["a"], "x.txt", kpt_shape=(3, 2))
    assert coco.parse_yolo_pose_labels(three, ["a"], kpt_shape=(3, 3))[0].keypoints == \
        ((0.1, 0.1, 2), (0.2, 0.2, 1), (0.0, 0.0, 0))
    (two,) = coco.parse_yolo_pose_labels("0 0.5 0.5 0.2 0.2 0.1 0.1 0.2 0.2 0.3 0.3\n", ["a"], kpt_shape=(3, 2))
    assert two.keypoints == ((0.1, 0.1, 2), (0.2, 0.2, 2), (0.3, 0.3, 2))
    with pytest.raises(coco.DatasetError, match="visibility 3"):
        coco.parse_yolo_pose_labels("0 0.5 0.5 0.2 0.2 0.1 0.1 3\n", ["a"])
