"""The Label Studio → YOLO-pose converter (offline, no servers).

Round trips on real labels (COCO JSON and Ultralytics YOLO txt → Label Studio tasks →
convert_export → label files) must give the originals back to 1e-6; every region the
converter cannot use must come back as a Problem.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from poseops import coco, convert, regions
from poseops.conversion import keypoint, rectangle, visibility
from poseops.conversion.vocab import vocab
from poseops.convert import (
    SPLITS,
    ExportError,
    choose_annotation,
    convert_export,
    file_sha256,
    load_export,
    results_to_poses,
    split_for,
)
from poseops.label_config import BOXES, IMAGE, KEYPOINTS, OCCLUDED, VISIBILITY
from poseops.regions import Pose, poses_to_results
from poseops.skeleton import load_skeleton, parse_skeleton

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("POSEOPS_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))
COCO_JSON = DATASETS / "coco-mini-train" / "annotations" / "person_keypoints_train2017.json"
COCO8 = DATASETS / "coco8-pose"
TOL = 1e-6

PERSON = load_skeleton(ROOT / "label_config" / "skeletons" / "person.yaml")
# Two classes with the same keypoint names at other positions: labels become "a:p", "b:p", ...
TWO = parse_skeleton("""
classes:
  - {name: a, keypoints: [p, q]}
  - {name: b, keypoints: [q, p]}
