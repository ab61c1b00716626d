"""Which annotation of a Label Studio task is training data: the latest one not cancelled."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from poseops.conversion.report import DROPPED_TASK, Problem


def choose_annotation(task: dict) -> tuple[dict | None, Problem | None]:
    """The annotation a task contributes: its latest (updated_at, then created_at, then id) not cancelled one.

    A task with no annotations, or only cancelled (skipped) ones, is not training data:
    (None, a Problem saying why). Drafts and predictions are never used.
    """
    task_id = task.get("id")
    annotations = task.get("annotations")
    if annotations is None:
        annotations = task.get("completions")  # exports of old Label Studio versions
    if not isinstance(annotations, list) or not annotations:
        return None, Problem(task_id, "not_annotated", "the task has no submitted annotation; label it in Label "
                             "Studio (drafts and predictions are not used)", dropped=DROPPED_TASK)
    usable = [a for a in annotations if type(a) is dict and not a.get("was_cancelled") and not a.get("skipped")]
    if not usable:
        return None, Problem(task_id, "cancelled", f"all {len(annotations)} annotation(s) of the task were cancelled "
                             "(skipped) by the annotator: not training data", dropped=DROPPED_TASK)
    return max(usable, key=_annotation_order), None


def _annotation_order(a: dict) -> tuple[float, float, float]:
    ident = a.get("id")
    return (
        _timestamp(a.get("updated_at") or a.get("created_at")),
        _timestamp(a.get("created_at")),
        float(ident) if isinstance(ident, int) and not isinstance(ident, bool) else -math.inf,
    )


def _timestamp(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return -math.inf
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return t.timestamp()
    return -math.inf
