"""RectangleLabels: an object's box, written into Label Studio and read back.

Label Studio keeps a box in percent of the image: top-left `x, y`, `width, height`,
a `rotation` and exactly one label, the object's class. Poses keep it normalized (0..1).
"""

from __future__ import annotations

from typing import Any

from poseops.conversion.poses import Keypoint, Pose
from poseops.conversion.report import DROPPED_NOTHING, DROPPED_OBJECT, Problem
from poseops.conversion.vocab import BORDER_TOLERANCE, ID_TYPES, Vocab, number, single_label
from poseops.label_config import BOXES

REGION_TYPE = "rectanglelabels"
_FIELDS = ("x", "y", "width", "height")


def box_region(pose: Pose, region_id: str, common: dict) -> dict:
    """The box region of one pose (with its confidence as `score` when the pose has one)."""
    x, y, w, h = pose.box
    region = {
        "id": region_id,
        "from_name": BOXES,
        "type": REGION_TYPE,
        **common,
        "value": {"x": x * 100, "y": y * 100, "width": w * 100, "height": h * 100, "rotation": 0,
                  REGION_TYPE: [pose.class_name]},
    }
    if pose.confidence is not None:
        region["score"] = pose.confidence
    return region


class Box:
    """A box read from an annotation (normalized), collecting its keypoints in model order."""

    __slots__ = ("id", "cls", "x", "y", "w", "h", "kps")

    def __init__(self, rid: Any, cls: str, x: float, y: float, w: float, h: float, k: int):
        self.id, self.cls, self.x, self.y, self.w, self.h = rid, cls, x, y, w, h
        self.kps: list[Keypoint | None] = [None] * k

    def contains(self, x: float, y: float) -> bool:
        return self.x <= x <= self.x + self.w and self.y <= y <= self.y + self.h


def read_box(v: Vocab, r: dict, task_id: Any, problems: list[Problem], boxes: dict[Any, Box],
             dropped: set) -> Box | None:
    """The box of one `rectanglelabels` region, or None with its problem added (its id then goes into `dropped`).

    A box reaching outside the image is clipped to it (and reported); one with another
    box's id is left out.
    """
    rid = r.get("id")
    value = r.get("value")
    if type(rid) not in ID_TYPES:
        outcome: Box | tuple[str, str, str | None] = ("missing_field", "has no usable 'id'", None)
        rid = None
    elif type(value) is not dict:
        outcome = ("missing_field", "has no 'value' object", None)
    elif rid in boxes or rid in dropped:
        problems.append(Problem(task_id, "duplicate_id", f"box id {rid!r} is used by an earlier box; this one is left "
                                "out", region_id=rid, dropped=DROPPED_OBJECT))
        return None
    else:
        outcome = _checked_box(v, value, rid, task_id, problems)
    if isinstance(outcome, Box):
        return outcome
    kind, why, label = outcome
    if rid is not None:
        dropped.add(rid)
    problems.append(Problem(task_id, kind, f"box {rid!r} {why}", label=label, region_id=rid, dropped=DROPPED_OBJECT))
    return None


def _checked_box(v: Vocab, value: dict, rid: Any, task_id: Any,
                 problems: list[Problem]) -> Box | tuple[str, str, str | None]:
    """The box of a region's `value`, or (problem kind, why, label) when it cannot be used."""
    label, kind, why = single_label(value, REGION_TYPE)
    if label is None:
        return kind, why, None
    if label not in v.class_index:
        return ("unknown_label", f"has class {label!r}, which is not in the skeleton spec (classes: "
                f"{', '.join(v.class_index)}); add it to the spec or relabel the box", label)
    x, y, w, h = (number(value.get(k)) for k in _FIELDS)
    if x is None or y is None or w is None or h is None:
        names = [k for k in _FIELDS if number(value.get(k)) is None]
        return "missing_field", f"has no usable {', '.join(names)} (numbers in percent of the image)", label
    if value.get("rotation"):
        return ("rotated_box", f"is rotated by {value.get('rotation')!r} degrees; YOLO boxes are axis-aligned: set "
                "its rotation to 0 in Label Studio", label)
    if w <= 0 or h <= 0:
        return "empty_box", f"has no area (width {w}, height {h} percent)", label
    x1, y1 = x + w, y + h
    tol = BORDER_TOLERANCE
    if x < -tol or y < -tol or x1 > 100 + tol or y1 > 100 + tol:
        cx0, cy0, cx1, cy1 = max(x, 0.0), max(y, 0.0), min(x1, 100.0), min(y1, 100.0)
        if cx1 <= cx0 or cy1 <= cy0:
            return "out_of_range", f"lies outside the image (x {x}, y {y}, width {w}, height {h} percent)", label
        problems.append(Problem(task_id, "out_of_range",
                                f"box {rid!r} reaches outside the image (x {x}, y {y}, width {w}, height {h} "
                                "percent); clipped to the image", label=label, region_id=rid,
                                dropped=DROPPED_NOTHING))
        x, y, w, h = cx0, cy0, cx1 - cx0, cy1 - cy0
    return Box(rid, label, x / 100, y / 100, w / 100, h / 100, v.keypoint_count)
