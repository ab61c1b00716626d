"""Skeleton spec validation and the labeling config generated from it (offline)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from poseops.label_config import label_config_xml
from poseops.skeleton import SkeletonError, load_skeleton, parse_skeleton

ROOT = Path(__file__).resolve().parents[1]
PERSON = ROOT / "label_config" / "skeletons" / "person.yaml"
QUADRUPED = Path(__file__).parent / "data" / "quadruped.yaml"

COCO_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]
# COCO's person skeleton, 1-based, as in person_keypoints_*.json
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]


def test_person_spec_is_coco():
    s = load_skeleton(PERSON)
    cls = s.get("person")
    assert cls.keypoint_names == COCO_NAMES
    edges = {frozenset((e.a, e.b)) for e in cls.connections}
    assert edges == {frozenset((COCO_NAMES[a - 1], COCO_NAMES[b - 1])) for a, b in COCO_SKELETON}
    assert s.flip_idx == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]  # Ultralytics' coco-pose.yaml


def test_minimal_spec_from_the_issue_gets_default_colours():
    s = parse_skeleton(
        """
classes:
  - name: person
    color: "#e6194b"
    keypoints:
      - {name: nose, color: "#ffe119"}
      - {name: left_eye}
      - {name: right_eye}
    connections:
      - [left_eye, right_eye, "#3cb44b"]
    flip_pairs:
      - [left_eye, right_eye]
