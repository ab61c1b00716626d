"""COCO keypoints export of a YOLO-pose dataset (offline, no servers).

Real labels go COCO JSON → Label Studio tasks → the converter's YOLO-pose dataset → COCO export,
and must come back as they were (keypoints and visibility to 1e-6 of the image); pycocotools,
the reference reader and evaluator, reads the export and scores it against itself as perfect.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import PERSON_SPEC, ROOT, SHARED_DATASETS
from PIL import Image

from poseops import coco
from poseops.conversion.coco_export import (
    CocoExportError,
    coco_annotation,
    coco_categories,
    coco_file,
    write_coco_export,
)
from poseops.convert import convert_export
from poseops.regions import Pose
from poseops.skeleton import load_skeleton, parse_skeleton

COCO_JSON = SHARED_DATASETS / "coco-mini-train" / "annotations" / "person_keypoints_train2017.json"
COCO8 = SHARED_DATASETS / "coco8-pose"
PERSON = load_skeleton(PERSON_SPEC)
REACHING = load_skeleton(ROOT / "label_config" / "skeletons" / "reaching.yaml")
TOL = 1e-6


def coco_round_trip(tmp_path, images: list[coco.LabeledImage]):
    """COCO → tasks → convert_export → write_coco_export; (tasks, report, {split: exported doc})."""
    tasks = coco.to_label_studio_tasks(PERSON, images)
    report = convert_export(tasks, PERSON, {t["id"]: im.path for t, im in zip(tasks, images, strict=True)},
                            tmp_path / "ds", val_fraction=0.3)
    write_coco_export(PERSON, tmp_path / "ds")
    docs = {split: json.loads(coco_file(tmp_path / "ds", split).read_text()) for split in ("train", "val")}
    return tasks, report, docs


def test_coco_to_dataset_to_coco_gives_the_original_keypoints_back(tmp_path):
    original = json.loads(COCO_JSON.read_text())
    images = coco.read_coco_keypoints(COCO_JSON, skeleton=PERSON)
    tasks, report, docs = coco_round_trip(tmp_path, images)
    assert not report.skipped_tasks
    exported = {}  # file name in the dataset → (image entry, its annotations)
    for doc in docs.values():
        anns = {}
        for a in doc["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        exported |= {im["file_name"]: (im, anns.get(im["id"], [])) for im in doc["images"]}
    assert len(exported) == len(images) == len(original["images"])
    compared = visible = occluded = 0
    for task, image in zip(tasks, images, strict=True):
        entry, anns = exported[report.task_images[task["id"]].rsplit("/", 1)[1]]
        assert (entry["width"], entry["height"]) == (image.width, image.height)
        assert len(anns) == len(image.poses)
        for ann, pose in zip(anns, image.poses, strict=True):
            k = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
            assert ann["num_keypoints"] == int((k[:, 2] > 0).sum())
            for (x, y, v), (ex, ey, ev) in zip(pose.keypoints, k, strict=True):
                assert ev == v
                assert ex / image.width == pytest.approx(x, abs=TOL) and ey / image.height == pytest.approx(y, abs=TOL)
                visible, occluded = visible + (v == 2), occluded + (v == 1)
            compared += 1
    # the original file's own numbers: every person with keypoints, both visibilities
    assert compared == 86 and visible and occluded
    assert visible + occluded == sum(a["num_keypoints"] for a in original["annotations"] if not a["iscrowd"])


def test_pycocotools_reads_the_export_and_scores_it_perfect_against_itself(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = coco.read_coco_keypoints(COCO_JSON, skeleton=PERSON)
    _, _, docs = coco_round_trip(tmp_path, images)
    path = coco_file(tmp_path / "ds", "train")
    gt = COCO(str(path))
    assert gt.loadCats(1)[0]["keypoints"] == PERSON.classes[0].keypoint_names
    detections = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
                  for a in docs["train"]["annotations"]]
    evaluation = COCOeval(gt, gt.loadRes(detections), "keypoints")
    evaluation.params.kpt_oks_sigmas = np.array(PERSON.oks_sigmas)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # AP over OKS 0.50:0.95


def test_the_yolo_labels_of_a_dataset_are_what_the_export_says(tmp_path):
    """Ultralytics' coco8-pose, as a dataset folder: every box and keypoint in pixels of the image."""
    shutil.copytree(COCO8, tmp_path / "ds")
    result = write_coco_export(PERSON, tmp_path / "ds")
    assert result.images == {"train": 4, "val": 4} and sum(result.annotations.values()) == 21
    for split in ("train", "val"):
        doc = json.loads(result.files[split].read_text())
        by_id = {im["id"]: im for im in doc["images"]}
        for image in coco.read_yolo_pose(COCO8, split, ["person"]):
            entry = next(im for im in doc["images"] if im["file_name"] == image.file_name)
            anns = [a for a in doc["annotations"] if a["image_id"] == entry["id"]]
            for ann, pose in zip(anns, image.poses, strict=True):
                w, h = by_id[ann["image_id"]]["width"], by_id[ann["image_id"]]["height"]
                x, y, bw, bh = pose.box
                assert ann["bbox"] == pytest.approx([x * w, y * h, bw * w, bh * h], abs=1e-5)
                assert ann["area"] == pytest.approx(bw * w * bh * h, rel=1e-6)
                assert ann["iscrowd"] == 0 and ann["category_id"] == 1


