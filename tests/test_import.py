"""Reading labels people already have (YOLO-pose folders, DeepLabCut tables, COCO files) and mapping them onto a
skeleton by name; offline (the import into a real Label Studio: tests/test_import_labelstudio.py)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHARED_DATASETS

from poseops.coco import parse_yolo_pose_labels, read_yolo_pose
from poseops.convert import results_to_poses
from poseops.importing.coco import read_coco_set
from poseops.importing.dlc import read_dlc_set
from poseops.importing.labeled import DatasetError
from poseops.importing.names import map_onto, parse_renames
from poseops.importing.tasks import image_results
from poseops.importing.upload import read_labels
from poseops.importing.yolo import read_yolo_set
from poseops.skeleton import load_skeleton, parse_skeleton

DLC = SHARED_DATASETS / "dlc-reaching"
DLC_FRAMES = DLC / "labeled-data" / "reachingvideo1"
COCO8 = SHARED_DATASETS / "coco8-pose"
COCO_JSON = SHARED_DATASETS / "coco-mini-train" / "annotations" / "person_keypoints_train2017.json"
REACHING = load_skeleton(ROOT / "label_config" / "skeletons" / "reaching.yaml")
PERSON = load_skeleton(ROOT / "label_config" / "skeletons" / "person.yaml")
TIGER_POINTS = ["nose", "head", "withers", "tail_base"]
TIGER = parse_skeleton("classes:\n  - {name: tiger, keypoints: [nose, head, withers, tail_base]}\n")


# --- Ultralytics YOLO-pose ------------------------------------------------------------------------


def tiger_folder(root: Path, layout: str, kpt_names: bool = True) -> dict[str, list[list[float]]]:
    """A YOLO-pose folder with 2-value keypoints (`kpt_shape: [4, 2]`, as Ultralytics' tiger-pose), in one layout.

    Returns each image's label lines as numbers (the truth)."""
    truth = {}
    sources = sorted((COCO8 / "images" / "train").glob("*.jpg"))[:2] + sorted((COCO8 / "images" / "val").glob("*.jpg"))[:1]
    for n, source in enumerate(sources):
        split = "train" if n < 2 else "val"
        images, labels = (root / "images" / split, root / "labels" / split) if layout == "images/split" else \
            (root / split / "images", root / split / "labels")
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, images / source.name)
        lines = [[0, 0.5, 0.5, 0.4, 0.6, 0.31, 0.22, 0.42 + n / 100, 0.33, 0.55, 0.44, 0.66, 0.77],
                 [0, 0.2, 0.3, 0.2, 0.2, 0.15, 0.25, 0.2, 0.3, 0.25, 0.35, 0.12, 0.38]]
        (labels / f"{source.stem}.txt").write_text("".join(" ".join(f"{v:g}" for v in line) + "\n" for line in lines))
        truth[source.name] = lines
    doc = {"path": str(root), "train": "images/train" if layout == "images/split" else "train",
           "val": "images/val" if layout == "images/split" else "val", "kpt_shape": [4, 2], "flip_idx": [0, 1, 2, 3],
           "names": {0: "tiger"}}
    if kpt_names:
        doc["kpt_names"] = {0: TIGER_POINTS}
    (root / "data.yaml").write_text(yaml.safe_dump(doc))
    return truth


@pytest.mark.parametrize("layout", ["images/split", "split/images"])
def test_yolo_two_value_keypoints_are_all_visible_in_either_layout(tmp_path, layout):
    truth = tiger_folder(tmp_path / "tiger", layout)
    labeled = read_yolo_set(tmp_path / "tiger")
    assert labeled.schema == {"tiger": tuple(TIGER_POINTS)} and labeled.skipped == []
    images, skipped = map_onto(labeled, TIGER)
    assert skipped == [] and sorted(im.file_name for im in images) == sorted(truth)
    for image in images:
        assert len(image.poses) == 2
        for pose, line in zip(image.poses, truth[image.file_name], strict=True):
            cx, cy, w, h = line[1:5]
            assert pose.box == pytest.approx((cx - w / 2, cy - h / 2, w, h))
            assert [v for _, _, v in pose.keypoints] == [2, 2, 2, 2]  # every keypoint imported, visible
            assert [c for x, y, _ in pose.keypoints for c in (x, y)] == pytest.approx(line[5:])
    # the old API reads the same folder the same way (it was 2 keypoints of x y v, all invisible)
    old = read_yolo_pose(tmp_path / "tiger", "train", ["tiger"])
    assert [v for im in old for p in im.poses for _, _, v in p.keypoints] == [2] * 16