"""
    )
    cls = s.classes[0]
    assert [k.color for k in cls.keypoints][0] == "#ffe119"
    assert len({k.color for k in cls.keypoints}) == 3
    assert cls.connections[0].color == "#3cb44b"
    assert s.flip_idx == [0, 2, 1]
    assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y in (k.position for k in cls.keypoints))


BAD_SPECS = {
    "duplicate keypoint": ("classes:\n  - name: a\n    keypoints:\n      - {name: x}\n      - {name: x}\n", 5, "listed twice"),
    "duplicate class": (
        "classes:\n  - name: a\n    keypoints: [x]\n  - name: a\n    keypoints: [x]\n", 4, "used twice"),
    "edge to unknown": (
        "classes:\n  - name: a\n    keypoints: [x, y]\n    connections:\n      - [x, z]\n", 5, "unknown keypoint 'z'"),
    "pair to unknown": (
        "classes:\n  - name: a\n    keypoints: [x, y]\n    flip_pairs:\n      - [x, q]\n", 5, "unknown keypoint 'q'"),
    "paired with itself": (
        "classes:\n  - name: a\n    keypoints: [x, y]\n    flip_pairs:\n      - [x, x]\n", 5, "with itself"),
    "paired twice": (
        "classes:\n  - name: a\n    keypoints: [x, y, z]\n    flip_pairs:\n      - [x, y]\n      - [x, z]\n", 6,
        "two flip pairs"),
    "bad colour": ("classes:\n  - name: a\n    keypoints:\n      - {name: x, color: red}\n", 4, "bad colour 'red'"),
    "empty class": ("classes:\n  - name: a\n    keypoints: []\n", 2, "is empty"),
    "unknown key": ("classes:\n  - name: a\n    keypoint: [x]\n", 2, "unknown key 'keypoint'"),
    "different counts": (
        "classes:\n  - name: a\n    keypoints: [x, y]\n  - name: b\n    keypoints: [x]\n", 4, "one keypoint count"),
    "not yaml": ("classes: [\n", 0, "not valid YAML"),
    "no classes": ("keypoint: 3\n", 1, "'classes'"),
    "empty file": ("", 0, "expected a mapping with a 'classes' list"),
    "a list, not a mapping": ("- a\n- b\n", 1, "expected a mapping"),
    "classes not a list": ("classes: abc\n", 1, "must be a non-empty list"),
    "numbers as names": ("classes:\n  - name: a\n    keypoints: [1, 2]\n", 3, "must be a name"),
    "null keypoint": ("classes:\n  - name: a\n    keypoints: [null]\n", 3, "must be a name"),
    "markup in a name": ("classes:\n  - name: 'a\"<x>'\n    keypoints: [b]\n", 2, "letters, digits"),
    "empty class name": ("classes:\n  - name: ''\n    keypoints: [x]\n", 2, "non-empty name"),
    "position outside the box": (
        "classes:\n  - name: a\n    keypoints:\n      - {name: x, position: [2, -1]}\n", 4, "between 0 and 1"),
    "connection colour": (
        "classes:\n  - name: a\n    keypoints: [x, y]\n    connections:\n      - [x, y, nocolour]\n", 5, "bad colour"),
    "connection of one": ("classes:\n  - name: a\n    keypoints: [x, y]\n    connections:\n      - [x]\n", 5, "[a, b]"),
    "alias bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nclasses:\n  - name: a\n    keypoints: *c\n", 1,
                   "unknown key 'a'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_refused_naming_file_and_line(case):
    text, line, words = BAD_SPECS[case]
    with pytest.raises(SkeletonError) as e:
        parse_skeleton(text, source="spec.yaml")
    message = str(e.value)
    assert words in message
    if line:
        assert message.startswith(f"spec.yaml:{line}:"), message
    else:
        assert message.startswith("spec.yaml")


def test_binary_file_and_folder_are_refused_clearly(tmp_path):
    binary = tmp_path / "spec.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x89PNG garbage")
    with pytest.raises(SkeletonError, match="cannot be read as a text file"):
        load_skeleton(binary)
    with pytest.raises(SkeletonError, match="cannot be read as a text file"):
        load_skeleton(tmp_path)


def test_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(SkeletonError, match="no such skeleton spec"):
        load_skeleton(tmp_path / "nope.yaml")


def test_label_config_has_one_label_per_class_and_ordered_keypoints():
    s = load_skeleton(PERSON)
    root = ET.fromstring(label_config_xml(s))
    assert root.find("Image").get("name") == "image"
    boxes = root.find("RectangleLabels")
    assert [(lb.get("value"), lb.get("background")) for lb in boxes] == [("person", "#e6194b")]
    kps = root.find("KeyPointLabels")
    assert [lb.get("value") for lb in kps] == COCO_NAMES
    assert [int(lb.get("model_index")) for lb in kps] == list(range(17))
    assert [lb.get("background") for lb in kps] == [k.color for k in s.classes[0].keypoints]
    assert boxes.get("toName") == kps.get("toName") == "image"


def test_committed_person_config_is_current():
    committed = (ROOT / "label_config" / "person.xml").read_text()
    assert committed == label_config_xml(load_skeleton(PERSON)), "regenerate: poseops label-config ... -o label_config/person.xml"


def test_animal_spec_by_someone_else_gives_12_ordered_keypoints():
    s = load_skeleton(QUADRUPED)
    assert s.keypoint_count == 12 and s.class_names == ["dog", "cat"]
    root = ET.fromstring(label_config_xml(s))
    labels = root.find("KeyPointLabels")
    assert len(labels) == 12  # both classes share names at the same positions: one label each
    assert [int(lb.get("model_index")) for lb in labels] == list(range(12))
    assert [lb.get("value") for lb in root.find("RectangleLabels")] == ["dog", "cat"]


def test_shared_name_at_other_position_gets_class_prefix():
    s = parse_skeleton("classes:\n  - name: a\n    keypoints: [x, y]\n  - name: b\n    keypoints: [y, x]\n")
    assert s.keypoint_labels() == {"a:x": 0, "a:y": 1, "b:y": 0, "b:x": 1}


def test_classes_with_misaligned_flip_pairs_are_refused():
    text = ("classes:\n  - name: a\n    keypoints: [l, r, c]\n    flip_pairs: [[l, r]]\n"
            "  - name: b\n    keypoints: [l, c, r]\n    flip_pairs: [[l, r]]\n")
    with pytest.raises(SkeletonError, match="one flip_idx"):
        parse_skeleton(text)


def test_coco_names_get_cocos_sigmas_and_other_skeletons_the_documented_default():
    from ultralytics.utils.metrics import OKS_SIGMA

    from poseops.skeleton import DEFAULT_SIGMA

    assert load_skeleton(PERSON).oks_sigmas == pytest.approx(OKS_SIGMA.tolist(), abs=1e-6)  # COCO order
    shuffled = parse_skeleton("name: p\nkeypoints: [" + ", ".join(reversed(COCO_NAMES)) + "]")
    assert shuffled.oks_sigmas == pytest.approx(OKS_SIGMA.tolist()[::-1], abs=1e-6)  # by name, not position
    quadruped = load_skeleton(QUADRUPED)
    assert quadruped.oks_sigmas == [DEFAULT_SIGMA] * 12 and DEFAULT_SIGMA != pytest.approx(1 / 12)
    assert DEFAULT_SIGMA == pytest.approx(float(sorted(OKS_SIGMA)[8]), abs=1e-6)  # the median of COCO's
    partial = parse_skeleton("name: p\nkeypoints: [nose, left_eye, {name: tail, sigma: 0.05}]")
    assert partial.oks_sigmas == [DEFAULT_SIGMA, DEFAULT_SIGMA, 0.05]  # not all of COCO's: not COCO's sigmas


@pytest.mark.parametrize(("sigma", "message"), [
    (0, "sigma 0 of keypoint 'b' must be a number above 0 and at most 1"),
    (-0.1, "sigma -0.1 of keypoint 'b'"),
    ("wide", "sigma 'wide' of keypoint 'b'"),
    (True, "sigma True of keypoint 'b'"),
    (1.5, "sigma 1.5 of keypoint .b. must be a number above 0 and at most 1: its OKS sigma"),
])
def test_bad_sigma_is_refused_naming_the_keypoint_and_line(sigma, message):
    text = f"classes:\n  - name: c\n    keypoints:\n      - a\n      - {{name: b, sigma: {sigma!r}}}\n"
    with pytest.raises(SkeletonError, match=r"spec:5: " + message.replace("(", r"\(")):
        parse_skeleton(text.replace("'", ""), source="spec")


def test_later_class_may_only_repeat_the_first_class_sigmas():
    ok = parse_skeleton("classes:\n  - name: a\n    keypoints: [{name: p, sigma: 0.04}, q]\n"
                        "  - name: b\n    keypoints: [{name: p, sigma: 0.04}, q]\n")
    assert ok.oks_sigmas == [0.04, 0.072] and ok.get("b").oks_sigmas == [0.04, 0.072]
    with pytest.raises(SkeletonError, match=r"keypoint 'q' of class 'b' has sigma 0.03 but the keypoint at its "
                                            r"position in 'a' has 0.072"):
        parse_skeleton("classes:\n  - name: a\n    keypoints: [p, q]\n  - name: b\n    keypoints: [p, {name: q, sigma: 0.03}]\n")


@pytest.mark.parametrize(("name", "sided"), [
    ("left_eye", True), ("r_paw", True), ("paw_R", True), ("LeftHand", True), ("front_left_paw", True),
    ("Right Ear", True), ("hand.l", True), ("elbow-r", True),
    ("nose", False), ("rightmost", False), ("lr", False), ("withers", False), ("tail_root", False), ("leftover", False),
])
def test_names_that_say_left_or_right(name, sided):
    from poseops.skeleton import looks_sided

    assert looks_sided(name) is sided


def test_check_skeleton_warns_of_left_right_names_without_flip_pairs_when_training_flips(tmp_path):
    import subprocess
    import sys

    spec = tmp_path / "spec.yaml"
    spec.write_text("classes:\n  - name: a\n    keypoints: [nose, left_eye, right_eye, tail]\n")

    def check(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "poseops.cli", "check-skeleton", str(spec), *args],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    done = check()  # no params.yaml here: the default fliplr (0.5)
    assert done.returncode == 0 and "kpt_oks_sigmas: [0.072, 0.072, 0.072, 0.072]" in done.stdout
    assert "keypoints named left/right are in no flip pair (a: left_eye, right_eye)" in " ".join(done.stderr.split())
    (tmp_path / "params.yaml").write_text("train:\n  augment:\n    fliplr: 0.0\n")
    assert "warning" not in check().stderr  # no flips in training: nothing to warn about
    spec.write_text(spec.read_text() + "    flip_pairs: [[left_eye, right_eye]]\n")
    assert "warning" not in check("--params", str(tmp_path / "missing.yaml")).stderr
    done = check("--params", str(ROOT / "params.yaml"))
    assert done.returncode == 0 and "warning" not in done.stderr
