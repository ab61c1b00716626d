"""Poses and Label Studio regions: pure geometry, no I/O.

A `Pose` is one object in normalized image coordinates (0..1): its class, its box
(top-left corner x, y and width, height) and its keypoints in the model's order,
each `(x, y, visibility)` with YOLO's visibility (0 = not labeled, 1 = occluded,
2 = visible). Label Studio keeps the same geometry in percent of the image, one
region per box and per keypoint, the keypoints tied to their box by `parentID`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from poseops.label_config import BOXES, IMAGE, KEYPOINTS, OCCLUDED, VISIBILITY
from poseops.skeleton import Skeleton

KEYPOINT_SIZE = 1.0  # a keypoint's drawn radius, in percent of the image width

Keypoint = tuple[float, float, int]


@dataclass(frozen=True)
class Pose:
    class_name: str
    box: tuple[float, float, float, float]  # x, y (top-left corner), width, height; normalized
    keypoints: tuple[Keypoint, ...]
    confidence: float | None = None
    keypoint_confidences: tuple[float, ...] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Template:
    """Where a new pre-label puts the box (fraction of the image) and each keypoint (fraction of the box)."""

    box_size: tuple[float, float]
    positions: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict:
        return {"box_size": list(self.box_size), "positions": [list(p) for p in self.positions]}

    @classmethod
    def from_dict(cls, d: dict) -> Template:
        return cls(tuple(d["box_size"]), tuple(tuple(p) for p in d["positions"]))  # type: ignore[arg-type]


DEFAULT_BOX_SIZE = (0.5, 0.8)


def spec_template(skeleton: Skeleton, class_name: str) -> Template:
    """The template the spec itself describes (its keypoint `position`s)."""
    return Template(DEFAULT_BOX_SIZE, tuple(k.position for k in skeleton.get(class_name).keypoints))


def template_from_pose(pose: Pose, fallback: Template) -> Template:
    """A template taken from a hand-labeled pose: its box size, its keypoints relative to the box.

    Keypoints the pose does not have keep the fallback's positions.
    """
    x, y, w, h = pose.box
    if w <= 0 or h <= 0:
        raise ValueError("the labeled box has no area; label a proper box before using it as the template")
    positions = tuple(
        (_clamp((kx - x) / w), _clamp((ky - y) / h)) if v > 0 else fallback.positions[i]
        for i, (kx, ky, v) in enumerate(pose.keypoints)
    )
    return Template((w, h), positions)


def template_pose(class_name: str, template: Template) -> Pose:
    """A pose with the template's box centred in the image and every keypoint placed."""
    w, h = template.box_size
    x, y = (1 - w) / 2, (1 - h) / 2
    keypoints = tuple((x + fx * w, y + fy * h, 2) for fx, fy in template.positions)
    return Pose(class_name, (x, y, w, h), keypoints)


def _clamp(v: float) -> float:
    return min(1.0, max(0.0, v))


def pose_to_results(
    skeleton: Skeleton,
    pose: Pose,
    original_width: int,
    original_height: int,
    region_id: str,
) -> list[dict]:
    """The Label Studio result regions of one pose: its box, then its labeled keypoints (parentID = box)."""
    x, y, w, h = pose.box
    common = {"to_name": IMAGE, "original_width": original_width, "original_height": original_height, "image_rotation": 0}
    box = {
        "id": region_id,
        "from_name": BOXES,
        "type": "rectanglelabels",
        **common,
        "value": {"x": x * 100, "y": y * 100, "width": w * 100, "height": h * 100, "rotation": 0,
                  "rectanglelabels": [pose.class_name]},
    }
    if pose.confidence is not None:
        box["score"] = pose.confidence
    results = [box]
    cls = skeleton.get(pose.class_name)
    for i, (kx, ky, v) in enumerate(pose.keypoints):
        if v <= 0:
            continue
        kp_id = f"{region_id}_{i}"
        geometry = {"x": kx * 100, "y": ky * 100, "width": KEYPOINT_SIZE}
        region = {
            "id": kp_id,
            "from_name": KEYPOINTS,
            "type": "keypointlabels",
            "parentID": region_id,
            **common,
            "value": {**geometry, "keypointlabels": [skeleton.keypoint_label(cls.name, cls.keypoints[i].name)]},
        }
        if pose.keypoint_confidences is not None:
            region["score"] = pose.keypoint_confidences[i]
        results.append(region)
        if v == 1:
            results.append({
                "id": kp_id, "from_name": VISIBILITY, "type": "choices", **common,
                "value": {**geometry, "choices": [OCCLUDED]},
            })
    return results


def poses_to_results(skeleton: Skeleton, poses: list[Pose], original_width: int, original_height: int,
                     prefix: str = "r") -> list[dict]:
    """Regions of several poses, ids `<prefix><n>` for the boxes and `<prefix><n>_<k>` for their keypoints."""
    results: list[dict] = []
    for n, pose in enumerate(poses):
        results += pose_to_results(skeleton, pose, original_width, original_height, f"{prefix}{n}")
    return results
