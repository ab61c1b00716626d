"""What every region reader shares: the skeleton's vocabulary (computed once per skeleton)
and the checks of the values Label Studio writes into a region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from poseops.skeleton import Skeleton

ID_TYPES = (str, int)  # region and task ids as Label Studio writes them
# Percent values up to this far outside 0..100 are rounding noise at the image border
# (labels stored with 6 decimals, float sums): kept exactly as they are, without a problem.
# 1e-4 percent is 1e-6 of the image, the precision the round trip promises; Ultralytics
# itself accepts coordinates up to 1% outside the image.
BORDER_TOLERANCE = 1e-4


@dataclass(frozen=True, eq=False)
class Vocab:
    class_index: dict[str, int]
    keypoint_index: dict[str, int]  # Label Studio keypoint label → model index
    label_classes: dict[str, frozenset[str]]  # keypoint label → the classes that have it
    class_labels: dict[str, tuple[str, ...]]  # class → its keypoint labels in model order
    keypoint_count: int
    derivable: dict[str, float]  # class → box padding, for the classes whose boxes may be derived (`derived`, `either`)
    derived: frozenset[str]  # the classes whose boxes are always derived (`box: derived`)


@lru_cache(maxsize=16)
def vocab(skeleton: Skeleton) -> Vocab:
    label_classes: dict[str, set[str]] = {}
    class_labels: dict[str, tuple[str, ...]] = {}
    for cls in skeleton.classes:
        labels = tuple(skeleton.keypoint_label(cls.name, k.name) for k in cls.keypoints)
        class_labels[cls.name] = labels
        for label in labels:
            label_classes.setdefault(label, set()).add(cls.name)
    return Vocab(
        class_index={name: i for i, name in enumerate(skeleton.class_names)},
        keypoint_index=skeleton.keypoint_labels(),
        label_classes={k: frozenset(v) for k, v in label_classes.items()},
        class_labels=class_labels,
        keypoint_count=skeleton.keypoint_count,
        derivable={c.name: c.box_padding for c in skeleton.classes if c.box_derivable},
        derived=frozenset(c.name for c in skeleton.classes if not c.box_drawn),
    )


def number(value: Any) -> float | None:
    """A finite float from a JSON number; None for anything else (bool, str, NaN, missing)."""
    t = type(value)
    if t is float:
        return value if math.isfinite(value) else None
    if t is int:
        return float(value)
    return None


def single_label(value: dict, key: str) -> tuple[str | None, str, str]:
    """(the one label of a region, "", "") or (None, problem kind, why not)."""
    labels = value.get(key)
    if not isinstance(labels, list) or not labels:
        return None, "missing_field", f"has no '{key}'"
    if len(labels) > 1:
        return None, "bad_label", f"has {len(labels)} labels {labels!r}; a region needs exactly one"
    if not isinstance(labels[0], str):
        return None, "bad_label", f"has a label that is not text: {labels[0]!r}"
    return labels[0], "", ""
