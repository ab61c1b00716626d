"""Keypoint-only classes (`box: derived` / `either`): the spec, the labeling config, instances grouped without
boxes, derived boxes exact on DeepLabCut's real frames, pre-labels and predictions, and the refusal of labeled
keypoints that reach no object (converter, `poseops convert`, the pull against a real Label Studio)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATASETS
from test_pull import run_pull, tree_digest

from poseops.autolabel import AutolabelOptions, prediction_of
from poseops.conversion.unplaced import unplaced_keypoints
from poseops.convert import results_to_poses
from poseops.label_config import label_config_xml
from poseops.pull import NotReady, PullOptions, check_ready
from poseops.regions import poses_to_results, spec_template, template_pose
from poseops.skeleton import SkeletonError, load_skeleton, parse_skeleton

DLC = SHARED_DATASETS / "dlc-reaching" / "labeled-data" / "reachingvideo1"
REACHING_SPEC = ROOT / "label_config" / "skeletons" / "reaching.yaml"
REACHING = load_skeleton(REACHING_SPEC)
WIDTH, HEIGHT = 832, 747  # every frame of the set
PADDING = 0.1


def read_dlc(csv_path: Path = DLC / "CollectedData_Mackenzie.csv") -> list[tuple[Path, list[tuple[str, float, float]]]]:
    """(frame, [(body part, x px, y px) for the labeled parts]) per row of a DeepLabCut CSV (3 header rows)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    parts = rows[1][1:]
    frames = []
    for row in rows[3:]:
        points = [(parts[i], float(row[1 + i]), float(row[2 + i])) for i in range(0, len(parts), 2) if row[1 + i]]
        frames.append((DLC / Path(row[0]).name, points))
    return frames


def point_regions(points, prefix="p", width=WIDTH, height=HEIGHT) -> list[dict]:
    """Keypoint regions as an annotator leaves them in Label Studio: points only, no box, no parentID."""
    return [{"id": f"{prefix}{n}", "from_name": "keypoints", "to_name": "image", "type": "keypointlabels",
             "original_width": width, "original_height": height, "image_rotation": 0,
             "value": {"x": x / width * 100, "y": y / height * 100, "width": 1.0, "keypointlabels": [name]}}
            for n, (name, x, y) in enumerate(points)]


def relations(ids: list[str]) -> list[dict]:
    return [{"type": "relation", "from_id": a, "to_id": b, "direction": "right"} for a, b in zip(ids, ids[1:], strict=False)]


def expected_box(points, padding=PADDING, width=WIDTH, height=HEIGHT) -> tuple[float, float, float, float]:
    """The derived box computed independently, in pixels: min/max plus padding × extent per side, clipped."""
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    px, py = padding * (x1 - x0), padding * (y1 - y0)
    x0, x1, y0, y1 = max(0, x0 - px), min(width, x1 + px), max(0, y0 - py), min(height, y1 + py)
    return x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height


# --- the spec -----------------------------------------------------------------------------------


def test_the_box_key_defaults_to_labeled_and_is_read_per_class():
    sk = parse_skeleton("classes:\n  - {name: a, keypoints: [p, q]}\n  - {name: b, box: either, box_padding: 0.25, "
                        "keypoints: [p, q]}\n  - {name: c, box: derived, keypoints: [p, q]}\n")
    assert [(c.box, c.box_padding) for c in sk.classes] == [("labeled", 0.1), ("either", 0.25), ("derived", 0.1)]
    assert [c["box"] for c in sk.to_dict()["classes"]] == ["labeled", "either", "derived"]


@pytest.mark.parametrize(("klass", "message"), [
    ("{name: a, box: drawn, keypoints: [p, q]}", "<string>:3: box 'drawn' of class 'a' must be one of labeled, derived, either"),
    ("{name: a, box_padding: 0.2, keypoints: [p, q]}", "<string>:3: box_padding of class 'a' is used only by derived boxes"),
    ("{name: a, box: derived, box_padding: 1.5, keypoints: [p, q]}", "<string>:3: box_padding 1.5 of class 'a' must be a number from 0 to 1"),
    ("{name: a, box: derived, box_padding: '0.1', keypoints: [p, q]}", "box_padding '0.1' of class 'a' must be a number"),
    ("{name: a, box: derived, box_padding: .nan, keypoints: [p, q]}", "box_padding nan of class 'a'"),
    ("{name: a, box: either, keypoints: [p]}", "<string>:3: class 'a' has box: either but 1 keypoint"),
])
def test_a_bad_box_key_names_the_line_and_the_fix(klass, message):
    with pytest.raises(SkeletonError) as e:
        parse_skeleton(f"# spec\nclasses:\n  - {klass}\n")
    assert message in str(e.value)


