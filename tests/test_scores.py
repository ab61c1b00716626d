"""The scores that choose what to label next: the mirror test with the real model ranks a left/right ambiguous
image below clear ones, and each score's arithmetic on detections made by hand."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import PERSON_SPEC, SHARED

from poseops import scores
from poseops.skeleton import load_skeleton

SKELETON = load_skeleton(PERSON_SPEC)
NAMES = [kp.name for kp in SKELETON.classes[0].keypoints]


def person(x: float, y: float, w: float = 100, h: float = 200, conf: float = 0.9,
           points: dict[str, tuple[float, float, float]] | None = None) -> dict:
    points = points or {}
    keypoints = [{"name": n, "x": points.get(n, (x + w / 2, y + h / 2, 0.8))[0],
                  "y": points.get(n, (x + w / 2, y + h / 2, 0.8))[1],
                  "confidence": points.get(n, (0, 0, 0.8))[2]} for n in NAMES]
    return {"class": "person", "confidence": conf, "x": x, "y": y, "width": w, "height": h, "keypoints": keypoints}


def test_confidence_and_the_least_confident_keypoint():
    a = person(0, 0, conf=0.9, points={"left_wrist": (40, 50, 0.1)})
    b = person(200, 0, conf=0.5)
    assert scores.confidence([a, b]) == pytest.approx(0.7)
    assert scores.min_keypoint([a, b]) == pytest.approx(0.1)
    assert scores.confidence([]) == scores.min_keypoint([]) == 0.0


def test_mirror_maps_back_with_flip_pairs():
    width = 640
    left = person(100, 50, points={"left_wrist": (120, 150, 0.9), "right_wrist": (180, 150, 0.9)})
    # the model on the mirrored image: the same person at the mirrored place, wrists named as the mirror shows them
    seen_in_mirror = person(width - 200, 50, points={"right_wrist": (width - 120, 150, 0.9),
                                                     "left_wrist": (width - 180, 150, 0.9)})
    back = scores.mirrored([seen_in_mirror], SKELETON, width)[0]
    wrists = {kp["name"]: (kp["x"], kp["y"]) for kp in back["keypoints"] if kp["name"].endswith("wrist")}
    assert wrists == {"left_wrist": (120, 150), "right_wrist": (180, 150)} and back["x"] == 100
    assert scores.flip([left], [seen_in_mirror], SKELETON, width) == pytest.approx(1.0)
    # a model that names the wrists by image side: in the mirror it swaps them, and the score drops
    confused = person(width - 200, 50, points={"left_wrist": (width - 120, 150, 0.9),
                                               "right_wrist": (width - 180, 150, 0.9)})
    assert scores.flip([left], [confused], SKELETON, width) < 0.95


def test_agreement_counts_unmatched_objects_and_frames_without_a_neighbour():
    a, b = person(0, 0), person(300, 0)
    assert scores.agreement([a, b], [a], SKELETON) == pytest.approx(0.5)
    assert scores.agreement([], [], SKELETON) == 1.0
    assert scores.temporal([a], None, SKELETON) == 1.0
    moved = person(0, 0, points={n: (90, 150, 0.8) for n in NAMES})
    assert scores.temporal([a], [moved], SKELETON) < scores.temporal([a], [a], SKELETON) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def model():
    from poseops.inference import PoseModel

    return PoseModel(str(SHARED / "weights" / "yolo11n-pose.pt"), SKELETON)


def flip_score(model, image: np.ndarray) -> float:
    detections = model.detect(image, 0.25, 0.45)
    return scores.flip(detections, model.detect(cv2.flip(image, 1), 0.25, 0.45), SKELETON, image.shape[1])


UPRIGHT = [SHARED / "datasets" / "coco-mini-train" / "images" / f"{n}.jpg"
           for n in ("000000030752", "000000037666", "000000069468")]  # one person each, seen clearly


def test_the_mirror_test_ranks_left_right_ambiguous_images_first(model):
    """Upside down, a person's left and right are a guess (pose models learn people upright): the model's
    guess for the mirror does not map back onto its guess for the image. Upright, clear photos agree."""
    upright = [cv2.imread(str(p)) for p in UPRIGHT]
    upside_down = [cv2.rotate(im, cv2.ROTATE_180) for im in upright]
    assert all(model.detect(im, 0.25, 0.45) for im in upright + upside_down), "each image shows a person found"
    clear = [flip_score(model, im) for im in upright]
    confusing = [flip_score(model, im) for im in upside_down]
    assert max(confusing) < min(clear), (confusing, clear)
    assert min(clear) > 0.8


@pytest.mark.integration
def test_autolabel_orders_the_queue_by_the_chosen_score(prefect_api, workspace, label_studio, model):
    from test_autolabel import make_dataset

    from poseops.flows.autolabel import autolabel
    from poseops.labelstudio import LabelStudioClient

    (workspace / "params.yaml").write_text("autolabel:\n  score: flip\n")
    name, images = make_dataset(label_studio, labeled=0)
    summary = autolabel(dataset=name, weights=str(SHARED / "weights" / "yolo11n-pose.pt"))
    assert summary["score"] == "flip" and summary["predicted"] == len(images) and not summary["failed"]
    with LabelStudioClient(label_studio) as client:
        tasks = {t["data"]["source"]: t for t in client.iter_tasks(client.find_project(name).id)}
    for image in images:
        (prediction,) = [p for p in tasks[image.file_name]["predictions"] if p["model_version"] == summary["model_version"]]
        assert prediction["score"] == pytest.approx(flip_score(model, cv2.imread(str(image.path))), abs=1e-3)