""")
TINY = parse_skeleton("classes: [{name: thing, keypoints: [top, bottom]}]")


# --- helpers ---------------------------------------------------------------------------


def box(rid, x, y, w, h, cls="thing", **extra):
    return {"id": rid, "from_name": BOXES, "to_name": IMAGE, "type": "rectanglelabels", "original_width": 100,
            "original_height": 100, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [cls]}, **extra}


def kp(rid, label, x, y, parent=None, **extra):
    r = {"id": rid, "from_name": KEYPOINTS, "to_name": IMAGE, "type": "keypointlabels", "original_width": 100,
         "original_height": 100, "image_rotation": 0, "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]},
         **extra}
    if parent is not None:
        r["parentID"] = parent
    return r


def occluded(rid):
    return {"id": rid, "from_name": VISIBILITY, "to_name": IMAGE, "type": "choices", "value": {"choices": [OCCLUDED]}}


def kinds(problems):
    return [p.kind for p in problems]


def assert_same_poses(got: list[Pose], want: list[Pose], where: str) -> None:
    assert len(got) == len(want), f"{where}: {len(got)} objects, expected {len(want)}"
    for n, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.class_name == w.class_name, f"{where} #{n}"
        for a, b in zip(g.box, w.box, strict=True):
            assert abs(a - b) <= TOL, f"{where} #{n}: box {g.box} != {w.box}"
        assert len(g.keypoints) == len(w.keypoints)
        for i, ((gx, gy, gv), (wx, wy, wv)) in enumerate(zip(g.keypoints, w.keypoints, strict=True)):
            assert gv == wv, f"{where} #{n} keypoint {i}: visibility {gv} != {wv}"
            if wv:
                assert abs(gx - wx) <= TOL and abs(gy - wy) <= TOL, f"{where} #{n} keypoint {i}: {gx, gy} != {wx, wy}"
            else:
                assert (gx, gy) == (0.0, 0.0)


def read_output(out: Path, report, task_id, class_names) -> list[Pose]:
    image = out / report.task_images[task_id]
    assert image.is_file()
    parts = image.relative_to(out).parts
    label = out / "labels" / parts[1] / f"{image.stem}.txt"
    return coco.parse_yolo_pose_labels(label.read_text(encoding="utf-8"), class_names, str(label))


def export_roundtrip(tasks: list[dict], tmp_path: Path) -> list[dict]:
    """Through a file, as a real export arrives."""
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return load_export(path)


# --- round trips on real labels --------------------------------------------------------


@pytest.mark.parametrize("with_empty", [False, True], ids=["with-keypoints", "all-persons"])
def test_coco_round_trip_is_exact(tmp_path, with_empty):
    images = coco.read_coco_keypoints(COCO_JSON, skeleton=PERSON, include_without_keypoints=with_empty)
    assert len(images) == 80
    objects = sum(len(i.poses) for i in images)
    assert objects == (167 if with_empty else 86)  # 172 minus 5 iscrowd; 86 have keypoints
    tasks = export_roundtrip(coco.to_label_studio_tasks(PERSON, images), tmp_path)
    out = tmp_path / "ds"
    report = convert_export(tasks, PERSON, {t["id"]: i.path for t, i in zip(tasks, images, strict=True)}, out, val_fraction=0.25)

    assert report.problems == [] and report.skipped_tasks == []
    assert report.annotations_used == 80 and sum(report.images.values()) == 80
    assert sum(report.objects.values()) == objects
    assert sum(report.keypoints.values()) == 800  # PROVENANCE.md: 800 labelled keypoints
    assert report.occluded_keypoints == sum(1 for i in images for p in i.poses for k in p.keypoints if k[2] == 1) > 0
    assert report.empty_images == sum(1 for i in images if not i.poses)
    for task, image in zip(tasks, images, strict=True):
        assert_same_poses(read_output(out, report, task["id"], PERSON.class_names), image.poses, image.file_name)


@pytest.fixture(scope="module")
def coco8(tmp_path_factory):
    """coco8-pose → Label Studio tasks → convert_export, keeping the original split."""
    originals = [(part, img) for part in SPLITS for img in coco.read_yolo_pose(COCO8, part, PERSON.class_names)]
    tasks = coco.to_label_studio_tasks(PERSON, [img for _, img in originals], first_id=100)
    tmp = tmp_path_factory.mktemp("coco8")
    tasks = export_roundtrip(tasks, tmp)
    out = tmp / "ds"
    report = convert_export(tasks, PERSON, {t["id"]: img.path for t, (_, img) in zip(tasks, originals, strict=True)}, out,
                            split={t["id"]: part for t, (part, _) in zip(tasks, originals, strict=True)})
    return tasks, originals, out, report


def test_yolo_round_trip_is_exact(coco8):
    tasks, originals, out, report = coco8
    assert len(originals) == 8 and sum(len(img.poses) for _, img in originals) == 21
    assert any(k[2] == 1 for _, img in originals for p in img.poses for k in p.keypoints), "coco8 has occluded points"
    assert report.problems == [] and report.skipped_tasks == []
    assert report.images == {"train": 4, "val": 4}  # the given split, not the hash split
    for task, (part, img) in zip(tasks, originals, strict=True):
        assert report.task_images[task["id"]].startswith(f"images/{part}/")
        assert_same_poses(read_output(out, report, task["id"], PERSON.class_names), img.poses, img.file_name)
        # the text itself: the same numbers as the original file to 1e-6
        mine = (out / report.task_images[task["id"]]).stem
        want = (COCO8 / "labels" / part / f"{Path(img.file_name).stem}.txt").read_text().split()
        got = (out / "labels" / part / f"{mine}.txt").read_text().split()
        assert len(got) == len(want)
        assert all(abs(float(a) - float(b)) <= TOL for a, b in zip(got, want, strict=True))


def test_dataset_passes_ultralytics_checks(coco8, tmp_path, monkeypatch):
    from poseops.weights import prepare_ultralytics

    _, _, out, report = coco8
    monkeypatch.setenv("YOLO_OFFLINE", "true")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics"))
    prepare_ultralytics(tmp_path / "ultralytics")
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset, verify_image_label

    data = check_det_dataset(str(out / "data.yaml"))
    assert data["nc"] == 1 and data["names"] == {0: "person"}
    assert data["kpt_shape"] == [17, 3] and data["flip_idx"] == PERSON.flip_idx
    for part in SPLITS:
        images = sorted((out / "images" / part).iterdir())
        assert len(images) == 4
        for im in images:
            label = out / "labels" / part / f"{im.stem}.txt"
            *_, keypoints, nm, nf, ne, nc, msg = verify_image_label((str(im), str(label), "", True, 1, 17, 3, False))
            assert (nm, nf, nc, msg) == (0, 1, 0, ""), msg
            assert keypoints.shape[1:] == (17, 3)
    dataset = YOLODataset(img_path=data["train"], data=data, task="pose", augment=False, imgsz=320)
    assert len(dataset.labels) == 4
    assert sum(len(lb["cls"]) for lb in dataset.labels) == 7  # PROVENANCE.md: 7 persons in train


def test_data_yaml_fields(coco8):
    _, _, out, report = coco8
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["path"] == str(out.resolve()) == report.out_dir
    assert (data["train"], data["val"]) == ("images/train", "images/val")
    assert data["names"] == {0: "person"}
    assert data["kpt_shape"] == [17, 3]
    assert data["flip_idx"] == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    assert data["kpt_names"] == {0: PERSON.get("person").keypoint_names}
    assert json.loads(json.dumps(report.to_dict()))["objects"] == 21


# --- results_to_poses: one annotation --------------------------------------------------


def test_inverse_of_pose_to_results():
    poses = [Pose("person", (0.1, 0.2, 0.3, 0.4), tuple((0.1 + i / 100, 0.25 + i / 100, (0, 1, 2)[i % 3])
                                                        for i in range(17)))]
    poses[0] = Pose("person", poses[0].box, tuple(k if k[2] else (0.0, 0.0, 0) for k in poses[0].keypoints))
    got, problems = results_to_poses(PERSON, poses_to_results(PERSON, poses, 640, 480), task_id=1)
    assert problems == []
    assert_same_poses(got, poses, "synthetic")


# --- one Label Studio tag at a time: each module reads back what it writes ---------------

COMMON = {"to_name": IMAGE, "original_width": 100, "original_height": 100, "image_rotation": 0}


def test_rectangle_labels_read_back_what_they_write():
    pose = Pose("thing", (0.125, 0.25, 0.5, 0.375), ((0.0, 0.0, 0), (0.0, 0.0, 0)), confidence=0.9)
    region = rectangle.box_region(pose, "b1", COMMON)
    assert (region["type"], region["from_name"], region["score"]) == ("rectanglelabels", BOXES, 0.9)
    assert region["value"]["rectanglelabels"] == ["thing"] and region["value"]["rotation"] == 0
    problems: list = []
    read = rectangle.read_box(vocab(TINY), region, 7, problems, {}, set())
    assert (read.id, read.cls, (read.x, read.y, read.w, read.h)) == ("b1", "thing", pose.box) and problems == []


def test_keypoint_labels_read_back_what_they_write():
    on = rectangle.Box("b1", "thing", 0.25, 0.25, 0.5, 0.5, 2)
    region = keypoint.keypoint_region("b1_1", "b1", "bottom", keypoint.keypoint_geometry(0.375, 0.625), COMMON, 0.5)
    assert (region["type"], region["from_name"], region["parentID"], region["score"]) == (
        "keypointlabels", KEYPOINTS, "b1", 0.5)
    ids: set = set()
    assert keypoint.place_keypoint(vocab(TINY), region, 7, {"b1": on}, set(), set(), ids) is None
    assert on.kps == [None, (0.375, 0.625, 2)] and ids == {"b1_1"}
    again = keypoint.place_keypoint(vocab(TINY), {**region, "id": "b1_2"}, 7, {"b1": on}, set(), set(), ids)
    assert (again.kind, again.dropped, again.region_id) == ("duplicate_keypoint", "keypoint", "b1_2")


def test_the_visibility_choice_reads_back_what_it_writes():
    choice = visibility.occluded_choice("b1_1", keypoint.keypoint_geometry(0.5, 0.5), COMMON)
    assert visibility.is_visibility(choice) and choice["value"]["choices"] == [OCCLUDED]
    occluded_ids: set = set()
    assert visibility.read_visibility(choice, 0, 7, occluded_ids) is None and occluded_ids == {"b1_1"}
    assert [p.region_id for p in visibility.stray_choices(7, occluded_ids, set())] == ["b1_1"]
    assert visibility.stray_choices(7, occluded_ids, {"b1_1"}) == []
    other = visibility.read_visibility({**choice, "value": {"choices": ["visible"]}}, 0, 7, set())
    assert (other.kind, other.dropped) == ("ignored_region", "region")


@pytest.mark.parametrize("module", [convert, regions])
def test_the_api_modules_re_export_every_name(module):
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == [] and len(module.__all__) == len(set(module.__all__))


def test_orphan_keypoint_goes_to_the_box_that_contains_it():
    results = [box("b1", 10, 10, 20, 20), box("b2", 60, 60, 20, 20), kp("k1", "top", 65, 62), kp("k2", "bottom", 15, 25)]
    poses, problems = results_to_poses(TINY, results, task_id=7)
    assert problems == []
    assert poses[0].keypoints == ((0.0, 0.0, 0), (0.15, 0.25, 2))
    assert poses[1].keypoints == ((0.65, 0.62, 2), (0.0, 0.0, 0))


def test_orphan_in_no_box_or_in_two_boxes_is_dropped_and_reported():
    results = [box("b1", 10, 10, 50, 50), box("b2", 40, 40, 50, 50),
               kp("far", "top", 95, 5), kp("both", "top", 45, 45), kp("ok", "bottom", 80, 80)]
    poses, problems = results_to_poses(TINY, results, task_id=3)
    assert kinds(problems) == ["orphan_keypoint", "ambiguous_keypoint"]
    assert [(p.task_id, p.label, p.region_id, p.dropped) for p in problems] == [
        (3, "top", "far", "keypoint"), (3, "top", "both", "keypoint")]
    assert "b1" in problems[1].message and "b2" in problems[1].message
    assert [p.keypoints for p in poses] == [((0.0, 0.0, 0), (0.0, 0.0, 0)), ((0.0, 0.0, 0), (0.8, 0.8, 2))]


def test_orphan_only_joins_a_box_of_a_class_that_has_its_label():
    results = [box("a1", 0, 0, 50, 50, "a"), box("b1", 10, 10, 50, 50, "b"), kp("k", "a:p", 20, 20)]
    poses, problems = results_to_poses(TWO, results)
    assert problems == []
    assert poses[0].keypoints == ((0.2, 0.2, 2), (0.0, 0.0, 0)) and poses[1].keypoints == ((0.0, 0.0, 0),) * 2


def test_a_keypoint_with_parent_wins_over_an_orphan_of_the_same_label():
    results = [box("b", 0, 0, 50, 50), kp("guess", "top", 10, 10), kp("linked", "top", 20, 20, parent="b")]
    poses, problems = results_to_poses(TINY, results, task_id=1)
    assert poses[0].keypoints[0] == (0.2, 0.2, 2)
    assert [(p.kind, p.region_id) for p in problems] == [("duplicate_keypoint", "guess")]


def test_keypoint_of_the_wrong_class_is_reported():
    results = [box("b1", 0, 0, 50, 50, "b"), kp("k", "a:p", 20, 20, parent="b1")]
    poses, problems = results_to_poses(TWO, results, task_id=2)
    assert kinds(problems) == ["wrong_class"] and poses[0].keypoints == ((0.0, 0.0, 0),) * 2


def test_visibility_and_duplicates():
    results = [box("b", 0, 0, 100, 100), kp("k1", "top", 10, 10, "b"), occluded("k1"),
               kp("k2", "top", 20, 20, "b"), kp("k3", "bottom", 30, 30, "b"), occluded("b")]
    poses, problems = results_to_poses(TINY, results, task_id=9)
    assert poses[0].keypoints == ((0.1, 0.1, 1), (0.3, 0.3, 2))  # the first 'top' is kept, occluded
    assert kinds(problems) == ["duplicate_keypoint", "ignored_region"]
    assert problems[0].region_id == "k2" and problems[1].region_id == "b"


def test_unknown_labels_are_reported():
    results = [box("b", 0, 0, 50, 50), box("c", 50, 50, 50, 50, "car"), kp("k", "elbow", 5, 5, "b"),
               kp("kc", "top", 60, 60, "c")]
    poses, problems = results_to_poses(TINY, results, task_id=4)
    assert [p.class_name for p in poses] == ["thing"]
    assert kinds(problems) == ["unknown_label", "unknown_label", "parent_dropped"]
    assert [p.dropped for p in problems] == ["object", "keypoint", "keypoint"]
    assert problems[0].label == "car" and problems[1].label == "elbow"


def test_out_of_range_values():
    results = [box("inside", 0, 0, 50, 50), box("over", 80, 80, 30, 30), box("gone", 101, 0, 5, 5),
               kp("k_out", "top", 10, 100.5, "inside"), kp("k_edge", "bottom", 100 + 5e-5, 100 + 5e-5, "over")]
    poses, problems = results_to_poses(TINY, results, task_id=5)
    assert [(p.kind, p.region_id, p.dropped) for p in problems] == [
        ("out_of_range", "over", "nothing"), ("out_of_range", "gone", "object"), ("out_of_range", "k_out", "keypoint")]
    assert len(poses) == 2
    assert poses[1].box == pytest.approx((0.8, 0.8, 0.2, 0.2))  # clipped to the image
    assert poses[1].keypoints[1] == (pytest.approx(1.0000005), pytest.approx(1.0000005), 2)  # rounding noise: kept
    assert poses[0].keypoints == ((0.0, 0.0, 0), (0.0, 0.0, 0))


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([box("b", 0, 0, 10, 10) | {"value": None}], ["missing_field"]),
        ([{k: v for k, v in box("b", 0, 0, 10, 10).items() if k != "id"}], ["missing_field"]),
        ([box("b", 0, 0, 10, 10) | {"value": {"x": 1, "y": 1, "rectanglelabels": ["thing"]}}], ["missing_field"]),
        ([box("b", 0, 0, 10, 10) | {"value": {"x": "1", "y": 1, "width": 2, "height": float("nan"),
                                              "rectanglelabels": ["thing"]}}], ["missing_field"]),
        ([box("b", 0, 0, 10, 10) | {"value": {"x": 1, "y": 1, "width": 2, "height": 2}}], ["missing_field"]),
        ([box("b", 0, 0, 10, 10) | {"value": {"x": 1, "y": 1, "width": 2, "height": 2,
                                              "rectanglelabels": ["thing", "thing"]}}], ["bad_label"]),
        ([box("b", 0, 0, 0, 10)], ["empty_box"]),
        ([box("b", 0, 0, 10, 10), box("b", 5, 5, 10, 10)], ["duplicate_id"]),
        ([box("b", 0, 0, 10, 10), kp("k", "top", 5, 5, "b") | {"value": {"keypointlabels": ["top"]}}],
         ["missing_field"]),
        ([box("b", 0, 0, 10, 10), kp("k", "top", 5, 5, "b") | {"value": {"x": 5, "y": 5}}], ["missing_field"]),
        ([box("b", 0, 0, 10, 10), kp("k", "top", 5, 5, "gone")], ["missing_parent"]),
        ([box("b", 0, 0, 10, 10), "not a region", None], ["bad_region", "bad_region"]),
        ([box("b", 0, 0, 10, 10), {"id": "t", "type": "textarea", "from_name": "notes", "value": {"text": ["x"]}}],
         ["ignored_region"]),
        ([box("b", 0, 0, 10, 10) | {"value": {**box("b", 0, 0, 10, 10)["value"], "rotation": 30}}], ["rotated_box"]),
        ([box(["x"], 0, 0, 10, 10), kp({"y": 1}, "top", 5, 5), kp("k", "top", 5, 5, parent=["x"]),
          occluded(["k"])], ["missing_field", "missing_field", "missing_parent", "missing_field"]),
    ],
    ids=["no-value", "no-id", "no-size", "bad-numbers", "no-label", "two-labels", "no-area", "dup-box-id",
         "kp-no-xy", "kp-no-label", "missing-parent", "not-dicts", "other-type", "rotated-box", "unhashable-ids"],
)
def test_broken_regions_are_reported_not_crashed(results, expected):
    poses, problems = results_to_poses(TINY, results, task_id=11)
    assert kinds(problems) == expected
    assert all(p.task_id == 11 and p.message for p in problems)


def test_result_that_is_not_a_list():
    poses, problems = results_to_poses(TINY, {"oops": 1}, task_id=1)
    assert poses == [] and kinds(problems) == ["bad_result"] and problems[0].dropped == "task"


def test_image_rotation_refuses_the_task():
    ok, none = results_to_poses(TINY, [box("b", 0, 0, 10, 10, image_rotation=0), kp("k", "top", 5, 5, "b")])
    assert len(ok) == 1 and none == []
    poses, problems = results_to_poses(TINY, [box("b", 0, 0, 10, 10), kp("k", "top", 5, 5, "b", image_rotation=90)],
                                       task_id=8)
    assert poses == [] and kinds(problems) == ["rotated_image"] and problems[0].dropped == "task"
    assert "90" in problems[0].message


# --- choosing the annotation -----------------------------------------------------------


def ann(aid, result, cancelled=False, created="2024-05-01T10:00:00.000000Z", updated=None):
    return {"id": aid, "result": result, "was_cancelled": cancelled, "created_at": created,
            "updated_at": updated or created}


def test_latest_not_cancelled_annotation_is_used():
    old = ann(1, [box("b", 0, 0, 10, 10)], created="2024-05-01T10:00:00Z", updated="2024-05-03T10:00:00Z")
    new = ann(2, [box("b", 0, 0, 20, 20)], created="2024-05-02T10:00:00Z")  # created later, edited earlier
    cancelled = ann(3, [box("b", 0, 0, 30, 30)], cancelled=True, created="2024-06-01T10:00:00Z")
    chosen, problem = choose_annotation({"id": 1, "annotations": [new, cancelled, old]})
    assert chosen is old and problem is None
    same_time = [ann(5, []), ann(6, [])]
    assert choose_annotation({"id": 2, "annotations": same_time})[0]["id"] == 6  # then the higher id


def test_tasks_without_usable_annotations_are_skipped(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG fake")
    tasks = [
        {"id": 1, "data": {}, "annotations": [ann(1, [box("b", 0, 0, 10, 10)], cancelled=True)]},
        {"id": 2, "data": {}, "annotations": []},
        {"id": 3, "data": {}, "annotations": [ann(2, [box("b", 0, 0, 10, 10)], cancelled=True),
                                              ann(3, [box("b", 5, 5, 10, 10)], created="2020-01-01T00:00:00Z")]},
    ]
    report = convert_export(tasks, TINY, {1: image, 2: image, 3: image}, tmp_path / "ds")
    assert [(p.task_id, p.kind) for p in report.skipped_tasks] == [(1, "cancelled"), (2, "not_annotated")]
    assert report.annotations_used == 1
    label = (tmp_path / "ds" / report.task_images[3]).stem + ".txt"
    part = report.task_images[3].split("/")[1]
    assert (tmp_path / "ds" / "labels" / part / label).read_text().split()[1:5] == [
        "0.10000000", "0.10000000", "0.10000000", "0.10000000"]


def test_a_dropped_box_keeps_the_image_out_but_a_dropped_keypoint_does_not(tmp_path):
    images = []
    for n in range(2):
        images.append(tmp_path / f"{n}.jpg")
        images[-1].write_bytes(f"image {n}".encode())
    tasks = [
        {"id": 1, "annotations": [ann(1, [box("b", 0, 0, 10, 10), box("c", 20, 20, 10, 10, "car")])]},
        {"id": 2, "annotations": [ann(2, [box("b", 0, 0, 10, 10), kp("k", "top", 50, 50)])]},
    ]
    report = convert_export(tasks, TINY, {1: images[0], 2: images[1]}, tmp_path / "ds")
    assert [(p.task_id, p.kind, p.dropped) for p in report.skipped_tasks] == [(1, "unknown_label", "task")]
    assert [(p.task_id, p.kind) for p in report.problems] == [(1, "unknown_label"), (2, "orphan_keypoint")]
    assert list(report.task_images) == [2]
    assert report.to_dict()["problem_counts"] == {"unknown_label": 1, "orphan_keypoint": 1}


# --- files, names, split ---------------------------------------------------------------


def test_file_names_never_come_from_the_task(tmp_path):
    source = tmp_path / "src" / "photo.JPG"
    source.parent.mkdir()
    source.write_bytes(b"not really a jpeg")
    evil = "../../../../etc/passwd"
    tasks = [{"id": 1, "data": {"image": evil}, "file_upload": evil,
              "annotations": [ann(1, [box("b", 0, 0, 10, 10)])]}]
    out = tmp_path / "out" / "ds"
    report = convert_export(tasks, TINY, {1: source}, out)
    written = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    digest = file_sha256(source)
    assert {p.name for p in written} == {f"{digest[:16]}.jpg", f"{digest[:16]}.txt", "data.yaml"}
    assert all(p.resolve().is_relative_to(out.resolve()) for p in written)
    assert report.task_images[1] == f"images/{split_for(digest, 0.2)}/{digest[:16]}.jpg"
    assert not (tmp_path / "etc").exists()


def test_missing_duplicate_and_unsupported_images_are_skipped(tmp_path):
    a, b, c = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.gif"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    c.write_bytes(b"gif")
    tasks = [{"id": i, "annotations": [ann(i, [])]} for i in range(1, 5)]
    report = convert_export(tasks, TINY, {1: a, 2: b, 3: c, 4: tmp_path / "nope.jpg"}, tmp_path / "ds")
    assert [(p.task_id, p.kind) for p in report.skipped_tasks] == [
        (2, "duplicate_image"), (3, "bad_image_type"), (4, "no_image")]
    assert report.empty_images == 1 and list(report.task_images) == [1]


def test_output_folder_must_be_empty_unless_overwrite(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"png")
    tasks = [{"id": 1, "annotations": [ann(1, [])]}]
    out = tmp_path / "ds"
    convert_export(tasks, TINY, {1: image}, out, split={1: "val"})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_export(tasks, TINY, {1: image}, out)
    (out / "keep.md").write_text("mine")
    report = convert_export(tasks, TINY, {1: image}, out, split={1: "train"}, overwrite=True)
    assert report.images == {"train": 1, "val": 0} and report.warnings
    assert not any((out / "images" / "val").iterdir()) and (out / "keep.md").exists()
    with pytest.raises(ValueError, match="'train' or 'val'"):
        convert_export(tasks, TINY, {1: image}, tmp_path / "other", split={1: "test"})


def test_split_is_deterministic_and_stable_when_images_are_added():
    import hashlib

    digests = [hashlib.sha256(f"image {i}".encode()).hexdigest() for i in range(2000)]
    first = {d: split_for(d, 0.2) for d in digests[:1000]}
    again = {d: split_for(d, 0.2) for d in digests}  # 1000 images added
    assert all(again[d] == s for d, s in first.items())
    share = sum(s == "val" for s in again.values()) / len(again)
    assert 0.17 < share < 0.23
    assert {split_for(d, 0.0) for d in digests} == {"train"} and {split_for(d, 1.0) for d in digests} == {"val"}
    with pytest.raises(ValueError, match="val_fraction"):
        split_for(digests[0], 1.5)
    with pytest.raises(ValueError, match="SHA-256"):
        split_for("not-a-hash-at-all-zz", 0.2)


# --- reading the export ------------------------------------------------------------------


def test_load_export_errors(tmp_path):
    with pytest.raises(ExportError, match="no such file"):
        load_export(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1, "annotations": [}')
    with pytest.raises(ExportError, match=r"not valid JSON \(line 1"):
        load_export(bad)
    bad.write_text('{"tasks": []}')
    with pytest.raises(ExportError, match="expected a JSON list of tasks"):
        load_export(bad)
    bad.write_text('[{"image": "a.jpg", "label": []}]')  # JSON-MIN
    with pytest.raises(ExportError, match="item #0 .*Export the project as 'JSON'"):
        load_export(bad)
    good = tmp_path / "good.json"
    good.write_text('{"id": 3, "data": {}, "annotations": []}')
    assert load_export(good) == [{"id": 3, "data": {}, "annotations": []}]


def test_label_lines_have_enough_decimals(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"png")
    x = 12.345678912
    tasks = [{"id": 1, "annotations": [ann(1, [box("b", x, x, x, x), kp("k", "top", x, x, "b")])]}]
    report = convert_export(tasks, TINY, {1: image}, tmp_path / "ds")
    label = next((tmp_path / "ds" / "labels").rglob("*.txt")).read_text().split()
    assert re.fullmatch(r"0\.\d{8}", label[1]) and label[-3:] == ["0", "0", "0"]
    assert abs(float(label[5]) - x / 100) < 1e-8 and label[7] == "2"
    assert report.keypoints == {"top": 1, "bottom": 0}


def test_mangled_regions_never_crash():
    import copy
    import random

    rng = random.Random(1)
    junk = [None, "", "x", 0, -5, 1e9, float("nan"), True, [], ["top"], {}, {"a": 1}, [1, 2]]
    base = [box("b", 10, 10, 50, 50), kp("k1", "top", 20, 20, "b"), occluded("k1"), kp("k2", "bottom", 30, 30)]
    for _ in range(400):
        results = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            region = rng.choice(results)
            target = region["value"] if rng.random() < 0.6 and isinstance(region.get("value"), dict) else region
            if not target:
                continue
            key = rng.choice(sorted(target))
            if rng.random() < 0.3:
                del target[key]
            else:
                target[key] = rng.choice(junk)
        poses, problems = results_to_poses(TINY, results, task_id=1)
        assert all(isinstance(p, Pose) and len(p.keypoints) == 2 for p in poses)
        kept = sum(1 for p in poses for k in p.keypoints if k[2]) + len(poses)
        # every region is either used or reported (the occluded choice rides on its keypoint)
        assert kept + len([p for p in problems if p.dropped != "nothing"]) >= len(results) - 1 or any(
            p.dropped == "task" for p in problems)