def test_yolo_without_keypoint_names_maps_by_position_and_the_count_must_match(tmp_path):
    tiger_folder(tmp_path / "tiger", "split/images", kpt_names=False)
    labeled = read_yolo_set(tmp_path / "tiger" / "data.yaml")
    images, _ = map_onto(labeled, TIGER)
    assert len(images) == 3 and all(v == 2 for im in images for p in im.poses for _, _, v in p.keypoints)
    five = parse_skeleton("classes:\n  - {name: tiger, keypoints: [a, b, c, d, e]}\n")
    with pytest.raises(DatasetError, match="4 unnamed keypoints, class 'tiger' of <string> 5"):
        map_onto(labeled, five)


def test_a_two_value_point_at_zero_or_negative_is_not_labeled():
    (pose,) = parse_yolo_pose_labels("0 0.5 0.5 0.2 0.2 0 0 0.3 0.4 -1 -1\n", ["a"], kpt_shape=(3, 2))
    assert pose.keypoints == ((0.0, 0.0, 0), (0.3, 0.4, 2), (0.0, 0.0, 0))


def test_an_ambiguous_line_length_needs_kpt_shape(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    shutil.copy(next((COCO8 / "images" / "train").glob("*.jpg")), tmp_path / "images" / "train" / "a.jpg")
    # 6 values per keypoint part: 3 keypoints of x y, or (as read before) 2 of x y v with made-up visibilities
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.4 0.4 0.4 0.4 0.5 0.5 0.6 0.6\n")
    with pytest.raises(DatasetError, match="could be 3 keypoints of x y or 2 of x y v: give kpt_shape"):
        read_yolo_pose(tmp_path, "train", ["a"])
    (image,) = read_yolo_pose(tmp_path, "train", ["a"], kpt_shape=(3, 2))
    assert [v for _, _, v in image.poses[0].keypoints] == [2, 2, 2]


def test_yolo_three_value_labels_keep_their_visibility(tmp_path):
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"path": str(COCO8), "train": "images/train", "val": "images/val",
                                                         "kpt_shape": [17, 3], "names": {0: "person"}}))
    images, skipped = map_onto(read_yolo_set(tmp_path / "data.yaml"), PERSON)
    assert skipped == [] and len(images) == 8 and sum(len(im.poses) for im in images) == 21
    direct = {im.file_name: im for split in ("train", "val") for im in read_yolo_pose(COCO8, split, ["person"])}
    for image in images:
        assert image.poses == direct[image.file_name].poses
    assert {v for im in images for p in im.poses for _, _, v in p.keypoints} == {0, 1, 2}


