"""Poses and pre-label templates: pure geometry, no I/O.

A `Pose` is one object in normalized image coordinates (0..1): its class, its box
(top-left corner x, y and width, height) and its keypoints in the model's order,
each `(x, y, visibility)` with YOLO's visibility (0 = not labeled, 1 = occluded,
2 = visible). Label Studio keeps the same geometry in percent of the image, one
region per box and per keypoint (see `poseops.conversion.results`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from poseops.skeleton import Skeleton

Keypoint = tuple[float, float, int]
MISSING: Keypoint = (0.0, 0.0, 0)  # a keypoint that is not labeled, as YOLO writes it


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