def test_the_labeling_config_has_no_rectangle_for_derived_classes():
    assert "RectangleLabels" not in label_config_xml(REACHING)
    assert 'value="Hand"' in label_config_xml(REACHING)
    mixed = parse_skeleton("classes:\n  - {name: cat, box: derived, keypoints: [p, q]}\n"
                           "  - {name: dog, box: either, keypoints: [p, q]}\n  - {name: cow, keypoints: [p, q]}\n")
    xml = label_config_xml(mixed)
    assert xml.count("<RectangleLabels") == 1 and 'value="dog"' in xml and 'value="cow"' in xml
    assert 'value="cat"' not in xml


# --- derived boxes --------------------------------------------------------------------------------


def test_derived_boxes_on_the_real_frames_are_min_max_plus_padding_exactly():
    frames = read_dlc()
    assert len(frames) == 55
    compared = 0
    for frame, points in frames:
        poses, problems = results_to_poses(REACHING, point_regions(points), task_id=frame.name)
        if len(points) < 2:
            assert [p.kind for p in problems] == ["too_few_keypoints"] and poses == []
            continue
        assert problems == [] and len(poses) == 1, frame.name
        assert poses[0].box == pytest.approx(expected_box(points), abs=1e-6)
        by_name = {name: (x / WIDTH, y / HEIGHT) for name, x, y in points}
        for kp, (x, y, v) in zip(REACHING.classes[0].keypoints, poses[0].keypoints, strict=True):
            assert (v == 2) == (kp.name in by_name)
            if v:
                assert (x, y) == pytest.approx(by_name[kp.name], abs=1e-9)
        compared += 1
    assert compared >= 50


def test_a_derived_box_is_clipped_to_the_image():
    points = [("Hand", 2.0, 5.0), ("Finger1", 830.0, 740.0)]
    (pose,), _ = results_to_poses(REACHING, point_regions(points))
    assert pose.box == pytest.approx((0.0, 0.0, 1.0, 1.0), abs=1e-12)


def test_two_animals_are_told_apart_by_relations():
    a = [("Hand", 100.0, 100.0), ("Finger1", 120.0, 130.0), ("Joystick1", 150.0, 90.0)]
    b = [("Hand", 500.0, 400.0), ("Finger1", 540.0, 470.0)]
    regions = point_regions(a, "a") + point_regions(b, "b") + relations(["a0", "a1", "a2"])
    poses, problems = results_to_poses(REACHING, regions)
    # the linked points are one animal; the points linked to nothing are one more
    assert problems == [] and len(poses) == 2
    assert poses[0].box == pytest.approx(expected_box(a), abs=1e-6)
    assert poses[1].box == pytest.approx(expected_box(b), abs=1e-6)


def test_a_keypoint_parent_ties_points_like_a_relation():
    regions = point_regions([("Hand", 100.0, 100.0), ("Finger1", 120.0, 130.0)], "a") + \
        point_regions([("Hand", 500.0, 400.0), ("Finger1", 540.0, 470.0)], "b")
    regions[1]["parentID"] = "a0"
    regions[3]["parentID"] = "b0"
    poses, problems = results_to_poses(REACHING, regions)
    assert problems == [] and len(poses) == 2


def test_unlinked_points_of_two_animals_leave_the_task_out_with_a_reason():
    regions = point_regions([("Hand", 100.0, 100.0), ("Finger1", 120.0, 130.0), ("Hand", 500.0, 400.0)])
    poses, problems = results_to_poses(REACHING, regions, task_id=3)
    assert poses == [] and [(p.kind, p.dropped) for p in problems] == [("unlinked_instances", "object")]
    assert "link each animal's points with relations" in problems[0].message


def test_one_labeled_point_is_reported_and_the_task_left_out(tmp_path):
    from poseops.convert import convert_export

    image = tmp_path / "a.png"
    image.write_bytes((DLC / "img005.png").read_bytes())
    task = {"id": 1, "annotations": [{"id": 1, "result": point_regions([("Hand", 100.0, 100.0)])}]}
    report = convert_export([task], REACHING, {1: image}, tmp_path / "out")
    assert [(p.task_id, p.kind) for p in report.skipped_tasks] == [(1, "too_few_keypoints")]
    assert "at least 2" in report.skipped_tasks[0].message


