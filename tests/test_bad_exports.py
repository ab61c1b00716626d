"""Malformed Label Studio exports (offline, no servers).

Every bad task either gets a clear problem naming the task, what is wrong and what to do,
or a documented skip or clip that is reported; no label is ever silently wrong, and
nothing is written outside the dataset folder and the image cache.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PERSON_SPEC
from test_convert import TINY, ann, box, kp

from poseops.coco import parse_yolo_pose_labels
from poseops.convert import ExportError, convert_export, file_sha256, load_export, match_images
from poseops.pull import ImageCache, NotReady, PullOptions, check_ready, image_url_problem
from poseops.skeleton import load_skeleton

PERSON = load_skeleton(PERSON_SPEC)


def tree(root: Path) -> set[Path]:
    """Every file and folder under `root`."""
    return set(root.rglob("*"))


def write_images(folder: Path, count: int, prefix: str = "image") -> list[Path]:
    """Distinct small files with an image suffix (the converter reads only their bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = folder / f"{prefix}-{n}.jpg"
        path.write_bytes(f"{prefix} {n}".encode())
        paths.append(path)
    return paths


def task(task_id, result, **extra) -> dict:
    return {"id": task_id, "data": {"image": f"/data/upload/1/{task_id}.jpg"}, "annotations": [ann(task_id, result)],
            **extra}


def label_rows(out: Path, report, task_id, class_names=("thing",)):
    image = out / report.task_images[task_id]
    label = out / "labels" / image.parent.name / f"{image.stem}.txt"
    return parse_yolo_pose_labels(label.read_text(), list(class_names), str(label))


def assert_labels_in_range(out: Path) -> None:
    """Every number of every label file is a finite normalized value; visibility 0, 1 or 2."""
    for label in (out / "labels").rglob("*.txt"):
        for line in label.read_text().splitlines():
            values = [float(v) for v in line.split()]
            assert all(math.isfinite(v) for v in values), line
            _, cx, cy, w, h, *kps = values
            assert 0 <= cx - w / 2 and cx + w / 2 <= 1 + 1e-6 and 0 <= cy - h / 2 and cy + h / 2 <= 1 + 1e-6, line
            assert w > 0 and h > 0, line
            for x, y, v in zip(kps[::3], kps[1::3], kps[2::3], strict=True):
                assert v in (0, 1, 2) and -1e-6 <= x <= 1 + 1e-6 and -1e-6 <= y <= 1 + 1e-6, line


# --- missing fields -------------------------------------------------------------------------


def test_missing_fields_name_the_task_and_what_was_left_out(tmp_path):
    images = write_images(tmp_path / "images", 6)
    good = [box("b", 10, 10, 40, 40), kp("k", "top", 20, 20, "b")]
    no_size = [{k: v for k, v in r.items() if k not in ("original_width", "original_height")} for r in good]
    tasks = [
        task(1, good),
        {"id": 2, "data": {}, "annotations": [{"id": 2, "was_cancelled": False}]},  # annotation without result
        task(3, [{k: v for k, v in good[0].items() if k != "value"}]),  # box without value
        task(4, [good[0], {k: v for k, v in good[1].items() if k != "value"}]),  # keypoint without value
        task(5, no_size),  # no original_width/height: not needed, percent is enough
        {"id": 6, "annotations": [ann(6, good)]},  # no data at all: the converter takes images by task id
    ]
    out = tmp_path / "ds"
    report = convert_export(tasks, TINY, dict(zip(range(1, 7), images, strict=True)), out)
    assert [(p.task_id, p.kind) for p in report.skipped_tasks] == [(2, "bad_result"), (3, "missing_field")]
    assert "'result' is NoneType" in report.skipped_tasks[0].message
    assert "has no 'value'" in report.skipped_tasks[1].message
    assert [(p.task_id, p.kind, p.dropped) for p in report.problems] == [
        (3, "missing_field", "object"), (4, "missing_field", "keypoint")]
    assert sorted(report.task_images) == [1, 4, 5, 6]
    assert label_rows(out, report, 5) == label_rows(out, report, 1) == label_rows(out, report, 6)
    assert label_rows(out, report, 4)[0].keypoints == ((0.0, 0.0, 0), (0.0, 0.0, 0))  # the dropped keypoint: missing


def test_exports_that_are_not_task_lists_are_refused_naming_the_item(tmp_path):
    path = tmp_path / "export.json"
    for tasks, message in [
        ([{"id": 1, "annotations": []}, {"data": {}, "annotations": []}], "item #1 is not a task"),
        ([{"id": [1], "annotations": []}], r"item #0 has the id \[1\], not a number or text"),
        ([{"id": True, "annotations": []}], "item #0 has the id True"),
        ([{"id": 7, "annotations": []}, {"id": 8, "annotations": []}, {"id": 7, "annotations": []}],
         "items #0 and #2 are both task 7"),
    ]:
        path.write_text(json.dumps(tasks))
        with pytest.raises(ExportError, match=message):
            load_export(path)


def test_two_tasks_with_one_id_never_swap_labels(tmp_path):
    """Given to convert_export directly (load_export refuses such a file), the second is left out."""
    (a,) = write_images(tmp_path / "images", 1)
    tasks = [task(1, [box("b", 0, 0, 10, 10)]), task(1, [box("b", 50, 50, 10, 10)])]
    report = convert_export(tasks, TINY, {1: a}, tmp_path / "ds")
    assert [(p.task_id, p.kind) for p in report.skipped_tasks] == [(1, "duplicate_task")]
    assert label_rows(tmp_path / "ds", report, 1)[0].box == pytest.approx((0, 0, 0.1, 0.1))


# --- labels not in the skeleton -----------------------------------------------------------


def test_unknown_labels_drop_the_task_or_the_keypoint_and_say_what_to_do(tmp_path):
    images = write_images(tmp_path / "images", 2)
    tasks = [
        task(1, [box("b", 0, 0, 50, 50), box("c", 50, 50, 20, 20, "car")]),  # a box of an unknown class
        task(2, [box("b", 0, 0, 50, 50), kp("k1", "top", 10, 10, "b"), kp("k2", "elbow", 20, 20, "b")]),
    ]
    out = tmp_path / "ds"
    report = convert_export(tasks, TINY, {1: images[0], 2: images[1]}, out)
    (skipped,) = report.skipped_tasks
    assert (skipped.task_id, skipped.kind, skipped.label) == (1, "unknown_label", "car")
    assert "'car', which is not in the skeleton spec" in skipped.message and "relabel the box" in skipped.message
    elbow = [p for p in report.problems if p.task_id == 2]
    assert [(p.kind, p.label, p.dropped) for p in elbow] == [("unknown_label", "elbow", "keypoint")]
    assert "add it to the spec or relabel" in elbow[0].message
    assert label_rows(out, report, 2)[0].keypoints == ((0.1, 0.1, 2), (0.0, 0.0, 0))


# --- numbers out of range or not numbers -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "box_kind", "box_dropped", "kp_kind"),
    [
        (-5, "out_of_range", "nothing", "out_of_range"),  # the box is clipped, the keypoint dropped
        (150, "out_of_range", "object", "out_of_range"),
        (float("nan"), "missing_field", "object", "missing_field"),
        (float("inf"), "missing_field", "object", "missing_field"),
        ("12", "missing_field", "object", "missing_field"),
        (True, "missing_field", "object", "missing_field"),
        (None, "missing_field", "object", "missing_field"),
    ],
    ids=["negative", "over-100", "nan", "inf", "string", "bool", "null"],
)
def test_percent_values_out_of_range_are_clipped_or_reported(tmp_path, value, box_kind, box_dropped, kp_kind):
    a, b = write_images(tmp_path / "images", 2)
    bad_box = box("b", 10, 10, 30, 30)
    bad_box["value"]["x"] = value
    bad_kp = kp("k", "top", 20, 20, "ok")
    bad_kp["value"]["y"] = value
    tasks = [task(1, [bad_box]), task(2, [box("ok", 10, 10, 30, 30), bad_kp])]
    out = tmp_path / "ds"
    report = convert_export(export_file_round_trip(tmp_path, tasks), TINY, {1: a, 2: b}, out)
    problems = {p.task_id: p for p in report.problems}
    assert (problems[1].kind, problems[1].dropped) == (box_kind, box_dropped)
    assert (problems[2].kind, problems[2].dropped) == (kp_kind, "keypoint")
    assert (1 in report.task_images) == (box_dropped == "nothing")  # a dropped box leaves its task out
    assert label_rows(out, report, 2)[0].keypoints[0] == (0.0, 0.0, 0)
    assert_labels_in_range(out)


