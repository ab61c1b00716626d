"""Which task to label next: a score per prediction, low where a label would teach the model most.

Label Studio's uncertainty sampling serves the lowest `score` first, so each score is an
agreement or a confidence in [0, 1]:

- `confidence`: the mean confidence of the detections (0 when nothing was found).
- `min_keypoint`: the least confident keypoint of any detection: one doubtful wrist is enough.
- `flip`: how well the prediction agrees with the prediction of the mirrored image, mapped back
  with the spec's flip pairs (object keypoint similarity, OKS). A model unsure of left and right
  answers the mirror differently; an image that is the same mirrored needs no flip pairs.
- `temporal`: for video frames, how well the prediction agrees with the predictions of the frames
  just before and after it in the video (OKS, the mean of both): a jump between frames a few
  milliseconds apart is a mistake in one of them (`poseops.neighbour_frames` reads them). A task
  that is not a video frame, or whose video cannot be read, gets the `flip` score instead: the
  same kind of measure (the agreement of two predictions that should agree), so one queue ranks
  frames and photos on one scale.

Detections are the service's (`inference.detections_from_result`): boxes and keypoints in pixels.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from poseops.constants import SCORES
from poseops.oks import object_area
from poseops.oks import oks as object_keypoint_similarity
from poseops.skeleton import Skeleton

Detections = list[dict[str, Any]]
MIN_IOU = 0.3  # two detections of one object overlap at least this much


def confidence(detections: Detections) -> float:
    return statistics.fmean(d["confidence"] for d in detections) if detections else 0.0


def min_keypoint(detections: Detections) -> float:
    confidences = [kp["confidence"] for d in detections for kp in d["keypoints"] if kp.get("confidence") is not None]
    return min(confidences) if confidences else confidence(detections)


def mirrored(detections: Detections, skeleton: Skeleton, width: float) -> Detections:
    """Detections of the mirrored image as detections of the image: x mirrored, left and right swapped."""
    out = []
    for d in detections:
        cls = skeleton.get(d["class"])
        swap = {a: b for a, b in cls.flip_pairs} | {b: a for a, b in cls.flip_pairs}
        by_name = {kp["name"]: kp for kp in d["keypoints"]}
        keypoints = [{**by_name[swap.get(kp["name"], kp["name"])], "name": kp["name"]} for kp in d["keypoints"]]
        out.append({**d, "x": width - d["x"] - d["width"],
                    "keypoints": [{**kp, "x": width - kp["x"]} for kp in keypoints]})
    return out


def _iou(a: dict, b: dict) -> float:
    w = max(0.0, min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"]))
    h = max(0.0, min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"]))
    union = a["width"] * a["height"] + b["width"] * b["height"] - w * h
    return w * h / union if union > 0 else 0.0


def oks(a: dict, b: dict, sigmas: Sequence[float]) -> float:
    """Object keypoint similarity of two detections of one object, scaled by the first's box."""
    pairs = (((p["x"], p["y"]), (q["x"], q["y"]), s)
             for p, q, s in zip(a["keypoints"], b["keypoints"], sigmas, strict=True))
    similarity = object_keypoint_similarity(pairs, object_area(a["width"], a["height"]))
    return 1.0 if similarity is None else similarity


def agreement(these: Detections, those: Detections, skeleton: Skeleton) -> float:
    """How well two predictions of one image agree: each object matched by box (same class, IoU ≥ MIN_IOU,
    greedy by overlap) scores its OKS, an unmatched one 0; the mean over all objects of both (1: both empty)."""
    if not these and not those:
        return 1.0
    sigmas = {c.name: c.oks_sigmas for c in skeleton.classes}
    pairs = sorted(((_iou(a, b), i, j) for i, a in enumerate(these) for j, b in enumerate(those)
                    if a["class"] == b["class"]), reverse=True)
    used_a: set[int] = set()
    used_b: set[int] = set()
    total = 0.0
    for overlap, i, j in pairs:
        if overlap < MIN_IOU:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            total += oks(these[i], those[j], sigmas[these[i]["class"]])
    return total / (len(these) + len(those) - len(used_a))


def flip(detections: Detections, detections_of_mirror: Detections, skeleton: Skeleton, width: float) -> float:
    return agreement(detections, mirrored(detections_of_mirror, skeleton, width), skeleton)


def temporal(detections: Detections, neighbours: Sequence[Detections], skeleton: Skeleton) -> float:
    """The mean agreement with the neighbouring frames' predictions; 1 when there is none to compare with."""
    return statistics.fmean(agreement(detections, n, skeleton) for n in neighbours) if neighbours else 1.0


def no_neighbours() -> list[Detections] | None:
    return None


def score(kind: str, detections: Detections, skeleton: Skeleton, width: float, mirror: Callable[[], Detections],
          neighbours: Callable[[], list[Detections] | None] = no_neighbours) -> float:
    """The prediction's score of `kind` (params `autolabel.score`); `mirror()` detects in the mirrored image,
    `neighbours()` in the neighbouring frames of its video (None: not a video frame, or its video unreadable)."""
    if kind == "confidence":
        return confidence(detections)
    if kind == "min_keypoint":
        return min_keypoint(detections)
    if kind == "flip":
        return flip(detections, mirror(), skeleton, width)
    if kind == "temporal":
        around = neighbours()
        return flip(detections, mirror(), skeleton, width) if around is None else temporal(detections, around, skeleton)
    raise ValueError(f"autolabel.score {kind!r}: use one of {', '.join(SCORES)}")


def decode(content: bytes):
    """An encoded image as OpenCV's BGR array; ValueError when it cannot be decoded."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("the image cannot be decoded")
    return image


def on_arrays(detect: Callable[[bytes], Detections]) -> Callable[[Any], Detections]:
    """A detector of encoded images as a detector of decoded ones (each encoded as PNG, lossless)."""
    import cv2

    return lambda image: detect(cv2.imencode(".png", image)[1].tobytes())


def detect_mirrored(detect: Callable[[bytes], Detections], image: bytes | Any) -> Detections:
    """What a detector of encoded images finds in the mirror image of `image` (encoded, or decoded)."""
    import cv2

    return on_arrays(detect)(cv2.flip(decode(image) if isinstance(image, bytes) else image, 1))
