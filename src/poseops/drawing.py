"""Drawing detections on an image in the skeleton spec's colours (the `predict` output, the error gallery).

Detections are in the HTTP API's shape (`class`, `confidence`, `x`, `y`, `width`, `height`,
`keypoints` of `{name, x, y, confidence}`); a keypoint whose confidence is None (a label) is drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from poseops.skeleton import Skeleton

if TYPE_CHECKING:
    import numpy as np

KEYPOINT_DRAW_THRESHOLD = 0.5  # the keypoint confidence below which drawings leave a point out (as Ultralytics does)


def _bgr(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    if len(value) == 3:
        value = "".join(c * 2 for c in value)
    r, g, b = (int(value[i : i + 2], 16) for i in (0, 2, 4))
    return (b, g, r)


def _visible(points: dict[str, dict[str, Any]], name: str) -> bool:
    point = points.get(name)
    return point is not None and (point["confidence"] is None or point["confidence"] >= KEYPOINT_DRAW_THRESHOLD)


def draw_detections(image_bgr: np.ndarray, detections: list[dict[str, Any]], skeleton: Skeleton) -> np.ndarray:
    """A copy of the image with boxes, connections and keypoints in the skeleton spec's colours."""
    import cv2

    canvas = image_bgr.copy()
    scale = max(1, round(max(canvas.shape[:2]) / 640))
    for det in detections:
        cls = skeleton.get(det["class"])
        x, y, w, h = (int(round(det[k])) for k in ("x", "y", "width", "height"))
        cv2.rectangle(canvas, (x, y), (x + w, y + h), _bgr(cls.color), 2 * scale)
        label = f"{det['class']} {det['confidence']:.2f}"
        cv2.putText(canvas, label, (x, max(12 * scale, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, _bgr(cls.color), scale)
        points = {k["name"]: k for k in det["keypoints"]}
        for edge in cls.connections:
            if _visible(points, edge.a) and _visible(points, edge.b):
                a, b = points[edge.a], points[edge.b]
                cv2.line(canvas, (int(a["x"]), int(a["y"])), (int(b["x"]), int(b["y"])), _bgr(edge.color), 2 * scale, cv2.LINE_AA)
        for kp in cls.keypoints:
            if _visible(points, kp.name):
                p = points[kp.name]
                cv2.circle(canvas, (int(p["x"]), int(p["y"])), 3 * scale, _bgr(kp.color), -1, cv2.LINE_AA)
    return canvas