def export_file_round_trip(tmp_path: Path, tasks: list[dict]) -> list[dict]:
    """Through a JSON file, as exports arrive (NaN and Infinity included, as Python writes them)."""
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return load_export(path)


def test_keypoints_outside_their_box_are_kept_and_far_ones_reported(tmp_path):
    (image,) = write_images(tmp_path / "images", 1)
    near = kp("near", "top", 45, 30, "b")  # a quarter of the box's width to its right: common in COCO
    far = kp("far", "bottom", 95, 95, "b")  # two box sizes away: probably attached to the wrong box
    out = tmp_path / "ds"
    report = convert_export([task(1, [box("b", 10, 10, 30, 30), near, far])], TINY, {1: image}, out)
    assert [(p.kind, p.region_id, p.dropped) for p in report.problems] == [("far_outside_box", "far", "nothing")]
    assert "attached to the right box" in report.problems[0].message
    (pose,) = label_rows(out, report, 1)
    assert pose.keypoints == (pytest.approx((0.45, 0.30, 2)), pytest.approx((0.95, 0.95, 2)))


# --- names that try to lead outside -------------------------------------------------------------


EVIL_NAMES = ["../../etc/passwd", "../secret.jpg", "%2e%2e/secret.jpg", "%2E%2E%2Fsecret.jpg", "..\\secret.jpg",
              "/data/upload/1/..%2f..%2fsecret.jpg", "a\x00b.jpg", "secret.jpg\x00.png", "", ".", "..", "/"]


