"""Object keypoint similarity (OKS), COCO's measure of how close two placements of one object's keypoints are.

    OKS = mean over the keypoints both place of exp(-d² / (2 · s · (2σ)²))

`d` is the distance between the two places in pixels, `σ` the keypoint's sigma (the skeleton
spec's, `SkeletonClass.oks_sigmas`) and `s` the object's area: its box's times AREA_FACTOR, as
Ultralytics' PoseValidator takes it when there is no outline. The evaluate stage computes the
same per array (`training.keypoint_metrics`); label checks, the queue's scores and the sigma
estimate use this one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

AREA_FACTOR = 0.53  # an object's area from its box (COCO persons' outline / box; Ultralytics' PoseValidator)

Point = tuple[float, float]


def object_area(box_width: float, box_height: float) -> float:
    """The OKS scale of an object with this box (pixels), at least 1."""
    return max(AREA_FACTOR * box_width * box_height, 1.0)


def oks(pairs: Iterable[tuple[Point, Point, float]], area: float) -> float | None:
    """The OKS of the (point, point, sigma) triples both placements share; None when they share none."""
    terms = [math.exp(-((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2) / (2 * area * (2 * sigma) ** 2))
             for p, q, sigma in pairs]
    return sum(terms) / len(terms) if terms else None
