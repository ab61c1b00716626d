"""The visibility Choices: a per-region choice "occluded" on a keypoint, written and read.

Label Studio ties a per-region choice to its region by sharing the region's `id`; a
keypoint with the choice `occluded` has YOLO visibility 1, every other labeled keypoint 2.
"""

from __future__ import annotations

from typing import Any

from poseops.conversion.report import DROPPED_REGION, Problem
from poseops.conversion.vocab import ID_TYPES
from poseops.label_config import OCCLUDED, VISIBILITY

REGION_TYPE = "choices"


def is_visibility(r: dict) -> bool:
    """Whether a region is the visibility choice of the labeling config (other Choices are not read)."""
    return r.get("type") == REGION_TYPE and r.get("from_name") == VISIBILITY


def occluded_choice(keypoint_id: str, geometry: dict, common: dict) -> dict:
    """The choice marking keypoint `keypoint_id` occluded (same id and geometry as the keypoint)."""
    return {"id": keypoint_id, "from_name": VISIBILITY, "type": REGION_TYPE, **common,
            "value": {**geometry, "choices": [OCCLUDED]}}


def read_visibility(r: dict, n: int, task_id: Any, occluded: set) -> Problem | None:
    """Add the id of the keypoint that visibility choice `r` (result #n) marks occluded; the Problem if it marks none."""
    rid = r.get("id")
    if type(rid) not in ID_TYPES:
        return Problem(task_id, "missing_field", f"visibility choice #{n} has no usable 'id'; ignored",
                       dropped=DROPPED_REGION)
    value = r.get("value")
    choices = value.get("choices") if type(value) is dict else None
    if isinstance(choices, list) and OCCLUDED in choices:
        occluded.add(rid)
        return None
    return Problem(task_id, "ignored_region", f"visibility choice {choices!r} on region {rid!r} is not "
                   f"[{OCCLUDED!r}]; ignored", region_id=rid, dropped=DROPPED_REGION)


def stray_choices(task_id: Any, occluded: set, keypoint_ids: set) -> list[Problem]:
    """A problem for each "occluded" choice whose id is no keypoint's (read after every keypoint)."""
    return [Problem(task_id, "ignored_region", f"an '{OCCLUDED}' choice is attached to region {rid!r}, which is not a "
                    "keypoint; ignored", region_id=rid, dropped=DROPPED_REGION)
            for rid in occluded if rid not in keypoint_ids]
