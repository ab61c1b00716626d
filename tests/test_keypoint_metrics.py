"""Per-keypoint metrics on hand-made labels and predictions, against values worked out here by hand.

The skeleton is the 12-keypoint quadruped of tests/data; expected values are computed with plain
`math` from the definitions in docs/training.md, not with the code under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from poseops.params import parse_params
from poseops.skeleton import load_skeleton
from poseops.training.keypoint_guard import compare_keypoints, image_differences
from poseops.training.keypoint_metrics import (
    ImagePoses,
    ImageScore,
    KeypointReport,
    KeypointScore,
    coco_ap,
    evaluate_keypoints,
    match,
)
from poseops.training.promotion import decide

SPEC = load_skeleton(Path(__file__).parent / "data" / "quadruped.yaml")
NAMES = SPEC.classes[0].keypoint_names
SIGMAS = SPEC.oks_sigmas
K = len(NAMES)
THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]


def poses(name: str, labels: list[tuple[tuple, list]], preds: list[tuple[tuple, float, list]]) -> ImagePoses:
    """labels: (box, [(x, y, v)] * K); preds: (box, conf, [(x, y, conf)] * K); class 0 everywhere."""
    return ImagePoses(
        image=name, width=640, height=480,
        label_cls=np.zeros(len(labels), int), label_boxes=np.array([b for b, _ in labels], float).reshape(-1, 4),
        label_kpts=np.array([k for _, k in labels], float).reshape(-1, K, 3),
        pred_cls=np.zeros(len(preds), int), pred_boxes=np.array([b for b, _, _ in preds], float).reshape(-1, 4),
        pred_conf=np.array([c for _, c, _ in preds], float), pred_kpts=np.array([k for _, _, k in preds], float).reshape(-1, K, 3))


BOX = (0.0, 0.0, 100.0, 200.0)  # area 20000 → OKS scale s = 0.53 · 20000 = 10600; longer side 200
LABEL = [(10.0 * i, 10.0 * i + 5, 2.0) for i in range(K)]
OFFSETS = {1: (3, 4), 2: (9, 12), 3: (18, 24), 4: (30, 40)}  # distances 5, 15, 30, 50 px


def ks(d: float, sigma: float, s: float = 10600.0) -> float:
    return math.exp(-d * d / (2 * s * (2 * sigma) ** 2))


def one_image() -> ImagePoses:
    label = list(LABEL)
    label[11] = (0.0, 0.0, 0.0)  # back_right_paw not labeled
    pred = []
    for i, (x, y, _) in enumerate(LABEL):
        dx, dy = OFFSETS.get(i, (0, 0))
        conf = 0.1 if i == 5 else 0.2 if i == 11 else 0.9  # 5: labeled but predicted hidden; 11: both hidden
        pred.append((x + dx, y + dy, conf))
    return poses("images/val/a.jpg", [(BOX, label)], [(BOX, 0.9, pred)])


def test_pck_rmse_visibility_and_ap_of_each_keypoint():
    report = evaluate_keypoints([one_image()], NAMES, SIGMAS, match_conf=0.25)
    by = report.by_name()
    dist = {i: math.hypot(*OFFSETS.get(i, (0, 0))) for i in range(K)}
    for i, name in enumerate(NAMES[:11]):
        k = by[name]
        assert k.labeled == 1
        assert k.pck05 == (1.0 if dist[i] <= 10 else 0.0), name  # 0.05 · 200 px
        assert k.pck10 == (1.0 if dist[i] <= 20 else 0.0), name
        assert k.pck20 == (1.0 if dist[i] <= 40 else 0.0), name
        assert k.rmse_px == pytest.approx(dist[i]), name
        similarity = ks(dist[i], SIGMAS[i])
        assert k.ap == pytest.approx(sum(similarity >= t for t in THRESHOLDS) / 10), name
        assert k.ap50 == (1.0 if similarity >= 0.5 else 0.0), name
    assert by["front_left_paw"].visibility_acc == 0.0  # labeled, predicted hidden (NAMES[5])
    assert by["back_right_paw"].visibility_acc == 1.0  # not labeled, predicted hidden
    assert by["nose"].visibility_acc == 1.0
    unlabeled = by["back_right_paw"]
    assert unlabeled.labeled == 0 and unlabeled.pck10 is None and unlabeled.rmse_px is None and unlabeled.ap is None
    expected_oks = sum(ks(dist[i], SIGMAS[i]) for i in range(11)) / 11
    assert report.images == [ImageScore("images/val/a.jpg", 1, 1, 1, pytest.approx(expected_oks, abs=1e-6),
                                        "front_left_elbow")]  # the 50 px error
    metrics = report.to_metrics()
    assert set(metrics) == {*NAMES, "mean"}
    assert metrics["mean"]["pck10"] == pytest.approx((11 - 2) / 11, abs=1e-6)  # keypoints 3 and 4 miss at 20 px


def test_ap_ranks_detections_by_confidence_across_images():
    exact = [(x, y, 0.9) for x, y, _ in LABEL]
    far = [(x + 400, y + 200, 0.9) for x, y, _ in LABEL]
    far_box = (400.0, 200.0, 500.0, 400.0)
    a = poses("a.jpg", [(BOX, LABEL)], [(BOX, 0.9, exact)])
    b = poses("b.jpg", [(BOX, LABEL)], [(far_box, 0.8, far), (BOX, 0.3, exact)])
    report = evaluate_keypoints([a, b], NAMES, SIGMAS, match_conf=0.25)
    # ranked: TP (0.9), FP (0.8), TP (0.3) → recall .5 .5 1, precision 1 .5 .667; COCO's 101 recall points:
    # 51 (r ≤ 0.5) at precision 1, 50 at 2/3
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert all(k.ap == pytest.approx(expected) and k.ap50 == pytest.approx(expected) for k in report.keypoints)
    assert all(k.pck05 == 1.0 for k in report.keypoints)  # the exact detection is matched in b, not the far one
    scores = {s.image: s for s in report.images}
    assert scores["a.jpg"].oks == 1.0
    assert (scores["b.jpg"].oks, scores["b.jpg"].matched, scores["b.jpg"].detections) == (0.5, 1, 2)  # one extra 0


def test_a_detection_on_a_label_without_the_keypoint_is_ignored_for_its_ap():
    hidden_nose = [(0.0, 0.0, 0.0), *LABEL[1:]]
    exact = [(x, y, 0.9) for x, y, _ in LABEL]
    a = poses("a.jpg", [(BOX, LABEL)], [(BOX, 0.5, exact)])
    b = poses("b.jpg", [(BOX, hidden_nose)], [(BOX, 0.9, exact)])  # ranked first, on a label without a nose
    nose = evaluate_keypoints([a, b], NAMES, SIGMAS, match_conf=0.25).by_name()["nose"]
    assert nose.labeled == 1 and nose.ap == 1.0


def test_matching_pairs_labels_and_detections_greedily_by_oks():
    shifted = [(x + 300, y, 2.0) for x, y, _ in LABEL]
    box2 = (300.0, 0.0, 400.0, 200.0)
    near1 = [(x + 2, y, 0.9) for x, y, _ in LABEL]  # 2 px from label 0
    near2 = [(x + 300, y + 1, 0.9) for x, y, _ in LABEL]  # 1 px from label 1
    img = poses("c.jpg", [(BOX, LABEL), (box2, shifted)], [(BOX, 0.3, near1), (box2, 0.95, near2), (BOX, 0.1, near1)])
    pairs = match(img, np.array(SIGMAS), match_conf=0.25)
    assert [(li, pj) for li, pj, _ in pairs] == [(1, 1), (0, 0)]  # the closer pair first; 0.1 is below match_conf


def test_a_model_without_keypoint_confidences_has_no_visibility_accuracy():
    img = one_image()
    img.pred_kpts[..., 2] = np.nan
    assert all(k.visibility_acc is None for k in evaluate_keypoints([img], NAMES, SIGMAS, 0.25).keypoints)


def test_coco_ap_of_a_perfect_and_an_empty_ranking():
    assert coco_ap(np.array([True, True]), np.array([0.9, 0.8]), 2) == 1.0
    assert coco_ap(np.array([], bool), np.array([]), 3) == 0.0
    assert math.isnan(coco_ap(np.array([False]), np.array([0.5]), 0))


# --- the keypoint guard ------------------------------------------------------------------------------------------


def report_with(pck10: dict[str, float], images: dict[str, float] | None = None) -> KeypointReport:
    keypoints = [KeypointScore(n, 10, 0.5, 0.8, 0.5, pck10[n], 0.9, 3.0, 0.9) for n in NAMES]
    return KeypointReport(keypoints, [ImageScore(i, 1, 1, 1, o, "") for i, o in (images or {}).items()], 0.25)


CHAMPION = report_with(dict.fromkeys(NAMES, 0.80), {"a.jpg": 0.9, "b.jpg": 0.5, "c.jpg": 0.7})
# better on average (mean PCK@0.1 0.875 against 0.8), but 0.2 worse on one paw
CHALLENGER = report_with({**dict.fromkeys(NAMES, 0.90), "front_left_paw": 0.60}, {"a.jpg": 0.2, "b.jpg": 0.6, "c.jpg": 0.7})


def guard_params(mode: str, drop: float = 0.05):
    return parse_params({"promote": {"keypoint_guard": mode, "max_keypoint_drop": drop}})


def test_a_challenger_better_on_average_but_worse_on_one_keypoint_is_refused():
    assert np.mean([k.pck10 for k in CHALLENGER.keypoints]) > np.mean([k.pck10 for k in CHAMPION.keypoints])
    comparison = compare_keypoints(CHALLENGER, CHAMPION, 0.05)
    assert comparison.regressed == ["front_left_paw"]
    result = decide(guard_params("refuse"), "2", 0.55, "1", 0.50, None, comparison)
    assert not result.promoted
    assert "front_left_paw" in result.reason and "0.800 → 0.600" in result.reason
    assert "promote.keypoint_guard: refuse" in result.reason
    assert "front_right_paw" not in result.reason


def test_the_guard_flags_or_is_off_by_params():
    comparison = compare_keypoints(CHALLENGER, CHAMPION, 0.05)
    flagged = decide(guard_params("flag"), "2", 0.55, "1", 0.50, None, comparison)
    assert flagged.promoted and "front_left_paw" in flagged.flagged and "flagged" in flagged.reason
    off = decide(guard_params("off"), "2", 0.55, "1", 0.50, None, comparison)
    assert off.promoted and off.flagged is None and "front_left_paw" not in off.reason
    tolerant = decide(guard_params("refuse", drop=0.25), "2", 0.55, "1", 0.50, None,
                      compare_keypoints(CHALLENGER, CHAMPION, 0.25))
    assert tolerant.promoted, tolerant.reason


def test_images_where_champion_and_challenger_differ_most_come_first():
    diffs = image_differences(CHALLENGER, CHAMPION, {}, n=2)
    assert [(d.image, round(d.change, 3)) for d in diffs] == [("a.jpg", -0.7), ("b.jpg", 0.1)]


def test_a_label_with_only_a_box_is_not_scored_and_absorbs_its_detection():
    exact = [(x, y, 0.9) for x, y, _ in LABEL]
    box_only = [(0.0, 0.0, 0.0)] * K
    other_box = (300.0, 0.0, 400.0, 200.0)
    on_it = [(x + 300, y + 50, 0.9) for x, y, _ in LABEL]
    img = poses("d.jpg", [(BOX, LABEL), (other_box, box_only)], [(BOX, 0.9, exact), (other_box, 0.8, on_it)])
    (score,) = evaluate_keypoints([img], NAMES, SIGMAS, 0.25).images
    assert (score.oks, score.matched, score.labels, score.detections) == (1.0, 2, 2, 2)
    far = poses("e.jpg", [(BOX, LABEL), (other_box, box_only)], [(BOX, 0.9, exact), ((500.0, 300, 600, 400), 0.8, on_it)])
    (score,) = evaluate_keypoints([far], NAMES, SIGMAS, 0.25).images
    assert (score.oks, score.matched) == (0.5, 1)  # a detection elsewhere is a false one: 1 / (1 label + 1 extra)