def test_categories_carry_names_one_based_edges_and_sigmas_when_the_spec_sets_them():
    (person,) = coco_categories(PERSON)
    assert person["id"] == 1 and person["name"] == "person" and len(person["keypoints"]) == 17
    edges = {tuple(sorted((person["keypoints"][a - 1], person["keypoints"][b - 1]))) for a, b in person["skeleton"]}
    assert ("left_ankle", "left_knee") in edges and min(min(e) for e in person["skeleton"]) == 1
    assert len(person["skeleton"]) == len(PERSON.classes[0].connections)
    assert "sigmas" not in person  # the spec sets none
    spec = parse_skeleton("classes:\n  - {name: cat, keypoints: [{name: nose, sigma: 0.03}, tail], "
                          "connections: [[nose, tail]]}\n  - {name: dog, keypoints: [nose, tail]}\n")
    cat, dog = coco_categories(spec)
    assert cat["sigmas"] == [0.03, 0.072] and cat["skeleton"] == [[1, 2]] and "sigmas" not in dog
    assert (cat["id"], dog["id"]) == (1, 2)


def test_visibility_missing_keypoints_and_counts():
    pose = Pose("person", (0.1, 0.2, 0.5, 0.25), ((0.2, 0.3, 2), (0.0, 0.0, 0), (0.4, 0.35, 1)))
    ann = coco_annotation(pose, 1, 200, 100, ann_id=7, image_id=3)
    assert ann["keypoints"] == [40.0, 30.0, 2, 0, 0, 0, 80.0, 35.0, 1]
    assert ann["num_keypoints"] == 2
    assert ann["bbox"] == [20.0, 20.0, 100.0, 25.0] and ann["area"] == 2500.0
    assert (ann["id"], ann["image_id"]) == (7, 3)