def test_either_a_drawn_box_wins_else_the_box_is_derived():
    sk = parse_skeleton("classes:\n  - {name: mouse, box: either, keypoints: [Hand, Finger1]}\n")
    box = {"id": "b", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
           "value": {"x": 5.0, "y": 5.0, "width": 20.0, "height": 20.0, "rotation": 0, "rectanglelabels": ["mouse"]}}
    inside = point_regions([("Hand", 0.1 * WIDTH, 0.1 * HEIGHT), ("Finger1", 0.2 * WIDTH, 0.2 * HEIGHT)], "i")
    outside = point_regions([("Hand", 0.5 * WIDTH, 0.5 * HEIGHT), ("Finger1", 0.7 * WIDTH, 0.9 * HEIGHT)], "o")
    poses, problems = results_to_poses(sk, [box, *inside, *outside])
    assert problems == [] and len(poses) == 2
    assert poses[0].box == pytest.approx((0.05, 0.05, 0.2, 0.2))
    assert poses[1].box == pytest.approx((0.48, 0.46, 0.24, 0.48), abs=1e-9)


# --- pre-labels and predictions ---------------------------------------------------------------------


def test_the_template_pre_label_places_the_whole_skeleton_without_a_box():
    pose = template_pose("mouse", spec_template(REACHING, "mouse"))
    results = poses_to_results(REACHING, [pose], WIDTH, HEIGHT, prefix="t")
    assert {r["type"] for r in results} == {"keypointlabels"} and len(results) == 5
    assert [r.get("parentID") for r in results] == [None, "t0_0", "t0_0", "t0_0", "t0_0"]
    (back,), problems = results_to_poses(REACHING, results)
    assert problems == [] and [c for kp in back.keypoints for c in kp] == pytest.approx([c for kp in pose.keypoints for c in kp])


def test_autolabel_predictions_of_two_animals_stay_two_instances():
    def detection(x0, y0):
        kps = [{"name": n, "x": x0 + 10 * i, "y": y0 + 7 * i, "confidence": 0.9}
               for i, n in enumerate(REACHING.classes[0].keypoint_names)]
        return {"class": "mouse", "x": x0, "y": y0, "width": 60, "height": 40, "confidence": 0.8, "keypoints": kps}

    result, score = prediction_of(REACHING, [detection(100, 100), detection(400, 300)], WIDTH, HEIGHT,
                                  AutolabelOptions(keypoint_conf=0.5), list)
    assert score == pytest.approx(0.8) and {r["type"] for r in result} == {"keypointlabels"}
    poses, problems = results_to_poses(REACHING, result)
    assert problems == [] and len(poses) == 2
    assert poses[0].box == pytest.approx(expected_box([("", 100 + 10 * i, 100 + 7 * i) for i in range(5)]), abs=1e-6)


# --- nothing labeled is lost without a refusal ---------------------------------------------------------


def labeled_spec(tmp_path: Path) -> Path:
    """The reaching skeleton with drawn boxes (the default)."""
    spec = tmp_path / "reaching-boxes.yaml"
    spec.write_text(REACHING_SPEC.read_text().replace("    box: derived\n    box_padding: 0.1\n", ""))
    assert load_skeleton(spec).classes[0].box == "labeled"
    return spec


def dlc_tasks(frames) -> list[dict]:
    return [{"id": n + 1, "data": {"image": f"/data/upload/1/{frame.name}", "source": frame.name},
             "annotations": [{"id": n + 1, "result": point_regions(points)}]} for n, (frame, points) in enumerate(frames)]


def test_points_without_boxes_in_a_labeled_class_are_counted(tmp_path):
    frames = read_dlc()
    unplaced = unplaced_keypoints(load_skeleton(labeled_spec(tmp_path)), dlc_tasks(frames))
    assert unplaced.keypoints == sum(len(p) for _, p in frames) and len(unplaced.task_ids) == 55
    assert unplaced.classes == ("mouse",)
    assert not unplaced_keypoints(REACHING, dlc_tasks(frames))


def test_the_ready_gate_refuses_points_that_reach_no_object(tmp_path):
    spec = labeled_spec(tmp_path)
    tasks = dlc_tasks(read_dlc())
    with pytest.raises(NotReady) as e:
        check_ready(tasks, PullOptions(min_images=2), "reaching", load_skeleton(spec))
    message = str(e.value)
    assert "in 55 task(s) reach no object" in message and f"set `box: derived` for class 'mouse' in {spec}" in message
    assert len(check_ready(tasks, PullOptions(min_images=2), "reaching", REACHING).labeled) == 55


