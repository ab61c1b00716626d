"""KeyPointLabels: one keypoint, written into Label Studio and read back onto its box.

Label Studio keeps a keypoint as a point in percent of the image with exactly one label
(the plain keypoint name, or `class:keypoint` where two classes use a name at different
positions: `Skeleton.keypoint_labels()`), tied to its box by `parentID`. Reading places
it on its box at its model index; one without `parentID` joins the single box of a class
that has its label and contains it. A keypoint of a class whose boxes may be derived
(`box: derived` or `either`) that joins no drawn box is set aside, tied to the instance's
first keypoint by `parentID` when written, and grouped by `poseops.conversion.derived`.
"""

from __future__ import annotations

from typing import Any

from poseops.conversion.derived import Loose, LoosePoint
from poseops.conversion.rectangle import Box
from poseops.conversion.report import DROPPED_KEYPOINT, DROPPED_NOTHING, Problem
from poseops.conversion.vocab import BORDER_TOLERANCE, ID_TYPES, Vocab, number, single_label
from poseops.label_config import KEYPOINTS

REGION_TYPE = "keypointlabels"
KEYPOINT_SIZE = 1.0  # a keypoint's drawn radius, in percent of the image width
# A keypoint attached to its box may lie outside it (an outstretched hand; 5% of COCO's
# keypoints do, up to half the box's size away). Farther than this many box widths or
# heights, it is more likely attached to the wrong box: kept, and reported.
FAR_OUTSIDE_BOX = 1.0
KEYPOINT_FAR_OUTSIDE_BOX = "far_outside_box"


def keypoint_geometry(x: float, y: float) -> dict:
    """The drawn point of a normalized keypoint (shared by its visibility choice)."""
    return {"x": x * 100, "y": y * 100, "width": KEYPOINT_SIZE}


def keypoint_region(region_id: str, box_id: str, label: str, geometry: dict, common: dict,
                    score: float | None = None) -> dict:
    """The region of one labeled keypoint, attached to its box by `parentID`."""
    region = {
        "id": region_id,
        "from_name": KEYPOINTS,
        "type": REGION_TYPE,
        "parentID": box_id,
        **common,
        "value": {**geometry, REGION_TYPE: [label]},
    }
    if score is not None:
        region["score"] = score
    return region


class _Unusable(Exception):
    """A keypoint region that cannot be used as it is: (problem kind, why, its label)."""

    def __init__(self, kind: str, why: str, label: str | None = None):
        super().__init__(kind, why, label)
        self.kind, self.why, self.label = kind, why, label


class _Loose(Exception):
    """The keypoint joins no drawn box, and its class may derive its box: it is grouped later."""

    def __init__(self, parent: Any = None):
        super().__init__(parent)
        self.parent = parent