def test_derived_boxes_and_negatives_are_exported(tmp_path):
    ds = tmp_path / "ds"
    for split in ("train", "val"):
        (ds / "images" / split).mkdir(parents=True)
        (ds / "labels" / split).mkdir(parents=True)
    Image.new("RGB", (832, 747)).save(ds / "images" / "train" / "a.png")
    Image.new("RGB", (64, 48)).save(ds / "images" / "val" / "empty.png")
    (ds / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.4 0.4 0.3 2 0.6 0.7 2 0 0 0 0 0 0 0.5 0.5 1\n")
    (ds / "labels" / "val" / "empty.txt").write_text("")
    result = write_coco_export(REACHING, ds)
    assert result.annotations == {"train": 1, "val": 0} and result.images == {"train": 1, "val": 1}
    assert result.keypoints == {"train": 3, "val": 0}
    doc = json.loads(result.files["train"].read_text())
    (ann,) = doc["annotations"]
    assert ann["bbox"] == pytest.approx([0.4 * 832, 0.3 * 747, 0.2 * 832, 0.4 * 747])
    assert doc["categories"][0]["keypoints"] == ["Hand", "Finger1", "Tongue", "Joystick1", "Joystick2"]
    assert doc["categories"][0]["skeleton"] == [[1, 2], [4, 5]]
    val = json.loads(result.files["val"].read_text())
    assert val["images"] == [{"id": 1, "file_name": "empty.png", "width": 64, "height": 48}] and not val["annotations"]


def test_the_export_is_the_same_bytes_each_time(tmp_path):
    shutil.copytree(COCO8, tmp_path / "ds")
    first = {s: p.read_bytes() for s, p in write_coco_export(PERSON, tmp_path / "ds").files.items()}
    second = {s: p.read_bytes() for s, p in write_coco_export(PERSON, tmp_path / "ds").files.items()}
    assert first == second  # no date, no path: an unchanged dataset keeps its DVC hash


def test_labels_that_do_not_match_the_spec_are_refused_with_the_file(tmp_path):
    shutil.copytree(COCO8, tmp_path / "ds")
    with pytest.raises(CocoExportError, match=r"000000000036.txt: 17 keypoints per object, the skeleton spec .* has 2"):
        write_coco_export(parse_skeleton("classes: [{name: person, keypoints: [a, b]}]"), tmp_path / "ds")
    two_classes = tmp_path / "ds" / "labels" / "train" / "000000000036.txt"
    two_classes.write_text("3" + two_classes.read_text()[1:])
    with pytest.raises(CocoExportError, match="000000000036.txt:1: class 3"):
        write_coco_export(PERSON, tmp_path / "ds")


def test_poseops_convert_writes_the_coco_files_too(tmp_path):
    images = coco.read_yolo_pose(COCO8, "train", ["person"])
    tasks = coco.to_label_studio_tasks(PERSON, images, image_url=lambda im: f"/data/upload/3/0a1b2c3d-{im.file_name}")
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    out = tmp_path / "dataset"
    result = subprocess.run([sys.executable, "-m", "poseops.cli", "convert", str(export), "--skeleton", str(PERSON_SPEC),
                             "--images", str(COCO8 / "images" / "train"), "--out", str(out), "--val-fraction", "0.5"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    docs = [json.loads(coco_file(out, split).read_text()) for split in ("train", "val")]
    assert sum(len(d["images"]) for d in docs) == 4
    assert sum(len(d["annotations"]) for d in docs) == sum(len(i.poses) for i in images)
    for doc, split in zip(docs, ("train", "val"), strict=True):
        assert all((out / "images" / split / im["file_name"]).is_file() for im in doc["images"])


# --- through Label Studio and the pull -------------------------------------------------------------------


@pytest.mark.integration
def test_coco_import_pull_and_export_give_the_original_keypoints_back(prefect_api, workspace, label_studio):
    """COCO's own labels → `poseops dataset import` → `poseops pull` → the version's COCO file: the same keypoints."""
    import uuid

    from test_pull import run_pull

    from poseops.datasets import create_dataset
    from poseops.importing.upload import import_labels
    from poseops.labelstudio import LabelStudioClient

    original = json.loads(COCO_JSON.read_text())
    name = f"coco-{uuid.uuid4().hex[:6]}"
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, PERSON_SPEC)
        report = import_labels(client, label_studio, name, "coco", COCO_JSON)
        sources = {t["id"]: t["data"]["source"] for t in client.iter_tasks(project.id, fields="task_only")}
    assert report.instances == 86
    run_pull(name)
    dataset = workspace / "data" / name
    task_images = json.loads((dataset / "manifest.json").read_text())["conversion"]["task_images"]
    in_dataset = {path.rsplit("/", 1)[1]: sources[int(tid)] for tid, path in task_images.items()}
    exported = {}  # original file name → (image entry, its annotations)
    for split in ("train", "val"):
        doc = json.loads(coco_file(dataset, split).read_text())
        for image in doc["images"]:
            exported[in_dataset[image["file_name"]]] = (image, [a for a in doc["annotations"] if a["image_id"] == image["id"]])
    assert len(exported) == len(original["images"])
    compared = 0
    for image in original["images"]:
        entry, anns = exported[image["file_name"]]
        assert (entry["width"], entry["height"]) == (image["width"], image["height"])
        wanted = [a for a in original["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]
                  and a["num_keypoints"]]
        assert len(anns) == len(wanted), image["file_name"]
        for got, want in zip(anns, wanted, strict=True):
            g, w = np.array(got["keypoints"], float).reshape(-1, 3), np.array(want["keypoints"], float).reshape(-1, 3)
            assert (g[:, 2] == w[:, 2]).all() and got["num_keypoints"] == want["num_keypoints"]
            scale = np.array([image["width"], image["height"]])
            assert np.abs((g[:, :2] - w[:, :2]) / scale).max() <= TOL
            compared += 1
    assert compared == 86


def test_an_unreadable_image_leaves_the_yolo_dataset_and_says_why_there_is_no_coco_file(tmp_path):
    image = tmp_path / "images" / "a.jpg"
    image.parent.mkdir()
    image.write_bytes(b"not really a jpeg")  # the converter copies bytes; only the COCO export reads the size
    task = {"id": 1, "data": {"image": "a.jpg"}, "annotations": [{"id": 1, "result": []}]}
    export = tmp_path / "export.json"
    export.write_text(json.dumps([task]))
    out = tmp_path / "ds"
    r = subprocess.run([sys.executable, "-m", "poseops.cli", "convert", str(export), "--skeleton", str(PERSON_SPEC),
                        "--images", str(image.parent), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert "no COCO keypoints files written" in err and "cannot read the image's size" in err
    assert "(YOLO-pose only)" in r.stdout and len(list(out.glob("labels/*/*.txt"))) == 1
    assert not list(out.glob("annotations/*"))  # nothing half written