def test_poseops_convert_refuses_and_writes_nothing(tmp_path):
    export = tmp_path / "export.json"
    export.write_text(json.dumps(dlc_tasks(read_dlc())))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "poseops.cli", "convert", str(export), "--images", str(DLC), "--out", str(out)]
    refused = subprocess.run([*args, "--skeleton", str(labeled_spec(tmp_path))], capture_output=True, text=True)
    assert refused.returncode == 1, refused.stderr
    assert "in 55 task(s) reach no object" in refused.stderr and "box: derived" in refused.stderr
    assert not out.exists()
    done = subprocess.run([*args, "--skeleton", str(REACHING_SPEC)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [line for f in sorted(out.glob("labels/*/*.txt")) for line in f.read_text().splitlines()]
    assert len(lines) >= 50 and all(len(line.split()) == 5 + 15 for line in lines)


# --- against the real Label Studio ------------------------------------------------------------------------




@pytest.mark.integration
def test_a_keypoint_only_project_pulls_with_derived_boxes_and_points_without_boxes_are_refused(
        prefect_api, workspace, label_studio, tmp_path):
    from poseops.coco import parse_yolo_pose_labels
    from poseops.datasets import create_dataset, upload_images
    from poseops.labelstudio import LabelStudioClient

    frames = [(f, p) for f, p in read_dlc() if len(p) >= 2]
    spec = tmp_path / "reaching.yaml"
    spec.write_text(REACHING_SPEC.read_text())
    name = f"reach-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, spec)
        assert "RectangleLabels" not in client.find_project(name).label_config
        upload_images(client, label_studio, name, [f for f, _ in frames],
                      labels={f: point_regions(p) for f, p in frames})
        sources = {t["id"]: t["data"]["source"] for t in client.iter_tasks(project.id, fields="task_only")}
    summary = run_pull(name)
    dataset = workspace / "data" / name
    conversion = summary["conversion"]
    assert conversion["skipped_tasks"] == [] and conversion["problems"] == []
    assert conversion["objects"] == len(frames) and summary["dvc_md5"]
    task_images = json.loads((dataset / "manifest.json").read_text())["conversion"]["task_images"]
    by_source = {sources[int(tid)]: path for tid, path in task_images.items()}
    for frame, points in frames:
        label_file = (dataset / by_source[frame.name].replace("images/", "labels/", 1)).with_suffix(".txt")
        (pose,) = parse_yolo_pose_labels(label_file.read_text(), ["mouse"], str(label_file))
        assert pose.box == pytest.approx(expected_box(points), abs=1e-6), frame.name

    # The same points in a class whose boxes are drawn: refused with the counts, the version kept.
    before = tree_digest(dataset)
    record = (workspace / "data" / f"{name}.pull.json").read_text()
    spec.write_text(labeled_spec(tmp_path).read_text())
    with pytest.raises(NotReady, match=f"in {len(frames)} task\\(s\\) reach no object") as refused:
        run_pull(name)
    assert "set `box: derived` for class 'mouse'" in str(refused.value)
    assert tree_digest(dataset) == before
    assert (workspace / "data" / f"{name}.pull.json").read_text() == record


def test_training_refuses_a_dataset_without_any_object(tmp_path):
    import yaml

    from poseops import training
    from poseops.params import load_params

    root = tmp_path / "project"
    dataset = root / "data" / "reaching"
    for split in ("train", "val"):
        (dataset / "images" / split).mkdir(parents=True)
        (dataset / "labels" / split).mkdir(parents=True)
        (dataset / "images" / split / "a.png").write_bytes((DLC / "img005.png").read_bytes())
        (dataset / "labels" / split / "a.txt").write_text("")  # every keypoint was dropped: empty label files
    (dataset / "data.yaml").write_text(yaml.safe_dump({
        "path": str(dataset), "train": "images/train", "val": "images/val", "names": {0: "mouse"},
        "kpt_shape": [5, 3], "flip_idx": [0, 1, 2, 3, 4]}))
    (root / "label_config").mkdir()
    (root / "label_config" / "reaching.yaml").write_text(REACHING_SPEC.read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({"skeleton": "label_config/reaching.yaml",
                                                      "dataset": {"name": "reaching", "dir": "data/reaching"}}))
    with pytest.raises(training.TrainingError, match="no label file holds an object .*1 train and 1 val images"):
        training.prepare(load_params(root / "params.yaml"), root)
    (dataset / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.2" + " 0.5 0.5 2" * 5 + "\n")
    assert training.prepare(load_params(root / "params.yaml"), root).splits["train"].instances == 1