def test_a_bad_yolo_line_or_a_label_without_image_is_a_counted_skip(tmp_path):
    tiger_folder(tmp_path / "tiger", "images/split")
    label = next((tmp_path / "tiger" / "labels" / "train").glob("*.txt"))
    label.write_text("0 0.5 0.5 0.2 0.2 0.1 0.1 nan 0.2 0.3 0.3 0.4 0.4\n")
    (tmp_path / "tiger" / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.2 0.2 0.1 0.1 0.2 0.2 0.3 0.3 0.4 0.4\n")
    outside = next((tmp_path / "tiger" / "labels" / "val").glob("*.txt"))
    outside.write_text("0 0.5 0.5 0.2 0.2 0.1 0.1 1.5 0.2 0.3 0.3 0.4 0.4\n")
    labeled = read_yolo_set(tmp_path / "tiger")
    assert len(labeled.images) == 1
    reasons = sorted((s.reason, Path(s.source).name) for s in labeled.skipped)
    assert reasons == [("bad_labels", label.with_suffix(".jpg").name), ("bad_labels", outside.with_suffix(".jpg").name),
                       ("missing_image", "gone.txt")]
    details = " ".join(s.detail for s in labeled.skipped)
    assert "not numbers" in details and "outside the image" in details


# --- DeepLabCut -------------------------------------------------------------------------------------


def dlc_rows(path: Path = DLC_FRAMES / "CollectedData_Mackenzie.csv") -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_dlc_frames_import_with_their_missing_parts():
    labeled = read_dlc_set(DLC)
    assert labeled.schema == {"": ("Hand", "Finger1", "Tongue", "Joystick1", "Joystick2")} and not labeled.has_boxes
    images, skipped = map_onto(labeled, REACHING)
    assert skipped == [] and len(images) == 55
    rows = {Path(r[0]).name: r[1:] for r in dlc_rows()[3:]}
    missing = 0
    for image in images:
        (pose,) = image.poses
        row = rows[image.file_name]
        for i, (x, y, v) in enumerate(pose.keypoints):
            if row[2 * i] == "":
                assert (x, y, v) == (0.0, 0.0, 0)
                missing += 1
            else:  # in pixels of the frame: 40 frames are 832 x 747, 15 are 640 x 470
                assert (x * image.width, y * image.height, v) == pytest.approx((float(row[2 * i]), float(row[2 * i + 1]), 2))
    assert missing > 0  # the set has frames with parts not labeled
    # into Label Studio regions and back: one instance per frame, its box derived from the points
    back, problems = results_to_poses(REACHING, image_results(REACHING, images[0]))
    flat = [c for kp in images[0].poses[0].keypoints for c in kp]
    assert problems == [] and len(back) == 1 and [c for kp in back[0].keypoints for c in kp] == pytest.approx(flat)


def multi_animal_project(root: Path, rename: dict[str, str] | None = None) -> Path:
    """A multi-animal DeepLabCut table (4 header rows, 3 index columns as DeepLabCut >= 2.3 writes it) on two real
    frames: mouse1 and mouse2, a unique body part (individual 'single'), parts missing, mouse2 absent from frame 2."""
    folder = root / "labeled-data" / "cage"
    folder.mkdir(parents=True)
    frames = ["img005.png", "img020.png"]
    for frame in frames:
        shutil.copy(DLC_FRAMES / frame, folder / frame)
    parts = [(rename or {}).get(p, p) for p in ("Hand", "Finger1", "Tongue", "Joystick1", "Joystick2")]
    columns = [(who, part) for who in ("mouse1", "mouse2") for part in parts] + [("single", "lamp")]
    header = [["scorer", "", ""] + ["me"] * 2 * len(columns),
              ["individuals", "", ""] + [who for who, _ in columns for _ in "xy"],
              ["bodyparts", "", ""] + [part for _, part in columns for _ in "xy"],
              ["coords", "", ""] + ["x", "y"] * len(columns)]
    frame1 = ["100", "110", "120", "140", "", "", "150", "90", "160", "200",
              "500", "400", "540", "470", "NaN", "NaN", "", "", "", "",
              "700", "50"]
    frame2 = ["300", "310", "320", "340", "330", "300", "", "", "", "",
              "", "", "", "", "", "", "", "", "", "",
              "", ""]
    with open(folder / "CollectedData_me.csv", "w", newline="") as f:
        csv.writer(f).writerows([*header, ["labeled-data", "cage", frames[0], *frame1],
                                 ["labeled-data", "cage", frames[1], *frame2]])
    return root


def test_multi_animal_dlc_gives_one_instance_per_individual(tmp_path):
    labeled = read_dlc_set(multi_animal_project(tmp_path / "project"))
    assert labeled.schema == {"": ("Hand", "Finger1", "Tongue", "Joystick1", "Joystick2", "lamp")}
    with pytest.raises(DatasetError, match="Not in the skeleton: lamp"):
        map_onto(labeled, REACHING)
    images, skipped = map_onto(labeled, REACHING, parse_renames(["lamp="]))
    assert [(s.source, s.reason) for s in skipped] == [("img005.png", "points_left_out")]  # the lamp: counted
    assert [len(im.poses) for im in images] == [2, 1]
    first, second = images[0].poses
    assert [v for _, _, v in first.keypoints] == [2, 2, 0, 2, 2] and [v for _, _, v in second.keypoints] == [2, 2, 0, 0, 0]
    # in Label Studio each animal's points are tied together: the pull sees two animals, boxes derived
    back, problems = results_to_poses(REACHING, image_results(REACHING, images[0]))
    assert problems == [] and len(back) == 2
    xs = [100 / 832, 120 / 832, 150 / 832, 160 / 832]
    assert back[0].box[0] == pytest.approx(max(0.0, min(xs) - 0.1 * (max(xs) - min(xs))), abs=1e-6)


def test_a_name_mismatch_lists_both_sides_and_map_fixes_it(tmp_path):
    labeled = read_dlc_set(multi_animal_project(tmp_path / "project", {"Tongue": "Mouth"}))
    with pytest.raises(DatasetError) as e:
        map_onto(labeled, REACHING)
    message = str(e.value)
    assert "The labels' keypoints: Hand, Finger1, Mouth, Joystick1, Joystick2, lamp." in message
    assert "The skeleton's: Hand, Finger1, Tongue, Joystick1, Joystick2." in message
    assert "Missing in the labels: Tongue." in message and "Not in the skeleton: Mouth, lamp." in message
    assert "--map OLD=NEW" in message
    images, _ = map_onto(labeled, REACHING, parse_renames(["Mouth=Tongue", "lamp="]))
    assert len(images) == 2
    with pytest.raises(DatasetError, match="--map names 'Nose', which the labels do not have"):
        map_onto(labeled, REACHING, parse_renames(["Mouth=Tongue", "lamp=", "Nose=Tongue"]))


@pytest.mark.parametrize("item", ["Mouth", "=Tongue", ""])
def test_a_bad_map_option_says_how_to_write_it(item):
    with pytest.raises(DatasetError, match="write OLD=NEW"):
        parse_renames([item])


def test_points_only_into_a_class_with_drawn_boxes_is_refused():
    with pytest.raises(DatasetError, match="set `box: derived` \\(or `either`\\)"):
        map_onto(read_dlc_set(DLC), parse_skeleton(REACHING_LABELED))


REACHING_LABELED = "classes:\n  - {name: mouse, keypoints: [Hand, Finger1, Tongue, Joystick1, Joystick2]}\n"


def test_dlc_bad_frames_are_counted_not_lost(tmp_path):
    project = tmp_path / "project"
    folder = project / "labeled-data" / "reachingvideo1"
    folder.mkdir(parents=True)
    rows = dlc_rows()[:8]
    for row in rows[3:]:
        shutil.copy(DLC_FRAMES / Path(row[0]).name, folder)
    (folder / Path(rows[3][0]).name).unlink()  # a frame gone
    rows[4][1] = "5000"  # a point outside the 832 x 747 frame
    rows[5][1:] = [""] * 10  # nothing labeled
    rows[6][1:3] = ["inf", "3"]
    rows[7][1:] = ["100", "100"] + [""] * 8  # one point: no box can be derived
    with open(folder / "CollectedData_Mackenzie.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    images, skipped = map_onto(read_dlc_set(project), REACHING)
    assert images == []
    assert [s.reason for s in skipped] == ["missing_image", "outside_image", "nothing_labeled", "outside_image",
                                           "no_derived_box"]
    assert "Hand x = 5000 lies outside the image (0..832)" in skipped[1].detail
    assert ":5:" in skipped[1].detail  # the table's line


def test_an_h5_table_alone_is_refused_naming_the_csv(tmp_path):
    folder = tmp_path / "labeled-data" / "v"
    folder.mkdir(parents=True)
    (folder / "CollectedData_me.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(DatasetError, match="import the CSV of the same labels instead \\(CollectedData_me.csv"):
        read_dlc_set(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no CollectedData_\\*.csv"):
        read_dlc_set(tmp_path / "empty")


# --- COCO -------------------------------------------------------------------------------------------


def test_coco_import_counts_what_it_leaves_out(tmp_path):
    labeled = read_coco_set(COCO_JSON)
    images, skipped = map_onto(labeled, PERSON)
    assert len(images) == 80 and sum(len(im.poses) for im in images) == 86
    counts = {reason: sum(1 for s in skipped if s.reason == reason) for reason in {s.reason for s in skipped}}
    assert counts == {"crowd": 5, "no_labeled_keypoint": 81}  # 172 persons: 86 imported, 5 crowds, 81 without keypoints


def test_coco_missing_or_resized_images_are_counted(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    doc = json.loads(COCO_JSON.read_text())
    keep = [im for im in doc["images"] if any(a["image_id"] == im["id"] for a in doc["annotations"])][:3]
    shutil.copy(COCO_JSON.parent.parent / "images" / keep[0]["file_name"], images_dir)
    shutil.copy(COCO_JSON.parent.parent / "images" / keep[1]["file_name"], images_dir)
    keep[1] = {**keep[1], "width": keep[1]["width"] + 1}
    keep.append({**keep[0], "id": -1, "file_name": "../" + keep[0]["file_name"]})
    keep.append({**keep[0], "id": -2, "file_name": "/etc/hostname"})
    doc["images"] = keep
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(doc))
    labeled = read_labels("coco", path, images_dir)
    # '../name' is looked up by its base name inside the images folder, never outside it
    assert [(im.file_name, im.path) for im in labeled.images] == [
        (keep[0]["file_name"], images_dir / keep[0]["file_name"]), ("../" + keep[0]["file_name"], images_dir / keep[0]["file_name"])]
    reasons = {s.source: s.reason for s in labeled.skipped if s.reason in ("missing_image", "size_mismatch")}
    assert reasons == {keep[1]["file_name"]: "size_mismatch", keep[2]["file_name"]: "missing_image",
                       "/etc/hostname": "missing_image"}


def test_read_labels_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(DatasetError, match="use one of coco, yolo, dlc"):
        read_labels("sleap", tmp_path)
    with pytest.raises(DatasetError, match="no such file or folder"):
        read_labels("dlc", tmp_path / "nope")
    with pytest.raises(DatasetError, match="--images is for COCO files"):
        read_labels("yolo", tmp_path, tmp_path)
    with pytest.raises(DatasetError, match="no data.yaml"):
        read_labels("yolo", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="cannot be read as JSON"):
        read_labels("coco", bad)