def test_file_names_from_tasks_never_lead_outside_the_images_folder(tmp_path):
    images = tmp_path / "images"
    inside = write_images(images, 1, "photo 1")[0]  # a name Label Studio URL-encodes
    (tmp_path / "secret.jpg").write_bytes(b"not for the dataset")
    tasks = [{"id": n, "data": {"image": name, "source": name}, "annotations": [ann(n, [])]}
             for n, name in enumerate(EVIL_NAMES)]
    tasks += [{"id": 100, "data": {"image": str((tmp_path / "secret.jpg").resolve())}, "annotations": [ann(100, [])]},
              {"id": 101, "data": {"image": "/data/upload/1/3f2a1b4c-photo%201-0.jpg"}, "annotations": [ann(101, [])]}]
    found, missing = match_images(tasks, images)
    assert found == {101: inside} and sorted(missing) == [*range(len(EVIL_NAMES)), 100]


def test_the_command_line_writes_only_into_its_output_folder(tmp_path):
    """`poseops convert` end to end on an export full of bad tasks: each named, nothing written elsewhere."""
    images = tmp_path / "images"
    files = write_images(images, 3)
    (tmp_path / "secret.jpg").write_bytes(b"not for the dataset")
    good = [box("b", 10, 10, 40, 40, "person"), kp("k", "nose", 20, 20, "b")]
    tasks = [
        {"id": 1, "data": {"image": f"/data/upload/1/0a1b2c3d-{files[0].name}"}, "annotations": [ann(1, good)]},
        {"id": 2, "data": {"image": f"/data/upload/1/{files[1].name}"},
         "annotations": [ann(2, [box("b", 10, 10, 40, 40, "car")])]},
        {"id": 3, "data": {"image": files[2].name}, "annotations": [{"id": 3, "was_cancelled": False}]},
        {"id": 4, "data": {"image": "../secret.jpg"}, "annotations": [ann(4, good)]},
        {"id": 5, "data": {"image": "%2e%2e/%2e%2e/etc/passwd"}, "annotations": [ann(5, good)]},
        {"id": 6, "data": {}, "annotations": [ann(6, good)]},
    ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    out = tmp_path / "out" / "ds"
    before = tree(tmp_path)
    r = subprocess.run([sys.executable, "-m", "poseops.cli", "convert", str(export), "--skeleton", str(PERSON_SPEC),
                        "--images", str(images), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    new = tree(tmp_path) - before
    assert new and all(p == out.parent or p.is_relative_to(out) for p in new), sorted(new)
    digest = file_sha256(files[0])
    assert {p.name for p in new if p.is_file()} == {"data.yaml", f"{digest[:16]}.jpg", f"{digest[:16]}.txt"}
    err = " ".join(r.stderr.split())
    assert "no image in" in err and "4, 5, 6" in err  # the tasks whose names lead nowhere (or are missing)
    assert "unknown_label task 2" in err and "'car'" in err
    assert "bad_result task 3" in err
    assert "1 train" in r.stdout or "1 val" in r.stdout


# --- what the pull accepts from a task ---------------------------------------------------------


@pytest.mark.parametrize("url", [
    "/data/upload/3/0a1b2c3d-photo.jpg", "/data/local-files/?d=pictures/a.jpg", "http://example.org/a.jpg",
    "https://images.example.org/a%20b.jpg",
])
def test_image_urls_the_pull_downloads(url):
    assert image_url_problem({"id": 1, "data": {"image": url}}) is None


@pytest.mark.parametrize(("data", "why"), [
    ({}, "no image URL in data.image"),
    ({"img": "/data/upload/1/a.jpg"}, "its data keys: img"),
    ({"image": 7}, "no image URL"),
    ("just text", "no image URL"),
    ({"image": "../../etc/passwd"}, "neither a path on Label Studio"),
    ({"image": "/etc/passwd"}, None),  # a path on the server: Label Studio answers it (404), nothing is read here
    ({"image": "/data/upload/1/../../../etc/passwd"}, "climbs out"),
    ({"image": "/data/upload/%2e%2e/%2E%2E/etc/passwd"}, "climbs out"),
    ({"image": "/data/upload/1/..%5c..%5cwin.ini"}, "climbs out"),
    ({"image": "file:///etc/passwd"}, "neither a path"),
    ({"image": "s3://bucket/a.jpg"}, "neither a path"),
    ({"image": "//evil.example.org/a.jpg"}, "neither a path"),
    ({"image": "C:\\images\\a.jpg"}, "neither a path"),
    ({"image": "/data/upload/1/a\x00.jpg"}, "control characters"),
])
def test_image_urls_the_pull_refuses(data, why):
    problem = image_url_problem({"id": 1, "data": data})
    assert problem == why if why is None else why in problem


def test_the_ready_gate_lists_every_task_whose_image_cannot_be_fetched():
    tasks = [task(n, [box("b", 0, 0, 10, 10)]) for n in range(1, 11)]
    tasks[2]["data"] = {"image": "file:///etc/passwd"}
    tasks[6]["data"] = {}
    with pytest.raises(NotReady) as refused:
        check_ready(tasks, PullOptions(min_images=2), "people")
    message = str(refused.value)
    assert "2 labeled task(s) of 'people'" in message and "task 3:" in message and "task 7:" in message
    assert "fix or delete those tasks" in message


def test_a_task_hash_never_leads_out_of_the_image_cache(tmp_path):
    """`data.sha256` picks a cached file; one that climbs out of the cache must not pick any file."""
    cache = ImageCache(tmp_path / "home" / "cache" / "images")
    secret = tmp_path / "secret"
    secret.mkdir()
    stem = "x" * 51
    (secret / f"{stem}.jpg").write_bytes(b"private")
    climbing = f"../../secret/{stem}"
    assert len(climbing) == 64
    assert cache.lookup({"id": 1, "data": {"sha256": climbing, "image": "/data/upload/1/a.jpg"}}) is None
    stored = cache.store("/data/upload/1/a.jpg", b"an image")
    sha = stored.stem
    assert cache.lookup({"id": 2, "data": {"sha256": sha}}) == stored
    assert cache.lookup({"id": 3, "data": {"sha256": sha.upper()}}) is None
    assert cache.lookup({"id": 4, "data": "not a dict"}) is None


# --- many tasks ---------------------------------------------------------------------------------


KEYPOINTS_PER_PERSON = 6


def synthetic_tasks(count: int) -> list[dict]:
    """One person per task with 6 of its 17 keypoints labeled, one in seven without parentID."""
    names = [k.name for k in PERSON.classes[0].keypoints][:KEYPOINTS_PER_PERSON]
    tasks = []
    for n in range(count):
        x, y = 5 + n % 50, 5 + (n // 50) % 40
        result = [box(f"b{n}", x, y, 40, 50, "person")]
        for i, name in enumerate(names):
            parent = None if (n + i) % 7 == 0 else f"b{n}"
            result.append(kp(f"k{n}-{i}", name, x + 2 + i * 2, y + 2 + i * 2.5, parent))
        tasks.append({"id": n + 1, "data": {"image": f"/data/upload/1/{n}.jpg"}, "annotations": [ann(n + 1, result)]})
    return tasks


def lines_run(work) -> int:
    """How many lines of poseops' own code `work()` executes: a count of its work that no other load changes."""
    import threading

    count = 0

    def count_lines(frame, event, arg):
        nonlocal count
        count += event == "line"
        return count_lines

    def in_poseops(frame, event, arg):
        return count_lines if f"{Path('poseops')}/" in frame.f_code.co_filename.replace("\\", "/") else None

    sys.settrace(in_poseops)
    threading.settrace(in_poseops)
    try:
        work()
    finally:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
    return count


def test_twenty_thousand_tasks_convert_completely(tmp_path):
    count = 20_000
    images = write_images(tmp_path / "images", count)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(synthetic_tasks(count)))
    report = convert_export(load_export(export), PERSON, {n + 1: images[n] for n in range(count)}, tmp_path / "ds")
    assert report.annotations_used == count and report.problems == [] and report.skipped_tasks == []
    assert sum(report.keypoints.values()) == KEYPOINTS_PER_PERSON * count
    assert len(list((tmp_path / "ds" / "labels").rglob("*.txt"))) == count


def test_conversion_work_grows_linearly_with_the_tasks(tmp_path):
    counts = (1_000, 4_000)
    images = write_images(tmp_path / "images", counts[-1])
    lines = {}
    for count in counts:
        export = tmp_path / f"export-{count}.json"
        export.write_text(json.dumps(synthetic_tasks(count)))
        out = tmp_path / f"ds-{count}"
        lines[count] = lines_run(lambda: convert_export(load_export(export), PERSON,  # noqa: B023 - run at once
                                                        {n + 1: images[n] for n in range(count)}, out))  # noqa: B023
        assert len(list((out / "labels").rglob("*.txt"))) == count
    ratio = lines[counts[1]] / lines[counts[0]]
    print(f"\n{counts[0]} tasks: {lines[counts[0]]:,} lines of poseops run; {counts[1]}: {lines[counts[1]]:,} ({ratio:.2f}x)")
    assert lines[counts[0]] > 10 * counts[0]  # the count does see the conversion's own code
    assert ratio < 5  # linear is 4; quadratic would be 16