def place_keypoint(v: Vocab, r: dict, task_id: Any, boxes: dict[Any, Box], dropped: set, occluded: set,
                   keypoint_ids: set, loose: Loose | None = None) -> Problem | None:
    """Put one `keypointlabels` region on its box; the Problem when it cannot be used as it is.

    `dropped` holds the ids of boxes left out, `occluded` the ids of keypoints with the
    visibility choice "occluded"; the region's id is added to `keypoint_ids`. A keypoint
    that joins no drawn box but may belong to a class with derived boxes goes to `loose`.
    """
    rid = r.get("id")
    try:
        value = r.get("value")
        if type(rid) not in ID_TYPES or type(value) is not dict:
            raise _Unusable("missing_field", "has no 'value' object" if type(value) is not dict else "has no usable 'id'")
        if rid in keypoint_ids:
            raise _Unusable("duplicate_id", "uses the id of an earlier keypoint; this one is left out")
        keypoint_ids.add(rid)
        labels = value.get(REGION_TYPE)
        if type(labels) is list and len(labels) == 1 and type(labels[0]) is str:
            label = labels[0]
        else:
            _, kind, why = single_label(value, REGION_TYPE)
            raise _Unusable(kind, why)
        index = v.keypoint_index.get(label)
        if index is None:
            raise _Unusable("unknown_label", "has a label that is not in the skeleton spec; add it to the spec or relabel "
                            "the point", label)
        x, y = value.get("x"), value.get("y")
        if type(x) is not float or type(y) is not float:
            x, y = number(x), number(y)
            if x is None or y is None:
                raise _Unusable("missing_field", "has no usable x/y (numbers in percent of the image)", label)
        tol = BORDER_TOLERANCE
        if not (-tol <= x <= 100 + tol and -tol <= y <= 100 + tol):
            if x != x or y != y:
                raise _Unusable("missing_field", "has x/y that are not numbers (NaN)", label)
            raise _Unusable("out_of_range", f"lies outside the image (x {x}, y {y} percent); move it inside or delete it",
                            label)
        x, y = x / 100, y / 100
        try:
            box = _box_of(v, r.get("parentID"), label, x, y, boxes, dropped, rid, loose)
        except _Loose as e:
            loose.points.append(LoosePoint(rid, label, index, x, y, 1 if rid in occluded else 2, e.parent))  # type: ignore[union-attr]
            return None
        if box.kps[index] is not None:
            raise _Unusable("duplicate_keypoint", f"is the second {label!r} on box {box.id!r}; the first one is kept", label)
        box.kps[index] = (x, y, 1 if rid in occluded else 2)
        away = max(box.x - x, x - box.x - box.w, 0.0) / box.w, max(box.y - y, y - box.y - box.h, 0.0) / box.h
        if max(away) > FAR_OUTSIDE_BOX:
            raise _Unusable(KEYPOINT_FAR_OUTSIDE_BOX, f"lies {max(away):.1f} box sizes outside its box {box.id!r}; kept "
                            "as labeled: check in Label Studio that it is attached to the right box", label)
    except _Unusable as e:
        return Problem(task_id, e.kind, f"keypoint {rid!r} ({e.label or 'no label'}) {e.why}", label=e.label,
                       region_id=rid, dropped=DROPPED_NOTHING if e.kind == KEYPOINT_FAR_OUTSIDE_BOX else DROPPED_KEYPOINT)
    return None


def _box_of(v: Vocab, parent: Any, label: str, x: float, y: float, boxes: dict[Any, Box], dropped: set,
            rid: Any = None, loose: Loose | None = None) -> Box:
    """The box a keypoint belongs to: the one its `parentID` names, else the one box of its class containing it.

    _Loose when it joins no drawn box and a class with its label may derive its box.
    """
    classes = v.label_classes[label]
    derivable = loose is not None and any(c in v.derivable for c in classes)
    if parent is not None and parent != "":
        box = boxes.get(parent) if type(parent) in ID_TYPES else None
        if box is None:
            if derivable and type(parent) in ID_TYPES and parent in loose.keypoint_ids:  # type: ignore[union-attr]
                raise _Loose(parent)  # tied to another keypoint: one instance
            if type(parent) in ID_TYPES and parent in dropped:
                raise _Unusable("parent_dropped", f"belongs to box {parent!r}, which was left out (see its problem)",
                                label)
            raise _Unusable("missing_parent", f"names parent box {parent!r}, which is not in the annotation; draw the "
                            "box again and attach the point to it", label)
        if box.cls not in classes:
            raise _Unusable("wrong_class", f"is attached to box {parent!r} of class {box.cls!r}, which has no such "
                            "keypoint", label)
        return box
    if derivable and rid in loose.linked:  # type: ignore[union-attr]
        raise _Loose()  # linked to other keypoints: grouped with them, whatever box it lies in
    fits = [b for b in boxes.values() if b.cls in classes and b.contains(x, y)]
    if not fits and derivable:
        raise _Loose()
    if not fits:
        raise _Unusable("orphan_keypoint", "has no parent box and lies in no box of a class with this keypoint; "
                        "attach it to its box in Label Studio", label)
    if len(fits) > 1:
        raise _Unusable("ambiguous_keypoint", f"has no parent box and lies in {len(fits)} boxes "
                        f"({', '.join(repr(b.id) for b in fits)}); attach it to its box in Label Studio", label)
    return fits[0]
