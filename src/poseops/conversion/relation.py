"""Relations between regions: how annotators tie the keypoints of one animal together
when its class has no drawn box (`box: derived` or `either`).

Label Studio exports a relation as a result item `{"type": "relation", "from_id": A,
"to_id": B, "direction": "right"}` (created in the editor with Alt+R on a selected region,
then a click on the other region; no `Relations` tag is needed). The direction and any
relation labels do not matter here: linked points belong to one instance.
"""

from __future__ import annotations

from typing import Any

from poseops.conversion.report import DROPPED_REGION, Problem
from poseops.conversion.vocab import ID_TYPES

REGION_TYPE = "relation"


def relation_region(from_id: str, to_id: str) -> dict:
    """A relation between two regions, as Label Studio exports it."""
    return {"type": REGION_TYPE, "from_id": from_id, "to_id": to_id, "direction": "right"}


def read_relation(r: dict, n: int, task_id: Any, edges: list[tuple[Any, Any]], linked: set) -> Problem | None:
    """Add relation `r` (result #n) to `edges` (and both ends to `linked`); the Problem when it names no two regions."""
    a, b = r.get("from_id"), r.get("to_id")
    if type(a) not in ID_TYPES or type(b) not in ID_TYPES:
        return Problem(task_id, "missing_field", f"relation #{n} has no usable from_id/to_id; ignored",
                       dropped=DROPPED_REGION)
    edges.append((a, b))
    linked.update((a, b))
    return None
